"""Accelerator memory without the accelerator: deviceless compiles and the cases.

JAX compiles a program for an NVIDIA H100 or H200 (through the CUDA PJRT
plugin's compile-only topology) or for one TPU v5e or v6e chip (through
libtpu's) on a machine that has neither. The compile runs the real XLA GPU or
TPU pipeline (fusion, scheduling, buffer assignment), so
``compiled.memory_analysis()`` gives the temporary, output and argument bytes
of a step on that chip, and ``compiled.as_text()`` its optimised HLO. Only GEMM
autotuning is skipped (there is no device to time on), so a matmul's workspace
may differ slightly from a real run. Nothing runs and no time is measured. The
TPU compiler also refuses a program that does not fit the chip's memory.

Shared by ``benchmarks/accelerator_memory.py`` (the table) and
``tests/test_accelerator_memory.py`` (the targets). The backends, each
optional (``pip install -e ".[aot]"`` installs both):

* GPU: ``jax-cuda12-plugin`` and ``jax-cuda12-pjrt``, the exact version of jax.
  Run with ``JAX_PLATFORMS=cpu``: the plugin then neither looks for a GPU nor
  checks the CUDA libraries (no ``nvidia-*`` wheels are needed).
* TPU: ``libtpu`` (from ``jax[tpu]``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
from collections.abc import Callable
from typing import Any, cast

# libtpu reads these when it loads (at the first TPU topology, never at import):
# without the first, a second process (a second pytest worker) cannot load it;
# the second silences an error line about the worker hostnames.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402

import jaxpenalties as jp  # noqa: E402

MIB = 2**20

# ---------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """The numbers by which XLA's GPU target specs differ between chips."""

    name: str
    memory_bytes: int
    bandwidth: int  # bytes/s: XLA's fusion cost model uses it
    memory_clock_khz: int
    dnn_version: tuple[int, int, int]


# From XLA's xla/backends/gpu/target_config/specs/h100_sxm.txtpb and h200.txtpb.
GPU_SPECS = {
    "h100": GpuSpec(
        name="NVIDIA H100 80GB HBM3",
        memory_bytes=84942979072,
        bandwidth=3352320000000,
        memory_clock_khz=2619000,
        dnn_version=(8, 9, 4),
    ),
    "h200": GpuSpec(
        name="NVIDIA H200 141GB HBM3e",
        memory_bytes=151397597184,
        bandwidth=4800000000000,
        memory_clock_khz=3750000,
        dnn_version=(9, 10, 0),
    ),
}
# Both specs' rate_infos: key -> (units_per_core, ops_per_clock), the scalar
# units at 1.98 GHz, the matrix units at 1.8295201 GHz except key 12 (1.98).
_SCALAR_RATES = {4: (64, 1), 8: (64, 1), 10: (128, 2), 11: (128, 1), 12: (64, 1),
                 16: (128, 2)}  # fmt: skip
_MATRIX_RATES = {2: 1024, 6: 1024, 10: 512, 11: 256, 12: 32, 16: 512, 19: 1024,
                 20: 1024, 23: 1024, 24: 1024, 25: 1024, 28: 1024, 29: 1024,
                 33: 1024, 35: 1024, 36: 1024}  # fmt: skip
TPU_TOPOLOGIES = {"v5e": "v5e:2x2", "v6e": "v6e:2x2"}  # device 0 is one chip
TARGETS = (*GPU_SPECS, *TPU_TOPOLOGIES)


