"""One user's effective rules, from the policy and who they are; and the questions asked of them.

Why a separate, pure module: every request is judged against these rules, so the precedence must
be one small function that tests can pin down, with no file, pydantic or network in the way.

Which sections apply to a :class:`Who`:

- ``users.<name>``, for an identified user (never for an anonymous client: its name is no login);
- ``groups.<g>`` for each file group whose ``members`` list the user (identified users only),
  whose name is one of ``Who.groups`` (the Unix groups the caller resolved), ``groups.anonymous``
  for every anonymous client, and, for anonymous clients only, each group whose ``addresses``
  contain the client's address;
- ``default``, for everyone.

Precedence, per key: the user's own section > the groups > ``default`` > the built-in default.
When several groups set a key, the most generous value wins: the larger cap, ``true`` over
``false``, the highest priority, the union of ``models``. ``deny_models`` is also the union over
the groups: a deny any applicable group sets applies, unless the user's own section sets
``deny_models`` (an empty list there lifts them). A group's value replaces ``default``'s.

Admins: ``root``, the users in ``admins`` and the members of any group (Unix or file) named in
``admin_groups``; an anonymous client never is. Store operations (``can_pull`` and the others)
rank admin status between the groups and ``default``: an admin may unless their own section or a
group says no; anyone else follows ``default``, and without it may not (origin ``"admin"``).

Built-in defaults: every model allowed, no deny, no caps, priority 0, and ``None`` for
``allow_partial_offload`` and ``max_queued`` (the caller's global settings apply).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from types import MappingProxyType
from typing import Any, Literal

from proxy.ollama.keep_alive import KeepAliveError, keep_alive_ns
from proxy.ollama.model_name import DEFAULT_HOST, DEFAULT_NAMESPACE, parse_name

StoreOperation = Literal["pull", "delete", "create", "push", "copy"]
STORE_OPERATIONS: tuple[StoreOperation, ...] = ("pull", "delete", "create", "push", "copy")
GLOB_KEYS = ("models", "deny_models")
CAP_KEYS = ("max_num_ctx", "max_vram", "max_keep_alive", "allow_partial_offload", "priority", "max_queued")
STORE_KEYS = tuple(f"can_{op}" for op in STORE_OPERATIONS)
RULE_KEYS = GLOB_KEYS + CAP_KEYS + STORE_KEYS
"""Every key a ``[default]``, ``[groups.*]`` or ``[users.*]`` section may set."""
ANONYMOUS = "anonymous"
ADMIN = "admin"
BUILT_IN = "built-in"
_GLOB_CHARS = frozenset("*?[")
_NS_PER_S = 1_000_000_000
_EMPTY: Mapping[str, Any] = MappingProxyType({})


# --- the policy as plain data (rules.parse_policy builds it) -------------------------------------

@dataclass(frozen=True)
class Section:
    """One ``[default]``, ``[groups.*]`` or ``[users.*]`` table; None = the key is not set there."""

    models: tuple[str, ...] | None = None
    deny_models: tuple[str, ...] | None = None
    max_num_ctx: int | None = None
    max_vram: int | None = None  # bytes
    max_keep_alive: int | None = None  # nanoseconds, > 0
    allow_partial_offload: bool | None = None
    priority: int | None = None
    max_queued: int | None = None
    can_pull: bool | None = None
    can_delete: bool | None = None
    can_create: bool | None = None
    can_push: bool | None = None
    can_copy: bool | None = None


@dataclass(frozen=True)
class GroupSection(Section):
    """A ``[groups.*]`` table: its rules, and who is in it besides the Unix group of that name."""

    members: frozenset[str] = frozenset()
    addresses: tuple[IPv4Network | IPv6Network, ...] = ()


@dataclass(frozen=True)
class Policy:
    """A whole validated policy file. An empty one gives everyone the built-in defaults."""

    admins: frozenset[str] = frozenset()
    admin_groups: frozenset[str] = frozenset()
    default: Section = Section()
    groups: Mapping[str, GroupSection] = field(default_factory=dict, hash=False)
    users: Mapping[str, Section] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Who:
    """What the policy needs of an identity; the caller resolves the user's Unix groups."""

    user: str
    groups: frozenset[str] = frozenset()
    anonymous: bool = False
    address: str = ""  # the client's IP address, matched against groups' addresses when anonymous


