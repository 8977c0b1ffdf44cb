"""Go's ``encoding/json``, the way Ollama reads a request body.

Why: vramgate decides on a body and Ollama then acts on it. Ollama binds bodies with gin's
``ShouldBindJSON``, which is ``json.NewDecoder(body).Decode(&req)``. If vramgate read the body
any other way (Python's ``json.loads``, first key wins, exact-case keys, strict trailing data),
a client could make the gate judge one request while Ollama runs another. So this module
reads a body the way Go does (:func:`decode`, :func:`bind`) and writes back one canonical body
(:func:`encode` of :meth:`Bound.rebuild`) that has a single reading.

What Go does, and so what we do:

- One JSON value is read after leading whitespace (space, tab, CR, LF); bytes after it are
  never looked at. An empty or all-whitespace body is ``io.EOF`` (Ollama: "missing request
  body"); a value cut short is "unexpected EOF".
- Invalid UTF-8 inside a string becomes U+FFFD, one per bad byte (``utf8.DecodeRune``); a
  ``\\u`` escape of an unpaired surrogate becomes U+FFFD. No UTF-16/32 or BOM detection.
- ``NaN``/``Infinity`` are syntax errors. Nesting deeper than 10000 is a syntax error.
- Struct fields: a key matches a field exactly, else case-insensitively with Unicode simple
  folding (``bytes.EqualFold``: ``ſ`` = ``s``, Kelvin ``K`` = ``k``, but ``ß`` != ``ss``); every
  matching key overwrites, so the last one wins. JSON ``null`` leaves a string/bool/number
  field alone and sets a map/pointer/interface/slice to nil. An object decoded into a map
  field that already holds a map merges into it. A wrong JSON type is an UnmarshalTypeError:
  Go keeps decoding and reports the first one; an ``UnmarshalJSON`` method's error stops it.

Limits, stated rather than hidden:

- We refuse (:class:`Unreadable`) values nested deeper than :data:`MAX_DEPTH` although Go
  accepts up to 10000, so that no later walk over the value can hit Python's recursion limit.
- Numbers are kept as ``int`` (integer literal), ``float`` (a literal with ``.``/``e``) or
  :class:`RawNumber` (a literal Python can't hold unchanged: beyond float64 such as ``1e400``,
  or an integer literal too long for ``int()``). Go's view of a number as float64 is
  :func:`go_any`; it raises :class:`GoTypeError` where Go returns an UnmarshalTypeError.
- :func:`encode` writes numbers and string escapes in its own spelling (``1E2`` comes back as
  ``100.0``, ``"\\u00e9"`` as ``"\\u00e9"``, ``"é"`` as ``"\\u00e9"``): same values, not same bytes.
- Error messages are Go-like, not byte-identical to Go's.
- Folding uses Python's Unicode tables (3.11: Unicode 14; Go 1.26: 15.0); for the ASCII field
  names Ollama uses only ``ſ`` and ``K`` fold onto ASCII letters, which both versions agree on.
"""

from __future__ import annotations

import codecs
import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GO_MAX_DEPTH = 10000  # encoding/json's scanner: deeper is "exceeded max depth"
MAX_DEPTH = 256  # ours: deeper bodies are Unreadable (Go accepts them)
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
_SPACE = " \t\n\r"  # Go's isSpace, the same set Python's json skips inside values