def gpu_target_config(target: str) -> str:
    """XLA's GPU target spec for ``target`` as a text ``GpuTargetConfigProto``,
    without ``collective_memory_granularity`` (jaxlib 0.10.2's proto lacks it)."""
    spec = GPU_SPECS[target]
    scalar = "\n".join(
        f"    rate_infos {{ key: {key} value {{ clock_rate_ghz: 1.98 "
        f"units_per_core: {units} ops_per_clock: {ops} }} }}"
        for key, (units, ops) in _SCALAR_RATES.items()
    )
    matrix = "\n".join(
        f"    rate_infos {{ key: {key} value {{ clock_rate_ghz: "
        f"{1.98 if key == 12 else 1.8295201} units_per_core: 4 "
        f"ops_per_clock: {ops} }} }}"
        for key, ops in _MATRIX_RATES.items()
    )
    major, minor, patch = spec.dnn_version
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32
  shared_memory_per_block: 49152 shared_memory_per_core: 233472
  threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {spec.bandwidth} l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: {spec.memory_bytes} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 feature_extension: ACCELERATED_FEATURES }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
  scalar_unit_description {{
{scalar}
  }}
  matrix_unit_description {{
{matrix}
  }}
  thread_dim_limit_x: 1024 thread_dim_limit_y: 1024 thread_dim_limit_z: 64
  device_vendor: "NVIDIA Corporation"
  platform_version: "Compute Capability 9.0a"
  model_str: "sm_9.0a with {spec.memory_bytes}B RAM, 132 cores, 1980000KHz clock, \
{spec.memory_clock_khz}KHz mem clock, 52428800B L2$"
  device_address_bits: 64 pcie_bandwidth: 34359738368 ecc_enabled: true
  name: "{spec.name}"
  driver_version: "13.0.0" runtime_version: "12.8.0"
  compile_time_toolkit_version: "12.8.0" dnn_version: "9.10.0" cub_version: "3.1.2"
  device_interconnect_info {{ active_links: 18 }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: {major} minor: {minor} patch: {patch} }}
device_description_str: "{spec.name}"
"""


def why_unavailable(target: str) -> str | None:
    """Why this environment cannot compile for ``target``; None when it can."""
    if target in GPU_SPECS:
        module, package = "jax_cuda12_plugin", "jax-cuda12-plugin"
    elif target in TPU_TOPOLOGIES:
        module, package = "libtpu", "libtpu"
    else:
        raise ValueError(f"Expected `target` to be one of {TARGETS}, got {target!r}.")
    if importlib.util.find_spec(module) is None:
        return (
            f"{package} not installed: deviceless {target} compiles need it "
            f'(pip install -e ".[aot]", see docs/benchmarks.md)'
        )
    return None


@functools.cache
def gpu_device(target: str) -> jax.Device:
    """A compile-only device for the GPU ``target`` ("h100" or "h200")."""
    try:
        topology = topologies.get_topology_desc(
            platform="cuda",
            target_config=gpu_target_config(target),
            topology="1x1x1",
        )
    except NotImplementedError as e:  # the plugin did not register
        raise RuntimeError(
            "The CUDA plugin is installed but did not initialise: without a GPU "
            "it must run with JAX_PLATFORMS=cpu, set before JAX starts."
        ) from e
    return topology.devices[0]


@functools.cache
def tpu_device(target: str) -> jax.Device:
    """A compile-only device, one chip, for the TPU ``target`` ("v5e", "v6e")."""
    return topologies.get_topology_desc(TPU_TOPOLOGIES[target], "tpu").devices[0]


def device(target: str) -> jax.Device:
    """The compile-only device for any of :data:`TARGETS`."""
    return gpu_device(target) if target in GPU_SPECS else tpu_device(target)


# ---------------------------------------------------------------------------
# Compiling and reading the result
# ---------------------------------------------------------------------------


def compile_on(
    device: jax.Device,
    fn: Callable[..., Any],
    *specs: jax.ShapeDtypeStruct,
    options: dict[str, Any] | None = None,
) -> jax.stages.Compiled:
    """``jax.jit(fn)`` compiled for ``device`` at the shapes and dtypes of ``specs``.

    The matmul precision is JAX's default (what a training step gets), whatever
    the caller's configuration says (the test suite asks for ``"highest"``).
    ``options``: XLA compiler options for this compile.
    """
    sharding = jax.sharding.SingleDeviceSharding(device)
    placed = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for s in specs]
    with jax.default_matmul_precision(None):
        return jax.jit(fn).trace(*placed).lower().compile(compiler_options=options)


def compile_case(target: str, case: Case) -> jax.stages.Compiled:
    """``case`` compiled for ``target`` with its compiler options there."""
    options = dict(case.gpu_options) if target in GPU_SPECS else None
    return compile_on(device(target), case.fn, *case.args, options=options or None)


_BASELINES: dict[tuple[str, str], Memory] = {}


def baseline_memory(target: str, case: Case) -> Memory | None:
    """The memory of ``case``'s baseline step on ``target`` (compiled once per
    process), or None for a case measured against a fixed anchor."""
    if case.baseline is None:
        return None
    key = (target, case.baseline.name)
    if key not in _BASELINES:
        _BASELINES[key] = memory(compile_case(target, case.baseline))
    return _BASELINES[key]


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes of a compiled program (``compiled.memory_analysis()``)."""

    temp: int
    out: int
    args: int

    @property
    def temp_out(self) -> int:
        """What the step adds to its inputs: temporaries and outputs."""
        return self.temp + self.out


