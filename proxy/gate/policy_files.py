"""The policy and tokens files as last read successfully, reread when they change or on SIGHUP.

An admin edits ``policy.toml`` on a running server: a valid file takes effect within a couple of
seconds (or at once on SIGHUP); an invalid one keeps the previous policy running and logs one line
saying what is wrong and where. At start an invalid file is a start-up error: there is no previous
policy to keep. Without a policy file every client gets the same rules (the settings).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import structlog

from proxy.identity.identify import Identifier, Identity
from proxy.identity.tokens import TokenBook, TokensError
from proxy.policy.resolve import Policy, UserRules, Who, resolve
from proxy.policy.rules import PolicyError, parse_policy

log = structlog.get_logger("vramgate.policy")

WATCH_EVERY = 2.0  # seconds between two looks at the files' modification times
MAX_REMEMBERED = 4096  # identities (and their resolved rules) kept: clients are not all named users


class PolicyFiles:
    def __init__(self, policy_file: Path | None, tokens_file: Path | None, identifier: Identifier,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.policy_file = policy_file
        self.tokens_file = tokens_file
        self.identifier = identifier
        self.policy: Policy | None = None
        self._on_change = on_change
        self._seen: dict[Path, tuple[int, int, int] | None] = {}
        self._rules: dict[tuple[str, frozenset[str], bool, str], UserRules] = {}
        self._known: dict[str, Identity] = {}  # the last identity seen per user name (owners' rules)

    @property
    def active(self) -> bool:
        return self.policy is not None

    # --- reading ------------------------------------------------------------------------------
    def load(self) -> None:
        """At start: raises PolicyError/TokensError/OSError with one line saying what is wrong."""
        if self.policy_file is not None:
            self.policy = parse_policy(self.policy_file.read_text(encoding="utf-8"), str(self.policy_file))
            self._seen[self.policy_file] = _stamp(self.policy_file)
        if self.tokens_file is not None:
            self.identifier.use_tokens(_read_tokens(self.tokens_file))
            self._seen[self.tokens_file] = _stamp(self.tokens_file)
        self._rules.clear()

    def reload(self, why: str) -> bool:
        """Reread both files; keep what runs if either is invalid. True when something changed."""
        changed = False
        if self.policy_file is not None:
            try:
                policy = parse_policy(self.policy_file.read_text(encoding="utf-8"), str(self.policy_file))
            except (PolicyError, OSError, UnicodeDecodeError) as exc:
                log.error("policy.invalid", file=str(self.policy_file), error=_one_line(exc),
                          kept="the previous policy")
            else:
                changed |= policy != self.policy
                self.policy = policy
            self._seen[self.policy_file] = _stamp(self.policy_file)
        if self.tokens_file is not None:
            try:
                book = _read_tokens(self.tokens_file)
            except (TokensError, OSError, UnicodeDecodeError) as exc:
                log.error("tokens.invalid", file=str(self.tokens_file), error=_one_line(exc),
                          kept="the previous tokens")
            else:
                changed |= book != self.identifier.tokens
                self.identifier.use_tokens(book)
            self._seen[self.tokens_file] = _stamp(self.tokens_file)
        if changed:
            self._rules.clear()
            log.info("policy.reloaded", why=why, policy_file=str(self.policy_file or ""),
                     tokens_file=str(self.tokens_file or ""))
            self._on_change()
        return changed

    def changed_on_disk(self) -> bool:
        return any(_stamp(path) != stamp for path, stamp in self._seen.items())

    async def watch(self) -> None:
        """Reread the files whenever they change (their mtime, size or inode)."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            if self.changed_on_disk():
                self.reload("the file changed")

    # --- asking ---------------------------------------------------------------------------
    def rules_for(self, identity: Identity) -> UserRules | None:
        """The rules that apply to ``identity`` (None: no policy file, everyone alike)."""
        if self.policy is None:
            return None
        if identity.user not in self._known and len(self._known) < MAX_REMEMBERED:
            self._known[identity.user] = identity
        key = (identity.user, identity.groups, identity.anonymous, identity.address)
        rules = self._rules.get(key)
        if rules is None:
            if len(self._rules) >= MAX_REMEMBERED:  # many anonymous addresses: start again, never grow unbounded
                self._rules.clear()
            who = Who(identity.user, identity.groups, identity.anonymous, identity.address)
            rules = self._rules[key] = resolve(self.policy, who)
        return rules

    def rules_of_user(self, user: str) -> UserRules | None:
        """The rules of a model's owner, by name (as last seen; groups from the file if never seen)."""
        known = self._known.get(user) or Identity(user, "token", "")
        return self.rules_for(known)


def _read_tokens(path: Path) -> TokenBook:
    return TokenBook.parse(path.read_text(encoding="utf-8"), str(path))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
