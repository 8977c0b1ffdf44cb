"""proxy.ollama_requests against what Ollama's handlers do (server/routes.go, middleware/*.go)."""

from __future__ import annotations

import pytest

from proxy.ollama.gojson import GoRejects, Unreadable
from proxy.ollama.keep_alive import INT64_MIN
from proxy.ollama.requests import (
    SCHEMAS,
    InvalidOption,
    Parsed,
    Rejection,
    has_option,
    option_int,
    options_error,
    read_request,
    transcription_model,
)


def read(route: str, body: bytes) -> Parsed:
    parsed = read_request(route, body)
    assert isinstance(parsed, Parsed), parsed
    return parsed


# --- unload / load-only -------------------------------------------------------------------------


@pytest.mark.parametrize("body, unload, load_only", [
    (b'{"model":"m","keep_alive":0}', True, False),
    (b'{"model":"m","prompt":"","keep_alive":"0s"}', True, False),
    (b'{"model":"m","keep_alive":"0m0s"}', True, False),
    (b'{"model":"m","keep_alive":-0}', True, False),
    (b'{"model":"m","keep_alive":1e-10}', True, False),  # truncates to 0 ns
    (b'{"model":"m","\xe2\x84\xaaeep_alive":0}', True, False),  # Kelvin-sign key is keep_alive
    (b'{"model":"m","keep_alive":0,"PROMPT":"hi"}', False, False),  # runs, then unloads
    (b'{"model":"m","prompt":"hi","keep_alive":0}', False, False),
    (b'{"model":"m","prompt":"hi","prompt":null,"keep_alive":0}', False, False),  # null keeps "hi"
    (b'{"model":"m","prompt":"hi","Prompt":"","keep_alive":0}', True, False),  # last wins
    (b'{"model":"m"}', False, True),
    (b'{"model":"m","keep_alive":null}', False, True),
    (b'{"model":"m","keep_alive":"5m"}', False, True),
    (b'{"model":"m","keep_alive":-1}', False, True),
    (b'{"model":"m","keep_alive":0,"keep_alive":"5m"}', False, True),
])
def test_generate_unload_and_load(body: bytes, unload: bool, load_only: bool) -> None:
    parsed = read("/api/generate", body)
    assert parsed.rejected is None
    assert (parsed.unload, parsed.load_only) == (unload, load_only)


@pytest.mark.parametrize("body, unload, load_only", [
    (b'{"model":"m","keep_alive":0}', True, False),
    (b'{"model":"m","messages":[],"keep_alive":0}', True, False),
    (b'{"model":"m","messages":null,"keep_alive":"0"}', True, False),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"Messages":[],"keep_alive":0}', True, False),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"keep_alive":0}', False, False),
    (b'{"model":"m","messages":[{}],"keep_alive":0}', False, False),
    (b'{"model":"m","messages":[]}', False, True),
])
def test_chat_unload_and_load(body: bytes, unload: bool, load_only: bool) -> None:
    parsed = read("/api/chat", body)
    assert (parsed.unload, parsed.load_only, parsed.rejected) == (unload, load_only, None)


@pytest.mark.parametrize("body, load_only", [
    (b'{"model":"m","keep_alive":0}', True),  # no unload case: loads, answers, then unloads
    (b'{"model":"m","input":""}', True),
    (b'{"model":"m","input":[]}', True),
    (b'{"model":"m","input":null}', True),
    (b'{"model":"m","input":"x"}', False),
    (b'{"model":"m","input":[""]}', False),
])
def test_embed_never_unloads(body: bytes, load_only: bool) -> None:
    parsed = read("/api/embed", body)
    assert (parsed.unload, parsed.load_only, parsed.rejected) == (False, load_only, None)


def test_embeddings_never_unloads() -> None:
    parsed = read("/api/embeddings", b'{"model":"m","keep_alive":0}')
    assert (parsed.unload, parsed.load_only) == (False, True)
    assert not read("/api/embeddings", b'{"model":"m","prompt":"x"}').load_only


@pytest.mark.parametrize("body", [b'{"model":"m","input":[1]}', b'{"model":"m","input":5}',
                                  b'{"model":"m","input":{"a":"b"}}', b'{"model":"m","input":true}'])
def test_embed_input_of_the_wrong_type_is_400(body: bytes) -> None:
    assert read("/api/embed", body).rejected == Rejection(400, "invalid input type")


# --- rejections before any load ----------------------------------------------------------------


