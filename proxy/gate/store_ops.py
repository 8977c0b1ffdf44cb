"""The model-store and account operations a policy may withhold, by Ollama's router.

Once a policy file exists, pulling, deleting, creating (and uploading blobs for it), pushing and
copying models are for admins unless the policy allows them (``can_pull``, ...); signing the
server out of ollama.com is for admins only. Refused before the body is read: a 40 GB blob upload
is answered at once.
"""

from __future__ import annotations

from proxy.identity.identify import Identity
from proxy.policy.resolve import StoreOperation, UserRules, store_allowed

_EXACT: dict[tuple[str, str], StoreOperation] = {
    ("POST", "/api/pull"): "pull",
    ("DELETE", "/api/delete"): "delete",
    ("POST", "/api/create"): "create",
    ("POST", "/api/push"): "push",
    ("POST", "/api/copy"): "copy",
}
_ACCOUNT = {("POST", "/api/signout")}


def store_operation(method: str, path: str) -> StoreOperation | None:
    """Which store operation this request is (Ollama's routes; paths as its router sees them)."""
    if (op := _EXACT.get((method, path))) is not None:
        return op
    if method == "POST" and path.startswith("/api/blobs/") and "/" not in path[len("/api/blobs/"):]:
        return "create"  # the blobs a create is made from
    return None


def _account(method: str, path: str) -> bool:
    return (method, path) in _ACCOUNT or (method == "DELETE" and path.startswith("/api/user/keys/"))


def screen_store_operation(method: str, path: str, who: Identity,
                           rules: UserRules) -> tuple[int, str, str, str] | None:
    """(status, text, reason, rule) when the user may not do this; None when they may."""
    if _account(method, path):
        if rules.is_admin:
            return None
        text = (f"vramgate refused this for {who.user}: signing the Ollama server out of ollama.com is for admins"
                " (rule admins). Ask an admin.")
        return 403, text, "operation_denied", "admins"
    op = store_operation(method, path)
    if op is None:
        return None
    allowed, rule = store_allowed(rules, op)
    if allowed:
        return None
    text = (f"vramgate refused this {op} for {who.user}: the policy does not let {who.user} {op} models"
            f" (rule {rule}). Ask an admin to {op} it for you, or to set can_{op} for you.")
    return 403, text, "operation_denied", rule
