"""The request bodies that can make Ollama load or download a model, read as Ollama reads them.

Why: the gate must judge the same request Ollama will run. Each route's schema below lists the
fields of Ollama's Go request struct that we model exactly (json tag -> kind, from
``api/types.go``, ``openai/*.go``, ``anthropic/anthropic.go``); everything else stays in
``Bound.rest`` and is forwarded verbatim. Forward :meth:`Parsed.body`, never the original
bytes: it is the canonical body the decision was made on.

What Ollama does with a parsed body (``server/routes.go``, ``middleware/*.go``):

- ``/api/generate``: unload without loading when ``prompt == ""`` and ``keep_alive`` is exactly 0;
  otherwise an empty prompt loads the model and answers ``done_reason: "load"``.
- ``/api/chat``: the same with ``len(messages) == 0``.
- ``/api/embed``, ``/api/embeddings``: no unload case; an empty input/prompt loads the model.
  ``keep_alive: 0`` loads, answers, then unloads once idle.
- ``/api/pull``: the name is ``cmp.Or(model, name)`` (``model`` unless it is empty). Never loads.
- ``/api/create``: the new name is ``cmp.Or(model, name)``; a non-empty ``from`` that is neither
  a ``:cloud`` reference nor paired with ``remote_host`` is pulled when missing. Never loads.
- OpenAI/Anthropic routes (``/v1/...``): a middleware binds its own struct with the same Go
  rules, converts it and re-encodes an ``/api/chat``, ``/api/generate`` or ``/api/embed`` body.
  None of them sets ``keep_alive`` or any load-time option: the options they build hold only
  ``num_predict`` (from ``max_tokens`` / ``max_output_tokens``), ``temperature``, ``top_p``,
  ``top_k`` (Anthropic), ``seed``, ``stop``, ``frequency_penalty``, ``presence_penalty``. So a
  ``/v1`` request loads with the model's/server's ``num_ctx``, ``num_batch`` and ``num_gpu``
  (automatic), keeps the default keep-alive, and never unloads. ``/v1/completions`` with an
  empty prompt is a load-only request. On ``/v1/*`` Ollama first decompresses a body sent with
  ``Content-Encoding: zstd`` (exactly that header value; at most 20 MiB decompressed) and looks
  for a ``:cloud`` model with ``json.Unmarshal`` into ``map[string]json.RawMessage`` (exact
  ``"model"`` key, last duplicate wins, trailing data is an error): the canonical body makes
  that second reading agree with ours.
- ``/v1/audio/transcriptions`` is multipart: see :func:`transcription_model`.

Options (``Options.FromMap``) are looked up by exact, case-sensitive key; unknown keys are
ignored; a ``null`` value is skipped but still counts as "set" for the automatic
``num_ctx``/``num_batch`` logic; a wrong JSON type fails the request with 500 before loading.
Integer options take any JSON number, truncated toward zero (``2048.9`` -> 2048, ``-1.5`` -> -1;
out of int64 range see :func:`proxy.keep_alive.float_to_int64`); strings, bools, arrays and
objects are errors. Float options take any number; ``stop`` an array of strings;
``use_mmap`` a bool; ``main_gpu`` a number like the int options.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.ollama import keep_alive
from proxy.ollama.gojson import (
    Bound,
    Custom,
    GoRejects,
    Kind,
    Unreadable,
    bind,
    decode,
    encode,
    names_match,
)

THINK_LEVELS = frozenset({"high", "medium", "low", "max"})


def _think_error(value: Any) -> str | None:
    """``api.ThinkValue.UnmarshalJSON``: a bool or one of the four level strings."""
    if isinstance(value, bool) or (isinstance(value, str) and value in THINK_LEVELS):
        return None
    if isinstance(value, str):
        return f'invalid think value: "{value}" (must be "high", "medium", "low", "max", true, or false)'
    return 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'


DURATION = Custom("*api.Duration", keep_alive.unmarshal_error)
THINK = Custom("*api.ThinkValue", _think_error)

# Unmodelled (left in rest, forwarded verbatim): generate's context ([]int) and images (base64
# []byte); chat's tools. They never change what is loaded.
GENERATE: Mapping[str, Kind] = {
    "model": "string", "prompt": "string", "suffix": "string", "system": "string",
    "template": "string", "stream": "pointer_bool", "raw": "bool", "format": "raw",
    "keep_alive": DURATION, "options": "map", "think": THINK, "truncate": "pointer_bool",
    "shift": "pointer_bool", "_debug_render_only": "bool", "logprobs": "bool", "top_logprobs": "int",
}
CHAT: Mapping[str, Kind] = {
    "model": "string", "messages": "slice", "stream": "pointer_bool", "format": "raw",
    "keep_alive": DURATION, "options": "map", "think": THINK, "truncate": "pointer_bool",
    "shift": "pointer_bool", "_debug_render_only": "bool", "logprobs": "bool", "top_logprobs": "int",
}
EMBED: Mapping[str, Kind] = {
    "model": "string", "input": "any", "keep_alive": DURATION, "truncate": "pointer_bool",
    "dimensions": "int", "options": "map",
}
EMBEDDINGS: Mapping[str, Kind] = {
    "model": "string", "prompt": "string", "keep_alive": DURATION, "options": "map",
}
PULL: Mapping[str, Kind] = {
    "model": "string", "insecure": "bool", "username": "string", "password": "string",
    "stream": "pointer_bool", "name": "string",
}
# Unmodelled: files/draft_files/adapters (map[string]string), license, parameters, messages, info.
CREATE: Mapping[str, Kind] = {
    "model": "string", "stream": "pointer_bool", "quantize": "string", "draft_quantize": "string",
    "from": "string", "remote_host": "string", "template": "string", "system": "string",
    "renderer": "string", "parser": "string", "requires": "string", "name": "string",
    "quantization": "string",
}
# The compatibility structs: only what decides the model and the load. Their message lists
# are left in rest: openai.Message and anthropic.MessageParam elements are decoded *into* the
# previous array's elements (a merge), so only all the pairs, verbatim, keep Go's reading.
V1_CHAT: Mapping[str, Kind] = {"model": "string", "stream": "bool"}
V1_COMPLETIONS: Mapping[str, Kind] = {"model": "string", "prompt": "string", "stream": "bool", "suffix": "string"}
V1_EMBEDDINGS: Mapping[str, Kind] = {"input": "any", "model": "string", "dimensions": "int", "encoding_format": "string"}
V1_RESPONSES: Mapping[str, Kind] = {"model": "string", "stream": "pointer_bool"}
V1_MESSAGES: Mapping[str, Kind] = {"model": "string", "max_tokens": "int", "stream": "bool"}

SCHEMAS: Mapping[str, Mapping[str, Kind]] = {
    "/api/generate": GENERATE, "/api/chat": CHAT, "/api/embed": EMBED,
    "/api/embeddings": EMBEDDINGS, "/api/pull": PULL, "/api/create": CREATE,
    "/v1/chat/completions": V1_CHAT, "/v1/completions": V1_COMPLETIONS,
    "/v1/embeddings": V1_EMBEDDINGS, "/v1/responses": V1_RESPONSES, "/v1/messages": V1_MESSAGES,
}
_WITH_OPTIONS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})

# Options.FromMap's field kinds, by json tag (Runner's load-time ones first).
OPTION_KINDS: Mapping[str, str] = {
    "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "*int", "use_mmap": "*bool",
    "num_thread": "int", "draft_num_predict": "int",
    "num_keep": "int", "seed": "int", "num_predict": "int", "top_k": "int", "top_p": "float32",
    "min_p": "float32", "typical_p": "float32", "repeat_last_n": "int", "temperature": "float32",
    "repeat_penalty": "float32", "presence_penalty": "float32", "frequency_penalty": "float32",
    "stop": "[]string",
}
RUNNER_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
                            "draft_num_predict"})


@dataclass(frozen=True)
class Rejection:
    """An answer Ollama gives before loading or pulling anything."""

    status: int
    message: str


@dataclass(frozen=True)
class InvalidOption:
    """An option value ``Options.FromMap`` refuses (the whole request fails with 500)."""

    key: str
    message: str


@dataclass(frozen=True)
class Parsed:
    """One request as Ollama will read it.

    ``model`` is the raw name string the handler uses (parse it with ``proxy.model_name``);
    ``options`` the ``map[string]any`` the handler gets (None when absent, and always for
    ``/v1`` routes, whose options hold no load-time key); ``keep_alive`` the raw JSON value
    (None when absent or null). ``rejected`` is set when Ollama answers before any load or
    pull; then ``unload`` and ``load_only`` are False.
    """

    route: str
    bound: Bound
    model: str
    options: dict[str, Any] | None
    keep_alive: Any
    unload: bool
    load_only: bool
    rejected: Rejection | None

    def body(self) -> bytes:
        """The canonical body to forward (raises ValueError when Go rejects the original)."""
        return encode(self.bound.rebuild())


def read_request(route: str, body: bytes) -> Parsed | GoRejects | Unreadable:
    """Read a JSON body for ``route`` (a key of :data:`SCHEMAS`) as Ollama does."""
    try:
        bound = bind(decode(body), SCHEMAS[route])
    except (GoRejects, Unreadable) as err:
        return err
    values = bound.values
    rejected = Rejection(400, bound.type_error) if bound.type_error else _rejected_early(route, values)
    unload = rejected is None and _unload(route, values)
    if rejected is None and not unload and route in _WITH_OPTIONS:
        rejected = _options_rejection(values.get("options"))
    model = values.get("model", "")
    if route in ("/api/pull", "/api/create"):
        model = model or values.get("name", "")  # cmp.Or(req.Model, req.Name)
    return Parsed(
        route=route, bound=bound, model=model,
        options=values.get("options") if route in _WITH_OPTIONS else None,
        keep_alive=values.get("keep_alive"),
        unload=unload,
        load_only=rejected is None and not unload and _load_only(route, values),
        rejected=rejected,
    )


def _unload(route: str, values: Mapping[str, Any]) -> bool:
    """GenerateHandler/ChatHandler: nothing to run and keep_alive exactly 0 -> expire, no load."""
    if not keep_alive.is_zero(values.get("keep_alive")):
        return False
    if route == "/api/generate":
        return values.get("prompt", "") == ""
    if route == "/api/chat":
        return not values.get("messages")
    return False


def _load_only(route: str, values: Mapping[str, Any]) -> bool:
    """Loads the model and answers without running it (empty prompt/messages/input)."""
    if route in ("/api/generate", "/api/embeddings", "/v1/completions"):
        return values.get("prompt", "") == ""
    if route == "/api/chat":
        return not values.get("messages")
    if route == "/api/embed":
        return _embed_inputs(values.get("input")) == 0
    return False  # /v1 chat/responses/messages: only for odd bodies we do not predict


def _embed_inputs(value: Any) -> int | None:
    """EmbedHandler's input count; None when it answers "invalid input type"."""
    if value is None or isinstance(value, str):
        return 1 if value else 0
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return len(value)
    return None


