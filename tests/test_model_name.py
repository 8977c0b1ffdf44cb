"""Model-name parsing against Ollama's own expectations.

The tables below are ported from Ollama's tests (the expectations are Ollama's, not this code's):
``types/model/name_test.go`` (TestParseNameParts, testCases/TestNameIsValid, TestNameparseNameDefault,
TestNameIsValidPart, TestDisplayShortest, TestIsValidNamespace, FuzzName),
``internal/modelref/modelref_test.go`` (TestParseRef, TestNormalizePullName) and
``server/model_resolver_test.go`` (TestParseModelSelector, TestParsePullModelRef).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.ollama.model_name import (
    BareName,
    ModelName,
    create_pull_name,
    is_valid_namespace,
    is_valid_part,
    normalize_pull_name,
    parse_name,
    parse_name_bare,
    parse_pull_name,
    parse_ref,
)

PART80 = "8" * 80
PART350 = "3" * 350

# TestParseNameParts: input -> (ParseNameBare result, ParseName(...).Filepath() as a/b/c/d)
PARTS = [
    ("registry.ollama.ai/library/dolphin-mistral:7b-v2.6-dpo-laser-q6_K",
     BareName("registry.ollama.ai", "library", "dolphin-mistral", "7b-v2.6-dpo-laser-q6_K"),
     "registry.ollama.ai/library/dolphin-mistral/7b-v2.6-dpo-laser-q6_K"),
    ("scheme://host:port/namespace/model:tag",
     BareName("host:port", "namespace", "model", "tag", scheme="scheme"), "host:port/namespace/model/tag"),
    ("host/namespace/model:tag", BareName("host", "namespace", "model", "tag"), "host/namespace/model/tag"),
    ("host:port/namespace/model:tag", BareName("host:port", "namespace", "model", "tag"), "host:port/namespace/model/tag"),
    ("host/namespace/model", BareName("host", "namespace", "model"), "host/namespace/model/latest"),
    ("host:port/namespace/model", BareName("host:port", "namespace", "model"), "host:port/namespace/model/latest"),
    ("namespace/model", BareName(namespace="namespace", model="model"), "registry.ollama.ai/namespace/model/latest"),
    ("model", BareName(model="model"), "registry.ollama.ai/library/model/latest"),
    ("h/nn/mm:t", BareName("h", "nn", "mm", "t"), "h/nn/mm/t"),
    (f"{PART80}/{PART80}/{PART80}:{PART80}", BareName(PART80, PART80, PART80, PART80), f"{PART80}/{PART80}/{PART80}/{PART80}"),
    (f"{PART350}/{PART80}/{PART80}:{PART80}", BareName(PART350, PART80, PART80, PART80), f"{PART350}/{PART80}/{PART80}/{PART80}"),
]


@pytest.mark.parametrize("text,bare,filepath", PARTS, ids=[p[0][:60] for p in PARTS])
def test_parse_name_parts(text, bare, filepath):
    assert parse_name_bare(text) == bare
    name = parse_name(text)
    assert name is not None
    assert f"{name.host}/{name.namespace}/{name.model}/{name.tag}" == filepath


# testCases: ParseNameBare(s).IsValid(); valid names round-trip through String()
VALID = {
    "": False,
    "_why/_the/_lucky:_stiff": True,
    "h/n/m:t": True,
    "host/namespace/model:tag": True,
    "host/namespace/model": False,
    "namespace/model": False,
    "model": False,
    f"{PART80}/{PART80}/{PART80}:{PART80}": True,
    f"{PART350}/{PART80}/{PART80}:{PART80}": True,
    "h/nn/mm:t": True,
    "m": False,
    "n/m:": False,
    "h/n/m": False,
    "@t": False,
    "m@d": False,
    "^": False,
    "mm:": False,
    "/nn/mm": False,
    "//": False,
    "//mm": False,
    "hh//": False,
    "//mm:@": False,
    "00@": False,
    "@": False,
    "-hh/nn/mm:tt": False,
    "hh/-nn/mm:tt": False,
    "hh/nn/-mm:tt": False,
    "hh/nn/mm:-tt": False,
    "host:https/namespace/model:tag": True,
    "host/name:space/model:tag": False,
}


@pytest.mark.parametrize("text,valid", VALID.items(), ids=[k[:40] or "empty" for k in VALID])
def test_name_is_valid(text, valid):
    bare = parse_name_bare(text)
    assert bare.is_valid() is valid
    if valid:
        assert str(bare) == text


def test_name_default():
    name = parse_name("xx")
    assert name is not None and str(name) == "registry.ollama.ai/library/xx:latest"


@pytest.mark.parametrize("kind,part,valid", [
    ("host", "", False), ("host", "a", True), ("host", "a.", True), ("host", "a.b", True), ("host", "a:123", True),
    ("host", "a:123/aa/bb", False), ("namespace", "bb", True), ("namespace", "a.", False), ("model", "-h", False),
    ("digest", "sha256-1000000000000000000000000000000000000000000000000000000000000000", True),
])
def test_is_valid_part(kind, part, valid):
    assert is_valid_part(kind, part) is valid


@pytest.mark.parametrize("text,shortest", [
    ("registry.ollama.ai/library/model:latest", "model:latest"),
    ("registry.ollama.ai/library/model:tag", "model:tag"),
    ("registry.ollama.ai/namespace/model:tag", "namespace/model:tag"),
    ("host/namespace/model:tag", "host/namespace/model:tag"),
    ("host/library/model:tag", "host/library/model:tag"),
])
def test_display_shortest(text, shortest):
    name = parse_name(text)
    assert name is not None and name.shortest == shortest


@pytest.mark.parametrize("text,valid", [
    ("", False), ("a", True), ("a:b", False), ("a/b", False), ("a:b/c", False), ("a/b:c", False), ("a/b:c/d", False),
    ("a/b:c/d@e", False), ("a/b:c/d@sha256-100", False), ("himynameisjoe", True),
    ("himynameisreallyreallyreallyreallylongbutitshouldstillbevalid", True),
])
def test_is_valid_namespace(text, valid):
    assert is_valid_namespace(text) is valid


# lengths just past Ollama's limits (name.go isValidLen), and characters outside the grammar
@pytest.mark.parametrize("text", [
    "3" * 351 + f"/{PART80}/{PART80}:{PART80}", f"h/{'8' * 81}/m:t", f"h/n/{'8' * 81}:t", f"h/n/m:{'8' * 81}",
    "llama3:8b ", "llama 3", "llamä3", "h/n/m%2e:t", "h/n/m?x:t", "h/n/m#x:t", "h/../m:t", "h/n/..:t", "h/n/m:..",
    "h/n.s/m:t", "h\\n/n/m:t", "127.0.0.1:1/../../internal/admin?x",
])
def test_invalid_names(text):
    assert parse_name(text) is None


def test_hf_names():
    name = parse_name("hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M")
    assert name == ModelName("hf.co", "bartowski", "Llama-3.2-3B-Instruct-GGUF", "Q4_K_M")
    assert parse_name("hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF") == ModelName(
        "hf.co", "bartowski", "Llama-3.2-3B-Instruct-GGUF", "latest")
    assert parse_name("hf.co/some.user/repo:q4") is None  # "." is not allowed in a namespace
    assert parse_name("myregistry:5000/model") is None  # two parts: the host is read as a namespace
    assert parse_name("HF.CO/User/Repo:Q8_0") == ModelName("HF.CO", "User", "Repo", "Q8_0")  # case kept


# TestParseRef / TestParseModelSelector: input -> (base, source), None for Ollama's errors
@pytest.mark.parametrize("text,expected", [
    ("gpt-oss:20b:cloud", ("gpt-oss:20b", "cloud")),
    ("gpt-oss:20b-cloud", ("gpt-oss:20b", "cloud")),
    ("qwen3:8b:local", ("qwen3:8b", "local")),
    ("llama3.2", ("llama3.2", "unspecified")),
    ("my-cloud-model", ("my-cloud-model", "unspecified")),
    ("foo:bar-cloud/baz", ("foo:bar-cloud/baz", "unspecified")),
    ("gpt-oss:clod", ("gpt-oss:clod", "unspecified")),
    ("foo:cloud:local", None),
    ("   ", None),
    ("", None),
])
def test_parse_ref(text, expected):
    ref = parse_ref(text)
    assert (ref if ref is None else (ref.base, ref.source)) == expected


# TestNormalizePullName / TestParsePullModelRef
@pytest.mark.parametrize("text,normalized", [
    ("gpt-oss:20b:local", "gpt-oss:20b"),
    ("gpt-oss:20b:cloud", "gpt-oss:20b-cloud"),
    ("gpt-oss:20b-cloud", "gpt-oss:20b-cloud"),
    ("qwen3:cloud", "qwen3:cloud"),
    ("localhost:11434/library/foo:cloud", "localhost:11434/library/foo:cloud"),
    ("foo:cloud:local", None),
])
def test_normalize_pull_name(text, normalized):
    assert normalize_pull_name(text) == normalized


def test_pull_names():
    assert str(parse_pull_name("gpt-oss:20b:cloud")) == "registry.ollama.ai/library/gpt-oss:20b-cloud"
    assert str(parse_pull_name("qwen3:cloud")) == "registry.ollama.ai/library/qwen3:cloud"
    assert str(parse_pull_name("  llama3:8b\n")) == "registry.ollama.ai/library/llama3:8b"  # trimmed
    assert parse_pull_name("\x1cllama3") is None  # Go's TrimSpace keeps \x1c (Python's strip would not)
    assert str(parse_pull_name("qwen3: cloud")) == "registry.ollama.ai/library/qwen3:cloud"  # suffix trimmed
    assert parse_pull_name("qwen3:cloud\x1c") is None  # ...by Go's rule: a tag "cloud\x1c", invalid
    assert parse_pull_name("::cloud") is None
    assert parse_pull_name("") is None
    # the scheme is parsed but a pull never uses it
    assert parse_pull_name("http://hf.co/u/r:q4") == ModelName("hf.co", "u", "r", "q4")


def test_create_pull_names():
    assert str(create_pull_name("llama3:70b")) == "registry.ollama.ai/library/llama3:70b"
    assert str(create_pull_name("qwen3:8b:local")) == "registry.ollama.ai/library/qwen3:8b"
    assert create_pull_name("gpt-oss:20b:cloud") is None  # a remote model: nothing pulled
    assert create_pull_name("gpt-oss:20b-cloud") is None
    assert create_pull_name("llama3", remote_host="http://example:11434") is None
    assert create_pull_name("bad name") is None


# FuzzName, plus what the registry code relies on: a valid name's parts are safe URL path segments
SAFE = {"host": r"[A-Za-z0-9_][A-Za-z0-9_.:-]*", "namespace": r"[A-Za-z0-9_][A-Za-z0-9_-]*",
        "model": r"[A-Za-z0-9_][A-Za-z0-9_.-]*", "tag": r"[A-Za-z0-9_][A-Za-z0-9_.-]*"}


@settings(max_examples=3000, deadline=None)
@given(st.one_of(
    st.text(),
    st.text(alphabet="ab_-.:/@%?#\\ ", max_size=24),
    st.lists(st.text(alphabet="aZ09_-.:%?#/", min_size=0, max_size=6), min_size=1, max_size=5).map("/".join),
))
def test_fuzz_name(text):
    bare = parse_name_bare(text)
    if bare.is_valid():
        for part in (bare.host, bare.namespace, bare.model, bare.tag):
            assert part != ".." and len(part) <= 350
        assert str(bare) == text or bare.scheme
    name = parse_pull_name(text)
    if name is not None:
        for kind, pattern in SAFE.items():
            assert re.fullmatch(pattern, getattr(name, kind)), (kind, name)
