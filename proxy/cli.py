"""Command line: ``vramgate [serve]`` runs the proxy, ``vramgate plan MODEL`` explains a model's footprint,
``vramgate status`` shows who holds the GPU and why, ``vramgate token`` manages users' tokens."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

from proxy.config.settings import SettingsError, env_warnings, load_settings

EPILOG = """\
examples:
  vramgate                                  run the proxy with the defaults (serve)
  vramgate --config config/vramgate.toml serve --upstream ollama:11434
  vramgate plan llama3:8b --vram 24GiB      does llama3:8b fit in 24 GiB, and with what context
  vramgate status                           who holds the GPU, the queue, the last decisions
  vramgate token add alice                  a token for alice (she sets OLLAMA_API_KEY to it)

Every setting is also an environment variable VRAMGATE_<KEY>; config/vramgate.toml lists them all.
Run `vramgate COMMAND --help` for a command's options.
"""


def version() -> str:
    """The installed package's version; the source tree's when vramgate is run uninstalled."""
    try:
        return metadata.version("vramgate")
    except metadata.PackageNotFoundError:
        from proxy import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vramgate",
        description="A reverse proxy for Ollama that keeps every model load entirely in GPU memory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vramgate {version()}")
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (or VRAMGATE_CONFIG)")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the proxy in front of Ollama (the default)",
                           description="Run the proxy in front of Ollama.")
    serve.add_argument("--config", metavar="FILE", dest="serve_config", help=argparse.SUPPRESS)
    serve.add_argument("--listen", help="address to listen on (VRAMGATE_LISTEN)")
    serve.add_argument("--upstream", help="where Ollama is (VRAMGATE_UPSTREAM)")
    from proxy import plan

    plan.add_arguments(sub.add_parser(
        "plan", help="show what a model needs on the GPU, and what fits",
        description="Show what a model needs on the GPU and what fits a given amount of VRAM."))
    for name, text in (("status", "show who holds the GPU and why, from a running vramgate"),
                       ("token", "add, remove or list users' bearer tokens (the tokens file)")):
        command = sub.add_parser(name, help=text, add_help=False, description=text)
        command.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def local_url(listen: tuple[str, int]) -> str:
    """Where a command on this machine reaches the running vramgate (a wildcard listener via loopback)."""
    host, port = listen
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = args.command or "serve"
    if command in ("token", "status"):  # their own parsers read the rest, --help included
        args.args = extra + list(args.args)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    overrides = {
        key: value
        for key in ("listen", "upstream")
        if (value := getattr(args, key, None)) is not None
    }
    if getattr(args, "plan_upstream", None) is not None:  # `plan --upstream`: checked, and named, like serve's
        overrides["upstream"] = args.plan_upstream
    for warning in env_warnings():
        print(f"vramgate: warning: {warning}", file=sys.stderr)
    try:
        settings = load_settings(getattr(args, "serve_config", None) or args.config, **overrides)
    except SettingsError as exc:
        print(f"vramgate: {exc}", file=sys.stderr)
        return 2
    if command == "plan":
        from proxy import plan

        return plan.run(args, settings)
    if command == "token":
        from proxy.identity import token_command

        return token_command.main(args.args, settings.tokens_file)
    if command == "status":
        from proxy.observe import status_command

        return status_command.main(args.args, local_url(settings.listen_address), settings.admin_token)
    from proxy.edge import server as server

    return server.run(settings)


if __name__ == "__main__":
    sys.exit(main())