def _rejected_early(route: str, values: Mapping[str, Any]) -> Rejection | None:
    """The checks Ollama makes on the parsed body before looking at the model."""
    if route in ("/api/generate", "/api/chat") and not 0 <= values.get("top_logprobs", 0) <= 20:
        return Rejection(400, "top_logprobs must be between 0 and 20")
    if route == "/api/embed" and _embed_inputs(values.get("input")) is None:
        return Rejection(400, "invalid input type")
    if route == "/v1/embeddings":
        return _v1_embeddings_rejection(values)
    if route == "/v1/messages":
        if values.get("model", "") == "":
            return Rejection(400, "model is required")
        if values.get("max_tokens", 0) <= 0:
            return Rejection(400, "max_tokens is required and must be positive")
    return None


def _v1_embeddings_rejection(values: Mapping[str, Any]) -> Rejection | None:
    """EmbeddingsMiddleware, then EmbedHandler's input check on what it forwards."""
    fmt = values.get("encoding_format", "")
    if fmt and not (names_match(fmt, "float") or names_match(fmt, "base64")):
        return Rejection(400, f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].")
    value = values.get("input")
    if value == "":
        value = [""]
    if value is None or value == []:
        return Rejection(400, "invalid input")
    if _embed_inputs(value) is None:
        return Rejection(400, "invalid input type")
    return None


