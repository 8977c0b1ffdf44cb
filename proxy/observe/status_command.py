"""``vramgate status [--url URL] [--json] [--token T]``: a running vramgate's status in the terminal.

It reads ``GET <url>/vramgate/status`` (the same JSON the page uses) and prints ``terminal.render``
(or the JSON itself with ``--json``, for scripts). Anything but a 200 with JSON is one line on
stderr and exit status 1, saying what to do: start vramgate, pass ``--url``, or pass the admin
token (``--token`` / ``VRAMGATE_ADMIN_TOKEN``) when vramgate listens beyond loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from typing import Any

import aiohttp

from proxy.observe.terminal import render

TIMEOUT_S = 10.0


class StatusError(Exception):
    """The status could not be read; the message is the whole line shown to the user."""


def main(argv: list[str], default_url: str, token: str | None) -> int:
    """Run the command; ``default_url`` is this machine's vramgate, ``token`` the configured admin token."""
    parser = argparse.ArgumentParser(prog="vramgate status",
                                     description="Who holds the GPU memory, and why loads were refused.")
    parser.add_argument("--url", default=default_url, help=f"vramgate's address (default {default_url})")
    parser.add_argument("--json", action="store_true", help="print the status JSON instead")
    parser.add_argument("--token", default=token, help="the admin token (VRAMGATE_ADMIN_TOKEN)")
    args = parser.parse_args(argv)
    url = status_url(args.url)
    try:
        status = asyncio.run(fetch_status(url, args.token))
    except StatusError as exc:
        print(f"vramgate status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
        return 0
    _print(render(status, width=shutil.get_terminal_size((100, 24)).columns, color=_use_color(),
                  ascii_only=not _can_encode("█·▒")))
    return 0


def status_url(base: str) -> str:
    """``127.0.0.1:11435`` or ``http://host:port[/prefix]`` -> ``http://host:port[/prefix]/vramgate/status``.

    A wildcard listen address (``0.0.0.0``, ``[::]``) is reached on loopback.
    """
    text = base.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    scheme, _, rest = text.partition("://")
    for wildcard, local in (("0.0.0.0", "127.0.0.1"), ("[::]", "[::1]")):
        if rest == wildcard or rest.startswith((wildcard + ":", wildcard + "/")):
            rest = local + rest[len(wildcard):]
    return f"{scheme}://{rest}/vramgate/status"


async def fetch_status(url: str, token: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session, \
                session.get(url, headers=headers, allow_redirects=False) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # ValueError: a URL aiohttp cannot use
        raise StatusError(f"cannot reach vramgate at {url}: {_reason(exc)} (is it running? --url)") from exc
    if status != 200:
        message = _error_text(body)
        if status == 401:
            hint = "this needs the admin token: --token or VRAMGATE_ADMIN_TOKEN"
            message = f"{hint} ({message})" if token is None else f"the admin token was refused ({message})"
        raise StatusError(f"{url} answered {status}: {message}")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise StatusError(f"{url} did not answer JSON: is it vramgate?") from exc
    if not isinstance(payload, dict):
        raise StatusError(f"{url} did not answer a status object: is it vramgate?")
    return payload


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT_S:g} s"
    if isinstance(exc, aiohttp.InvalidURL):
        return "not a URL vramgate could be at"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error.strerror or exc.os_error)
    return str(exc) or type(exc).__name__


def _error_text(body: bytes) -> str:
    """Ollama-style ``{"error": ...}`` if that is what came back, else the start of the body."""
    try:
        payload = json.loads(body)
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return payload["error"]
    except ValueError:
        pass
    text = body.decode("utf-8", "replace").strip()
    return (text[:200] + "…") if len(text) > 200 else (text or "no reason given")


def _use_color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _can_encode(sample: str) -> bool:
    try:
        sample.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
