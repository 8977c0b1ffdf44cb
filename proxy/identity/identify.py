"""Who is asking, from what a request and its connection already say: a token, the socket's owner, or the address.

The first that applies wins:

1. a bearer token that the tokens file knows: its user (an unknown token is not an error, clients
   may send an ollama.com key that is not ours, so it falls through);
2. a loopback client, when ``identify_loopback`` is on: the Unix user owning the client's socket
   (``proxy.identity.loopback``), looked up once per connection;
3. otherwise the client is anonymous, known only by its address.

Token and loopback users get their Unix groups (if they have an account here) for group rules in
the policy. Everything here is synchronous and quick: the /proc read is under a millisecond and
happens once per TCP connection, the group lookups are cached for a minute.
"""

from __future__ import annotations

import grp
import os
import pwd
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from proxy.identity.loopback import socket_owner, user_name
from proxy.identity.tokens import TokenBook, bearer_token

Source = Literal["token", "loopback", "address"]
UNIX_SOCKET = "unix"  # the address of a client with no IP peer (a Unix-domain socket)
GROUPS_TTL = 60.0  # seconds a user's groups are remembered (grp lookups can be slow: NSS, LDAP)


@dataclass(frozen=True)
class Identity:
    """Who a request is from. ``user`` is the client's address when it is anonymous."""

    user: str
    source: Source
    address: str  # the client's IP as the connection gives it (IPv6 as written), or "unix"
    groups: frozenset[str] = frozenset()
    uid: int | None = None  # the socket owner's uid, for a loopback identity

    @property
    def anonymous(self) -> bool:
        """Known only by its address: no token of ours and no loopback owner."""
        return self.source == "address"

    def __str__(self) -> str:
        return self.user


_groups_cache: dict[str, tuple[float, frozenset[str]]] = {}


def unix_groups(user: str) -> frozenset[str]:
    """The names of ``user``'s primary and supplementary Unix groups; empty if it is no account here.

    Uses ``os.getgrouplist`` (what ``id -Gn`` asks libc for: /etc/group members and any NSS source),
    cached for ``GROUPS_TTL`` seconds per user. A group id with no name is given as its number.
    """
    now = time.monotonic()
    hit = _groups_cache.get(user)
    if hit is not None and now - hit[0] < GROUPS_TTL:
        return hit[1]
    try:
        primary = pwd.getpwnam(user).pw_gid
        gids = os.getgrouplist(user, primary)
    except (KeyError, OSError, ValueError):  # no such account (ValueError: a NUL in the name)
        groups: frozenset[str] = frozenset()
    else:
        groups = frozenset(_group_name(gid) for gid in gids)
    if len(_groups_cache) > 4096:  # users are few; this only stops a slow leak of stale entries
        _groups_cache.clear()
    _groups_cache[user] = (now, groups)
    return groups


def clear_groups_cache() -> None:
    """Forget every cached group list (after editing /etc/group, in tests)."""
    _groups_cache.clear()


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class Identifier:
    """Gives each request its ``Identity``. ``tokens`` may be replaced at any time (``use_tokens``)."""

    def __init__(self, tokens: TokenBook | None = None, loopback: bool = True, proc: Path = Path("/proc/net")) -> None:
        self.tokens = tokens
        self.loopback = loopback
        self.proc = proc
        # connection object -> the identity of a client known by its connection (loopback user or
        # address). A TCP connection's addresses never change, so it is worked out once per
        # connection: one /proc read, one passwd and group lookup (about 50 us, measured, on
        # every request otherwise). Weak keys, so closed connections drop out.
        self._by_connection: weakref.WeakKeyDictionary[object, Identity] = weakref.WeakKeyDictionary()

    def use_tokens(self, book: TokenBook | None) -> None:
        """Use ``book`` from now on (the tokens file was reloaded); None: no tokens are accepted."""
        self.tokens = book

    @property
    def cached_connections(self) -> int:
        """How many live connections have their socket owner remembered."""
        return len(self._by_connection)

    def identify(self, authorization: str | None, peer: tuple[str, int] | None, ours: tuple[str, int] | None,
                 connection: object | None = None) -> Identity:
        """The identity of a request with this ``Authorization`` header from ``peer`` to ``ours``.

        ``connection`` is any object that lives exactly as long as the TCP connection (the aiohttp
        protocol or transport); the loopback lookup is remembered for it. ``peer`` None is a client
        on a Unix socket: anonymous, address ``"unix"``.
        """
        address = UNIX_SOCKET if peer is None else peer[0]
        token = bearer_token(authorization)
        book = self.tokens
        if token is not None and book is not None:
            user = book.lookup(token)
            if user is not None:
                return Identity(user, "token", address, unix_groups(user))
        if connection is None:
            return self._by_socket(address, peer, ours)
        try:
            return self._by_connection[connection]
        except KeyError:
            identity = self._by_connection[connection] = self._by_socket(address, peer, ours)
            return identity
        except TypeError:  # an object that cannot be weakly referenced: worked out every time
            return self._by_socket(address, peer, ours)

    def _by_socket(self, address: str, peer: tuple[str, int] | None, ours: tuple[str, int] | None) -> Identity:
        """The loopback client's Unix user, else its address."""
        if self.loopback and peer is not None and ours is not None:
            uid = self._read_owner(peer, ours)
            if uid is not None:
                name = user_name(uid)
                return Identity(name, "loopback", address, unix_groups(name), uid)
        return Identity(address, "address", address)

    def _read_owner(self, peer: tuple[str, int], ours: tuple[str, int]) -> int | None:
        try:
            return socket_owner((peer[0], peer[1]), (ours[0], ours[1]), self.proc)
        except ValueError:  # not an IP address
            return None