def _options_rejection(options: Mapping[str, Any] | None) -> Rejection | None:
    error = options_error(options)
    return None if error is None else Rejection(500, error)


def option_error(key: str, value: Any) -> str | None:
    """``Options.FromMap``'s error for one request option, None when it accepts or ignores it."""
    kind = OPTION_KINDS.get(key)
    if kind is None or value is None:
        return None  # unknown keys are logged and ignored; null is skipped
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("int", "*int") and not number:
        return f'option "{key}" must be of type integer'
    if kind == "float32" and not number:
        return f'option "{key}" must be of type float32'
    if kind == "*bool" and not isinstance(value, bool):
        return f'option "{key}" must be of type boolean'
    if kind == "[]string":
        if not isinstance(value, list):
            return f'option "{key}" must be of type array'
        if not all(isinstance(item, str) for item in value):
            return f'option "{key}" must be of an array of strings'
    return None


def options_error(options: Mapping[str, Any] | None) -> str | None:
    """The first FromMap error among the options (Go's map order is random; we go by key)."""
    for key in sorted(options or {}):
        error = option_error(key, options[key])  # type: ignore[index]
        if error is not None:
            return error
    return None


def has_option(options: Mapping[str, Any] | None, key: str) -> bool:
    """Ollama's hasOption: the key is present, even with a null value (turns off automatic num_ctx)."""
    return options is not None and key in options


