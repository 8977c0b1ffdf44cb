"""Table tests of the pure fit decision: no event loop, no sockets, numbers checkable by hand.

The footprint here is a hand-made linear model (weights + 128 KiB of KV per token + 512 MiB of
compute) so every expected number below follows from arithmetic in the comments, not from the
code under test. The real estimator is exercised end to end in the gate tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from proxy.gate.decision import (
    Admit,
    Inputs,
    LoadRequest,
    ModelFacts,
    Policy,
    Quota,
    Refuse,
    Reservation,
    decide,
    effective_ctx,
    largest_ctx,
)
from proxy.gate.residency import Resident, VramgateLoad
from proxy.gpu.snapshot import Gpu, GpuProcess, GpuSnapshot, no_gpu_snapshot
from proxy.ollama.versions import ServerSettings, default_num_ctx, parse_version

GiB = 1024**3
MiB = 1024**2
KV_PER_TOKEN = 128 * 1024  # 1 GiB per 8192 tokens


@dataclass(frozen=True)
class StubFootprint:
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    layers: int
    projector_bytes: int = 0
    output_bytes: int = 0
    output_layer_bytes: int = 0
    vision_compute_bytes: int = 0

    @property
    def gpu_weights_bytes(self) -> int:
        return self.weights_bytes

    @property
    def gpu_total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes

    @property
    def layer_bytes(self) -> int:
        return (self.weights_bytes + self.kv_bytes) // (self.layers - 1)


def sizer(weights: int, layers: int = 33):
    def size(num_ctx: int, parallel: int, num_batch: int) -> StubFootprint:
        return StubFootprint(weights, num_ctx * parallel * KV_PER_TOKEN, 512 * MiB, layers)

    return size


SERVER = ServerSettings((0, 30, 0), "0.30.0", 1, "f16", True, 0, 0)
POLICY = Policy(reserve=1 * GiB, cuda_context=512 * MiB, min_num_ctx=2048)


def gpu(total=24, free=None, index=0, processes=()):
    free = total if free is None else free
    return Gpu(index, f"GPU-{index}", "RTX 4090", int(total * GiB), int((total - free) * GiB), int(free * GiB), 1.008e12, processes)


def static(*gpus):
    return GpuSnapshot(tuple(gpus), "static", includes_ollama=False)


def nvml(*gpus):
    return GpuSnapshot(tuple(gpus), "nvml", includes_ollama=True)


def inputs(weights=4 * GiB, options=None, route="native", gpus=None, residents=(), reservations=(), policy=POLICY,
           model="m", trained=262144, modelfile=None, server=SERVER, layers=33):
    return Inputs(
        request=LoadRequest(model, route, options or {}),
        model=ModelFacts(model, layers, trained, False, modelfile or {}),
        sizer=sizer(weights, layers),
        server=server,
        gpus=gpus or static(gpu()),
        residents=tuple(residents),
        reservations=tuple(reservations),
        policy=policy,
    )


def resident(name, size_gib, busy=False, load=None, ctx=None):
    return Resident(name, int(size_gib * GiB), int(size_gib * GiB), ctx, busy=busy, load=load)


# need(ctx) = weights + ctx/8192 GiB + 0.5 GiB compute + 0.5 GiB CUDA context; budget = free - 1 GiB reserve.
CASES = [
    # id, inputs, expected (kind, num_ctx or status)
    ("fits at explicit ctx", inputs(options={"num_ctx": 8192}), ("admitted", 8192)),
    ("server default 32768 on a 24 GiB GPU", inputs(), ("admitted", 32768)),
    ("Modelfile num_ctx wins over the default", inputs(modelfile={"num_ctx": 4096}), ("admitted", 4096)),
    # 4 + 32 + 1 = 37 > 23; KV room 23 - 5 = 18 GiB = 147456 tokens
    ("long context shrunk", inputs(options={"num_ctx": 262144}), ("rewritten", 147456)),
    ("capped to trained context first", inputs(options={"num_ctx": 262144}, trained=65536), ("admitted", 65536)),
    # weights 30 GiB never fit 23 GiB
    ("never fits", inputs(weights=30 * GiB, options={"num_ctx": 8192}), ("refused", 507)),
    # busy 15 GiB model: free 24 - 15.5 = 8.5, budget 7.5; 12 GiB weights need 13.25 at 2048
    ("busy holder -> 503", inputs(weights=12 * GiB, residents=[resident("big:latest", 15, busy=True)]), ("refused", 503)),
    # idle holder is reclaimed: budget 8.5 + 15.5 - 1 = 23
    ("idle holder evicted", inputs(weights=12 * GiB, options={"num_ctx": 8192}, residents=[resident("big:latest", 15)]), ("admitted", 8192)),
    ("evict_idle off", inputs(weights=12 * GiB, residents=[resident("big:latest", 15)],
                               policy=Policy(1 * GiB, 512 * MiB, 2048, evict_idle=False)), ("refused", 503)),
    # admitted-not-yet-resident 20 GiB: budget 3 GiB < 5.25 GiB at 2048
    ("pending load counts", inputs(reservations=[Reservation("x:latest", ((0, 20 * GiB),))]), ("refused", 503)),
    # NVML free already excludes Ollama's runner: free 9 -> budget 8; 4 + 2 + 1 = 7 at 16384
    ("nvml free used as is", inputs(options={"num_ctx": 16384}, gpus=nvml(gpu(free=9)),
                                     residents=[resident("big:latest", 15, busy=True)]), ("admitted", 16384)),
    # 4 + 4 + 1 = 9 > 8 -> shrink to 3 GiB of KV = 24576
    ("nvml shrink", inputs(options={"num_ctx": 32768}, gpus=nvml(gpu(free=9)),
                           residents=[resident("big:latest", 15, busy=True)]), ("rewritten", 24576)),
    # fits only below min_num_ctx: 4.9 GiB budget, 4 + 1 = 5 fixed -> refuse, 503 since empty it fits
    # (NVML: the other programs holding the rest may exit)
    ("below min_num_ctx refuses", inputs(gpus=nvml(gpu(free=5.9))), ("refused", 503)),
    # the same on a static GPU: what other programs hold never changes, so waiting cannot help
    ("below min_num_ctx, static: 507", inputs(gpus=static(gpu(free=5.9))), ("refused", 507)),
    ("explicit small ctx below min is honoured", inputs(options={"num_ctx": 1024}, gpus=static(gpu(free=6.2))), ("admitted", 1024)),
    # two 24 GiB GPUs: 30 GiB weights spread (single GPU 35 > 23); 2x48 GiB total -> default 262144 capped
    ("spread over two GPUs", inputs(weights=30 * GiB, options={"num_ctx": 4096}, gpus=static(gpu(), gpu(index=1))), ("admitted", 4096)),
    ("/v1 fits at default", inputs(route="openai"), ("admitted", 32768)),
    # 20 + 4 + 1 = 25 > 23 at the default; /v1 cannot be shrunk; empty GPU is the same -> 507
    ("/v1 too big at default", inputs(weights=20 * GiB, route="openai"), ("refused", 507)),
    ("/v1 busy", inputs(route="openai", residents=[resident("big:latest", 15, busy=True)]), ("refused", 503)),
]


@pytest.mark.parametrize("inp,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decision_table(inp, expected):
    d = decide(inp)
    kind, value = expected
    if kind == "refused":
        assert isinstance(d, Refuse), d
        assert d.status == value
        assert (d.retry_after is not None) == (value == 503)
    else:
        assert isinstance(d, Admit), d
        assert d.reason == kind
        assert d.num_ctx == value
        if inp.request.route == "native":
            assert d.options["num_ctx"] == value
            assert d.options["num_gpu"] == 33
        else:
            assert d.unchanged and d.options == {}


def test_rewrite_keeps_other_options_and_reports_from_to():
    d = decide(inputs(options={"num_ctx": 262144, "temperature": 0.2, "num_gpu": 999}))
    assert isinstance(d, Admit) and d.rewritten
    assert d.requested_ctx == 262144
    assert d.options == {"num_ctx": 147456, "num_gpu": 33, "temperature": 0.2}


def test_idle_eviction_is_claimed_once():
    """A second load may not count on the same idle model being evicted."""
    first = decide(inputs(weights=12 * GiB, options={"num_ctx": 8192}, residents=[resident("big:latest", 15)]))
    assert isinstance(first, Admit) and first.evicts == {"big:latest"}
    res = Reservation("m:latest", first.per_gpu, first.evicts)
    second = decide(inputs(model="n", weights=12 * GiB, options={"num_ctx": 8192},
                           residents=[resident("big:latest", 15)], reservations=[res]))
    assert isinstance(second, Refuse) and second.status == 503


def test_retry_after_shorter_when_ollama_is_busy():
    busy = decide(inputs(weights=12 * GiB, residents=[resident("big:latest", 15, busy=True)]))
    other = decide(inputs(weights=12 * GiB, gpus=nvml(gpu(free=8))))  # other programs, which may exit
    assert isinstance(busy, Refuse) and isinstance(other, Refuse)
    assert (busy.retry_after, other.retry_after) == (10, 60)


def test_refusal_numbers():
    # 30 GiB weights, ctx 8192: need 30 + 1 + 0.5 + 0.5 = 32 GiB; budget 23 GiB
    d = decide(inputs(weights=30 * GiB, options={"num_ctx": 8192},
                      gpus=static(gpu(processes=(GpuProcess(42, 300 * MiB, "alice", "Xorg"),)))))
    assert isinstance(d, Refuse)
    assert d.need.total == 32 * GiB
    assert d.need.kv == 1 * GiB and d.need.weights == 30 * GiB
    assert d.budgets[0].budget == 23 * GiB
    assert d.fits_ctx_when_free is None
    assert [h.pid for h in d.holders if h.kind == "process"] == [42]
    # 9 GiB over, layers of 31/32 GiB (weights + KV over 32 repeating layers): 10 layers would spill
    assert d.spill_layers == 10


def test_partial_offload_policy():
    overridden = decide(inputs(options={"num_gpu": 0, "num_ctx": 4096}))
    assert isinstance(overridden, Admit) and overridden.options["num_gpu"] == 33
    allowed = decide(inputs(options={"num_gpu": 10}, policy=Policy(allow_partial_offload=True)))
    assert isinstance(allowed, Admit) and allowed.unchanged and allowed.reason == "partial_allowed"


def test_no_gpu():
    none = decide(inputs(gpus=no_gpu_snapshot("VRAMGATE_GPU=none: vramgate was told there is no GPU")))
    assert isinstance(none, Refuse) and none.status == 507 and none.reason == "no_gpu"
    missing = decide(inputs(gpus=no_gpu_snapshot("NVML could not start: NVMLError_DriverNotLoaded")))
    assert isinstance(missing, Refuse) and missing.status == 507 and missing.retry_after is None
    broken = decide(inputs(gpus=no_gpu_snapshot("NVML failed reading the GPUs: GPU is lost", transient=True)))
    assert isinstance(broken, Refuse) and broken.status == 503 and broken.retry_after == 30
    allowed = decide(inputs(gpus=no_gpu_snapshot("NVML could not start"), policy=Policy(on_no_gpu="allow")))
    assert isinstance(allowed, Admit) and allowed.unchanged


STICKY = VramgateLoad(num_ctx=8192, num_gpu=33, per_gpu=((0, 6 * GiB),), predicted_bytes=5 * GiB + 512 * MiB)


@pytest.mark.parametrize(
    "options,expected_ctx,reason",
    [({}, 8192, "sticky"), ({"num_ctx": 8192}, 8192, "sticky"), ({"num_ctx": 2048}, 8192, "sticky"),
     ({"num_ctx": 16384}, 16384, "admitted")],
)
def test_sticky_options(options, expected_ctx, reason):
    r = resident("m:latest", 5.5, load=STICKY, ctx=8192)
    d = decide(inputs(options=options, residents=[r]))
    assert isinstance(d, Admit)
    assert (d.reason, d.options["num_ctx"], d.options["num_gpu"]) == (reason, expected_ctx, 33)


def test_larger_ctx_for_resident_counts_its_own_memory():
    # GPU 24 GiB, resident m (busy) holds 18 GiB; only reclaiming its own runner leaves room.
    r = resident("m:latest", 18, busy=True, load=STICKY, ctx=8192)
    d = decide(inputs(options={"num_ctx": 65536}, residents=[r]))
    assert isinstance(d, Admit) and d.num_ctx == 65536  # 4 + 8 + 1 = 13 <= 23


def test_resident_loaded_elsewhere_passes_unchanged():
    r = resident("m:latest", 9, ctx=32768)  # loaded by a /v1 client at the default context
    assert decide(inputs(residents=[r])).reason == "resident"
    assert decide(inputs(route="openai", residents=[r])).unchanged


@pytest.mark.parametrize(
    "fits,upper,expected",
    [(lambda n: n <= 5000, 8192, 4864), (lambda n: True, 8192, 8192), (lambda n: False, 8192, None),
     (lambda n: n <= 256, 100000, 256), (lambda n: n <= 30000, 30000, 30000)],
)
def test_largest_ctx(fits, upper, expected):
    assert largest_ctx(fits, upper, 256) == expected


@pytest.mark.parametrize(
    "version,totals,overhead,override,expected",
    [("0.15.5", [24 * GiB], 0, 0, 32768), ("0.30.0", [16 * GiB], 0, 0, 4096), ("0.30.0", [24 * GiB, 24 * GiB], 0, 0, 262144),
     ("0.30.0", [24 * GiB], 2 * GiB, 0, 4096), ("0.15.4", [80 * GiB], 0, 0, 4096), ("0.6.7", [], 0, 0, 4096),
     ("0.6.6", [80 * GiB], 0, 0, 2048), ("0.30.0", [80 * GiB], 0, 8192, 8192), ("v0.33.0-rc2", [48 * GiB], 0, 0, 262144)],
)
def test_default_num_ctx(version, totals, overhead, override, expected):
    assert default_num_ctx(parse_version(version), totals, overhead, override) == expected


def test_effective_ctx_sources():
    assert effective_ctx(inputs(options={"num_ctx": 9000})) == (9000, "request")
    assert effective_ctx(inputs(modelfile={"num_ctx": 4096})) == (4096, "Modelfile")
    assert effective_ctx(inputs(route="openai", options={"num_ctx": 9000})) == (32768, "server default")
    ctx, source = effective_ctx(inputs(options={"num_ctx": 999999}, trained=131072))
    assert ctx == 131072 and "capped" in source


def test_only_the_evictions_needed_are_claimed():
    # two idle 7 GiB models: free 24 - 15 = 9, budget 8 + 15 = 23; 12 GiB weights at 8192 need 14 GiB,
    # so one eviction (the one expiring first) is enough and the other stays available.
    a = Resident("a:latest", 7 * GiB, 7 * GiB, 2048, expires_at="2026-11-24T23:00:00Z")
    b = Resident("b:latest", 7 * GiB, 7 * GiB, 2048, expires_at="2026-11-24T22:10:00Z")
    d = decide(inputs(weights=12 * GiB, options={"num_ctx": 8192}, residents=[a, b]))
    assert isinstance(d, Admit) and d.evicts == {"b:latest"}


def test_parallel_slots_multiply_the_kv_cache():
    # OLLAMA_NUM_PARALLEL=4: KV room 23 - 5 = 18 GiB = 147456 tokens in all, 36864 per slot
    server = ServerSettings((0, 30, 0), "0.30.0", 4, "f16", True, 0, 0)
    d = decide(inputs(options={"num_ctx": 65536}, server=server))
    assert isinstance(d, Admit) and d.rewritten and d.num_ctx == 36864 and d.need.parallel == 4


def test_embedding_models_use_one_slot():
    server = ServerSettings((0, 30, 0), "0.30.0", 4, "f16", True, 0, 0)
    inp = inputs(options={"num_ctx": 65536}, server=server)
    inp = Inputs(inp.request, ModelFacts("m", 33, 262144, True, {}), inp.sizer, server, inp.gpus, policy=POLICY)
    d = decide(inp)
    assert isinstance(d, Admit) and d.num_ctx == 65536 and d.need.parallel == 1


@pytest.mark.parametrize(
    "options,modelfile,version,expected",
    [({"num_batch": 128}, {}, "0.30.0", 128), ({}, {"num_batch": 256}, "0.30.0", 256), ({}, {}, "0.30.0", 1024),
     ({}, {}, "0.24.0", 512)],
)
def test_num_batch_sizes_the_load(options, modelfile, version, expected):
    seen = []

    def size(num_ctx, parallel, num_batch):
        seen.append(num_batch)
        return sizer(4 * GiB)(num_ctx, parallel, num_batch)

    server = ServerSettings(parse_version(version), version, 1, "f16", True, 0, 0)
    inp = inputs(options={"num_ctx": 8192, **options}, modelfile=modelfile, server=server)
    decide(Inputs(inp.request, inp.model, size, server, inp.gpus, policy=POLICY))
    assert set(seen) == {expected}


def test_static_free_smaller_than_what_ollama_holds_adds_nothing():
    # static free 5 GiB but /api/ps says Ollama holds 15.5 GiB: free is -10.5, reclaiming own runner
    # gives back 15.5, so 5 - 1 = 4 GiB of budget: the 4 + 1 + 1 = 6 GiB load does not fit.
    r = resident("m:latest", 15, ctx=131072)
    d = decide(inputs(options={"num_ctx": 8192}, gpus=static(gpu(free=5)), residents=[r]))
    assert isinstance(d, Refuse) and d.budgets[0].budget == 4 * GiB and d.budgets[0].free == 0


def test_main_gpu_pins_the_placement():
    two = static(gpu(), gpu(index=1, free=4))
    assert isinstance(decide(inputs(options={"num_ctx": 8192}, gpus=two)), Admit)
    pinned = decide(inputs(options={"num_ctx": 8192, "main_gpu": 1}, gpus=two))
    assert isinstance(pinned, Refuse) and [b.index for b in pinned.budgets] == [1]
    # GPU 1's other 20 GiB are static and GPU 0 is out of reach: waiting cannot help
    assert (pinned.status, pinned.reason) == (507, "held_by_others")


def test_single_slot_architectures_ignore_num_parallel():
    server = ServerSettings((0, 30, 0), "0.30.0", 4, "f16", True, 0, 0)
    inp = inputs(options={"num_ctx": 65536}, server=server)
    qwen3vl = Inputs(inp.request, ModelFacts("m", 33, 262144, False, {}, "qwen3vl"), inp.sizer, server, inp.gpus, policy=POLICY)
    d = decide(qwen3vl)
    assert isinstance(d, Admit) and d.num_ctx == 65536 and d.need.parallel == 1


# --- 503 or 507 on static GPUs: waiting helps only if Ollama's own holders are in the way -----------


def refusal(inp) -> tuple[int, int | None, str]:
    d = decide(inp)
    assert isinstance(d, Refuse), d
    return d.status, d.retry_after, d.reason


@pytest.mark.parametrize(
    "inp,expected",
    [
        # others hold 18.1 of 24 GiB: budget 4.9 < 5.25 GiB at 2048; empty it fits, but static others never leave
        (inputs(gpus=static(gpu(free=5.9))), (507, None, "held_by_others")),
        # the same numbers from NVML: the other programs may exit
        (inputs(gpus=nvml(gpu(free=5.9))), (503, 60, "no_room")),
        # a busy Ollama model holds 15.5 GiB: once it is done the 12 GiB model fits (23 GiB)
        (inputs(weights=12 * GiB, residents=[resident("big:latest", 15, busy=True)]), (503, 10, "busy")),
        # an idle model Ollama may not evict (evict_idle off) goes at its keep-alive: 503, the longer wait
        (inputs(weights=12 * GiB, residents=[resident("big:latest", 15)], policy=Policy(1 * GiB, 512 * MiB, 2048, evict_idle=False)),
         (503, 60, "no_room")),
        # a load admitted but not yet resident holds 20 GiB
        (inputs(reservations=[Reservation("x:latest", ((0, 20 * GiB),))]), (503, 10, "busy")),
        # others hold 16 GiB, a busy model 3.5: without the model 8 - 1 = 7 GiB < 13.25 GiB at 2048
        (inputs(weights=12 * GiB, gpus=static(gpu(free=8)), residents=[resident("big:latest", 3, busy=True)]),
         (507, None, "held_by_others")),
        # ... while with 15 GiB configured free the model's leaving makes room: 503
        (inputs(weights=12 * GiB, gpus=static(gpu(free=15)), residents=[resident("big:latest", 3, busy=True)]),
         (503, 10, "busy")),
        # never fits, even empty: too_big whatever holds memory
        (inputs(weights=30 * GiB, gpus=static(gpu(free=5)), residents=[resident("big:latest", 3, busy=True)]),
         (507, None, "too_big")),
        # /v1 cannot be shrunk: at its default 32768 it needs 9 GiB, others leave 8 - 1 = 7
        (inputs(route="openai", gpus=static(gpu(free=8))), (507, None, "held_by_others")),
    ],
    ids=["static others only", "nvml others", "static busy model", "static idle model, evict_idle off",
         "static pending load", "static others and a busy model", "static busy model in the way",
         "too big", "/v1 static others"],
)
def test_waiting_helps_only_if_something_can_let_go(inp, expected):
    assert refusal(inp) == expected


def test_static_others_refusal_keeps_the_numbers_that_fit_now_and_when_free():
    # /v1 at 32768 needs 9 GiB; 7 GiB usable now: 16384 tokens (7 GiB = 4 + 2 + 1) fit now; empty, all of it
    d = decide(inputs(route="openai", gpus=static(gpu(free=8))))
    assert isinstance(d, Refuse)
    assert (d.fits_ctx_now, d.fits_ctx_when_free, d.budgets[0].others) == (16384, 32768, 16 * GiB)


# --- the context asked and why it was lowered -------------------------------------------------------


@pytest.mark.parametrize(
    "kw,expected",
    [
        # 1000000 capped to the trained 262144 (37 GiB) then shrunk to 147456 (18 GiB of KV)
        ({"options": {"num_ctx": 1000000}}, ("rewritten", 1000000, ((262144, "trained context"), (147456, "GPU memory")))),
        # only the trained context: 131072 tokens need 4 + 16 + 1 = 21 <= 23 GiB
        ({"options": {"num_ctx": 1000000}, "trained": 131072}, ("admitted", 1000000, ((131072, "trained context"),))),
        # only memory
        ({"options": {"num_ctx": 262144}}, ("rewritten", 262144, ((147456, "GPU memory"),))),
        # the Modelfile asks too
        ({"modelfile": {"num_ctx": 500000}, "trained": 131072}, ("admitted", 500000, ((131072, "trained context"),))),
        # the server's default (32768 on 24 GiB) is Ollama's own pick, not an ask: no step for the cap
        ({"trained": 8192}, ("admitted", 8192, ())),
        # nothing lowered
        ({"options": {"num_ctx": 8192}}, ("admitted", 8192, ())),
        # /v1 is forwarded as it is: vramgate lowers nothing
        ({"route": "openai", "modelfile": {"num_ctx": 500000}, "trained": 131072}, ("admitted", 500000, ())),
    ],
    ids=["trained then memory", "trained only", "memory only", "Modelfile", "server default", "as asked", "/v1"],
)
def test_context_steps(kw, expected):
    d = decide(inputs(**kw))
    assert isinstance(d, Admit)
    assert (d.reason, d.requested_ctx, d.ctx_steps) == expected
    if d.ctx_steps:
        assert d.num_ctx == d.ctx_steps[-1][0] == d.options["num_ctx"]


def test_sticky_and_resident_reuse_have_no_context_steps():
    sticky = decide(inputs(options={"num_ctx": 2048}, residents=[resident("m:latest", 5.5, load=STICKY, ctx=8192)]))
    assert isinstance(sticky, Admit) and sticky.reason == "sticky" and sticky.ctx_steps == ()


def test_a_policy_num_ctx_cap_applies_to_the_server_default_too():
    """The server's default context (32768 on 24 GiB) is what Ollama would load: over the user's
    max_num_ctx a native load is lowered and says so, a /v1 load (no options) is refused 403,
    naming the server default as where its context comes from."""
    cap = (8192, "users.alice.max_num_ctx")
    native = decide(replace(inputs(), ctx_cap=cap))
    assert isinstance(native, Admit) and native.options["num_ctx"] == 8192
    assert (native.requested_ctx, native.ctx_steps) == (32768, ((8192, "policy users.alice.max_num_ctx"),))
    v1 = decide(replace(inputs(route="openai"), ctx_cap=cap))
    assert isinstance(v1, Refuse)
    assert (v1.status, v1.reason, v1.requested_ctx, v1.ctx_source, v1.ctx_cap) == (
        403, "num_ctx_cap", 32768, "server default", cap)
    within = decide(replace(inputs(route="openai", trained=8192), ctx_cap=cap))  # Ollama caps it to 8192 itself
    assert isinstance(within, Admit) and within.unchanged


# need(ctx) = 4 GiB weights + ctx/8192 GiB + 1 GiB (compute + CUDA context), as in the table above
@pytest.mark.parametrize("limit,held,expected", [
    # 7 GiB quota, nothing else held: 16384 tokens (4 + 2 + 1) fit the quota though the GPU has room for 32768
    (7, 0, ("rewritten", 16384, "policy users.bob.max_vram")),
    # 5 GiB: not even 2048 tokens (5.25 GiB) fit the whole quota: 403, waiting cannot help
    (5, 0, ("refused", 403, "quota_too_small")),
    # 8 GiB with 4 GiB held by his busy models: 2048 tokens (5.25) do not fit the 4 left: 429, wait for them
    (8, 4, ("refused", 429, "over_quota")),
    # 16 GiB: the quota is not what binds
    (16, 0, ("admitted", 32768, None)),
])
def test_max_vram_quota(limit, held, expected):
    quota = Quota("bob", limit * GiB, "users.bob.max_vram", held * GiB)
    d = decide(replace(inputs(options={"num_ctx": 32768}), quota=quota))
    if expected[0] == "refused":
        assert isinstance(d, Refuse) and (d.status, d.reason) == expected[1:] and d.quota == quota
    else:
        assert isinstance(d, Admit) and (d.reason, d.num_ctx) == expected[:2]
        assert d.ctx_steps == (((expected[1], expected[2]),) if expected[2] else ())


def test_a_model_that_never_fits_the_gpus_is_507_whatever_the_quota():
    # 30 GiB of weights never fit a 24 GiB GPU: that is the answer (507 too_big), not the 5 GiB quota
    quota = Quota("bob", 5 * GiB, "users.bob.max_vram", 0)
    d = decide(replace(inputs(weights=30 * GiB, options={"num_ctx": 8192}), quota=quota))
    assert isinstance(d, Refuse) and (d.status, d.reason) == (507, "too_big")


def test_a_quota_unloads_the_users_own_idle_models_least_recently_used_first():
    # 10 GiB quota; his idle models: a (3 GiB, idle 600 s), b (3 GiB, idle 60 s). A 32768 load needs 9 GiB:
    # 9 + 6 > 10, so 5 GiB must go: a first (longest idle), then b
    quota = Quota("bob", 10 * GiB, "users.bob.max_vram", 0, (("a:latest", 3 * GiB), ("b:latest", 3 * GiB)))
    assert quota.to_unload(9 * GiB) == {"a:latest", "b:latest"}
    assert quota.to_unload(6 * GiB) == {"a:latest"}  # 6 + 6 - 10 = 2 GiB over: a alone covers it
    assert quota.to_unload(4 * GiB) == frozenset()