def memory(compiled: jax.stages.Compiled) -> Memory:
    """Temporary, output and argument bytes of ``compiled``."""
    m = compiled.memory_analysis()
    if m is None:
        raise RuntimeError("The backend reports no memory analysis.")
    return Memory(
        m.temp_size_in_bytes, m.output_size_in_bytes, m.argument_size_in_bytes
    )


def hlo_text(compiled: jax.stages.Compiled) -> str:
    """The optimised, scheduled HLO module of ``compiled`` as text."""
    text = compiled.as_text()
    if text is None:
        raise RuntimeError("The backend gives no text for the compiled program.")
    return text


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$"
)
_CALLEES = re.compile(
    r"\b(body|condition|true_computation|false_computation|branch_computations"
    r"|to_apply|calls)=(\{[^}]*\}|%?[\w.\-]+)"
)
_F32 = re.compile(r"\bf32\[([\d,]*)\]")
# Instructions that only alias their operands' buffers: nothing is stored.
_ALIASES = {"tuple", "get-tuple-element", "bitcast", "opt-barrier"}


def stored_f32_nv(hlo_text: str, n: int, v: int) -> bool:
    """Whether the optimised HLO stores a float32 array of ≥ n·v elements
    between kernels.

    Kernels are the instructions of the entry computation and of the control
    flow it reaches (loop bodies and conditions, conditional branches, calls,
    async computations); a fusion's body is one kernel's code, whose arrays
    live in registers and on-chip memory. An array counts where it is the
    result of such an instruction, except the entry's parameters (the inputs)
    and instructions that only alias a buffer (tuple, get-tuple-element,
    bitcast, opt-barrier).
    """
    bodies: dict[str, list[tuple[str, str, str]]] = {}  # (shape, op, operands…)
    entry: str | None = None
    current: str | None = None
    for line in hlo_text.splitlines():
        if current is None:
            header = _COMPUTATION.match(line)
            if header:
                current = header[1]
                bodies[current] = []
                entry = current if line.startswith("ENTRY") else entry
        elif line.strip() == "}":
            current = None
        elif instruction := _INSTRUCTION.match(line):
            bodies[current].append((instruction[1], instruction[2], instruction[3]))
    if entry is None:
        raise ValueError("Expected an HLO module's text, found no ENTRY computation.")
    kernel_level, pending = set(), [entry]
    while pending:
        name = pending.pop()
        if name in kernel_level or name not in bodies:
            continue
        kernel_level.add(name)
        for _, op, rest in bodies[name]:
            for key, value in _CALLEES.findall(rest):
                if (key == "calls" and op == "fusion") or (
                    key == "to_apply" and op != "call"  # a reduce's scalar adder
                ):
                    continue
                pending += [c.strip().lstrip("%") for c in value.strip("{}").split(",")]
    for name in kernel_level:
        for shape, op, _ in bodies[name]:
            if op in _ALIASES or (op == "parameter" and name == entry):
                continue
            for dims in _F32.findall(shape):
                if _size(dims) >= n * v:
                    return True
    return False


def _size(dims: str) -> int:
    size = 1
    for d in dims.split(","):
        size *= int(d) if d else 1
    return size


# ---------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------

N, V, H = 8192, 128_256, 4096
U = N * V * 2  # one bf16 [N, V] array, the dense steps' unit
DENSE_TEMP_U = 0.05  # a dense step's temp budget in U

# Liger Kernel 0.8.5's peak extra memory in MiB (torch.cuda.max_memory_allocated
# above the inputs) for one bf16 value-and-gradient step w.r.t. (x, w) with a
# frozen teacher, H = 4,096, V = 128,256, on a real H100. Measured with the
# project's GPU reference harness, bench_fused.py (contenders liger_js,
# liger_js_f32acc and liger_distill), and quoted in the fused-heads issue; the
# harness's README describes it but does not state these numbers.
LIGER_SOURCE = (
    "Liger Kernel 0.8.5, peak extra memory on a real H100 (bench_fused.py of the "
    "project's GPU reference harness: liger_js, liger_js_f32acc, liger_distill)"
)
LIGER_JSD_MIB = {8192: 2225.0, 32768: 5802.0}  # LigerFusedLinearJSD (bf16 dW)
LIGER_JSD_F32_DW_MIB = {8192: 3791.0, 32768: 7058.0}  # accum_dtype=torch.float32
LIGER_JSD_LOSS_MIB = {8192: 3096.0, 32768: 3286.0}  # LigerFusedLinearJSDLoss
# (0.5 CE at the labels + 0.5 JS), its default accumulation.