# --- the result -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UserRules:
    """One user's effective rules, and where each value came from (so a refusal can name its rule).

    ``origin`` maps each key of :data:`RULE_KEYS` to the section that decided it (``"users.alice"``,
    ``"groups.students"``, ``"default"``), several joined by ``" + "`` where groups' lists were
    merged, ``"admin"`` for store operations that followed admin status, ``"built-in"`` otherwise.
    """

    user: str
    is_admin: bool
    groups: tuple[str, ...]  # the file groups that applied, sorted
    models: tuple[str, ...]
    deny_models: tuple[str, ...]
    max_num_ctx: int | None
    max_vram: int | None
    max_keep_alive_ns: int | None
    can_pull: bool
    can_delete: bool
    can_create: bool
    can_push: bool
    can_copy: bool
    allow_partial_offload: bool | None  # None: the caller keeps its global setting
    priority: int
    max_queued: int | None  # None: the caller keeps its global setting
    origin: Mapping[str, str] = field(hash=False)
    pattern_origin: Mapping[tuple[str, str], str] = field(default_factory=dict, hash=False, repr=False)
    """(``"models"`` or ``"deny_models"``, pattern) -> the section that listed the pattern."""

    def rule(self, key: str) -> str:
        """The rule behind a key, as a refusal names it: ``"groups.students.max_vram"``."""
        key = "max_keep_alive" if key == "max_keep_alive_ns" else key
        origin = self.origin[key]
        if origin == ADMIN:
            return "admins"
        if origin == BUILT_IN:
            return f"built-in {key}"
        return " + ".join(f"{section}.{key}" for section in origin.split(" + "))

    def pattern_rule(self, key: str, pattern: str) -> str:
        """The rule that listed one pattern of ``models`` or ``deny_models``."""
        section = self.pattern_origin.get((key, pattern))
        return self.rule(key) if section in (None, BUILT_IN) else f"{section}.{key}"


# --- resolving ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Pick:
    value: Any
    origin: str
    patterns: Mapping[str, str] = field(default_factory=dict)  # pattern -> section, for glob keys


def resolve(policy: Policy, who: Who) -> UserRules:
    """The rules that apply to ``who`` (see the module docstring for the precedence)."""
    groups = applicable_groups(policy, who)
    user = None if who.anonymous else policy.users.get(who.user)
    own = (f"users.{who.user}", user) if user is not None else None
    layers = [(f"groups.{name}", policy.groups[name]) for name in groups]
    admin = is_admin(policy, who)
    picks = {key: _pick(key, own, layers, policy.default, admin) for key in RULE_KEYS}
    values = {key: pick.value for key, pick in picks.items()}
    values["max_keep_alive_ns"] = values.pop("max_keep_alive")
    pattern_origin = {(key, p): s for key in GLOB_KEYS for p, s in picks[key].patterns.items()}
    return UserRules(
        user=who.user, is_admin=admin, groups=groups, **values,
        origin=MappingProxyType({key: pick.origin for key, pick in picks.items()}),
        pattern_origin=MappingProxyType(pattern_origin),
    )


def applicable_groups(policy: Policy, who: Who) -> tuple[str, ...]:
    """The file groups ``who`` is in, sorted by name (which also breaks ties between them)."""
    names = set(who.groups) & policy.groups.keys()
    if who.anonymous:
        names |= {ANONYMOUS} & policy.groups.keys()
        names |= _groups_by_address(policy, who.address)
    else:
        names |= {name for name, group in policy.groups.items() if who.user in group.members}
    return tuple(sorted(names))


def is_admin(policy: Policy, who: Who) -> bool:
    """root, a user in ``admins``, or a member of a group named in ``admin_groups``; never anonymous."""
    if who.anonymous:
        return False
    if who.user == "root" or who.user in policy.admins:
        return True
    member_of = {name for name, group in policy.groups.items() if who.user in group.members}
    return bool(policy.admin_groups & (who.groups | member_of))


def _groups_by_address(policy: Policy, address: str) -> set[str]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return set()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d
    return {name for name, group in policy.groups.items() if any(ip in net for net in group.addresses)}


def _pick(key: str, own: tuple[str, Section] | None, groups: list[tuple[str, GroupSection]],
          default: Section, admin: bool) -> _Pick:
    """One key's value: own section > groups (merged) > admin status (store keys) > default > built-in."""
    if own is not None and getattr(own[1], key) is not None:
        return _single(key, own[0], getattr(own[1], key))
    setting = [(name, getattr(group, key)) for name, group in groups if getattr(group, key) is not None]
    if setting:
        return _merge_globs(setting) if key in GLOB_KEYS else _most_generous(setting)
    if key in STORE_KEYS and admin:
        return _Pick(True, ADMIN)
    if getattr(default, key) is not None:
        return _single(key, "default", getattr(default, key))
    return _built_in(key)


