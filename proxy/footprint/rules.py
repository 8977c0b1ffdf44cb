"""The allocation rules that changed between the llama.cpp builds Ollama ships, in one table.

Every other rule of this package holds for all of them; these are the ones that moved, read from
the llama.cpp sources each Ollama release carries (``git show <tag>:LLAMA_CPP_VERSION`` from 0.30,
``Makefile.sync``'s ``FETCH_HEAD`` and the vendored ``llama/llama.cpp`` tree before it):

* **output rows**: how many rows of logits the reserve graph (the compute buffer) is sized for.
  llama.cpp PR #23861 (in release b9460) added ``n_outputs_max`` and llama-server sets it to one
  output per sequence; before it ``llama_context::reserve`` called
  ``graph_reserve(n_tokens, n_seqs, n_tokens)``: logits for the whole micro-batch
  (``n_ubatch x n_vocab x 4`` bytes, 2 GiB for a 262k vocabulary at batch 2048).
* **KV streams**: one stream per sequence (``kv_unified = false``, the library default since
  non-unified caches arrived), or one cache shared by all sequences (before that).
* **cell padding**: since llama.cpp PR #17046 ``n_ctx`` is padded to 256 and then each sequence's
  share to 256 (``llama-context.cpp``); before it each stream's ``ceil(n_ctx / n_seq)`` cells were
  padded to ``llama_kv_cache::get_padding``: 256 with flash attention, 32 without.
* **SWA cells**: llama-server keeps ``pad(min(n_ctx_seq, n_swa + n_ubatch), 256)`` cells on
  sliding-window layers (``swa_full = false``); Ollama's own runner before 0.30 used
  ``llama_context_default_params()``, whose ``swa_full`` is true: every layer full size (and
  llama.cpp before PR #13194 had no sliding-window cache at all).
* **MLA V cache**: since llama.cpp PR #19067 (Jan 2026) MLA GGUFs cache only K (the latent); before,
  a V of ``value_length x head_count_kv`` per cell was stored as well.

Ollama before 0.30 ran GGUF models in its own runner: the llama.cpp one (these rules), or for many
architectures its Go engine, whose caches differ (a sliding window kept at its window size, for
one): the llama.cpp rules of those versions are used for both and err high for the Go engine.

An Ollama older than every row of ``OLLAMA_LLAMA_CPP`` gets ``OLDEST``: the largest footprint of
all rule sets (``estimate`` tries each). An unknown version (a source build reports 0.0.0) or one
newer than the table gets the newest rules. Pure data, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Version = tuple[int, int, int]  # as proxy.ollama.versions.parse_version returns it


@dataclass(frozen=True, eq=False)
class RuleSet:
    """One generation of llama.cpp's allocation rules, as Ollama runs it.

    Compared and hashed by identity (the constants below are the only instances that matter), so
    the estimate's caches, keyed by ``RunConfig``, stay cheap."""

    name: str  # e.g. "llama.cpp b9460+ (Ollama >= 0.30.1)"
    output_rows: Literal["sequences", "batch"]  # logits rows of the reserve graph
    kv_streams: Literal["per_sequence", "unified"]
    cell_padding: Literal["context_and_sequence", "per_stream"]
    swa_cells: Literal["window", "full"]
    mla_v_cache: bool  # MLA GGUFs cache V as well as the latent K
    source: str = ""  # where the rules were read
    largest_of: tuple[RuleSet, ...] = ()  # non-empty: the footprint is the largest under these

    def as_dict(self) -> dict[str, object]:
        """The switches, for ``vramgate plan --json`` and the observation store."""
        return {
            "name": self.name, "output_rows": self.output_rows, "kv_streams": self.kv_streams,
            "cell_padding": self.cell_padding, "swa_cells": self.swa_cells, "mla_v_cache": self.mla_v_cache,
            "source": self.source, "largest_of": [r.name for r in self.largest_of],
        }


