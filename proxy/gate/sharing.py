"""Sharing one GPU between people: whose models count against whose ``max_vram``, and whose idle
models a load may push out. Pure: the gate passes in what Ollama holds and each user's rules.

- A resident model belongs to the user whose request loaded it through vramgate; others who use
  it share it, and it counts once, for its owner.
- A user's quota: what their busy models and loads in flight hold stays; their idle models may
  be unloaded to make room for their own next load.
- Eviction, once a policy exists: an idle model may be unloaded for a load when nobody owns it
  (loaded outside vramgate), when it is the requester's own, when its owner has a lower priority,
  or when its owner holds more than their ``max_vram``. Never a model that is generating. Without a
  policy, Ollama evicts idle models as it always does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from proxy.gate.decision import Quota, Reservation
from proxy.gate.residency import Resident


class RulesLike(Protocol):
    """What sharing reads of a user's rules (``proxy.policy.resolve.UserRules`` is one)."""

    @property
    def max_vram(self) -> int | None: ...
    @property
    def priority(self) -> int: ...

    def rule(self, key: str) -> str: ...


@dataclass(frozen=True)
class Evictable:
    """An idle model a load may unload, and why (for the decision log)."""

    model: str
    owner: str | None
    why: str


def held_by(user: str, residents: Iterable[Resident], pending: Iterable[Reservation], cuda_context: int) -> int:
    """GPU memory ``user``'s models hold now: their residents and their loads in flight."""
    own = sum(r.size_vram + cuda_context for r in residents if r.owner == user and r.size_vram)
    return own + sum(sum(b for _, b in res.per_gpu) for res in pending if res.user == user)


def quota_for(user: str, rules: RulesLike, key: str, residents: tuple[Resident, ...],
              pending: tuple[Reservation, ...], cuda_context: int) -> Quota | None:
    """The quota a load of ``key`` by ``user`` is judged against (None: no ``max_vram`` for them).

    The model asked for is left out (a reload replaces it); idle models come least recently used first.
    """
    if rules.max_vram is None:
        return None
    own = [r for r in residents if r.owner == user and r.name != key and r.size_vram]
    busy = sum(r.size_vram + cuda_context for r in own if r.busy)
    in_flight = sum(sum(b for _, b in res.per_gpu) for res in pending if res.user == user and res.model != key)
    idle = sorted((r for r in own if not r.busy), key=lambda r: -(r.idle_s or 0.0))
    return Quota(user, rules.max_vram, rules.rule("max_vram"), busy + in_flight,
                 tuple((r.name, r.size_vram + cuda_context) for r in idle))


def evictable(user: str, rules: RulesLike, residents: tuple[Resident, ...], pending: tuple[Reservation, ...],
              rules_of: Callable[[str], RulesLike], cuda_context: int) -> dict[str, Evictable]:
    """The idle models a load by ``user`` may push out, by name."""
    out: dict[str, Evictable] = {}
    for r in residents:
        if r.busy:
            continue
        why = _why_evictable(user, rules, r, residents, pending, rules_of, cuda_context)
        if why is not None:
            out[r.name] = Evictable(r.name, r.owner, why)
    return out


def _why_evictable(user: str, rules: RulesLike, r: Resident, residents: tuple[Resident, ...],
                   pending: tuple[Reservation, ...], rules_of: Callable[[str], RulesLike],
                   cuda_context: int) -> str | None:
    if r.owner is None:
        return "idle, loaded outside vramgate"
    if r.owner == user:
        return f"idle, {user}'s own"
    theirs = rules_of(r.owner)
    if theirs.priority < rules.priority:
        return f"idle, {r.owner}'s priority {theirs.priority} is below {user}'s {rules.priority}"
    if theirs.max_vram is not None:
        held = held_by(r.owner, residents, pending, cuda_context)
        if held > theirs.max_vram:
            return f"idle, {r.owner} holds more than their max_vram ({theirs.rule('max_vram')})"
    return None
