"""``vramgate token add|remove|list``: keep the tokens file (see ``proxy.identity.tokens``).

``main`` takes the arguments after ``token`` and the file to use when ``--file`` is not given (the
command line passes the ``tokens_file`` setting; this package sits below the settings). A new token
is printed once, to stdout, alone on its line; the file only ever gets its hash. The file is
replaced atomically (a temporary file in the same folder, then ``os.replace``) with mode 0600,
keeping an existing file's owner when we may, so the service that reads it still can.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from proxy.identity.tokens import TokenBook, TokensError, check_user, new_token


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vramgate token", description="Bearer tokens for vramgate users; the file keeps their sha256.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{add,remove,list}",
                                     parser_class=_Parser)
    file_help = "the tokens file (default: the tokens_file setting, VRAMGATE_TOKENS_FILE)"
    add = commands.add_parser("add", help="make a new token for NAME and print it once")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--replace", action="store_true", help="drop NAME's other tokens (default: keep them)")
    add.add_argument("--file", type=Path, help=file_help)
    remove = commands.add_parser("remove", help="drop every token of NAME")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("--file", type=Path, help=file_help)
    listing = commands.add_parser("list", help="users and how many tokens each has")
    listing.add_argument("--file", type=Path, help=file_help)
    return parser


def main(argv: list[str], default_file: Path | None = None) -> int:
    """Run ``vramgate token ARGV...``; 0 on success, 2 (one line on stderr) on any error."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        return _fail(str(exc))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    path: Path | None = args.file or default_file
    if path is None:
        return _fail("no tokens file: pass --file PATH or set VRAMGATE_TOKENS_FILE (tokens_file in the config file)")
    try:
        if args.command == "add":
            return _add(path, args.name, args.replace)
        if args.command == "remove":
            return _remove(path, args.name)
        return _list(path)
    except TokensError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{path}: {exc.strerror or exc}")


def _add(path: Path, name: str, replace: bool) -> int:
    check_user(name)
    book = _read(path) or TokenBook()
    if replace:
        book = book.without_user(name)
    token = new_token()
    _write(path, book.with_token(name, token))
    print(token)
    print(f"That is {name}'s new token, shown only this once ({path} keeps only its sha256). "
          f"In their shell: export OLLAMA_API_KEY=<the token above>", file=sys.stderr)
    return 0


def _remove(path: Path, name: str) -> int:
    book = _read(path)
    count = book.counts().get(name, 0) if book is not None else 0
    if book is None or count == 0:
        return _fail(f"{path}: {name} has no tokens")
    _write(path, book.without_user(name))
    print(f"removed {count} token{'s' if count != 1 else ''} of {name}")
    return 0


def _list(path: Path) -> int:
    book = _read(path)
    counts = book.counts() if book is not None else {}
    if not counts:
        print(f"no tokens in {path}" + ("" if book is not None else " (it does not exist yet)"), file=sys.stderr)
    for user, count in counts.items():
        print(f"{user}\t{count} token{'s' if count != 1 else ''}")
    return 0


def _read(path: Path) -> TokenBook | None:
    """The book in ``path``; None if there is no such file yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return TokenBook.parse(text, str(path))


def _write(path: Path, book: TokenBook) -> None:
    """Replace ``path`` with ``book``, atomically, mode 0600, keeping an existing file's owner if we may."""
    try:
        before: os.stat_result | None = path.stat()
    except FileNotFoundError:
        before = None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)
            if before is not None and (before.st_uid, before.st_gid) != (os.geteuid(), os.getegid()):
                try:  # root editing the service's file: it must stay readable by the service
                    os.fchown(out.fileno(), before.st_uid, before.st_gid)
                except PermissionError:
                    pass
            out.write(book.render())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def _fail(message: str) -> int:
    print(f"vramgate token: {message}", file=sys.stderr)
    return 2