NEWEST = RuleSet(
    name="llama.cpp b9460+ (Ollama >= 0.30.1)",
    output_rows="sequences", kv_streams="per_sequence", cell_padding="context_and_sequence",
    swa_cells="window", mla_v_cache=False,
    source="llama-server of llama.cpp b9460 (PR #23861, n_outputs_max) to b10488 (Ollama 0.32.15); "
           "measured by the oracle suite (llama.cpp 0c1e57098, llama-cpp-python 0.3.36)",
)
LLAMA_SERVER_B9409 = RuleSet(
    name="llama.cpp b9409-b9459 (Ollama 0.30.0)",
    output_rows="batch", kv_streams="per_sequence", cell_padding="context_and_sequence",
    swa_cells="window", mla_v_cache=False,
    source="llama-server before PR #23861: graph_reserve(n_tokens, n_seqs, n_tokens) reserves logits "
           "for the whole micro-batch",
)
RUNNER_PAD_256 = RuleSet(
    name="llama.cpp 7f8ef50cc-ec98e2002 in Ollama's runner (Ollama 0.13.2-0.24)",
    output_rows="batch", kv_streams="per_sequence", cell_padding="context_and_sequence",
    swa_cells="full", mla_v_cache=True,
    source="Ollama v0.24.0 llama/llama.cpp (ec98e2002): llama-context.cpp pads n_ctx and n_ctx_seq to 256; "
           "llama/llama.go NewContextParams keeps the library default swa_full = true; no V-less MLA cache",
)
RUNNER_PER_STREAM = RuleSet(
    name="llama.cpp e54d41bef-3cfa9c3f1 in Ollama's runner (Ollama 0.11.5-0.13.1)",
    output_rows="batch", kv_streams="per_sequence", cell_padding="per_stream",
    swa_cells="full", mla_v_cache=True,
    source="Ollama v0.11.5/v0.12.11 llama/llama.cpp: llama-model.cpp create_memory pads "
           "ceil(n_ctx / n_seq_max) per stream to get_padding (256 with flash attention, 32 without)",
)
RUNNER_UNIFIED = RuleSet(
    name="llama.cpp de4c07f93 in Ollama's runner (Ollama 0.7.0-0.11.4)",
    output_rows="batch", kv_streams="unified", cell_padding="per_stream",
    swa_cells="full", mla_v_cache=True,
    source="Ollama v0.7.0 llama/llama.cpp: one unified cache of pad(n_ctx, 256 | 32) cells, no SWA cache",
)
KNOWN: tuple[RuleSet, ...] = (NEWEST, LLAMA_SERVER_B9409, RUNNER_PAD_256, RUNNER_PER_STREAM, RUNNER_UNIFIED)
OLDEST = RuleSet(
    name="older than any known rule (Ollama < 0.7.0): the largest of all rule sets",
    output_rows="batch", kv_streams="per_sequence", cell_padding="context_and_sequence",
    swa_cells="full", mla_v_cache=True, source="errs high", largest_of=KNOWN,
)

# The first Ollama release that ships each llama.cpp build (tags of github.com/ollama/ollama).
OLLAMA_LLAMA_CPP: tuple[tuple[Version, str], ...] = (
    ((0, 7, 0), "de4c07f93"), ((0, 11, 5), "e54d41bef"), ((0, 12, 4), "364a7a6d4"), ((0, 12, 6), "7049736b2"),
    ((0, 12, 11), "3cfa9c3f1"), ((0, 13, 2), "7f8ef50cc"), ((0, 13, 3), "17f7f4baa"), ((0, 13, 5), "ec98e2002"),
    ((0, 30, 0), "b9452"), ((0, 30, 1), "b9479"), ((0, 30, 4), "b9493"), ((0, 30, 5), "b9509"), ((0, 30, 9), "b9626"),
    ((0, 30, 10), "b9672"), ((0, 30, 11), "b9781"), ((0, 31, 0), "b9840"), ((0, 31, 2), "b9888"),
    ((0, 32, 2), "b10069"), ((0, 32, 3), "b10091"), ((0, 32, 6), "b10242"), ((0, 32, 8), "b10353"),
    ((0, 32, 10), "b10380"), ((0, 32, 14), "b10434"), ((0, 32, 15), "b10488"),
)
# Builds Ollama vendored before it switched to llama-server (no release number): their rule set.
_VENDORED = {
    "de4c07f93": RUNNER_UNIFIED, "e54d41bef": RUNNER_PER_STREAM, "364a7a6d4": RUNNER_PER_STREAM,
    "7049736b2": RUNNER_PER_STREAM, "3cfa9c3f1": RUNNER_PER_STREAM, "7f8ef50cc": RUNNER_PAD_256,
    "17f7f4baa": RUNNER_PAD_256, "ec98e2002": RUNNER_PAD_256,
}
OUTPUT_LIMIT_BUILD = 9460  # llama.cpp PR #23861: llama-server reserves one output row per sequence
FIRST_LLAMA_SERVER_BUILD = 9409  # what Ollama's llama-server switch (commit 9db4bdbad) first built


def llama_cpp_build(version: Version) -> str | None:
    """The llama.cpp build an Ollama version ships; None when it is older than the table."""
    build = None
    for first, name in OLLAMA_LLAMA_CPP:
        if version < first:
            break
        build = name
    return build


def rules_for_build(build: str | None) -> RuleSet:
    """The rule set of a llama.cpp build (``b10488`` or a vendored commit); unknown ones err high."""
    if build is None:
        return OLDEST
    number = re.fullmatch(r"b(\d+)", build.strip())
    if number:
        n = int(number.group(1))
        if n >= OUTPUT_LIMIT_BUILD:
            return NEWEST
        return LLAMA_SERVER_B9409 if n >= FIRST_LLAMA_SERVER_BUILD else OLDEST
    return _VENDORED.get(build.strip()[:9], OLDEST)


def rules_for_ollama(version: Version) -> RuleSet:
    """The rules of the llama.cpp an Ollama version runs (its /api/version, parsed)."""
    return rules_for_build(llama_cpp_build(version))