# Each fused step's (temp, out) MiB on one TPU chip at N = 32,768 with the
# default accumulation: the figures of commit 0d77cff, before the weight
# gradient could be accumulated in the parameter dtype (measured with this
# module's cases, jax[tpu]==0.10.2 and libtpu 0.0.42.1).
TPU_BASELINE_COMMIT = "0d77cff"
TPU_BASELINE_MIB = {
    ("v5e", "js"): (4019.5, 1258.0),
    ("v5e", "kl"): (4019.8, 1258.0),
    ("v5e", "distill"): (3520.0, 1258.0),
    ("v5e", "grpo"): (4521.4, 1258.0),
    ("v6e", "js"): (3518.4, 1258.0),
    ("v6e", "kl"): (4019.8, 1258.0),
    ("v6e", "distill"): (3520.1, 1258.0),
    ("v6e", "grpo"): (4521.4, 1258.0),
}
GPU_FUSED_NS = (8192, 32768)
TPU_FUSED_NS = (32768,)


@dataclasses.dataclass(frozen=True)
class Case:
    """One step to compile, with its budget.

    A dense step passes when its temp is at most ``limit`` U and it stores no
    float32 [N, V] array. A fused step passes when its temp + out is at most
    ``limit`` times ``anchor_mib``; without a ``limit`` it is only reported (it
    must still compile: the TPU compiler refuses what does not fit the chip).
    """

    name: str
    fn: Callable[..., Any]
    args: tuple[jax.ShapeDtypeStruct, ...]
    n: int  # positions: the f32 [n, V] check, and U for a dense step
    dense: bool
    anchor: str  # what the step is measured against
    anchor_mib: float | None = None
    limit: float | None = None
    # Measured against another step compiled on the same target (its temp +
    # out), instead of a fixed anchor.
    baseline: Case | None = None
    # XLA options of the GPU compile, as (name, value) pairs.
    gpu_options: tuple[tuple[str, Any], ...] = ()

    def ratio(self, m: Memory, base: Memory | None = None) -> float | None:
        """temp in U (dense), or temp + out over the anchor (fused), or over
        the baseline's temp + out (``base``)."""
        if self.dense:
            return m.temp / (self.n * V * 2)
        if base is not None:
            return m.temp_out / base.temp_out
        return None if self.anchor_mib is None else m.temp_out / (self.anchor_mib * MIB)

    def passes(
        self, m: Memory, hlo_text: str, base: Memory | None = None
    ) -> bool | None:
        """Whether the budget holds; None when the step is only reported."""
        ratio = self.ratio(m, base)
        if self.limit is None or ratio is None:
            return None
        if self.dense and stored_f32_nv(hlo_text, self.n, V):
            return False
        return ratio <= self.limit


def _spec(shape: tuple[int, ...], dtype: Any = jnp.bfloat16) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def _dense_cases() -> list[Case]:
    """Each divergence on bf16 [N, V] inputs: value, grad, value and grad."""
    divergences: dict[str, tuple[Callable[..., jax.Array], int]] = {
        "kl-forward": (jp.kl_divergence, 2),
        "kl-reverse": (functools.partial(jp.kl_divergence, direction="reverse"), 2),
        "kl-symmetric": (functools.partial(jp.kl_divergence, symmetric=True), 2),
        "js": (jp.js_divergence, 2),
        "entropy": (jp.entropy, 1),
    }
    modes = {
        "value": lambda f: f,
        "grad": jax.grad,
        "value_and_grad": jax.value_and_grad,
    }
    cases = []
    for name, (divergence, arity) in divergences.items():
        for inputs, from_logits in (("logprobs", False), ("logits", True)):
            f = functools.partial(divergence, from_logits=from_logits)
            for mode, transform in modes.items():
                cases.append(
                    Case(
                        f"dense-{name}-{inputs}-{mode}",
                        transform(f),
                        (_spec((N, V)),) * arity,
                        n=N,
                        dense=True,
                        anchor="floor 0",
                        limit=DENSE_TEMP_U,
                    )
                )
    return cases


