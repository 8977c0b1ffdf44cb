"""Model names exactly as Ollama parses them (``types/model/name.go``, ``internal/modelref``).

A name is ``[[scheme://]host/][namespace/]model[:tag]``; absent parts take the defaults
``registry.ollama.ai``, ``library`` and ``latest``. Parsing is by position, from the right: the tag
is whatever follows the last ``:`` when that ``:`` comes after the last ``/``; then the model is the
text after the last ``/``, the namespace the text after the ``/`` before it, and everything left
is the host (a ``scheme://`` in front of it is split off). A separator with nothing on one side
"promises" a part that is missing, which makes the name invalid.

A name is valid when every one of host, namespace, model and tag matches its part grammar:

========== ====================================== =================
part       characters (first / rest)              length (bytes)
========== ====================================== =================
host       alnum ``_`` / alnum ``_ - . :``         1 to 350
namespace  alnum ``_`` / alnum ``_ -``             1 to 80
model      alnum ``_`` / alnum ``_ - .``           1 to 80
tag        alnum ``_`` / alnum ``_ - .``           1 to 80
========== ====================================== =================

alnum is ASCII only, so no part can hold ``/``, ``%``, ``?``, ``#``, ``@``, a space or be ``.``/``..``.
Case is kept as written (Ollama compares names case-insensitively but sends them as given).
``hf.co/<user>/<repo>:<quant>`` is not special: host ``hf.co``, namespace ``<user>``.
There is no digest part in today's parser: ``model@sha256:…`` is an invalid model part.

The scheme is parsed but never used for a pull: the pull handler re-parses the name's shortest
display form (no scheme) and a create's implicit pull its full string form (no scheme), so the
scheme is always the default https; only the request's ``insecure`` flag switches to http.

Pure and stdlib only.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Literal

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"
MISSING_PART = "!MISSING!"  # Ollama's marker for a part promised by a separator but empty

PartKind = Literal["host", "namespace", "model", "tag", "digest"]

_FIRST = frozenset(string.ascii_letters + string.digits + "_")
_REST: dict[str, frozenset[str]] = {
    "host": _FIRST | frozenset("-.:"),
    "namespace": _FIRST | frozenset("-"),
    "model": _FIRST | frozenset("-."),
    "tag": _FIRST | frozenset("-."),
    "digest": _FIRST | frozenset("-.:"),  # the code allows "." here although the grammar comment omits it
}
_MAX_LEN = {"host": 350, "namespace": 80, "model": 80, "tag": 80, "digest": 80}

# Go's unicode.IsSpace (what strings.TrimSpace trims); Python's str.strip() also trims \x1c-\x1f.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def is_valid_part(kind: PartKind, part: str) -> bool:
    """Ollama's ``isValidPart``: the characters and length allowed for one part of a name."""
    if not 1 <= len(part) <= _MAX_LEN[kind] or not part.isascii():
        return False
    rest = _REST[kind]
    return part[0] in _FIRST and all(c in rest for c in part[1:])


def is_valid_namespace(part: str) -> bool:
    return is_valid_part("namespace", part)


@dataclass(frozen=True)
class BareName:
    """What ``ParseNameBare`` returns: the parts as written, "" where absent, nothing validated."""

    host: str = ""
    namespace: str = ""
    model: str = ""
    tag: str = ""
    scheme: str = ""

    def with_defaults(self) -> BareName:
        """``ParseName``: absent host, namespace, tag and scheme take Ollama's defaults."""
        return BareName(self.host or DEFAULT_HOST, self.namespace or DEFAULT_NAMESPACE, self.model,
                        self.tag or DEFAULT_TAG, self.scheme or DEFAULT_SCHEME)

    def is_fully_qualified(self) -> bool:
        """``IsValid`` / ``IsFullyQualified``: all four parts present and valid (scheme not checked)."""
        return (is_valid_part("host", self.host) and is_valid_part("namespace", self.namespace)
                and is_valid_part("model", self.model) and is_valid_part("tag", self.tag))

    is_valid = is_fully_qualified

    def __str__(self) -> str:
        """``Name.String``: the present parts joined with their separators, without the scheme."""
        text = self.model
        if self.namespace:
            text = f"{self.namespace}/{text}"
        if self.host:
            text = f"{self.host}/{text}"
        return f"{text}:{self.tag}" if self.tag else text


def _cut_promised(s: str, sep: str) -> tuple[str, str, bool]:
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    return s[:i] or MISSING_PART, s[i + len(sep):] or MISSING_PART, True


