"""The per-user policy: reading the file, resolving one user's rules, and the questions asked of them.

Every expected value is written out by hand from the rules in proxy/policy/resolve.py's docstring
and config/policy.toml's comments; none is computed by the code under test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from proxy.ollama.gojson import RawNumber
from proxy.ollama.keep_alive import FOREVER_NS, keep_alive_ns, parse_go_duration_ns
from proxy.policy.resolve import (
    RULE_KEYS,
    Policy,
    Section,
    UserRules,
    Who,
    cap_keep_alive,
    format_go_duration,
    model_allowed,
    resolve,
    short_name,
    short_pattern,
    store_allowed,
)
from proxy.policy.rules import Group, PolicyError, PolicyFile, Rules, parse_policy

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "policy.toml"
GiB = 1024**3
S = 1_000_000_000
MINUTE = 60 * S
HOUR = 60 * MINUTE


def policy(text: str) -> Policy:
    return parse_policy(text, "policy.toml")


def rules_for(text: str, who: Who | str) -> UserRules:
    return resolve(policy(text), Who(who) if isinstance(who, str) else who)


def anonymous(address: str) -> Who:
    return Who("", anonymous=True, address=address)


# --- the schema ------------------------------------------------------------------------------------

def test_the_schema_and_the_plain_sections_list_the_same_keys() -> None:
    keys = ("models", "deny_models", "max_num_ctx", "max_vram", "max_keep_alive", "allow_partial_offload",
            "priority", "max_queued", "can_pull", "can_delete", "can_create", "can_push", "can_copy")
    assert RULE_KEYS == keys
    assert tuple(Rules.model_fields) == keys
    assert tuple(f.name for f in dataclasses.fields(Section)) == keys
    assert set(Group.model_fields) - set(keys) == {"members", "addresses"}
    assert tuple(PolicyFile.model_fields) == ("admins", "admin_groups", "default", "groups", "users")


# --- the documented example ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def example() -> Policy:
    return parse_policy(EXAMPLE.read_text(), "config/policy.toml")


def test_the_example_loads(example: Policy) -> None:
    assert example.admins == {"alice"}
    assert example.admin_groups == {"sudo"}
    assert set(example.groups) == {"staff", "students", "anonymous"}
    assert set(example.users) == {"alice", "erin"}
    assert example.default.max_vram == 16 * GiB
    assert example.default.max_keep_alive == 30 * MINUTE
    assert example.groups["students"].members == {"carol", "dave"}
    assert [str(n) for n in example.groups["students"].addresses] == ["10.0.0.0/8"]


EXAMPLE_CASES: list[tuple[Who, dict[str, Any]]] = [
    (Who("alice"), {"is_admin": True, "groups": (), "max_vram": 24 * GiB, "priority": 10, "can_pull": True,
                    "can_delete": True, "max_num_ctx": 32768, "max_keep_alive_ns": 30 * MINUTE, "max_queued": 2}),
    (Who("bob"), {"is_admin": False, "groups": ("staff",), "max_vram": 40 * GiB, "max_num_ctx": 131072,
                  "max_keep_alive_ns": 4 * HOUR, "can_pull": True, "can_delete": False,
                  "allow_partial_offload": True, "priority": 5, "max_queued": 4}),
    (Who("carol"), {"groups": ("students",), "models": ("llama3.2:*", "qwen3:*", "gemma3:*"),
                    "deny_models": ("*-uncensored*",), "max_vram": 8 * GiB, "max_num_ctx": 8192,
                    "priority": -1, "max_queued": 1, "can_pull": False, "allow_partial_offload": False}),
    (Who("erin"), {"models": ("*",), "deny_models": (), "max_vram": 16 * GiB, "priority": 0}),
    (Who("zoe", frozenset({"sudo", "users"})), {"is_admin": True, "groups": (), "can_copy": True}),
    (anonymous("192.168.1.7"), {"is_admin": False, "groups": ("anonymous",), "models": ("llama3.2:*",),
                                "max_vram": 4 * GiB, "max_keep_alive_ns": 5 * MINUTE, "priority": -2,
                                "max_queued": 2, "can_pull": False}),
    (anonymous("10.20.30.40"), {"groups": ("anonymous", "students"),
                                "models": ("llama3.2:*", "qwen3:*", "gemma3:*"), "max_vram": 8 * GiB,
                                "max_keep_alive_ns": 5 * MINUTE, "priority": -1, "max_queued": 1}),
]


@pytest.mark.parametrize(("who", "expected"), EXAMPLE_CASES, ids=lambda v: (v.user or v.address) if isinstance(v, Who) else None)
def test_the_example_resolves_as_its_comments_say(example: Policy, who: Who, expected: dict[str, Any]) -> None:
    rules = resolve(example, who)
    assert {key: getattr(rules, key) for key in expected} == expected


@pytest.mark.parametrize(("who", "model", "expected"), [
    (Who("alice"), "mistral", (True, "default.models")),
    (Who("alice"), "dolphin-uncensored:7b", (False, "default.deny_models")),
    (Who("carol"), "qwen3:8b", (True, "groups.students.models")),
    (Who("carol"), "mistral", (False, "groups.students.models")),
    (Who("erin"), "dolphin-uncensored:7b", (True, "users.erin.models")),
    (anonymous("192.168.1.7"), "llama3.2", (True, "groups.anonymous.models")),
    (anonymous("192.168.1.7"), "qwen3:8b", (False, "groups.anonymous.models")),
    (anonymous("10.1.1.1"), "qwen3:8b", (True, "groups.students.models")),
    (anonymous("10.1.1.1"), "mistral", (False, "groups.anonymous.models + groups.students.models")),
])
def test_the_example_models(example: Policy, who: Who, model: str, expected: tuple[bool, str]) -> None:
    assert model_allowed(resolve(example, who), model) == expected


# --- each key, read ----------------------------------------------------------------------------------

ACCEPTED: list[tuple[str, str, Any]] = [
    ('models = ["llama3.2", "qwen3:*"]', "models", ("llama3.2", "qwen3:*")),
    ("models = []", "models", ()),
    ('deny_models = ["*-uncensored"]', "deny_models", ("*-uncensored",)),
    ("max_num_ctx = 256", "max_num_ctx", 256),
    ("max_num_ctx = 131072", "max_num_ctx", 131072),
    ('max_vram = "16GiB"', "max_vram", 17179869184),
    ('max_vram = "512MiB"', "max_vram", 536870912),
    ('max_vram = "24GB"', "max_vram", 24000000000),
    ("max_vram = 1000000", "max_vram", 1000000),
    ("max_vram = 0", "max_vram", 0),
    ('max_keep_alive = "30m"', "max_keep_alive", 1800 * S),
    ('max_keep_alive = "1h30m"', "max_keep_alive", 5400 * S),
    ('max_keep_alive = "1.5s"', "max_keep_alive", 1_500_000_000),
    ("max_keep_alive = 90", "max_keep_alive", 90 * S),
    ("max_keep_alive = 0.25", "max_keep_alive", 250_000_000),
    ("allow_partial_offload = true", "allow_partial_offload", True),
    ("allow_partial_offload = false", "allow_partial_offload", False),
    ("priority = -3", "priority", -3),
    ("priority = 100", "priority", 100),
    ("max_queued = 0", "max_queued", 0),
    ("max_queued = 7", "max_queued", 7),
    ("can_pull = true", "can_pull", True),
    ("can_delete = false", "can_delete", False),
    ("can_create = true", "can_create", True),
    ("can_push = true", "can_push", True),
    ("can_copy = false", "can_copy", False),
]


@pytest.mark.parametrize(("line", "key", "expected"), ACCEPTED)
def test_each_key_is_read(line: str, key: str, expected: Any) -> None:
    for section, path in (("default", lambda p: p.default), ("users.x", lambda p: p.users["x"]),
                          ("groups.g", lambda p: p.groups["g"])):
        read = path(policy(f"[{section}]\n{line}\n"))
        assert getattr(read, key) == expected, section
        assert all(getattr(read, other) is None for other in RULE_KEYS if other != key)


def test_an_empty_file_gives_everyone_the_built_in_rules() -> None:
    rules = rules_for("", "bob")
    assert (rules.models, rules.deny_models, rules.max_num_ctx, rules.max_vram, rules.max_keep_alive_ns,
            rules.allow_partial_offload, rules.priority, rules.max_queued) == (("*",), (), None, None, None, None, 0, None)
    assert (rules.can_pull, rules.can_delete, rules.can_create, rules.can_push, rules.can_copy) == (False,) * 5
    assert rules.rule("max_vram") == "built-in max_vram"
    assert rules.rule("can_pull") == "admins"
    assert model_allowed(rules, "anything:at-all") == (True, "built-in models")


REFUSED: list[tuple[str, str]] = [
    ('[default]\nmax_vram = "lots"', 'default.max_vram: expected a size such as "24GiB", got "lots"'),
    ("[users.alice]\nmax_vram = -1", 'users.alice.max_vram: expected a size such as "24GiB", got -1'),
    ("[users.alice]\nmax_vram = true", 'users.alice.max_vram: expected a size such as "24GiB", got true'),
    ('[groups.g]\nmax_vram = "16 GiBs"', 'groups.g.max_vram: expected a size such as "24GiB", got "16 GiBs"'),
    ('[default]\nmax_keep_alive = "forever"',
     'default.max_keep_alive: expected a duration such as "30m" or a number of seconds, got "forever"'),
    ('[default]\nmax_keep_alive = "300"',
     'default.max_keep_alive: expected a duration such as "30m" or a number of seconds, got "300"'),
    ("[default]\nmax_keep_alive = true",
     'default.max_keep_alive: expected a duration such as "30m" or a number of seconds, got true'),
    ("[default]\nmax_keep_alive = 0",
     "default.max_keep_alive: expected a duration longer than 0 (0 would unload models at once), got 0"),
    ('[default]\nmax_keep_alive = "0s"',
     'default.max_keep_alive: expected a duration longer than 0 (0 would unload models at once), got "0s"'),
    ('[default]\nmax_keep_alive = "-5m"',
     'default.max_keep_alive: expected a duration longer than 0 (0 would unload models at once), got "-5m"'),
    ("[default]\nmax_keep_alive = 1e30", "default.max_keep_alive: expected a duration under 292 years, got 1e+30"),
    ("[default]\nmax_num_ctx = 255", "default.max_num_ctx: expected at least 256, got 255"),
    ('[default]\nmax_num_ctx = "8k"', 'default.max_num_ctx: expected a whole number, got "8k"'),
    ("[default]\nmax_num_ctx = 8192.0", "default.max_num_ctx: expected a whole number, got 8192.0"),
    ("[default]\nmax_queued = -1", "default.max_queued: expected at least 0, got -1"),
    ('[users.bob]\npriority = "10"', 'users.bob.priority: expected a whole number, got "10"'),
    ("[users.bob]\ncan_pull = 1", "users.bob.can_pull: expected true or false, got 1"),
    ('[users.bob]\nallow_partial_offload = "yes"', 'users.bob.allow_partial_offload: expected true or false, got "yes"'),
    ('[default]\nmodels = "*"', 'default.models: expected a list, got "*"'),
    ("[default]\ndeny_models = [1]", "default.deny_models[0]: expected a string, got 1"),
    ('admins = "alice"', 'admins: expected a list, got "alice"'),
    ("default = 3", "default: expected a table, got 3"),
    ("[groups]\nstudents = 3", "groups.students: expected a table, got 3"),
    ('[groups.lab]\naddresses = ["10.0.0.1/8"]',
     'groups.lab.addresses[0]: expected a network such as "10.0.0.0/8", got "10.0.0.1/8" (10.0.0.1/8 has host bits set)'),
    ('[groups.lab]\naddresses = ["the lab"]',
     "groups.lab.addresses[0]: expected a network such as \"10.0.0.0/8\", got \"the lab\" "
     "('the lab' does not appear to be an IPv4 or IPv6 network)"),
    ('[groups.anonymous]\nmembers = ["x"]', "groups.anonymous.members: the built-in anonymous group has every client "
                                           "known only by its address; use another group for members"),
    ('[groups.anonymous]\naddresses = ["10.0.0.0/8"]', "groups.anonymous.addresses: the built-in anonymous group has "
                                                       "every client known only by its address; use another group for addresses"),
    # unknown keys, with a suggestion from the keys allowed in that place
    ("[users.alice]\nmax_vramm = 1", "users.alice.max_vramm: unknown key; did you mean max_vram?"),
    ("[default]\nmax_keepalive = 1", "default.max_keepalive: unknown key; did you mean max_keep_alive?"),
    ("[groups.lab]\nmember = []", "groups.lab.member: unknown key; did you mean members?"),
    ("[users.alice]\nmembers = []", "users.alice.members: unknown key; the keys are documented in config/policy.toml"),
    ("[user.alice]\npriority = 1", "user: unknown key; did you mean users?"),
    ('admin = ["alice"]', "admin: unknown key; did you mean admins?"),
    ("colour = 1", "colour: unknown key; the keys are documented in config/policy.toml"),
    # TOML syntax: tomllib's message and position
    ("[default\n", "invalid TOML at line 1, column 9: Expected ']' at the end of a table declaration"),
    ("[default]\nmax_vram 16\n", "invalid TOML at line 2, column 10: Expected '=' after a key in a key/value pair"),
    ('admins = ["alice"\n', "invalid TOML at the end of the file: Unclosed array"),
    ("[users.a]\n[users.a]\n", "invalid TOML at line 2, column 9: Cannot declare ('users', 'a') twice"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_a_bad_file_is_one_line_naming_the_place(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "config/policy.toml")
    assert str(caught.value) == f"config/policy.toml: {message}"
    assert "\n" not in str(caught.value)


def test_several_errors_stay_on_one_line() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy('[default]\nmax_vram = "x"\npriority = 1.5\n[users.bob]\ncan_pul = true\n', "p.toml")
    assert str(caught.value) == ('p.toml: default.max_vram: expected a size such as "24GiB", got "x"; '
                                 "default.priority: expected a whole number, got 1.5; "
                                 "users.bob.can_pul: unknown key; did you mean can_pull?")


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


# --- precedence ---------------------------------------------------------------------------------

LAYERED = """
[default]
max_vram = "16GiB"
max_num_ctx = 8192
priority = 1
models = ["llama3.2:*"]
[groups.lab]
members = ["bob", "carol"]
max_vram = "8GiB"
max_num_ctx = 4096
[users.bob]
max_vram = "24GiB"
"""


@pytest.mark.parametrize(("user", "key", "value", "rule"), [
    ("bob", "max_vram", 24 * GiB, "users.bob.max_vram"),  # own section beats the group
    ("bob", "max_num_ctx", 4096, "groups.lab.max_num_ctx"),  # group beats default (even when smaller)
    ("bob", "priority", 1, "default.priority"),
    ("bob", "max_keep_alive_ns", None, "built-in max_keep_alive"),
    ("carol", "max_vram", 8 * GiB, "groups.lab.max_vram"),
    ("dave", "max_vram", 16 * GiB, "default.max_vram"),
    ("dave", "models", ("llama3.2:*",), "default.models"),
])
def test_user_beats_group_beats_default_beats_built_in(user: str, key: str, value: Any, rule: str) -> None:
    rules = rules_for(LAYERED, user)
    assert getattr(rules, key) == value
    assert rules.rule(key) == rule


# --- several groups: the most generous value ------------------------------------------------------

def two_groups(a: str, b: str) -> str:
    return f'[default]\nmax_vram = "1GiB"\npriority = 3\n[groups.a]\nmembers = ["u"]\n{a}\n[groups.b]\nmembers = ["u"]\n{b}\n'


@pytest.mark.parametrize(("a", "b", "key", "value", "origin"), [
    ('max_vram = "8GiB"', 'max_vram = "12GiB"', "max_vram", 12 * GiB, "groups.b"),
    ('max_vram = "12GiB"', 'max_vram = "8GiB"', "max_vram", 12 * GiB, "groups.a"),
    ('max_vram = "8GiB"', 'max_vram = "8GiB"', "max_vram", 8 * GiB, "groups.a"),  # a tie: the first by name
    ('max_vram = "8GiB"', "", "max_vram", 8 * GiB, "groups.a"),  # b leaves it to default: a's value still wins
    ("max_num_ctx = 4096", "max_num_ctx = 2048", "max_num_ctx", 4096, "groups.a"),
    ('max_keep_alive = "5m"', 'max_keep_alive = "1h"', "max_keep_alive_ns", HOUR, "groups.b"),
    ("priority = -1", "priority = 2", "priority", 2, "groups.b"),  # below default's 3: groups beat default
    ("max_queued = 0", "max_queued = 3", "max_queued", 3, "groups.b"),
    ("can_pull = false", "can_pull = true", "can_pull", True, "groups.b"),
    ("can_push = false", "can_push = false", "can_push", False, "groups.a"),
    ("allow_partial_offload = true", "allow_partial_offload = false", "allow_partial_offload", True, "groups.a"),
    ('models = ["qwen3:*"]', 'models = ["gemma3:*", "qwen3:*"]', "models", ("qwen3:*", "gemma3:*"), "groups.a + groups.b"),
    ('deny_models = ["x*"]', "deny_models = []", "deny_models", ("x*",), "groups.a + groups.b"),
])
def test_across_groups_the_most_generous_value_wins(a: str, b: str, key: str, value: Any, origin: str) -> None:
    rules = rules_for(two_groups(a, b), "u")
    assert rules.groups == ("a", "b")
    assert getattr(rules, key) == value
    assert rules.origin[key.removesuffix("_ns")] == origin


def test_merged_models_name_the_group_that_listed_each_pattern() -> None:
    rules = rules_for(two_groups('models = ["qwen3:*"]', 'models = ["gemma3:*"]'), "u")
    assert model_allowed(rules, "qwen3:8b") == (True, "groups.a.models")
    assert model_allowed(rules, "gemma3") == (True, "groups.b.models")
    assert model_allowed(rules, "mistral") == (False, "groups.a.models + groups.b.models")


DENIES = """
[default]
deny_models = ["default-denied*"]
[groups.a]
members = ["u", "v"]
deny_models = ["a-denied*"]
[groups.b]
members = ["u", "v"]
deny_models = []
[users.v]
deny_models = ["v-denied*"]
"""


@pytest.mark.parametrize(("user", "model", "expected"), [
    ("u", "a-denied:1b", (False, "groups.a.deny_models")),  # b's empty list does not lift a's deny
    ("u", "default-denied:1b", (True, "built-in models")),  # the groups' deny_models replace default's
    ("v", "a-denied:1b", (True, "built-in models")),  # the user's own deny_models replace the groups'
    ("v", "v-denied:1b", (False, "users.v.deny_models")),
    ("w", "default-denied:1b", (False, "default.deny_models")),
])
def test_denies_across_groups(user: str, model: str, expected: tuple[bool, str]) -> None:
    assert model_allowed(rules_for(DENIES, user), model) == expected


# --- which groups apply ------------------------------------------------------------------------------

GROUPS = """
[groups.students]
members = ["carol"]
addresses = ["10.0.0.0/8", "fd00::/8"]
max_vram = "8GiB"
[groups.gpu]
max_vram = "32GiB"
[groups.anonymous]
max_vram = "2GiB"
[users.carol]
priority = 9
"""


@pytest.mark.parametrize(("who", "groups", "max_vram"), [
    (Who("carol"), ("students",), 8 * GiB),  # a member listed in the file
    (Who("bob"), (), None),
    (Who("bob", frozenset({"gpu", "wheel"})), ("gpu",), 32 * GiB),  # a Unix group of the same name
    (Who("carol", frozenset({"gpu"})), ("gpu", "students"), 32 * GiB),
    (anonymous("192.0.2.1"), ("anonymous",), 2 * GiB),
    (anonymous("10.9.8.7"), ("anonymous", "students"), 8 * GiB),  # addresses join anonymous clients
    (anonymous("::ffff:10.9.8.7"), ("anonymous", "students"), 8 * GiB),  # IPv4 on a dual-stack socket
    (anonymous("fd12::1"), ("anonymous", "students"), 8 * GiB),
    (anonymous("2001:db8::1"), ("anonymous",), 2 * GiB),
    (anonymous("not an address"), ("anonymous",), 2 * GiB),
    (Who("bob", address="10.9.8.7"), (), None),  # addresses are for anonymous clients only
    (Who("carol", anonymous=True, address="192.0.2.1"), ("anonymous",), 2 * GiB),  # no members, no users.carol
])
def test_the_groups_a_client_is_in(who: Who, groups: tuple[str, ...], max_vram: int | None) -> None:
    rules = rules_for(GROUPS, who)
    assert (rules.groups, rules.max_vram) == (groups, max_vram)


def test_an_anonymous_client_gets_no_users_section() -> None:
    assert rules_for(GROUPS, Who("carol", anonymous=True, address="192.0.2.1")).priority == 0
    assert rules_for(GROUPS, "carol").priority == 9


# --- admins and the store operations -------------------------------------------------------------------

ADMINS = """
admins = ["alice"]
admin_groups = ["sudo", "ops"]
[groups.ops]
members = ["oscar"]
[groups.careful]
members = ["alice"]
can_delete = false
[users.alice]
can_push = false
"""


@pytest.mark.parametrize(("who", "is_admin"), [
    (Who("root"), True),
    (Who("alice"), True),
    (Who("oscar"), True),  # a member of a file group named in admin_groups
    (Who("sam", frozenset({"sudo"})), True),  # a Unix group named in admin_groups
    (Who("bob", frozenset({"users"})), False),
    (Who("root", anonymous=True, address="10.0.0.1"), False),
    (Who("alice", frozenset({"sudo"}), anonymous=True), False),
])
def test_who_is_an_admin(who: Who, is_admin: bool) -> None:
    assert rules_for(ADMINS, who).is_admin is is_admin


@pytest.mark.parametrize(("user", "operation", "expected"), [
    ("root", "pull", (True, "admins")),
    ("alice", "pull", (True, "admins")),
    ("alice", "push", (False, "users.alice.can_push")),  # an admin's own section says no
    ("alice", "delete", (False, "groups.careful.can_delete")),  # so may a group
    ("oscar", "copy", (True, "admins")),
    ("bob", "pull", (False, "admins")),
    ("bob", "create", (False, "admins")),
])
def test_store_operations_default_to_admins(user: str, operation: Any, expected: tuple[bool, str]) -> None:
    assert store_allowed(rules_for(ADMINS, user), operation) == expected


def test_default_store_settings_bind_everyone_but_admins() -> None:
    text = ADMINS + "[default]\ncan_pull = true\ncan_delete = false\n"
    assert store_allowed(rules_for(text, "bob"), "pull") == (True, "default.can_pull")
    assert store_allowed(rules_for(text, "bob"), "delete") == (False, "default.can_delete")
    assert store_allowed(rules_for(text, "root"), "delete") == (True, "admins")
    assert store_allowed(rules_for(text, Who("root", anonymous=True)), "delete") == (False, "default.can_delete")
    assert store_allowed(rules_for(text, Who("x", anonymous=True)), "pull") == (True, "default.can_pull")


# --- model names ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "short"), [
    ("llama3.2", "llama3.2:latest"),
    ("llama3.2:1b", "llama3.2:1b"),
    ("Llama3.2:1B", "llama3.2:1b"),
    ("library/llama3.2", "llama3.2:latest"),
    ("registry.ollama.ai/library/qwen3:8b", "qwen3:8b"),
    ("REGISTRY.OLLAMA.AI/LIBRARY/QWEN3:8B", "qwen3:8b"),
    ("registry.ollama.ai/jmorgan/tool:2", "jmorgan/tool:2"),
    ("jmorgan/tool", "jmorgan/tool:latest"),
    ("hf.co/user/repo:Q4", "hf.co/user/repo:q4"),
    ("hf.co/bartowski/Qwen3-8B-GGUF", "hf.co/bartowski/qwen3-8b-gguf:latest"),
    ("bad name!", "bad name!"),  # not a valid name: as written, lower case
    ("Model@sha256:AB", "model@sha256:ab"),
])
def test_short_name(model: str, short: str) -> None:
    assert short_name(model) == short


@pytest.mark.parametrize(("pattern", "short"), [
    ("llama3.2", "llama3.2:latest"),
    ("qwen3:*", "qwen3:*"),
    ("qwen3*", "qwen3*"),
    ("*", "*"),
    ("registry.ollama.ai/library/qwen3:*", "qwen3:*"),
    ("library/Qwen3:*", "qwen3:*"),
    ("registry.ollama.ai/jmorgan/*", "jmorgan/*"),
    ("hf.co/*", "hf.co/*"),
    ("HF.co/User/*:Q4*", "hf.co/user/*:q4*"),
])
def test_short_pattern(pattern: str, short: str) -> None:
    assert short_pattern(pattern) == short


def allow(*patterns: str, deny: tuple[str, ...] = ()) -> UserRules:
    models = ", ".join(f'"{p}"' for p in patterns)
    denies = ", ".join(f'"{p}"' for p in deny)
    return rules_for(f"[users.u]\nmodels = [{models}]\ndeny_models = [{denies}]\n", "u")


@pytest.mark.parametrize(("patterns", "model", "allowed"), [
    (("llama3.2",), "llama3.2", True),
    (("llama3.2",), "llama3.2:latest", True),
    (("llama3.2",), "registry.ollama.ai/library/llama3.2:latest", True),
    (("llama3.2",), "llama3.2:1b", False),  # no tag in the pattern means :latest
    (("llama3.2:*",), "llama3.2:1b", True),
    (("llama3.2:*",), "LLAMA3.2:1B", True),
    (("llama3.2:*",), "llama3.2-vision:11b", False),
    (("qwen3*",), "qwen3-coder:30b", True),
    (("qwen3*",), "qwen3", True),
    (("qwen3:*",), "qwen3-coder:30b", False),
    (("registry.ollama.ai/library/qwen3:*",), "qwen3:8b", True),
    (("hf.co/*",), "hf.co/user/repo:Q4_K_M", True),
    (("hf.co/user/repo:q4",), "hf.co/user/repo:Q4", True),
    (("hf.co/*",), "qwen3:8b", False),
    (("jmorgan/*",), "registry.ollama.ai/jmorgan/tool", True),
    (("*",), "anything/at/all:x", True),
    (("gemma3:[14]b",), "gemma3:4b", True),
    (("gemma3:[14]b",), "gemma3:12b", False),
    ((), "llama3.2", False),
])
def test_model_patterns(patterns: tuple[str, ...], model: str, allowed: bool) -> None:
    assert model_allowed(allow(*patterns), model)[0] is allowed


@pytest.mark.parametrize(("deny", "model", "expected"), [
    (("qwen3:32b",), "qwen3:32b", (False, "users.u.deny_models")),
    (("qwen3:32b",), "qwen3:8b", (True, "users.u.models")),
    (("*-uncensored*",), "dolphin-uncensored:7b", (False, "users.u.deny_models")),
    (("*",), "qwen3:8b", (False, "users.u.deny_models")),
])
def test_a_deny_beats_an_allow(deny: tuple[str, ...], model: str, expected: tuple[bool, str]) -> None:
    assert model_allowed(allow("qwen3:*", "*-uncensored*", deny=deny), model) == expected


# --- keep_alive ----------------------------------------------------------------------------------------

CAP = 30 * MINUTE


@pytest.mark.parametrize(("raw", "forwarded", "rewritten"), [
    (-1, "30m0s", True),  # forever
    ("-1s", "30m0s", True),  # a negative string is forever too
    (-0.5, "30m0s", True),
    ("24h", "30m0s", True),
    (86400, "30m0s", True),
    (3600.5, "30m0s", True),
    ("30m0.000000001s", "30m0s", True),
    (1e19, "30m0s", True),  # past int64 ns: forever on arm64, so capped
    (1e300, "30m0s", True),  # seconds * 1e9 is inf in float64
    ("5m", "5m", False),
    (300, 300, False),
    ("30m", "30m", False),  # exactly the cap
    (1800, 1800, False),
    (0, 0, False),  # unload now stays unload now
    ("0s", "0s", False),
    (None, None, False),  # absent: the server's OLLAMA_KEEP_ALIVE applies
    ("abc", "abc", False),  # Ollama answers 400 itself
    ("300", "300", False),
    (True, True, False),
    (RawNumber("1e400"), RawNumber("1e400"), False),  # beyond float64: Ollama's 400
])
def test_cap_keep_alive(raw: Any, forwarded: Any, rewritten: bool) -> None:
    assert cap_keep_alive(raw, CAP) == (forwarded, rewritten)
    if rewritten:
        assert keep_alive_ns(forwarded) == CAP


@pytest.mark.parametrize("raw", [-1, "24h", 86400, 0, None, "abc", "5m"])
def test_no_cap_keeps_everything(raw: Any) -> None:
    assert cap_keep_alive(raw, None) == (raw, False)


@pytest.mark.parametrize(("cap_ns", "text"), [
    (30 * MINUTE, "30m0s"),
    (HOUR, "1h0m0s"),
    (HOUR + 30 * MINUTE, "1h30m0s"),
    (90 * S, "1m30s"),
    (45 * S, "45s"),
    (1_500_000_000, "1.5s"),
    (500_000_000, "0.5s"),
    (1, "0.000000001s"),
    (HOUR + 1, "1h0m0.000000001s"),
    ((1 << 63) - 1, "2562047h47m16.854775807s"),
])
def test_the_cap_is_written_so_ollama_reads_it_back_exactly(cap_ns: int, text: str) -> None:
    assert format_go_duration(cap_ns) == text
    assert parse_go_duration_ns(text) == cap_ns
    assert keep_alive_ns(text) == cap_ns
    if cap_ns < FOREVER_NS:  # a cap of forever caps nothing
        assert cap_keep_alive(-1, cap_ns) == (text, True)


def test_the_caps_keep_alive_from_the_file_is_what_cap_keep_alive_gets() -> None:
    rules = rules_for('[default]\nmax_keep_alive = "1h30m"\n', "bob")
    assert rules.max_keep_alive_ns == 5400 * S
    assert rules.rule("max_keep_alive_ns") == "default.max_keep_alive"
    assert cap_keep_alive("2h", rules.max_keep_alive_ns) == ("1h30m0s", True)
