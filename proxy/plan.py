"""``vramgate plan``: what a model needs on the GPU, and what fits a given amount of VRAM.

The model comes from the configured Ollama (``POST /api/show`` with ``verbose``), a saved
``/api/show`` response (``--show``) or a GGUF file (``--gguf``); everything else is the pure
footprint oracle. Options default to the Ollama server settings vramgate knows, and the output
says which values were assumed.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from proxy.footprint import (
    ModelDescription,
    RunConfig,
    decode_tokens_per_s,
    description_from_gguf,
    description_from_show,
    estimate,
    max_num_ctx,
)
from proxy.footprint.ggml_types import KV_CACHE_TYPES
from proxy.units import format_bandwidth, format_bytes, parse_bandwidth, parse_bytes

DEFAULT_GPU_BANDWIDTH = 1.0e12
GiB = 1024**3


class PlanError(Exception):
    """One line for stderr."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="model name, read from Ollama's /api/show")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--show", metavar="FILE", help="a saved /api/show JSON response")
    source.add_argument("--gguf", metavar="FILE", help="a GGUF model file")
    parser.add_argument("--num-ctx", type=int, metavar="N", help="context per sequence")
    parser.add_argument("--parallel", type=int, metavar="P", help="parallel sequences (OLLAMA_NUM_PARALLEL)")
    parser.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES, help="KV cache type (OLLAMA_KV_CACHE_TYPE)")
    parser.add_argument("--flash-attention", choices=("on", "off"), help="flash attention")
    parser.add_argument("--num-batch", type=int, metavar="B", help="batch = micro-batch size")
    parser.add_argument("--vram", metavar="SIZE", help="GPU memory, e.g. 24GiB: does it fit, and the largest context that does")
    parser.add_argument("--overhead", metavar="SIZE",
                        help="taken off --vram before fitting (default: settings cuda_context + reserve)")
    parser.add_argument("--gpu-bandwidth", metavar="BW", help="GPU memory bandwidth (default 1TB/s)")
    parser.add_argument("--host-bandwidth", metavar="BW", help="system RAM bandwidth (default: settings)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass(frozen=True)
class Plan:
    model: ModelDescription
    run: RunConfig
    assumed: tuple[str, ...]
    vram: int | None
    overhead: int
    gpu_bandwidth: float
    host_bandwidth: float


def run(args: argparse.Namespace, settings: Any) -> int:
    try:
        model = _load_model(args, settings)
        plan = _make_plan(args, settings, model)
        output = render_json(plan) if args.json else render_text(plan)
    except PlanError as exc:
        print(f"vramgate plan: {exc}", file=sys.stderr)
        return 1
    print(output)
    return 0


# --- reading the model (the imperative shell) ------------------------------------------------


def _load_model(args: argparse.Namespace, settings: Any) -> ModelDescription:
    if args.gguf:
        path = Path(args.gguf)
        if not path.is_file():
            raise PlanError(f"no such GGUF file: {path}")
        try:
            return description_from_gguf(path)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise PlanError(f"cannot read GGUF file {path}: {exc}") from None
    if args.show:
        path = Path(args.show)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanError(f"no such file: {path}") from None
        except (OSError, ValueError) as exc:
            raise PlanError(f"cannot read {path} as /api/show JSON: {exc}") from None
        return _describe_show(data, args.model or path.stem)
    if not args.model:
        raise PlanError("give a model name, --show FILE.json or --gguf FILE")
    return _describe_show(fetch_show(settings.upstream, args.model), args.model)


def _describe_show(data: Any, name: str) -> ModelDescription:
    if not isinstance(data, dict):
        raise PlanError("the /api/show response is not a JSON object")
    try:
        return description_from_show(data, name=name)
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"cannot describe {name}: {exc}") from None


