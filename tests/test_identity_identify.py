"""Who is asking: a token of ours, else a loopback socket's owner, else the address, on real sockets."""

from __future__ import annotations

import gc
import os
import pwd
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.identity import identify as identify_module
from proxy.identity.identify import Identifier, Identity, clear_groups_cache, unix_groups
from proxy.identity.tokens import TokenBook

ME = pwd.getpwuid(os.getuid()).pw_name
BOOK = TokenBook().with_token("alice", "vg_alices").with_token(ME, "vg_mine")


def _id_groups(user: str) -> frozenset[str]:
    """What ``id -Gn`` says: the oracle for ``unix_groups``."""
    return frozenset(subprocess.run(["id", "-Gn", user], check=True, capture_output=True, text=True).stdout.split())


class Pair:
    """A real TCP connection on loopback: ``accepted`` is vramgate's end, ``peer``/``ours`` its addresses."""

    def __init__(self, family: int, host: str) -> None:
        self.server = socket.socket(family, socket.SOCK_STREAM)
        self.server.bind((host, 0))
        self.server.listen()
        self.client = socket.create_connection(self.server.getsockname()[:2])
        self.accepted, _ = self.server.accept()
        self.peer: tuple[str, int] = self.accepted.getpeername()[:2]
        self.ours: tuple[str, int] = self.accepted.getsockname()[:2]

    def close(self) -> None:
        for s in (self.client, self.accepted, self.server):
            s.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair(socket.AF_INET, "127.0.0.1")
    yield p
    p.close()


@pytest.fixture(autouse=True)
def _fresh_groups() -> Iterator[None]:
    clear_groups_cache()
    yield
    clear_groups_cache()


def test_a_loopback_client_is_the_user_owning_its_socket(pair: Pair) -> None:
    who = Identifier().identify(None, pair.peer, pair.ours, pair.accepted)
    assert who == Identity(ME, "loopback", "127.0.0.1", _id_groups(ME), os.getuid())
    assert not who.anonymous and str(who) == ME


