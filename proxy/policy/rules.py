"""The policy file: its schema, and its text read into :class:`~proxy.policy.resolve.Policy`.

Why strict: a misspelt key (``max_vramm``) or a size read the wrong way would silently give a
user more than the admin meant, so every unknown key, wrong type and bad unit is an error, with
one line saying where (``config/policy.toml: users.alice.max_vram: ...``). The caller reads the
file and keeps its previous policy when this raises. ``config/policy.toml`` documents each key.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import tomllib
from ipaddress import IPv4Network, IPv6Network
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    ValidationError,
)
from pydantic_core import ErrorDetails

from proxy.config.units import parse_bytes
from proxy.ollama.keep_alive import KeepAliveError, parse_go_duration_ns
from proxy.policy.resolve import ANONYMOUS, RULE_KEYS, GroupSection, Policy, Section

_INT64_MAX = (1 << 63) - 1


class PolicyError(ValueError):
    """A policy file that cannot be used: one line saying what is wrong and where."""


def _shown(value: object) -> str:
    """A value as the TOML file wrote it, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return str(value)


def _size(value: object) -> int:
    """Bytes, from ``"16GiB"`` or a plain number (``proxy.config.units.parse_bytes``)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError
        return parse_bytes(value)
    except (ValueError, OverflowError):  # OverflowError: inf
        raise ValueError(f'expected a size such as "24GiB", got {_shown(value)}') from None


def _duration_ns(value: object) -> int:
    """Nanoseconds, from a Go duration (``"30m"``, ``"1h30m"``) or a number of seconds; > 0."""
    try:
        if isinstance(value, str):
            ns = parse_go_duration_ns(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            ns = int(value * 1e9) if isinstance(value, float) else value * 1_000_000_000
        else:
            raise ValueError
    except (KeepAliveError, ValueError, OverflowError):
        raise ValueError(f'expected a duration such as "30m" or a number of seconds, got {_shown(value)}') from None
    if ns <= 0:
        raise ValueError(f"expected a duration longer than 0 (0 would unload models at once), got {_shown(value)}")
    if ns > _INT64_MAX:
        raise ValueError(f"expected a duration under 292 years, got {_shown(value)}")
    return ns


def _network(value: object) -> IPv4Network | IPv6Network:
    """An address or network such as ``"10.0.0.0/8"``; host bits must be zero."""
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        return ipaddress.ip_network(value)
    except ValueError as exc:
        raise ValueError(f'expected a network such as "10.0.0.0/8", got {_shown(value)} ({exc})') from None


Size = Annotated[int, BeforeValidator(_size)]
DurationNs = Annotated[int, BeforeValidator(_duration_ns)]
Network = Annotated[IPv4Network | IPv6Network, PlainValidator(_network)]


class Rules(BaseModel):
    """What a ``[default]``, ``[groups.*]`` or ``[users.*]`` section may set; None = not set."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] | None = None
    deny_models: list[str] | None = None
    max_num_ctx: Annotated[StrictInt, Field(ge=256)] | None = None
    max_vram: Size | None = None
    max_keep_alive: DurationNs | None = None  # nanoseconds
    allow_partial_offload: StrictBool | None = None
    priority: StrictInt | None = None
    max_queued: Annotated[StrictInt, Field(ge=0)] | None = None
    can_pull: StrictBool | None = None
    can_delete: StrictBool | None = None
    can_create: StrictBool | None = None
    can_push: StrictBool | None = None
    can_copy: StrictBool | None = None


class Group(Rules):
    """A ``[groups.*]`` section: rules, and members beyond the Unix group of the same name."""

    members: list[str] = Field(default_factory=list)
    addresses: list[Network] = Field(default_factory=list)


class PolicyFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    admins: list[str] = Field(default_factory=list)
    admin_groups: list[str] = Field(default_factory=list)
    default: Rules = Field(default_factory=Rules)
    groups: dict[str, Group] = Field(default_factory=dict)
    users: dict[str, Rules] = Field(default_factory=dict)


def parse_policy(text: str, source: str) -> Policy:
    """The policy in ``text`` (the file's contents), checked; ``source`` names the file in errors.

    Raises :class:`PolicyError`.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: {_toml_message(str(exc))}") from None
    try:
        parsed = PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{source}: " + "; ".join(_message(err) for err in exc.errors())) from None
    _check_anonymous(parsed, source)
    return _plain(parsed)


def _toml_message(message: str) -> str:
    """tomllib's message with its position in front: ``invalid TOML at line 3, column 5: ...``."""
    match = re.fullmatch(r"(.*) \(at (line \d+, column \d+)\)", message, re.DOTALL)
    if match:
        return f"invalid TOML at {match.group(2)}: {match.group(1)}"
    return "invalid TOML at the end of the file: " + message.replace(" (at end of document)", "")


_TYPE_MESSAGES = {
    "int_type": "expected a whole number",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "string_type": "expected a string",
    "dict_type": "expected a table",
    "model_type": "expected a table",
}


def _message(err: ErrorDetails) -> str:
    """One pydantic error as ``dotted.location: what is wrong``."""
    loc = err["loc"]
    where = _dotted(loc) or "the file"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key; {_suggestion(loc)}"
    if err["type"] == "value_error":
        return f"{where}: {str(err['msg']).removeprefix('Value error, ')}"
    if err["type"] == "greater_than_equal":
        message = f"expected at least {err.get('ctx', {}).get('ge')}"
    else:
        message = _TYPE_MESSAGES.get(err["type"], str(err["msg"]))
    return f"{where}: {message}, got {_shown(err.get('input'))}"


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _suggestion(loc: tuple[int | str, ...]) -> str:
    """"did you mean ...?" from the keys allowed where the unknown one is."""
    parent, key = loc[:-1], str(loc[-1])
    if not parent:
        known = list(PolicyFile.model_fields)
    elif parent[0] == "groups" and len(parent) == 2:
        known = list(Group.model_fields)
    else:
        known = list(Rules.model_fields)
    close = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {close[0]}?" if close else "the keys are documented in config/policy.toml"


def _check_anonymous(parsed: PolicyFile, source: str) -> None:
    """``groups.anonymous`` already holds every anonymous client: members or addresses there mean a mistake."""
    group = parsed.groups.get(ANONYMOUS)
    for key in ("members", "addresses") if group is not None else ():
        if getattr(group, key):
            raise PolicyError(f"{source}: groups.{ANONYMOUS}.{key}: the built-in anonymous group has every client "
                              f"known only by its address; use another group for {key}")


def _section(rules: Rules) -> dict[str, Any]:
    """A section's keys as immutable values."""
    values = {key: getattr(rules, key) for key in RULE_KEYS}
    return {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}


def _plain(parsed: PolicyFile) -> Policy:
    groups = {name: GroupSection(**_section(group), members=frozenset(group.members), addresses=tuple(group.addresses))
              for name, group in parsed.groups.items()}
    return Policy(
        admins=frozenset(parsed.admins),
        admin_groups=frozenset(parsed.admin_groups),
        default=Section(**_section(parsed.default)),
        groups=MappingProxyType(groups),
        users=MappingProxyType({name: Section(**_section(rules)) for name, rules in parsed.users.items()}),
    )
