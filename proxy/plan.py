"""``vramgate plan``: what a model needs on the GPU, and what fits a given amount of VRAM.

The model comes from the configured Ollama (``POST /api/show`` with ``verbose``), a saved
``/api/show`` response (``--show``) or a GGUF file (``--gguf``); everything else is the pure
footprint oracle. Options default to the Ollama server settings vramgate knows, and the output
says which values were assumed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from proxy.config.settings import Settings, StaticGpu
from proxy.config.units import (
    format_bandwidth,
    format_bytes,
    parse_bandwidth,
    parse_bytes,
)
from proxy.footprint import (
    ModelDescription,
    RunConfig,
    decode_tokens_per_s,
    description_from_gguf,
    description_from_show,
    estimate,
)
from proxy.footprint.ggml_types import KV_CACHE_TYPES
from proxy.gate.decision import (
    Admit,
    Inputs,
    LoadRequest,
    Need,
    Policy,
    Refuse,
    decide,
    effective_ctx,
    largest_ctx,
    load_need,
    need_for,
)
from proxy.gate.observed import Observation, ObservedStore, store_path
from proxy.gate.residency import model_key
from proxy.gate.sizing import model_facts, run_for, sizer_for
from proxy.gpu.snapshot import GpuSnapshot, static_snapshot
from proxy.ollama import client as ollama_client
from proxy.ollama.versions import ServerSettings, server_settings

DEFAULT_GPU_BANDWIDTH = 1.0e12
DOES_NOT_FIT = 3  # exit status when --vram is given and the load as asked does not fit


class PlanError(Exception):
    """One line for stderr."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="model name, read from Ollama's /api/show")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--show", metavar="FILE", help="a saved /api/show JSON response")
    source.add_argument("--gguf", metavar="FILE", help="a GGUF model file")
    parser.add_argument("--upstream", dest="plan_upstream", metavar="URL", help="where Ollama is (VRAMGATE_UPSTREAM)")
    parser.add_argument("--ollama-version", metavar="V",
                        help="size as this Ollama version would load it (default: ask Ollama; else the newest rules)")
    parser.add_argument("--num-ctx", type=int, metavar="N", help="context per sequence, as a request's num_ctx")
    parser.add_argument("--parallel", type=int, metavar="P", help="parallel sequences (OLLAMA_NUM_PARALLEL)")
    parser.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES, help="KV cache type (OLLAMA_KV_CACHE_TYPE)")
    parser.add_argument("--flash-attention", choices=("on", "off"), help="flash attention")
    parser.add_argument("--num-batch", type=int, metavar="B", help="batch = micro-batch size, as a request's num_batch")
    parser.add_argument("--vram", metavar="SIZE",
                        help=f"GPU memory, e.g. 24GiB: does it fit (exit {DOES_NOT_FIT} if not), and the largest context that does")
    parser.add_argument("--overhead", metavar="SIZE",
                        help="taken off --vram before fitting (default: settings cuda_context + reserve)")
    parser.add_argument("--gpu-bandwidth", metavar="BW", help="GPU memory bandwidth (default 1TB/s)")
    parser.add_argument("--host-bandwidth", metavar="BW", help="system RAM bandwidth (default: settings)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass(frozen=True)
class Plan:
    model: ModelDescription
    inputs: Inputs  # exactly what the gate would decide from, with --vram as one empty GPU
    need: Need
    decision: Admit | Refuse | None  # None without --vram
    assumed: tuple[str, ...]
    vram: int | None
    overhead: int
    gpu_bandwidth: float
    host_bandwidth: float
    observed_history: tuple[Observation, ...] = ()  # what the gate saw of this model's digest (oldest first)

    @property
    def server(self) -> ServerSettings:
        return self.inputs.server

    @property
    def run(self) -> RunConfig:
        return run_for(self.server, self.need.num_ctx, self.need.parallel, self.need.num_batch)

    @property
    def fits(self) -> bool | None:
        if self.decision is None:
            return None
        return isinstance(self.decision, Admit) and self.decision.reason == "admitted"


def run(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "plan_upstream", None):
        try:
            settings = settings.model_copy(update={"upstream": Settings.model_validate(
                {"upstream": args.plan_upstream}).upstream})
        except ValueError as exc:
            print(f"vramgate plan: invalid --upstream: {exc}", file=sys.stderr)
            return 2
    try:
        model, version = _load_model(args, settings)
        plan = make_plan(args, settings, model, version)
        if args.json:
            plan = replace(plan, observed_history=_observed_history(args, settings, model))
        output = render_json(plan) if args.json else render_text(plan)
    except PlanError as exc:
        print(f"vramgate plan: {exc}", file=sys.stderr)
        return 1
    print(output)
    return DOES_NOT_FIT if plan.fits is False else 0


# --- reading the model (the imperative shell) ------------------------------------------------


def _load_model(args: argparse.Namespace, settings: Settings) -> tuple[ModelDescription, str]:
    if args.gguf:
        path = Path(args.gguf)
        if not path.is_file():
            raise PlanError(f"no such GGUF file: {path}")
        try:
            return description_from_gguf(path), args.ollama_version or ""
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
        return _describe_show(data, args.model or path.stem), args.ollama_version or ""
    if not args.model:
        raise PlanError("give a model name, --show FILE.json or --gguf FILE")
    show, version = asyncio.run(_ask_ollama(settings, args.model))
    return _describe_show(show, args.model), args.ollama_version or version


async def _ask_ollama(settings: Settings, model: str) -> tuple[dict[str, Any], str]:
    """The model's /api/show and the server's version, through the same client the gate uses."""
    async with ollama_client.new_session(settings) as session:
        try:
            show = await ollama_client.show(session, settings.upstream, model)
            version = await ollama_client.version(session, settings.upstream)
        except ollama_client.ModelUnknown as exc:
            raise PlanError(f"Ollama at {settings.upstream} answered {exc.status} for {model!r}: {exc.args[0]}") from None
        except ollama_client.OllamaUnavailable as exc:
            raise PlanError(f"cannot reach Ollama at {settings.upstream}: {exc}") from None
    return show, version


def _observed_history(args: argparse.Namespace, settings: Settings, model: ModelDescription) -> tuple[Observation, ...]:
    """What the gate observed of this model's digest, read from its store without changing it: the
    digest from Ollama's /api/tags for a model read from Ollama, else the last one seen under its name."""
    store = ObservedStore.open_read_only(store_path(settings.state_dir))
    if store.empty:
        return ()
    name = model_key(model.name or args.model or "")
    digest = asyncio.run(_digest(settings, name)) if args.model and not (args.show or args.gguf) else None
    digest = digest or store.latest_digest(name)
    return tuple(store.history(digest)) if digest else ()


async def _digest(settings: Settings, name: str) -> str | None:
    async with ollama_client.new_session(settings) as session:
        try:
            models = await ollama_client.tags(session, settings.upstream)
        except ollama_client.OllamaUnavailable:
            return None
    return next((str(m.get("digest")) for m in models if model_key(str(m.get("model") or m.get("name"))) == name
                 and m.get("digest")), None)


def _describe_show(data: Any, name: str) -> ModelDescription:
    if not isinstance(data, dict):
        raise PlanError("the /api/show response is not a JSON object")
    try:
        return description_from_show(data, name=name)
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"cannot describe {name}: {exc}") from None