def option_int(options: Mapping[str, Any] | None, key: str, *,
               arch: keep_alive.Arch = "amd64") -> int | None | InvalidOption:
    """An integer option (``num_ctx``, ``num_gpu``, ``num_batch``...) as Ollama sets it.

    None when absent or null (the Modelfile/default value stays); :class:`InvalidOption` when
    FromMap fails the request; else the float64 truncated toward zero.
    """
    if OPTION_KINDS.get(key) not in ("int", "*int"):
        raise ValueError(f"{key!r} is not an integer option")
    if options is None or options.get(key) is None:
        return None
    error = option_error(key, options[key])
    if error is not None:
        return InvalidOption(key, error)
    return keep_alive.float_to_int64(float(options[key]), arch)


# --- /v1/audio/transcriptions -----------------------------------------------------------------

MAX_QUERY_PARAMS = 10000  # Go 1.26 net/url (GODEBUG urlmaxqueryparams)


def transcription_model(raw_query: str, form_values: Sequence[tuple[str, str]]) -> str | Rejection:
    """The model ``TranscriptionMiddleware`` uses: ``Request.FormValue("model")``.

    Go's ``r.Form`` holds the URL query's values *first*, then the multipart fields (non-file
    parts, in order); FormValue takes the first ``model`` value (exact-case key). So
    ``?model=a`` beats a ``model`` form field, and ``?model=`` (empty) makes it "model is
    required". Any error parsing the query (a ``;``, a bad ``%`` escape, more than 10000
    ``&``-separated parts) fails ParseMultipartForm, hence the whole request, with 400.
    ``form_values`` are the multipart text fields as the caller parsed them.
    """
    query, error = go_parse_query(raw_query)
    if error is not None:
        return Rejection(400, f"failed to parse multipart form: {error}")
    for key, value in [*query, *form_values]:
        if key == "model":
            return value if value else Rejection(400, "model is required")
    return Rejection(400, "model is required")


def go_parse_query(raw: str) -> tuple[list[tuple[str, str]], str | None]:
    """Go's ``url.ParseQuery``: the pairs it keeps, in order, and its error (if any)."""
    if raw.count("&") + 1 > MAX_QUERY_PARAMS:
        return [], "number of URL query parameters exceeded limit"
    pairs: list[tuple[str, str]] = []
    error: str | None = None
    for part in raw.split("&"):
        if ";" in part:
            error = "invalid semicolon separator in query"
            continue
        if part == "":
            continue
        key, _, value = part.partition("=")
        try:
            pairs.append((_query_unescape(key), _query_unescape(value)))
        except ValueError as err:
            error = error or str(err)
    return pairs, error


def _query_unescape(s: str) -> str:
    """``url.QueryUnescape``: ``+`` is a space, ``%XX`` a byte, any other ``%`` an error."""
    raw = s.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # %
            pair = raw[i + 1:i + 3]
            if len(pair) < 2 or not all(chr(b) in "0123456789abcdefABCDEF" for b in pair):
                raise ValueError(f"invalid URL escape {raw[i:i + 3].decode('latin-1')!r}")
            out.append(int(pair, 16))
            i += 3
            continue
        out.append(0x20 if c == 0x2B else c)
        i += 1
    return out.decode("utf-8", "vramgate.gojson.replace")
