"""Bearer tokens and whose they are: the tokens file, kept as hashes, and the ``Authorization`` header.

The tokens file (``tokens_file``, written by ``vramgate token add NAME``) maps the SHA-256 of each
token to a user name::

    # vramgate tokens: the sha256 of each token, and whose it is. Add one with `vramgate token add NAME`.
    [tokens]
    "sha256:<64 hex digits>" = "alice"

The file never holds a token itself, so reading it (a backup, a config repository) gives nothing
that authenticates. A user may have several tokens (one per machine); each is one line.

This module is pure: it parses and renders text, the caller reads and writes the file. Nothing
here logs, and no error message quotes a token or anything that could be one.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

HEADER = "# vramgate tokens: the sha256 of each token, and whose it is. Add one with `vramgate token add NAME`."
_PREFIX = "sha256:"
_HASH = re.compile(r"sha256:[0-9a-fA-F]{64}")
_BAD_NAME = re.compile(r"[\s\x00-\x1f\x7f]")


class TokensError(ValueError):
    """A tokens file that cannot be used, in one line saying where (file, line or key) and what is wrong."""


def hash_token(token: str) -> str:
    """``"sha256:"`` and the hex SHA-256 of ``token``: what the tokens file keeps instead of the token.

    A plain, unsalted, fast hash is right here, unlike for passwords: a token from ``new_token`` is
    256 random bits, so there is no dictionary to try and no brute force that a slow hash or a salt
    would slow down. It also lets ``TokenBook.lookup`` be a dictionary lookup.
    """
    return _PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh token: ``vg_`` and 32 random bytes in URL-safe base64 (43 characters)."""
    return "vg_" + secrets.token_urlsafe(32)


def check_user(user: object) -> str:
    """``user`` if it is usable as a user name (non-empty text, no whitespace or control characters)."""
    if not isinstance(user, str) or not user:
        raise TokensError("a user name must be non-empty text")
    if _BAD_NAME.search(user):
        raise TokensError(f"user name {user!r} has whitespace or a control character in it")
    return user


@dataclass(frozen=True)
class TokenBook:
    """Token hashes -> user names, as read from the tokens file. Immutable: changes return a new book."""

    users_by_hash: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "users_by_hash", MappingProxyType(dict(self.users_by_hash)))

    @classmethod
    def parse(cls, text: str, source: str) -> TokenBook:
        """The book in ``text`` (a tokens file's content); ``source`` (its path) names it in errors."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:  # its message ends "(at line N, column M)"
            raise TokensError(f"{source}: not valid TOML: {exc}") from None
        unknown = sorted(set(data) - {"tokens"})
        if unknown:
            raise TokensError(f"{source}: unknown key {unknown[0]!r} at the top level; "
                              "the file has one table, [tokens]: \"sha256:<hex>\" = \"user\"")
        table = data.get("tokens", {})
        if not isinstance(table, dict):
            raise TokensError(f"{source}: 'tokens' must be a table ([tokens]), not a {type(table).__name__}")
        lines = text.splitlines()
        users: dict[str, str] = {}
        for key, user in table.items():
            if not _HASH.fullmatch(key):
                # the key is not quoted back: a mistake here is often a token pasted in as it is
                where = _line_of(lines, key)
                hint = " (it looks like a token itself; the file keeps its sha256: use `vramgate token add`)" \
                    if key.startswith("vg_") else ""
                raise TokensError(f"{source}: {where or 'in [tokens]'}: a key is not \"sha256:\" and 64 hex "
                                  f"digits{hint}")
            where = _line_of(lines, key) or f"key {key!r}"
            if not isinstance(user, str):
                raise TokensError(f"{source}: {where}: the user must be a string, not a {type(user).__name__}")
            try:
                check_user(user)
            except TokensError as exc:
                raise TokensError(f"{source}: {where}: {exc}") from None
            if users.get(key.lower(), user) != user:
                raise TokensError(f"{source}: {where}: the same hash is already given to another user")
            users[key.lower()] = user
        return cls(users)

    def lookup(self, token: str) -> str | None:
        """The user whose token this is, or None.

        Hashing first and then looking the hash up in a dictionary makes timing useless to an
        attacker: how long the lookup takes depends on the hash, which they cannot steer towards
        a stored one without already knowing a token, not on how much of a real token they guessed.
        """
        if not token:
            return None
        return self.users_by_hash.get(hash_token(token))

    def users(self) -> list[str]:
        """Everyone with at least one token, sorted."""
        return sorted(set(self.users_by_hash.values()))

    def counts(self) -> dict[str, int]:
        """Each user and how many tokens they have, sorted by user."""
        out: dict[str, int] = {}
        for user in sorted(self.users_by_hash.values()):
            out[user] = out.get(user, 0) + 1
        return out

    def with_token(self, user: str, token: str) -> TokenBook:
        """This book and ``token`` for ``user`` (the user's other tokens stay)."""
        check_user(user)
        if not token:
            raise TokensError("an empty token cannot be added")
        return TokenBook({**self.users_by_hash, hash_token(token): user})

    def without_user(self, user: str) -> TokenBook:
        """This book without any of ``user``'s tokens."""
        return TokenBook({h: u for h, u in self.users_by_hash.items() if u != user})

    def render(self) -> str:
        """The tokens file's text: the header comment and one line per token, by user then hash."""
        entries = sorted(self.users_by_hash.items(), key=lambda item: (item[1], item[0]))
        body = "".join(f"\"{h}\" = {_toml_string(u)}\n" for h, u in entries)
        return f"{HEADER}\n[tokens]\n{body}"


def bearer_token(authorization: str | None) -> str | None:
    """The token in an ``Authorization: Bearer <token>`` header value, or None for anything else.

    The scheme is case-insensitive and whitespace around either part is ignored; no token, another
    scheme (``Basic ...``) or more than one word after the scheme is None.
    """
    if not authorization:
        return None
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


def _line_of(lines: list[str], key: str) -> str | None:
    """``line N`` for the first line holding ``key`` as a quoted or bare TOML key, if one does."""
    for number, line in enumerate(lines, 1):
        stripped = line.lstrip()
        if stripped.startswith((f'"{key}"', f"'{key}'")) or \
                (stripped.startswith(key) and stripped[len(key):].lstrip().startswith("=")):
            return f"line {number}"
    return None


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string (names hold no control characters, see ``check_user``)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