# --- deciding the run configuration: the gate's own rules ------------------------------------


def make_plan(args: argparse.Namespace, settings: Settings, model: ModelDescription, version: str) -> Plan:
    """The gate's decision inputs for this model on --vram (one empty GPU), and its answer."""
    try:
        vram = parse_bytes(args.vram) if args.vram is not None else None
        overhead = parse_bytes(args.overhead) if args.overhead is not None else None
        gpu_bw = parse_bandwidth(args.gpu_bandwidth) if args.gpu_bandwidth else DEFAULT_GPU_BANDWIDTH
        host_bw = parse_bandwidth(args.host_bandwidth) if args.host_bandwidth else float(settings.host_bandwidth)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    for flag, value in (("--num-ctx", args.num_ctx), ("--parallel", args.parallel), ("--num-batch", args.num_batch)):
        if value is not None and value < 1:
            raise PlanError(f"{flag} must be positive, got {value}")
    overrides = {k: v for k, v in (("num_parallel", args.parallel), ("kv_cache_type", args.kv_cache_type),
                                   ("flash_attention", args.flash_attention)) if v is not None}
    server = server_settings(settings.model_copy(update=overrides), version)
    if not server.flash_attention and server.kv_cache_type not in ("f16", "f32", "bf16"):
        raise PlanError(f"a quantized KV cache ({server.kv_cache_type}) needs flash attention (llama.cpp refuses it)")
    policy = Policy.from_settings(settings)
    if overhead is not None:
        policy = replace(policy, reserve=max(0, overhead - policy.cuda_context))
    options = {k: v for k, v in (("num_ctx", args.num_ctx), ("num_batch", args.num_batch)) if v is not None}
    gpus = (static_snapshot([StaticGpu(name="--vram", total=vram, bandwidth=gpu_bw)]) if vram is not None
            else GpuSnapshot(gpus=(), source="none"))
    key = model_key(model.name or "model")
    inputs = Inputs(request=LoadRequest(key, "native", options), model=model_facts(key, model),
                    sizer=sizer_for(model, server), server=server, gpus=gpus, policy=policy)
    need = load_need(inputs)
    decision = decide(inputs) if vram is not None else None
    return Plan(model, inputs, need, decision, tuple(_assumed(args, settings, inputs, need)), vram,
                policy.reserve + policy.cuda_context, gpu_bw, host_bw)