def fetch_show(upstream: str, model: str, timeout: float = 30.0) -> dict[str, Any]:
    """POST /api/show with verbose (per-layer arrays are null without it)."""
    body = json.dumps({"model": model, "verbose": True}).encode()
    req = urllib.request.Request(
        upstream.rstrip("/") + "/api/show", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except (ValueError, AttributeError, OSError):
            message = exc.reason
        raise PlanError(f"Ollama at {upstream} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PlanError(f"cannot reach Ollama at {upstream}: {reason}") from None
    except ValueError:
        raise PlanError(f"Ollama at {upstream} sent a response that is not JSON") from None


# --- deciding the run configuration ----------------------------------------------------------


def default_num_ctx(total_vram: int | None) -> int:
    """Ollama >= 0.15.5's default context by total VRAM (4k / 32k / 256k)."""
    if total_vram is None:
        return 4096
    if total_vram >= 47 * GiB:
        return 262144
    if total_vram >= 23 * GiB:
        return 32768
    return 4096


def _make_plan(args: argparse.Namespace, settings: Any, model: ModelDescription) -> Plan:
    assumed: list[str] = []
    vram = None
    try:
        if args.vram is not None:
            vram = parse_bytes(args.vram)
        overhead = (
            parse_bytes(args.overhead)
            if args.overhead is not None
            else int(settings.cuda_context) + int(settings.reserve)
        )
    except ValueError as exc:
        raise PlanError(str(exc)) from None

    params = model.parameters
    if args.num_ctx is not None:
        num_ctx = args.num_ctx
    elif isinstance(params.get("num_ctx"), int):
        num_ctx = params["num_ctx"]
        assumed.append(f"num_ctx {num_ctx} from the model's Modelfile")
    elif getattr(settings, "context_length", 0):
        num_ctx = settings.context_length
        assumed.append(f"num_ctx {num_ctx} from OLLAMA_CONTEXT_LENGTH")
    else:
        num_ctx = default_num_ctx(vram)
        why = "for this --vram" if vram is not None else "(no --vram given)"
        assumed.append(f"num_ctx {num_ctx}: Ollama's default {why}")
    if num_ctx < 1:
        raise PlanError(f"--num-ctx must be positive, got {num_ctx}")

    parallel = args.parallel if args.parallel is not None else settings.num_parallel
    if args.parallel is None:
        assumed.append(f"parallel {parallel} (OLLAMA_NUM_PARALLEL)")
    kv_type = args.kv_cache_type or settings.kv_cache_type
    if args.kv_cache_type is None:
        assumed.append(f"KV cache {kv_type} (OLLAMA_KV_CACHE_TYPE)")
    if args.flash_attention is not None:
        fa = args.flash_attention == "on"
    else:
        fa = settings.flash_attention != "off"
        if settings.flash_attention == "auto":
            assumed.append("flash attention on (auto: every CUDA GPU since Pascal supports it)")
    if args.num_batch is not None:
        num_batch = args.num_batch
    elif isinstance(params.get("num_batch"), int):
        num_batch = params["num_batch"]
        assumed.append(f"num_batch {num_batch} from the model's Modelfile")
    else:
        num_batch = 512
    if not fa and kv_type not in ("f16", "f32", "bf16"):
        raise PlanError(f"a quantized KV cache ({kv_type}) needs flash attention (llama.cpp refuses it)")
    try:
        run_config = RunConfig(
            num_ctx=num_ctx,
            parallel=parallel,
            kv_type_k=kv_type,
            kv_type_v=kv_type,
            flash_attention=fa,
            num_batch=num_batch,
            num_ubatch=num_batch,
        )
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    try:
        gpu_bw = parse_bandwidth(args.gpu_bandwidth) if args.gpu_bandwidth else DEFAULT_GPU_BANDWIDTH
        host_bw = parse_bandwidth(args.host_bandwidth) if args.host_bandwidth else float(settings.host_bandwidth)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    return Plan(model, run_config, tuple(assumed), vram, overhead, gpu_bw, host_bw)


# --- rendering -------------------------------------------------------------------------------


def plan_dict(plan: Plan) -> dict[str, Any]:
    fp = estimate(plan.model, plan.run)
    out: dict[str, Any] = {
        "model": plan.model.name,
        "architecture": plan.model.architecture,
        "known_architecture": fp.known_architecture,
        **{k: v for k, v in asdict(fp).items() if k not in ("layer_bytes", "notes")},
        "run": asdict(plan.run),
        "decode_tokens_per_s": round(
            decode_tokens_per_s(plan.model, fp, plan.gpu_bandwidth, plan.host_bandwidth), 1
        ),
        "gpu_bandwidth": plan.gpu_bandwidth,
        "assumed": list(plan.assumed),
        "notes": list(fp.notes),
    }
    if plan.vram is not None:
        budget = max(plan.vram - plan.overhead, 0)
        out["vram_bytes"] = plan.vram
        out["overhead_bytes"] = plan.overhead
        out["budget_bytes"] = budget
        out["fits"] = fp.gpu_total_bytes <= budget
        # the largest context up to the trained one, not only up to the requested num_ctx
        ceiling = replace(plan.run, num_ctx=max(plan.model.context_length, plan.run.num_ctx))
        out["max_num_ctx"] = max_num_ctx(plan.model, ceiling, budget)
    return out


def render_json(plan: Plan) -> str:
    return json.dumps(plan_dict(plan), indent=None)


def render_text(plan: Plan) -> str:
    d = plan_dict(plan)
    m, r = plan.model, plan.run
    kv_type = r.kv_type_k if r.kv_type_k == r.kv_type_v else f"{r.kv_type_k}/{r.kv_type_v}"
    title = f"{m.name or 'model'} ({m.architecture}"
    title += f", {m.file_type})" if m.file_type else ")"
    kv_detail = f"{d['cells']} cells, {kv_type}"
    if d["swa_cells"]:
        kv_detail += f"; window layers {d['swa_cells']} cells"
    if d["recurrent_bytes"]:
        kv_detail += f"; recurrent state {format_bytes(d['recurrent_bytes'])}"
    rows = [
        ("weights on GPU", format_bytes(d["gpu_weights_bytes"]), f"{m.layers} layers (num_gpu {m.layers})"),
        ("KV cache", format_bytes(d["kv_bytes"]), kv_detail),
        ("compute buffer", format_bytes(d["compute_bytes"]),
         f"batch {r.num_batch}, flash attention {'on' if r.flash_attention else 'off'}"),
    ]
    if d["projector_bytes"]:
        rows.append(("projector", format_bytes(d["projector_bytes"]), "vision/audio, offloaded too"))
    rows.append(("total on GPU", format_bytes(d["gpu_total_bytes"]),
                 f"num_ctx {d['num_ctx']} x {r.parallel} parallel"))
    rows.append(("in host RAM", format_bytes(d["host_weights_bytes"]), "token embeddings (never offloaded)"))
    if plan.vram is not None:
        verdict = "fits" if d["fits"] else "does NOT fit"
        rows.append(("GPU memory", format_bytes(plan.vram),
                     f"{format_bytes(d['budget_bytes'])} after {format_bytes(plan.overhead)} "
                     f"CUDA context + reserve: {verdict}"))
        best = d["max_num_ctx"]
        trained = f" (trained {plan.model.context_length})" if plan.model.context_length else ""
        rows.append(("largest num_ctx", str(best) if best else "none",
                     f"that fits{trained}" if best else "not even 256 tokens fit"))
    rows.append(("decode speed", f"~{d['decode_tokens_per_s']:.0f} tok/s",
                 f"upper bound at {format_bandwidth(plan.gpu_bandwidth)}"))
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    lines = [title]
    lines += [f"  {a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    if plan.assumed:
        lines.append("assumed: " + "; ".join(plan.assumed))
    for note in d["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
