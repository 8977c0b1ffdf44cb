"""Who is on the other end of a loopback TCP connection: the Unix user that owns the client socket.

On a shared workstation ``ollama run`` from a user's shell connects over loopback. The kernel
lists every TCP socket with its owner's uid in ``/proc/net/tcp`` and ``/proc/net/tcp6``; the
client's socket is the one whose local address is the connection's peer and whose remote address
is vramgate's own end. So a user is known with no set-up at all. (Issue 9's first identity
source after tokens; this module only finds the uid, the policy decides what it means.)

``parse_proc_net_tcp`` is pure (tested on recorded lines); ``socket_owner`` reads the two files.
"""

from __future__ import annotations

import ipaddress
import pwd
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

Address = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
_ESTABLISHED = "01"


@dataclass(frozen=True)
class TcpSocket:
    local: Address
    remote: Address
    state: str  # the kernel's hex state, "01" = ESTABLISHED
    uid: int


def _address(field: str) -> Address:
    """``0100007F:C9CC`` (IPv4) or 32 hex digits:port (IPv6), in the kernel's host byte order."""
    host, port = field.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(struct.pack("<I", *struct.unpack(">I", raw)))
    else:  # four 32-bit words, each in host (little-endian) order
        words = struct.unpack(">4I", raw)
        ip = ipaddress.IPv6Address(struct.pack("<4I", *words))
    return ip, int(port, 16)


def parse_proc_net_tcp(lines: Iterable[str]) -> list[TcpSocket]:
    """The sockets listed in one ``/proc/net/tcp``-style file (the header line is skipped)."""
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) < 8 or parts[0] == "sl":
            continue
        try:
            out.append(TcpSocket(_address(parts[1]), _address(parts[2]), parts[3], int(parts[7])))
        except (ValueError, struct.error):
            continue
    return out


def _normal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``::ffff:127.0.0.1`` is 127.0.0.1 (an IPv4 client of a dual-stack listener)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def find_owner(sockets: Iterable[TcpSocket], peer: tuple[str, int], ours: tuple[str, int]) -> int | None:
    """The uid owning the client's end of the connection ``peer`` -> ``ours``; None if not listed."""
    want_local = (_normal(ipaddress.ip_address(peer[0])), peer[1])
    want_remote = (_normal(ipaddress.ip_address(ours[0])), ours[1])
    for s in sockets:
        if s.state == _ESTABLISHED and (_normal(s.local[0]), s.local[1]) == want_local \
                and (_normal(s.remote[0]), s.remote[1]) == want_remote:
            return s.uid
    return None


def socket_owner(peer: tuple[str, int], ours: tuple[str, int], proc: Path = Path("/proc/net")) -> int | None:
    """Read ``/proc/net/tcp{,6}`` for the uid behind a loopback client (None off loopback or unknown)."""
    if not ipaddress.ip_address(peer[0].split("%")[0]).is_loopback and not _is_mapped_loopback(peer[0]):
        return None
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc / name).read_text().splitlines()
        except OSError:
            continue
        uid = find_owner(parse_proc_net_tcp(lines), peer, ours)
        if uid is not None:
            return uid
    return None


def _is_mapped_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host.split("%")[0])
    return isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback


def user_name(uid: int) -> str:
    """The account name for ``uid`` (the uid itself, as text, when it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