def _assumed(args: argparse.Namespace, settings: Settings, inputs: Inputs, need: Need) -> list[str]:
    server = inputs.server
    out = [f"rules of Ollama {server.version_text}" if server.version_text != "unknown"
           else "Ollama version unknown: the newest rules"]
    if args.num_ctx is None:
        out.append(f"num_ctx {need.num_ctx} from the {effective_ctx(inputs)[1]}")
    if args.parallel is None:
        out.append(f"parallel {need.parallel} (OLLAMA_NUM_PARALLEL {settings.num_parallel})")
    if args.kv_cache_type is None:
        out.append(f"KV cache {server.kv_cache_type} (OLLAMA_KV_CACHE_TYPE)")
    if args.flash_attention is None:
        out.append(f"flash attention {'on' if server.flash_attention else 'off'} (OLLAMA_FLASH_ATTENTION "
                   f"{settings.flash_attention})")
    if args.num_batch is None:
        source = "the model's Modelfile" if "num_batch" in inputs.model.modelfile else "Ollama's choice for this context"
        out.append(f"num_batch {need.num_batch} from {source}")
    return out


# --- rendering -------------------------------------------------------------------------------


def plan_dict(plan: Plan) -> dict[str, Any]:
    fp = estimate(plan.model, plan.run)
    out: dict[str, Any] = {
        "model": plan.model.name,
        "architecture": plan.model.architecture,
        "known_architecture": fp.known_architecture,
        **{k: v for k, v in asdict(fp).items() if k not in ("layer_bytes", "notes")},
        "run": {k: v for k, v in asdict(plan.run).items() if k != "rules"},
        "rules": plan.run.rules.as_dict(),  # the llama.cpp generation whose allocation rules were used
        "charged_bytes": plan.need.total,  # what the gate charges one GPU: the buffers + a CUDA context
        "cuda_context_bytes": plan.need.cuda_context,
        "ollama_version": plan.server.version_text,
        "decode_tokens_per_s": round(
            decode_tokens_per_s(plan.model, fp, plan.gpu_bandwidth, plan.host_bandwidth), 1
        ),
        "gpu_bandwidth": plan.gpu_bandwidth,
        "assumed": list(plan.assumed),
        "notes": list(fp.notes),
    }
    if plan.observed_history:  # the gate's predicted vs observed sizes of this model, oldest first
        out["observed_history"] = [o.as_dict() for o in plan.observed_history]
    if plan.vram is not None:
        budget = max(plan.vram - plan.inputs.policy.reserve, 0)
        out["vram_bytes"] = plan.vram
        out["overhead_bytes"] = plan.overhead
        out["budget_bytes"] = budget
        out["fits"] = plan.fits
        out["decision"] = plan.decision.reason if plan.decision is not None else None
        # the largest context up to the trained one, not only up to the requested num_ctx
        ceiling = max(plan.model.context_length, plan.need.num_ctx)
        out["max_num_ctx"] = largest_ctx(
            lambda n: need_for(plan.inputs, n, plan.need.parallel).total <= budget, ceiling, 256)
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
    if d["vision_compute_bytes"]:
        side = d["vision_image_size"]
        rows.append(("vision encoder", format_bytes(d["vision_compute_bytes"]),
                     f"compute for a {side}x{side} image ({format_bytes(d['vision_reserve_bytes'])} at load)"))
    rows.append(("total on GPU", format_bytes(d["gpu_total_bytes"]),
                 f"num_ctx {d['num_ctx']} x {r.parallel} parallel"))
    rows.append(("charged by the gate", format_bytes(d["charged_bytes"]),
                 f"with a {format_bytes(d['cuda_context_bytes'])} CUDA context per GPU"))
    rows.append(("in host RAM", format_bytes(d["host_weights_bytes"]), "token embeddings (never offloaded)"))
    if plan.vram is not None:
        verdict = {"admitted": "fits", "rewritten": f"does NOT fit as asked; the gate would shrink num_ctx "
                   f"to {getattr(plan.decision, 'num_ctx', '?')}"}.get(str(d["decision"]), "does NOT fit")
        rows.append(("GPU memory", format_bytes(plan.vram),
                     f"{format_bytes(d['budget_bytes'])} after the {format_bytes(plan.inputs.policy.reserve)} "
                     f"reserve: {verdict}"))
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
    lines.append(f"llama.cpp rules: {plan.run.rules.name}")
    if plan.assumed:
        lines.append("assumed: " + "; ".join(plan.assumed))
    for note in d["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
