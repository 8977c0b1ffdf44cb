"""The seam between the pass-through relay and the fit gate.

The relay streams everything it is not asked about. For the few routes an ``Admission`` inspects
(the calls that can load or download a model) it reads the JSON body, asks ``admit``, and then
either forwards the body it is given (possibly rewritten) or answers the client itself. Keeping
this a small protocol lets the relay be tested without the gate and the gate without sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from proxy.identity.identify import Identity


@dataclass(frozen=True)
class AdmissionRequest:
    method: str
    path: str  # request path without the query string (as Ollama's router sees it)
    headers: Mapping[str, str]  # the client's (Content-Type and Content-Encoding decide how the body is read)
    body: bytes  # the complete request body as the client sent it
    client: str  # the remote address
    query: str = ""  # the raw query string, without "?"
    identity: Identity | None = None  # who asked (None: known only by ``client``)


@dataclass(frozen=True)
class Forward:
    """Send ``body`` upstream in place of the client's body."""

    body: bytes
    response_headers: Mapping[str, str] = field(default_factory=dict)  # added for the client
    # Called exactly once when the upstream answered (its status) or failed (0): the load is
    # over either way. Must not block; spawn a task for anything slow.
    on_response: Callable[[int], None] | None = None
    # Called exactly once when the relayed exchange is over in any way (body ended, client gone,
    # upstream failed or unreachable), after on_response. Must not block either.
    on_done: Callable[[], None] | None = None
    query: str | None = None  # replaces the client's query string (without "?") when set


@dataclass(frozen=True)
class Respond:
    """Answer the client directly; nothing reaches the upstream."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=lambda: {"Content-Type": "application/json; charset=utf-8"})


class Admission(Protocol):
    def inspects(self, method: str, path: str) -> bool:
        """True for the routes whose body ``admit`` must see. Called on every request: keep it cheap."""
        ...

    def identify(self, authorization: str | None, peer: tuple[str, int] | None, ours: tuple[str, int] | None,
                 connection: object | None = None) -> Identity:
        """Who is asking (once per request; cheap after the first request of a connection)."""
        ...

    def screen(self, method: str, path: str, who: Identity) -> Respond | None:
        """Before the body is read: an answer for what ``who`` may not do at all, else None. Cheap."""
        ...

    async def admit(self, request: AdmissionRequest) -> Forward | Respond: ...


class PassThrough:
    """The admission used when nothing is gated: inspects nothing; clients are their addresses."""

    def inspects(self, method: str, path: str) -> bool:
        return False

    def identify(self, authorization: str | None, peer: tuple[str, int] | None, ours: tuple[str, int] | None,
                 connection: object | None = None) -> Identity:
        address = peer[0] if peer else "unix"
        return Identity(address, "address", address)

    def screen(self, method: str, path: str, who: Identity) -> Respond | None:
        return None

    async def admit(self, request: AdmissionRequest) -> Forward | Respond:
        return Forward(body=request.body)