def _single(key: str, section: str, value: Any) -> _Pick:
    patterns = MappingProxyType(dict.fromkeys(value, section)) if key in GLOB_KEYS else _EMPTY
    return _Pick(value, section, patterns)


def _merge_globs(setting: list[tuple[str, tuple[str, ...]]]) -> _Pick:
    """The union of the groups' lists, in order; each pattern credited to the first group listing it."""
    patterns: dict[str, str] = {}
    for section, values in setting:
        for pattern in values:
            patterns.setdefault(pattern, section)
    return _Pick(tuple(patterns), " + ".join(section for section, _ in setting), MappingProxyType(patterns))


def _most_generous(setting: list[tuple[str, Any]]) -> _Pick:
    """The largest value (True over False); on a tie the first group by name."""
    section, value = max(setting, key=lambda item: item[1])
    return _Pick(value, section)


def _built_in(key: str) -> _Pick:
    if key == "models":
        return _Pick(("*",), BUILT_IN, MappingProxyType({"*": BUILT_IN}))
    if key == "deny_models":
        return _Pick((), BUILT_IN)
    if key in STORE_KEYS:
        return _Pick(False, ADMIN)  # not an admin (admins were handled before default)
    return _Pick(0 if key == "priority" else None, BUILT_IN)


# --- questions asked of the rules ------------------------------------------------------------------

def short_name(model: str) -> str:
    """The name patterns are matched against: Ollama's shortest form, lower case (Ollama's names
    are case-insensitive). ``llama3.2`` -> ``llama3.2:latest``; a name Ollama rejects stays as written."""
    name = parse_name(model)
    return (name.shortest if name is not None else model).lower()


def short_pattern(pattern: str) -> str:
    """A pattern in the same form: a plain name is normalized like one (``llama3.2`` means
    ``llama3.2:latest``); a glob loses only a default host and namespace in front."""
    if not _GLOB_CHARS & set(pattern) and parse_name(pattern) is not None:
        return short_name(pattern)
    parts = pattern.lower().split("/")
    if len(parts) == 3 and parts[0] == DEFAULT_HOST:
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == DEFAULT_NAMESPACE:
        parts = parts[1:]
    return "/".join(parts)


def _matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, short_pattern(pattern))


def model_allowed(rules: UserRules, model: str) -> tuple[bool, str]:
    """Whether ``model`` may be used, and the rule that decided it. A deny beats an allow."""
    name = short_name(model)
    for pattern in rules.deny_models:
        if _matches(pattern, name):
            return False, rules.pattern_rule("deny_models", pattern)
    for pattern in rules.models:
        if _matches(pattern, name):
            return True, rules.pattern_rule("models", pattern)
    return False, rules.rule("models")


def store_allowed(rules: UserRules, operation: StoreOperation) -> tuple[bool, str]:
    """Whether a model-store operation (pull, delete, create, push, copy) is allowed, and by which rule."""
    key = f"can_{operation}"
    return bool(getattr(rules, key)), rules.rule(key)


def cap_keep_alive(raw: object, cap_ns: int | None) -> tuple[object, bool]:
    """The ``keep_alive`` to forward under a cap, and whether it was rewritten.

    Longer than the cap, or negative (forever): the cap, as a Go duration string Ollama parses
    back to exactly ``cap_ns``. Kept as is: absent (``OLLAMA_KEEP_ALIVE`` or the loaded model's
    own duration applies, which the server's admin chose), 0 and anything no longer than the cap,
    and values Ollama rejects (it answers 400 itself). A number past int64 nanoseconds is read as
    arm64 does (forever) rather than amd64 (unload when idle): the longer reading must be capped.
    """
    if cap_ns is None:
        return raw, False
    try:
        ns = keep_alive_ns(raw, arch="arm64")
    except KeepAliveError:
        return raw, False
    if ns is None or ns <= cap_ns:
        return raw, False
    return format_go_duration(cap_ns), True


def format_go_duration(ns: int) -> str:
    """Positive nanoseconds as Go's ``Duration.String`` writes them from a second up (``30m0s``,
    ``1h30m0s``, ``1.5s``); under a second in seconds too (``0.5s``, Go says ``500ms``). Exact:
    ``parse_go_duration_ns`` gives ``ns`` back."""
    if ns <= 0:
        raise ValueError(f"not a positive duration: {ns} ns")
    hours, rest = divmod(ns, 3600 * _NS_PER_S)
    minutes, rest = divmod(rest, 60 * _NS_PER_S)
    seconds, fraction = divmod(rest, _NS_PER_S)
    text = f"{seconds}.{fraction:09d}".rstrip("0") + "s" if fraction else f"{seconds}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text
