"""llama.cpp as the memory oracle for the footprint estimator (issue 3).

- build.py:    builds the llama.cpp vendored in the llama-cpp-python 0.3.36 sdist (PyPI) into
               $VRAMGATE_CACHE (default ~/.cache/vramgate) when missing, plus probe.cpp linked against it.
               `uv run python -m tests.oracle.build` builds ahead of time (about 6 min on 2 cores),
               printing a line per step.
- probe.cpp:   loads a model with no_alloc (no weight read, nothing allocated) using llama-server's
               own argument parser and output limits, prints llama_get_memory_breakdown() in bytes.
- probe_vision.cpp: compiles clip.cpp (tools/mtmd) into itself, loads a projector (mmproj) with no_alloc
               as llama-server does and prints clip's weight bytes and the encoder's compute buffer
               (warmup reserve, largest image, any --image W H; --trace shows ggml-alloc's packing).
- vision.py:   synthetic projectors of real shapes (SigLIP/gemma3, Qwen2.5-VL, pixtral), their
               measurement and comparison; `uv run python -m tests.oracle.vision` prints the table.
- measure.py:  measure(path, num_ctx, parallel, type_k, type_v, flash_attention, n_batch, n_ubatch)
               -> Measurement (model / context / compute bytes, KV and recurrent log lines, output
               buffer), launched as Ollama launches llama-server; cached in memory and on disk.
- models.py:   synthetic GGUFs llama.cpp really loads, small (real data) and real-scale (sparse files).
- gguf_meta.py, show.py: a fast GGUF metadata reader and the /api/show JSON Ollama would return.
- compare.py:  estimator vs llama.cpp over a grid of configurations, with the tolerances.
- report.py:   `uv run python -m tests.oracle.report [-v] [arch ...]` prints the accuracy table.
- fixtures.py: the session fixture `oracle` (tests load it with pytest_plugins).

Tests: tests/test_oracle_harness.py (the oracle itself), tests/test_oracle_accuracy.py (the
estimator), tests/test_oracle_vision.py (vision projectors); all marked `oracle`
(`uv run pytest -m oracle`).
"""