class GoRejects(Exception):
    """Go's decoder itself refuses the body, so Ollama answers 400 before doing anything.

    ``eof`` is True for an empty or all-whitespace body (Go's ``io.EOF``, which Ollama reports
    as "missing request body"); any other syntax problem has ``eof`` False.
    """

    def __init__(self, message: str, *, eof: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.eof = eof


class Unreadable(Exception):
    """Go may accept this body but we cannot read it safely (too deeply nested): never guess."""


class GoTypeError(Exception):
    """Go's UnmarshalTypeError: a value Go cannot store in the target type (Ollama: 400)."""


@dataclass(frozen=True)
class RawNumber:
    """A JSON number literal kept as text because Python can't hold it unchanged.

    Either a float literal beyond float64 (``1e400``, which Go's float64/any decoding rejects)
    or an integer literal too long for ``int()``. An unknown field or a RawMessage keeps it
    fine in Go, so we must not fail on it either; :func:`encode` writes it back verbatim.
    """

    text: str


class GoObject(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order, duplicates kept.

    Go's decoder sees every pair (and lets the last matching one win), so a dict, which keeps
    one value per key, would already be a different reading of the body.
    """

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment,unused-ignore]  # (mypy versions differ)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GoObject) and list.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __repr__(self) -> str:
        return f"GoObject({list.__repr__(self)})"


# --- decode -------------------------------------------------------------------------------------

_REPLACE = "vramgate.gojson.replace"
# Go replaces each invalid byte by one U+FFFD; Python's "replace" uses one per maximal bad run.
codecs.register_error(_REPLACE, lambda err: ("\ufffd", err.start + 1))  # type: ignore[attr-defined]

_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class _Constant(Exception):
    pass


def _parse_int(text: str) -> int | RawNumber:
    try:
        return int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        return RawNumber(text)


def _parse_float(text: str) -> float | RawNumber:
    value = float(text)
    return value if math.isfinite(value) else RawNumber(text)


def _parse_constant(text: str) -> Any:
    raise _Constant(text)


_DECODER = json.JSONDecoder(object_pairs_hook=GoObject, parse_int=_parse_int,
                            parse_float=_parse_float, parse_constant=_parse_constant)


def decode(body: bytes) -> Any:
    """Read the first JSON value of ``body`` as Go's ``json.Decoder.Decode`` does.

    Raises :class:`GoRejects` where Go returns an error, :class:`Unreadable` where Go would
    succeed but we won't read the value.
    """
    text = body.decode("utf-8", _REPLACE)
    start = len(text) - len(text.lstrip(_SPACE))
    if start == len(text):
        raise GoRejects("EOF", eof=True)
    _check_depth(text, start)
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as err:
        raise GoRejects(_syntax_message(err, len(text))) from None
    except _Constant as err:
        raise GoRejects(f"invalid character {str(err)[0]!r} looking for beginning of value") from None
    except RecursionError:
        raise Unreadable("JSON nested too deeply for this process") from None
    if _is_number(value):
        _check_number_end(text, start, end)
    if _ESCAPED_SURROGATE.search(text):
        value = _replace_lone_surrogates(value)
    return value


def _syntax_message(err: json.JSONDecodeError, length: int) -> str:
    if err.pos >= length or err.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    return f"invalid JSON at offset {err.pos}: {err.msg}"


def _check_depth(text: str, start: int) -> None:
    """Go refuses depth > 10000; we refuse depth > MAX_DEPTH, before Python recurses into it."""
    if text.count("[", start) + text.count("{", start) <= MAX_DEPTH:
        return
    depth = _first_value_depth(text, start)
    if depth > GO_MAX_DEPTH:
        raise GoRejects("exceeded max depth")
    if depth > MAX_DEPTH:
        raise Unreadable(f"JSON nested {depth} deep; vramgate reads at most {MAX_DEPTH}")


def _first_value_depth(text: str, start: int) -> int:
    """Deepest nesting inside the first value (exact for valid JSON; Go rejects the rest anyway)."""
    if text[start] not in "[{":
        return 0
    depth = deepest = 0
    for match in _TOKENS.finditer(text, start):
        token = match.group()
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if depth > GO_MAX_DEPTH:
                break
        else:
            depth -= 1
            if depth == 0:
                break
    return deepest


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, RawNumber)) and not isinstance(value, bool)


def _check_number_end(text: str, start: int, end: int) -> None:
    """A top-level number Python stopped early on ("1.", "1e") is a syntax error for Go.

    Python's number grammar requires digits after ``.`` and ``e``, and leaves a dangling ``.``
    or ``e`` as trailing data; Go's scanner is still inside the number there and fails.
    """
    literal, after = text[start:end], text[end:end + 1]
    if "e" in literal or "E" in literal or after == "":
        return
    if after in "eE" or (after == "." and "." not in literal):
        raise GoRejects(f"invalid character {after!r} in numeric literal")


def _replace_lone_surrogates(value: Any) -> Any:
    """Python keeps an unpaired ``\\ud800`` escape as a lone surrogate; Go makes it U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    stack = [value] if isinstance(value, list) else []
    while stack:
        node = stack.pop()
        for i, item in enumerate(node):
            if isinstance(node, GoObject):
                key, child = item
                node[i] = (_LONE_SURROGATE.sub("\ufffd", key), _fixed(child, stack))
            else:
                node[i] = _fixed(item, stack)
    return value


def _fixed(child: Any, stack: list[Any]) -> Any:
    if isinstance(child, str):
        return _LONE_SURROGATE.sub("\ufffd", child)
    if isinstance(child, list):
        stack.append(child)
    return child


# --- encode -------------------------------------------------------------------------------------

_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii


def encode(value: Any) -> bytes:
    """Compact ASCII JSON for a decoded value (GoObject pairs in order, duplicates kept).

    Also takes ``dict`` (what :func:`go_any` and map fields hold) and tuples as arrays.
    """
    out: list[str] = []
    _encode_into(value, out)
    return "".join(out).encode("ascii")


def _encode_into(value: Any, out: list[str]) -> None:
    if value is None or isinstance(value, bool):
        out.append("null" if value is None else "true" if value else "false")
    elif isinstance(value, str):
        out.append(_quote(value))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no JSON form")
        out.append(float.__repr__(value))
    elif isinstance(value, RawNumber):
        out.append(value.text)
    elif isinstance(value, GoObject):
        _encode_pairs(value, out)
    elif isinstance(value, dict):
        _encode_pairs(value.items(), out)
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode_into(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def _encode_pairs(pairs: Iterable[tuple[str, Any]], out: list[str]) -> None:
    out.append("{")
    for i, (key, item) in enumerate(pairs):
        if not isinstance(key, str):
            raise TypeError(f"object key {key!r} is not a string")
        if i:
            out.append(",")
        out.append(_quote(key))
        out.append(":")
        _encode_into(item, out)
    out.append("}")


# --- Go's view of a value -----------------------------------------------------------------------


def go_float(value: int | float | RawNumber) -> float:
    """The float64 Go's ``strconv.ParseFloat`` gives for a number literal, or GoTypeError.

    Python's int-to-float and float() are correctly rounded like ParseFloat, so the values agree;
    a number that rounds past float64's range is Go's UnmarshalTypeError.
    """
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise GoTypeError(f"json: cannot unmarshal number {value} into Go value of type float64") from None
    text = value.text if isinstance(value, RawNumber) else repr(value)
    raise GoTypeError(f"json: cannot unmarshal number {text} into Go value of type float64")


def go_any(value: Any) -> Any:
    """What Go stores in an ``interface{}``: float64 numbers, ``map[string]any`` (last key wins), ``[]any``.

    Used for ``map[string]any`` values (Ollama's ``options``) and ``any`` fields. Raises
    GoTypeError for a number beyond float64, as Go does.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, GoObject):
        return {key: go_any(item) for key, item in value}
    if isinstance(value, list):
        return [go_any(item) for item in value]
    return go_float(value)


# --- folding ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _fold_char(c: str) -> str:
    """One representative per Unicode simple-case-folding class (Go's SimpleFold orbit)."""
    if c < "\x80":
        return c.lower()
    full = c.casefold()
    if len(full) == 1:  # status C (or no folding): the simple fold
        return full
    lower = c.lower()  # status F: the S mapping where one exists equals lower(), else c itself
    return lower if len(lower) == 1 else c


def fold_name(name: str) -> str:
    """A key such that ``fold_name(a) == fold_name(b)`` exactly when Go's ``bytes.EqualFold(a, b)``.

    Unicode *simple* folding, char by char: ``ſ``~``s``, ``K``(U+212A)~``k``, ``ẞ``~``ß``, but
    ``ß`` never matches ``ss`` (that is full folding, Python's ``str.casefold``).
    """
    return "".join(_fold_char(c) for c in name)


def names_match(a: str, b: str) -> bool:
    """Go's ``strings.EqualFold`` / ``bytes.EqualFold``."""
    return a == b or fold_name(a) == fold_name(b)


# --- struct binding -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Custom:
    """A ``*T`` field where ``T`` has its own ``UnmarshalJSON`` (``*api.Duration``, ``*api.ThinkValue``).

    ``null`` sets the pointer to nil; any other value is kept as is after ``check(value)``
    returns None; an error string from ``check`` stops Go's decoding, as an UnmarshalJSON
    error does.
    """

    name: str
    check: Callable[[Any], str | None]


Kind = str | Custom
"""A field's Go type, as one of :data:`KINDS` or a :class:`Custom`."""

KINDS = {
    "string": "string: null keeps the old value",
    "bool": "bool: null keeps the old value",
    "int": "int (int64): an integer literal in range; 1.0 and 1e2 are type errors; null keeps",
    "float": "float64: any number within float64; null keeps",
    "map": "map[string]any: an object merges into the map already there (values as go_any); null sets nil",
    "any": "interface{}: any value, held as go_any; null sets nil",
    "raw": "json.RawMessage: any value kept verbatim, null included (Go stores the text null)",
    "pointer_bool": "*bool: null sets nil",
    "slice": "[]T whose elements Go replaces whole (T with an UnmarshalJSON, like api.Message):"
             " an array is kept verbatim, null sets nil; elements are not checked",
}


@dataclass
class Bound:
    """The struct Go would fill from an object: set fields, the unmatched pairs, the first error."""

    schema: Mapping[str, Kind]
    values: dict[str, Any] = field(default_factory=dict)
    rest: GoObject = field(default_factory=GoObject)
    type_error: str | None = None

    def rebuild(self) -> GoObject:
        """The object to forward: each set field once under its own name, then the rest pairs.

        Go decoding ``encode(rebuild())`` fills the same fields with the same values, and the
        unmatched pairs reach Ollama's other fields exactly as sent. A body Go rejects has no
        faithful rebuild, so that raises ValueError.
        """
        if self.type_error is not None:
            raise ValueError(f"Go rejects this body ({self.type_error}); forward nothing")
        pairs = GoObject((name, self.values[name]) for name in self.schema if name in self.values)
        pairs.extend(self.rest)
        return pairs


def bind(obj: Any, schema: Mapping[str, Kind]) -> Bound:
    """Decode ``obj`` (from :func:`decode`) into a Go struct whose json tags are ``schema``'s keys.

    Pairs are applied in order with Go's matching, null and merge rules (see the module doc).
    A non-object top level is a type error; top-level ``null`` leaves the struct empty.
    """
    for kind in schema.values():
        if not isinstance(kind, Custom) and kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
    bound = Bound(schema)
    if obj is None:
        return bound
    if not isinstance(obj, GoObject):
        bound.type_error = f"json: cannot unmarshal {_json_type(obj)} into Go value of type struct"
        return bound
    folded: dict[str, str] = {}
    for name in schema:
        folded.setdefault(fold_name(name), name)  # Go: the first field wins a fold tie
    for key, value in obj:
        found = key if key in schema else folded.get(fold_name(key))
        if found is None:
            bound.rest.append((key, value))
            continue
        name = found
        error = _store(bound.values, name, schema[name], value)
        if error is not None and isinstance(schema[name], Custom):
            bound.type_error = error  # an UnmarshalJSON error ends decoding and is what Go returns
            return bound
        if error is not None and bound.type_error is None:
            bound.type_error = error
    return bound


def _store(values: dict[str, Any], name: str, kind: Kind, value: Any) -> str | None:
    """Apply one matching pair to the struct; return Go's error for it, if any."""
    if isinstance(kind, Custom):
        if value is None:
            values.pop(name, None)
            return None
        error = kind.check(value)
        if error is None:
            values[name] = value
        return error
    if value is None:
        if kind in ("map", "any", "pointer_bool", "slice"):
            values.pop(name, None)  # nil, which Go can't tell from never set
        elif kind == "raw":
            values[name] = None
        return None  # string/bool/int/float: null is a no-op
    try:
        _STORE[kind](values, name, value)
    except GoTypeError as err:
        return str(err)
    return None


def _mismatch(value: Any, gotype: str) -> GoTypeError:
    return GoTypeError(f"json: cannot unmarshal {_json_type(value)} into Go value of type {gotype}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, GoObject):
        return "object"
    if isinstance(value, list):
        return "array"
    return "number"


def _store_string(values: dict[str, Any], name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise _mismatch(value, "string")
    values[name] = value


def _store_bool(values: dict[str, Any], name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _mismatch(value, "bool")
    values[name] = value


def _store_pointer_bool(values: dict[str, Any], name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _mismatch(value, "*bool")
    values[name] = value


def _store_int(values: dict[str, Any], name: str, value: Any) -> None:
    """Go parses the literal with strconv.ParseInt: integer syntax only, within int64."""
    if isinstance(value, bool) or not isinstance(value, int) or not INT64_MIN <= value <= INT64_MAX:
        raise _mismatch(value, "int")
    values[name] = value


def _store_float(values: dict[str, Any], name: str, value: Any) -> None:
    if not _is_number(value):
        raise _mismatch(value, "float64")
    values[name] = go_float(value)


def _store_map(values: dict[str, Any], name: str, value: Any) -> None:
    if not isinstance(value, GoObject):
        raise _mismatch(value, "map[string]interface {}")
    merged = values.setdefault(name, {})
    error: GoTypeError | None = None
    for key, item in value:
        try:
            merged[key] = go_any(item)
        except GoTypeError as err:
            merged[key] = None
            error = error or err
    if error is not None:
        raise error


def _store_any(values: dict[str, Any], name: str, value: Any) -> None:
    values[name] = go_any(value)


def _store_raw(values: dict[str, Any], name: str, value: Any) -> None:
    values[name] = value


def _store_slice(values: dict[str, Any], name: str, value: Any) -> None:
    if not isinstance(value, list) or isinstance(value, GoObject):
        raise _mismatch(value, "slice")
    values[name] = value


_STORE: dict[str, Callable[[dict[str, Any], str, Any], None]] = {
    "string": _store_string,
    "bool": _store_bool,
    "int": _store_int,
    "float": _store_float,
    "map": _store_map,
    "any": _store_any,
    "raw": _store_raw,
    "pointer_bool": _store_pointer_bool,
    "slice": _store_slice,
}