@pytest.mark.parametrize("route, body, status", [
    ("/api/generate", b'{"model":"m","keep_alive":"300"}', 400),
    ("/api/generate", b'{"model":"m","keep_alive":true}', 400),
    ("/api/generate", b'{"model":"m","keep_alive":true,"keep_alive":"5m"}', 400),  # first one already failed
    ("/api/generate", b'{"model":1}', 400),
    ("/api/generate", b'{"model":"m","top_logprobs":21}', 400),
    ("/api/chat", b'{"model":"m","top_logprobs":-1}', 400),
    ("/api/generate", b'{"model":"m","top_logprobs":1.0}', 400),
    ("/api/generate", b'{"model":"m","think":"ultra"}', 400),
    ("/api/chat", b'{"model":"m","think":1}', 400),
    ("/api/chat", b'{"model":"m","messages":{}}', 400),
    ("/api/generate", b'{"model":"m","options":[]}', 400),
    ("/api/generate", b'{"model":"m","options":{"num_ctx":1e400}}', 400),
    ("/api/pull", b'{"model":"m","insecure":"yes"}', 400),
    ("/api/generate", b'[{"model":"m"}]', 400),
    ("/api/generate", b'{"model":"m","prompt":"p","options":{"num_ctx":"8192"}}', 500),
    ("/api/embed", b'{"model":"m","options":{"num_gpu":true}}', 500),
    ("/api/chat", b'{"model":"m","messages":[{}],"options":{"stop":"x"}}', 500),
])
def test_rejected_before_loading(route: str, body: bytes, status: int) -> None:
    parsed = read(route, body)
    assert parsed.rejected is not None and parsed.rejected.status == status
    assert not parsed.unload and not parsed.load_only


def test_options_are_not_checked_on_the_unload_path() -> None:
    parsed = read("/api/generate", b'{"model":"m","keep_alive":0,"options":{"num_ctx":"bad"}}')
    assert parsed.unload and parsed.rejected is None


def test_accepted_think_values() -> None:
    for think in (b"true", b"false", b'"high"', b'"medium"', b'"low"', b'"max"', b"null"):
        assert read("/api/chat", b'{"model":"m","think":' + think + b"}").rejected is None


def test_go_rejections_come_back_as_values() -> None:
    eof = read_request("/api/generate", b"  ")
    assert isinstance(eof, GoRejects) and eof.eof
    bad = read_request("/api/generate", b'{"model":"m",}')
    assert isinstance(bad, GoRejects) and not bad.eof
    deep = read_request("/api/generate", b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert isinstance(deep, Unreadable)


# --- model name and canonical body --------------------------------------------------------------


@pytest.mark.parametrize("body, model", [
    (b'{"model":"","name":"llama"}', "llama"),
    (b'{"name":"a","model":"b"}', "b"),
    (b'{"Name":"a"}', "a"),
    (b'{"model":null,"NAME":"x"}', "x"),
    (b'{"model":"a","Model":"","name":"n"}', "n"),
])
def test_pull_name_is_model_or_else_name(body: bytes, model: str) -> None:
    assert read("/api/pull", body).model == model


def test_create_name_and_from() -> None:
    parsed = read("/api/create", b'{"name":"x","FROM":"llama3","files":{"a":"sha256:1"}}')
    assert parsed.model == "x"
    assert parsed.bound.values["from"] == "llama3"


def test_body_is_canonical() -> None:
    parsed = read("/api/generate", b'{"Model":"big","model":"small","OPTIONS":{"num_ctx":8},'
                                   b'"images":["aGk="],"model":"final"} trailing')
    assert parsed.model == "final"
    assert parsed.body() == b'{"model":"final","options":{"num_ctx":8.0},"images":["aGk="]}'


def test_options_are_go_values() -> None:
    parsed = read("/api/chat", b'{"model":"m","options":{"num_ctx":4096,"Num_Ctx":1,"num_gpu":null},'
                               b'"Options":{"num_batch":512.5}}')
    assert parsed.options == {"num_ctx": 4096.0, "Num_Ctx": 1.0, "num_gpu": None, "num_batch": 512.5}
    assert isinstance(parsed.options["num_ctx"], float)


# --- OpenAI / Anthropic routes ----------------------------------------------------------------


def test_compat_routes_carry_no_options_or_keep_alive() -> None:
    for route in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        parsed = read(route, b'{"MODEL":"m","messages":[],"prompt":"x","keep_alive":0,"options":{"num_ctx":1}}')
        assert parsed.model == "m"
        assert parsed.options is None and parsed.keep_alive is None and not parsed.unload


def test_v1_completions_with_an_empty_prompt_only_loads() -> None:
    assert read("/v1/completions", b'{"model":"m"}').load_only
    assert not read("/v1/completions", b'{"model":"m","prompt":"x"}').load_only


@pytest.mark.parametrize("body, rejected", [
    (b'{"model":"m"}', True),
    (b'{"model":"m","input":[]}', True),
    (b'{"model":"m","input":null}', True),
    (b'{"model":"m","input":[1]}', True),
    (b'{"model":"m","input":"","encoding_format":"hex"}', True),
    (b'{"model":"m","input":""}', False),  # becomes [""]
    (b'{"model":"m","input":["a"],"encoding_format":"BASE64"}', False),
    (b'{"model":"m","input":"a","encoding_format":"ba\xc5\xbfe64"}', False),  # strings.EqualFold
])
def test_v1_embeddings(body: bytes, rejected: bool) -> None:
    parsed = read("/v1/embeddings", body)
    assert (parsed.rejected is not None) == rejected
    assert not parsed.load_only and not parsed.unload


@pytest.mark.parametrize("body, rejected", [
    (b'{"model":"m","max_tokens":10}', False),
    (b'{"model":"m","max_tokens":0}', True),
    (b'{"model":"m"}', True),
    (b'{"model":"","max_tokens":10}', True),
    (b'{"model":"m","max_tokens":1.5}', True),
])
def test_v1_messages(body: bytes, rejected: bool) -> None:
    assert (read("/v1/messages", body).rejected is not None) == rejected


def test_every_route_reads_a_minimal_body() -> None:
    for route in SCHEMAS:
        assert isinstance(read_request(route, b'{"model":"m"}'), Parsed)


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (8192.0, 8192), (2048.9, 2048), (-1.5, -1), (-1.0, -1), (0.0, 0), (1e30, INT64_MIN),
    (None, None),
])
def test_option_int_converts_like_from_map(value: object, expected: int | None) -> None:
    assert option_int({"num_ctx": value}, "num_ctx") == expected