def test_an_ipv6_loopback_client_too() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        p = Pair(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    try:
        who = Identifier().identify(None, p.peer, p.ours, p.accepted)
        assert who == Identity(ME, "loopback", "::1", _id_groups(ME), os.getuid())
    finally:
        p.close()


def test_a_token_of_ours_beats_the_socket_owner(pair: Pair) -> None:
    who = Identifier(BOOK).identify("Bearer vg_alices", pair.peer, pair.ours, pair.accepted)
    assert who == Identity("alice", "token", "127.0.0.1")  # alice has no account here: no groups, no uid
    mine = Identifier(BOOK).identify("bearer vg_mine", pair.peer, pair.ours)
    assert mine == Identity(ME, "token", "127.0.0.1", _id_groups(ME))


def test_a_token_from_afar_is_its_user() -> None:
    who = Identifier(BOOK).identify("Bearer vg_alices", ("10.0.0.5", 40000), ("10.0.0.1", 11434))
    assert who == Identity("alice", "token", "10.0.0.5") and not who.anonymous


def test_an_unknown_token_falls_through(pair: Pair) -> None:
    """Clients may send an ollama.com key: not ours, not an error, the next source decides."""
    who = Identifier(BOOK).identify("Bearer someone-elses-key", pair.peer, pair.ours, pair.accepted)
    assert who.source == "loopback" and who.user == ME
    far = Identifier(BOOK).identify("Bearer someone-elses-key", ("10.0.0.5", 40000), ("10.0.0.1", 11434))
    assert far == Identity("10.0.0.5", "address", "10.0.0.5")
    basic = Identifier(BOOK).identify("Basic YWxpY2U6eA==", ("10.0.0.5", 40000), ("10.0.0.1", 11434))
    assert basic.anonymous


def test_the_tokens_can_be_replaced_while_running() -> None:
    far = ("10.0.0.5", 40000), ("10.0.0.1", 11434)
    identifier = Identifier()
    assert identifier.identify("Bearer vg_alices", *far).anonymous
    identifier.use_tokens(BOOK)
    assert identifier.identify("Bearer vg_alices", *far).user == "alice"
    identifier.use_tokens(TokenBook().with_token("alice", "vg_new"))
    assert identifier.identify("Bearer vg_alices", *far).anonymous
    assert identifier.identify("Bearer vg_new", *far).user == "alice"
    identifier.use_tokens(None)
    assert identifier.identify("Bearer vg_new", *far).anonymous


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
        who = Identifier(BOOK).identify(None, accepted.getpeername(), accepted.getsockname(), accepted)
        accepted.close()
    finally:
        client.kill()
        client.wait()
        server.close()
    try:
        name = pwd.getpwuid(65534).pw_name  # "nobody" on most systems
    except KeyError:
        name = "65534"
    assert who.source == "loopback" and who.uid == 65534 and who.user == name
    assert who.groups == (_id_groups(name) if name != "65534" else frozenset())


def test_the_owner_is_read_once_per_connection(tmp_path: Path, pair: Pair) -> None:
    proc = tmp_path / "net"
    proc.mkdir()
    for name in ("tcp", "tcp6"):  # a snapshot of the kernel's table while the connection is open
        (proc / name).write_text(Path("/proc/net", name).read_text())
    identifier = Identifier(proc=proc)
    first = identifier.identify(None, pair.peer, pair.ours, pair.accepted)
    assert first.source == "loopback" and first.uid == os.getuid()
    shutil.rmtree(proc)  # nothing left to read: only the cache can answer now
    assert identifier.identify(None, pair.peer, pair.ours, pair.accepted) == first
    assert identifier.cached_connections == 1
    # another connection object (or none) must read /proc, which is gone: anonymous
    assert identifier.identify(None, pair.peer, pair.ours, object()).anonymous
    assert identifier.identify(None, pair.peer, pair.ours).anonymous


def test_the_cache_does_not_keep_connections_alive(pair: Pair) -> None:
    class Connection:  # stands in for aiohttp's protocol object
        pass

    identifier = Identifier()
    connection = Connection()
    assert identifier.identify(None, pair.peer, pair.ours, connection).source == "loopback"
    assert identifier.cached_connections == 1
    del connection
    gc.collect()
    assert identifier.cached_connections == 0


def test_a_connection_object_without_weak_references_is_looked_up_each_time(pair: Pair) -> None:
    identifier = Identifier()
    key = (pair.peer, pair.ours)  # tuples cannot be weakly referenced
    assert identifier.identify(None, pair.peer, pair.ours, key).source == "loopback"
    assert identifier.cached_connections == 0


def test_with_loopback_off_a_local_client_is_its_address(pair: Pair) -> None:
    who = Identifier(loopback=False).identify(None, pair.peer, pair.ours, pair.accepted)
    assert who == Identity("127.0.0.1", "address", "127.0.0.1")
    assert who.anonymous and str(who) == "127.0.0.1"


def test_a_remote_client_is_its_address(tmp_path: Path) -> None:
    identifier = Identifier(proc=tmp_path / "missing")  # off loopback /proc is not read at all
    assert identifier.identify(None, ("10.0.0.5", 40000), ("10.0.0.1", 11434)) == \
        Identity("10.0.0.5", "address", "10.0.0.5")
    v6 = identifier.identify("", ("2001:db8::5", 40000), ("2001:db8::1", 11434))
    assert v6 == Identity("2001:db8::5", "address", "2001:db8::5") and str(v6) == "2001:db8::5"


def test_a_unix_socket_client_is_anonymous() -> None:
    who = Identifier().identify(None, None, None)
    assert who == Identity("unix", "address", "unix") and who.anonymous
    assert Identifier(BOOK).identify("Bearer vg_alices", None, None).user == "alice"


def test_a_peer_that_is_not_an_ip_is_its_address() -> None:
    who = Identifier().identify(None, ("localhost", 1), ("127.0.0.1", 2))
    assert who == Identity("localhost", "address", "localhost")


def test_unix_groups_are_what_id_says() -> None:
    assert unix_groups(ME) == _id_groups(ME) and unix_groups(ME)
    assert unix_groups("no-such-user-here") == frozenset()
    assert unix_groups("") == frozenset()


def test_unix_groups_are_remembered_for_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(identify_module.time, "monotonic", lambda: now[0])
    first = unix_groups(ME)
    now[0] += 59
    assert unix_groups(ME) is first  # from the cache
    now[0] += 2
    again = unix_groups(ME)
    assert again is not first and again == first  # looked up anew