def _fused_js(
    x: jax.Array, w: jax.Array, rx: jax.Array, rw: jax.Array, **options: Any
) -> jax.Array:
    sg = jax.lax.stop_gradient
    # Without labels, the loss alone (options holds grad_accumulation at most).
    return cast(
        jax.Array, jp.fused_linear_js_divergence(x, w, sg(rx), sg(rw), **options)
    )


def _fused_kl(
    x: jax.Array, w: jax.Array, rx: jax.Array, rw: jax.Array, **options: Any
) -> jax.Array:
    sg = jax.lax.stop_gradient
    return cast(
        jax.Array, jp.fused_linear_kl_divergence(x, w, sg(rx), sg(rw), **options)
    )


def _distill(
    x: jax.Array,
    w: jax.Array,
    rx: jax.Array,
    rw: jax.Array,
    labels: jax.Array,
    **options: Any,
) -> jax.Array:
    """Distillation: 0.5 CE at the labels + 0.5 JS to the frozen teacher."""
    sg = jax.lax.stop_gradient
    loss, _ = jp.fused_linear_js_divergence(
        x, w, sg(rx), sg(rw), labels=labels, soft_weight=0.5, hard_weight=0.5, **options
    )
    return loss


def _grpo(
    x: jax.Array,
    w: jax.Array,
    rx: jax.Array,
    rw: jax.Array,
    tokens: jax.Array,
    advantages: jax.Array,
    **options: Any,
) -> jax.Array:
    """A GRPO step: the ratio objective and β = 0.04 times the k3 KL estimate
    to the frozen reference, from the sampled tokens' log-probs."""
    sg = jax.lax.stop_gradient
    # Without entropy=True, the log-probs alone.
    logp = cast(jax.Array, jp.fused_linear_token_logprobs(x, w, tokens, **options))
    ref_logp = cast(
        jax.Array, jp.fused_linear_token_logprobs(sg(rx), sg(rw), tokens, **options)
    )
    ratio = jnp.exp(logp - sg(logp))  # π / π_old, 1 in value: one update per batch
    kl = jp.kl_estimate(logp, ref_logp, estimator="k3")
    return -jnp.mean(ratio * advantages) + 0.04 * kl


_STEPS: dict[str, Callable[..., jax.Array]] = {
    "js": _fused_js,
    "kl": _fused_kl,
    "distill": _distill,
    "grpo": _grpo,
}


def _fused_args(step: str, n: int) -> tuple[jax.ShapeDtypeStruct, ...]:
    heads = (_spec((n, H)), _spec((H, V)), _spec((n, H)), _spec((H, V)))
    if step == "distill":
        return (*heads, _spec((n,), jnp.int32))
    if step == "grpo":
        return (*heads, _spec((n,), jnp.int32), _spec((n,), jnp.float32))
    return heads


def _budget(target: str, step: str, n: int, accumulation: str) -> dict[str, Any]:
    """The anchor and limit of a fused step (see the module's constants)."""
    param = accumulation == "param"
    if target in TPU_TOPOLOGIES:
        temp, out = TPU_BASELINE_MIB[target, step]
        return dict(
            anchor=f"{TPU_BASELINE_COMMIT} {target}",
            anchor_mib=temp + out,
            limit=0.7 if param else None,
        )
    if step in ("js", "kl"):  # the JSD figures anchor both divergences
        if param:
            return dict(anchor="Liger bf16 dW", anchor_mib=LIGER_JSD_MIB[n], limit=0.7)
        return dict(
            anchor="Liger f32 dW", anchor_mib=LIGER_JSD_F32_DW_MIB[n], limit=1.0
        )
    if step == "distill":
        return dict(
            anchor="LigerJSDLoss",
            anchor_mib=LIGER_JSD_LOSS_MIB[n],
            limit=0.8 if param else None,
        )
    return dict(anchor="-")  # GRPO on a GPU: reported only