@pytest.mark.parametrize("value", [True, "8192", [1.0], {"a": 1.0}])
def test_option_int_wrong_types_are_invalid(value: object) -> None:
    result = option_int({"num_gpu": value}, "num_gpu")
    assert isinstance(result, InvalidOption) and "integer" in result.message


def test_option_int_absent_and_case() -> None:
    assert option_int(None, "num_ctx") is None
    assert option_int({"NUM_CTX": 8.0}, "num_ctx") is None  # FromMap keys are exact
    with pytest.raises(ValueError):
        option_int({}, "temperature")


def test_null_option_still_counts_as_set() -> None:
    assert has_option({"num_ctx": None}, "num_ctx") and not has_option({}, "num_ctx")


@pytest.mark.parametrize("options, ok", [
    ({"temperature": 0.5, "stop": ["a"], "use_mmap": False, "main_gpu": 1.5, "unknown": "x"}, True),
    ({"temperature": "1"}, False), ({"stop": "x"}, False), ({"stop": ["a", 1.0]}, False),
    ({"use_mmap": 1.0}, False), ({"main_gpu": "0"}, False), ({"num_batch": False}, False), (None, True),
])
def test_options_error(options: dict[str, object] | None, ok: bool) -> None:
    assert (options_error(options) is None) == ok


# --- /v1/audio/transcriptions -------------------------------------------------------------------


@pytest.mark.parametrize("query, form, model", [
    ("model=a", [("model", "b")], "a"),  # the URL query comes first in r.Form
    ("", [("model", "b"), ("model", "c")], "b"),
    ("x=1", [("model", "b")], "b"),
    ("Model=a", [("model", "b")], "b"),  # form keys are exact-case
    ("model=llama3%3A8b", [], "llama3:8b"),
    ("model=a+b", [], "a b"),
    ("&&model=a&", [], "a"),
    ("&" * 9999 + "model=a", [], "a"),
])
def test_transcription_model(query: str, form: list[tuple[str, str]], model: str) -> None:
    assert transcription_model(query, form) == model


@pytest.mark.parametrize("query, form", [
    ("model=", [("model", "b")]),  # an empty first value: "model is required"
    ("", []),
    ("x=1;y=2", [("model", "b")]),  # Go rejects ';' and the multipart parse fails
    ("model=a%zz", [("model", "b")]),
    ("other=%4", [("model", "b")]),
    ("&" * 10000 + "model=a", []),  # more than 10000 parameters
])
def test_transcription_model_rejected(query: str, form: list[tuple[str, str]]) -> None:
    result = transcription_model(query, form)
    assert isinstance(result, Rejection) and result.status == 400