def parse_name_bare(s: str) -> BareName:
    """``ParseNameBare``: split ``s`` into parts by position; no defaults, no validation."""
    tag = ""
    if s.rfind(":") > s.rfind("/"):  # "/" cannot be in a tag, so a ":" after the last "/" starts it
        s, tag, _ = _cut_promised(s, ":")
    s, model, promised = _cut_promised(s, "/")
    if not promised:
        return BareName(model=s, tag=tag)
    s, namespace, promised = _cut_promised(s, "/")
    if not promised:
        return BareName(namespace=s, model=model, tag=tag)
    scheme, sep, host = s.partition("://")
    if not sep:
        scheme, host = "", s
    return BareName(host, namespace, model, tag, scheme)


@dataclass(frozen=True)
class ModelName:
    """A valid, fully qualified name: every part matched Ollama's grammar (safe as a URL path segment)."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def full(self) -> str:
        """``host/namespace/model:tag``, as Ollama's ``Name.String`` writes a parsed name."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    display = full  # compatibility with the former proxy.registry.ModelName

    @property
    def shortest(self) -> str:
        """Ollama's ``DisplayShortest``: drops the default host (and then the default namespace)."""
        if self.host.lower() != DEFAULT_HOST:
            return self.full
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def repository(self) -> str:
        """``namespace/model``, the repository part of registry URLs."""
        return f"{self.namespace}/{self.model}"

    @property
    def is_default_host(self) -> bool:
        return self.host.lower() == DEFAULT_HOST

    def __str__(self) -> str:
        return self.full


def parse_name(s: str) -> ModelName | None:
    """``ParseName`` then ``IsValid``: None for a name Ollama rejects. No trimming, no suffixes."""
    bare = parse_name_bare(s).with_defaults()
    if not bare.is_fully_qualified():
        return None
    return ModelName(bare.host, bare.namespace, bare.model, bare.tag)


# --- what the pull and create handlers do before parsing (internal/modelref) ---------------------

Source = Literal["unspecified", "local", "cloud"]


@dataclass(frozen=True)
class ModelRef:
    """``modelref.ParseRef``: the trimmed name, and the ``:cloud``/``:local`` suffix it carried."""

    original: str
    base: str
    source: Source


def _source_suffix(raw: str) -> tuple[str, Source, bool]:
    i = raw.rfind(":")
    if i >= 0:
        suffix_raw = raw[i + 1:].strip(_GO_SPACE)
        suffix = suffix_raw.lower()
        if suffix == "cloud":
            return raw[:i], "cloud", True
        if suffix == "local":
            return raw[:i], "local", True
        if "/" not in suffix_raw and suffix.endswith("-cloud"):
            return raw[:i + 1] + suffix_raw[:-len("-cloud")], "cloud", True
    return raw, "unspecified", False


def parse_ref(raw: str) -> ModelRef | None:
    """None where Ollama errors: empty after trimming, or both a ``:local`` and a ``:cloud`` suffix."""
    raw = raw.strip(_GO_SPACE)
    if not raw:
        return None
    base, source, explicit = _source_suffix(raw)
    if explicit and _source_suffix(base)[2]:
        return None
    return ModelRef(raw, base, source)


def _has_explicit_tag(name: str) -> bool:
    return name.rfind(":") > name.rfind("/")


def normalize_pull_name(raw: str) -> str | None:
    """``modelref.NormalizePullName``: ``x:local`` → ``x``; ``x:8b:cloud`` → ``x:8b-cloud``; ``x:cloud`` stays."""
    ref = parse_ref(raw)
    if ref is None:
        return None
    if ref.source != "cloud":
        return ref.base
    return ref.base + "-cloud" if _has_explicit_tag(ref.base) else ref.base + ":cloud"


def parse_pull_name(raw: str) -> ModelName | None:
    """The name ``POST /api/pull`` pulls, or None where Ollama answers 400 "invalid model name"
    (or the conflicting-suffix error) before any network access."""
    normalized = normalize_pull_name(raw)
    return None if normalized is None else parse_name(normalized)


def create_pull_name(from_: str, remote_host: str = "") -> ModelName | None:
    """The name ``POST /api/create`` pulls when ``from`` is not on disk yet, or None when it pulls nothing.

    None covers: an invalid ``from`` (Ollama answers 400 "invalid model name" before any network
    access), a ``:cloud``/``-cloud`` source or a non-empty ``remote_host`` (Ollama records a remote
    model and downloads nothing). That implicit pull never uses ``insecure``: it is always https.
    """
    ref = parse_ref(from_)
    if ref is None or ref.source == "cloud" or remote_host:
        return None
    return parse_name(ref.base)