def _fused_cases(target: str) -> list[Case]:
    """Each fused step's value and gradient w.r.t. (x, w), frozen teacher."""
    ns = GPU_FUSED_NS if target in GPU_SPECS else TPU_FUSED_NS
    cases = []
    for step, f in _STEPS.items():
        for n in ns:
            for accumulation in ("default", "param"):
                # The default passes no keyword: the step also compiles on code
                # that predates `grad_accumulation`.
                options = (
                    {} if accumulation == "default" else {"grad_accumulation": "param"}
                )
                cases.append(
                    Case(
                        f"{'fused-' if step in ('js', 'kl') else ''}{step}-N{n}-"
                        f"{accumulation}",
                        jax.value_and_grad(
                            functools.partial(f, **options), argnums=(0, 1)
                        ),
                        _fused_args(step, n),
                        n=n,
                        dense=False,
                        **_budget(target, step, n, accumulation),
                    )
                )
    return cases


# The divergences beyond KL and JS (the fused heads by name): each step within
# NAMED_LIMIT × the fused KL step's temp + out on the same target, compiled
# for an H100 and one TPU v5e chip, at both N. ULD's GPU compile takes XLA's
# own sort: CUB's radix sort (XLA's default for large sorts on a real GPU)
# needs the CUDA libraries at compile time, which a deviceless compile lacks.
NAMED_DIVERGENCES = ("total_variation", "alpha", "skew_kl", "uld")
NAMED_TARGETS = ("h100", "v5e")
NAMED_NS = (8192, 32768)
NAMED_LIMIT = 1.05
_NO_CUB_SORT = (("xla_gpu_enable_cub_radix_sort", False),)


def _fused_named(
    x: jax.Array, w: jax.Array, rx: jax.Array, rw: jax.Array, *, divergence: str
) -> jax.Array:
    sg = jax.lax.stop_gradient
    return cast(
        jax.Array,
        jp.fused_linear_divergence(x, w, sg(rx), sg(rw), divergence=divergence),
    )


# Soft-capped, scaled and biased heads (Gemma 2, Cohere): the fused KL step
# with each option, within NAMED_LIMIT × the plain step, same targets and N.
HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "softcap": {"softcap": 30.0, "ref_softcap": 30.0},
    "scale-bias": {"logit_scale": 0.0625, "bias": True},
    "all": {"softcap": 30.0, "logit_scale": 0.5, "bias": True, "ref_softcap": 30.0},
}


def _fused_kl_head(
    x: jax.Array,
    w: jax.Array,
    rx: jax.Array,
    rw: jax.Array,
    bias: jax.Array,
    *,
    options: dict[str, Any],
) -> jax.Array:
    sg = jax.lax.stop_gradient
    kw = {**options, "bias": bias} if "bias" in options else options
    return cast(jax.Array, jp.fused_linear_kl_divergence(x, w, sg(rx), sg(rw), **kw))


def _head_cases(n: int, kl: Case) -> list[Case]:
    """The fused KL step with each of :data:`HEAD_OPTIONS`, against ``kl``."""
    return [
        Case(
            f"fused-kl-{name}-N{n}",
            jax.value_and_grad(
                functools.partial(_fused_kl_head, options=options), argnums=(0, 1, 4)
            ),
            (*_fused_args("kl", n), _spec((V,))),
            n=n,
            dense=False,
            anchor=f"fused KL N{n}",
            limit=NAMED_LIMIT,
            baseline=kl,
        )
        for name, options in HEAD_OPTIONS.items()
    ]


def _named_cases(target: str) -> list[Case]:
    """Each divergence by name against the fused KL step (default options)."""
    if target not in NAMED_TARGETS:
        return []
    cases = []
    for n in NAMED_NS:
        kl = Case(
            f"fused-kl-N{n}-default",
            jax.value_and_grad(_fused_kl, argnums=(0, 1)),
            _fused_args("kl", n),
            n=n,
            dense=False,
            anchor="-",
        )
        for divergence in NAMED_DIVERGENCES:
            f = functools.partial(_fused_named, divergence=divergence)
            cases.append(
                Case(
                    f"fused-{divergence}-N{n}",
                    jax.value_and_grad(f, argnums=(0, 1)),
                    _fused_args("kl", n),
                    n=n,
                    dense=False,
                    anchor=f"fused KL N{n}",
                    limit=NAMED_LIMIT,
                    baseline=kl,
                    gpu_options=_NO_CUB_SORT if divergence == "uld" else (),
                )
            )
        cases += _head_cases(n, kl)
    return cases


def cases(target: str) -> list[Case]:
    """Every case compiled for ``target``, dense steps first."""
    return _dense_cases() + _fused_cases(target) + _named_cases(target)
