"""Command line: ``vramgate [serve]`` runs the proxy, ``vramgate plan MODEL`` explains a model's footprint."""

from __future__ import annotations

import argparse
import sys

from proxy.config.settings import SettingsError, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vramgate",
        description="A reverse proxy for Ollama that keeps every model load entirely in GPU memory.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (or VRAMGATE_CONFIG)")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the proxy (the default)")
    serve.add_argument("--config", metavar="FILE", dest="serve_config", help=argparse.SUPPRESS)
    serve.add_argument("--listen", help="address to listen on (VRAMGATE_LISTEN)")
    serve.add_argument("--upstream", help="where Ollama is (VRAMGATE_UPSTREAM)")
    from proxy import plan

    plan.add_arguments(sub.add_parser("plan", help="show what a model needs on the GPU and what fits"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    overrides = {
        key: value
        for key in ("listen", "upstream")
        if (value := getattr(args, key, None)) is not None
    }
    try:
        settings = load_settings(getattr(args, "serve_config", None) or args.config, **overrides)
    except SettingsError as exc:
        print(f"vramgate: {exc}", file=sys.stderr)
        return 2
    if command == "plan":
        from proxy import plan

        return plan.run(args, settings)
    from proxy.edge import server as server

    return server.run(settings)


if __name__ == "__main__":
    sys.exit(main())
