"""The Unix user behind a loopback connection, from /proc/net/tcp{,6}: recorded lines and real sockets."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys

import pytest

from proxy.identity.loopback import find_owner, parse_proc_net_tcp, socket_owner, user_name

# /proc/net/tcp as Linux prints it: a client 127.0.0.1:51660 (uid 1000) connected to vramgate on 127.0.0.1:11500
RECORDED = [
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
    "   0: 00000000:2CEC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1265 1 0 100 0 0 10 0",
    "   1: 0100007F:C9CC 0100007F:2CEC 01 00000000:00000000 00:00000000 00000000  1000        0 4711 1 0 20 4 30 10 -1",
    "   2: 0100007F:2CEC 0100007F:C9CC 01 00000000:00000000 00:00000000 00000000     0        0 4712 1 0 20 4 30 10 -1",
]
RECORDED6 = [
    "  sl  local_address                         remote_address                        st tx_queue rx_queue",
    "   0: 00000000000000000000000001000000:D431 00000000000000000000000001000000:2CEC 01 00000000:00000000"
    " 00:00000000 00000000  1001        0 5001 1 0 20 4 30 10 -1",
]


def test_recorded_lines_give_each_socket_its_owner() -> None:
    sockets = parse_proc_net_tcp(RECORDED)
    assert [(str(s.local[0]), s.local[1], s.uid) for s in sockets] == [
        ("0.0.0.0", 11500, 0), ("127.0.0.1", 51660, 1000), ("127.0.0.1", 11500, 0)]
    # the client's end (local = the peer, remote = vramgate): uid 1000; vramgate's own end is root's
    assert find_owner(sockets, ("127.0.0.1", 51660), ("127.0.0.1", 11500)) == 1000
    assert find_owner(sockets, ("127.0.0.1", 51661), ("127.0.0.1", 11500)) is None


def test_recorded_ipv6_and_mapped_addresses() -> None:
    sockets = parse_proc_net_tcp(RECORDED6)
    assert sockets[0].local == (ipaddress.IPv6Address("::1"), 54321)
    assert find_owner(sockets, ("::1", 54321), ("::1", 11500)) == 1001


def _pair(family: int, host: str) -> tuple[socket.socket, socket.socket, socket.socket]:
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind((host, 0))
    server.listen()
    client = socket.create_connection(server.getsockname()[:2])
    accepted, _ = server.accept()
    return server, client, accepted


def test_a_real_loopback_connection_is_its_owners() -> None:
    server, client, accepted = _pair(socket.AF_INET, "127.0.0.1")
    try:
        peer, ours = accepted.getpeername(), accepted.getsockname()
        assert socket_owner(peer, ours) == os.getuid()
        assert user_name(os.getuid()) == __import__("pwd").getpwuid(os.getuid()).pw_name
    finally:
        for s in (client, accepted, server):
            s.close()


def test_a_real_ipv6_loopback_connection_is_its_owners() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server, client, accepted = _pair(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    try:
        peer, ours = accepted.getpeername()[:2], accepted.getsockname()[:2]
        assert socket_owner(peer, ours) == os.getuid()
    finally:
        for s in (client, accepted, server):
            s.close()


def test_a_client_of_another_user_is_that_user() -> None:
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a client as another uid")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    code = (f"import socket,sys; s=socket.create_connection(('127.0.0.1', {port})); "
            "sys.stdout.write('up\\n'); sys.stdout.flush(); sys.stdin.read()")
    client = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdout.readline() == "up\n"
        accepted, _ = server.accept()
        assert socket_owner(accepted.getpeername(), accepted.getsockname()) == 65534
        accepted.close()
    finally:
        client.kill()
        client.wait()
        server.close()


def test_a_client_off_loopback_has_no_owner_here() -> None:
    assert socket_owner(("10.0.0.7", 40000), ("10.0.0.1", 11434)) is None
