"""GPU and TPU memory budgets, checked by deviceless compiles.

Each budgeted case of ``benchmarks/_aot.py`` is compiled for its target (an
H100, an H200, one TPU v5e or v6e chip) on this machine, without the hardware,
and its compiled memory (``memory_analysis()``) is held to its budget: dense
divergences at most 0.05 of one input array in temporaries and no float32
[N, V] array stored between kernels; fused heads against Liger Kernel's
measured H100 memory or, on a TPU, against the figures of commit 0d77cff. On a
TPU the compile itself checks that the step fits one chip.

The GPU targets need ``jax-cuda12-plugin`` and the TPU ones ``libtpu`` (the
``aot`` extra, see ``ci/accelerators.sh``), with ``JAX_PLATFORMS=cpu``. Where a
backend is missing its cases skip with the reason, unless
``JAXPENALTIES_REQUIRE_ACCELERATOR_TARGETS=1`` turns the skips into failures.
"""

import os

import pytest

from benchmarks import _aot

REQUIRE_TARGETS = os.environ.get("JAXPENALTIES_REQUIRE_ACCELERATOR_TARGETS") == "1"


def _budgeted_cases():
    """Every case with a budget, and on a TPU every case (it must fit)."""
    return [
        pytest.param(target, case, id=f"{target}-{case.name}")
        for target in _aot.TARGETS
        for case in _aot.cases(target)
        if case.limit is not None or target in _aot.TPU_TOPOLOGIES
    ]


@pytest.mark.parametrize(("target", "case"), _budgeted_cases())
def test_memory_budget(target, case):
    reason = _aot.why_unavailable(target)
    if reason is not None:
        if REQUIRE_TARGETS:
            pytest.fail(f"JAXPENALTIES_REQUIRE_ACCELERATOR_TARGETS=1, but {reason}")
        pytest.skip(reason)
    compiled = _aot.compile_case(target, case)
    m = _aot.memory(compiled)
    base = _aot.baseline_memory(target, case)
    hlo = _aot.hlo_text(compiled)
    figures = (
        f"{case.name} on {target}: temp {m.temp / _aot.MIB:,.1f} MiB, "
        f"out {m.out / _aot.MIB:,.1f} MiB"
    )
    ratio = case.ratio(m, base)
    if case.dense:
        assert not _aot.stored_f32_nv(hlo, case.n, _aot.V), (
            f"{figures}: a float32 [{case.n}, {_aot.V}] array is stored"
        )
        assert ratio <= case.limit, f"{figures}: temp {ratio:.3f} U > {case.limit} U"
    elif base is not None:
        assert ratio <= case.limit, (
            f"{figures}: temp + out is {ratio:.3f} × {case.anchor}'s "
            f"({base.temp_out / _aot.MIB:,.0f} MiB), over {case.limit} ×"
        )
    elif case.limit is not None:
        assert ratio <= case.limit, (
            f"{figures}: temp + out is {ratio:.2f} × {case.anchor} "
            f"({case.anchor_mib:,.0f} MiB), over {case.limit} ×"
        )


# A scheduled HLO module in the optimised form, to which each case below adds
# one line. On its own it stores no f32 array of 32 elements: only the entry's
# parameter, an alias of it, a fusion's body and a reduction's adder hold one.
_HLO = """\
HloModule m, is_scheduled=true, entry_computation_layout={(bf16[4,8]{1,0})->f32[]}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%fused_reduce (p: bf16[4,8]) -> f32[] {
  %p = bf16[4,8]{1,0} parameter(0)
  %up = f32[4,8]{1,0} convert(%p)
  %zero = f32[] constant(0)
  ROOT %r = f32[] reduce(%up, %zero), dimensions={0,1}, to_apply=%add
}

%fused_up (p: bf16[4,8]) -> f32[4,8] {
  %p = bf16[4,8]{1,0} parameter(0)
  ROOT %up = f32[4,8]{1,0} convert(%p)
}

%cond (s: (s32[], bf16[4,8])) -> pred[] {
  %s = (s32[], bf16[4,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%s), index=0
  %three = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %three), direction=LT
}

%body (s: (s32[], bf16[4,8])) -> (s32[], bf16[4,8]) {
  %s = (s32[], bf16[4,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%s), index=0
  %x = bf16[4,8]{1,0} get-tuple-element(%s), index=1
  {body}
  ROOT %next = (s32[], bf16[4,8]{1,0}) tuple(%i, %x)
}

ENTRY %main (x: bf16[4,8], y: f32[4,8]) -> f32[] {
  %x = bf16[4,8]{1,0} parameter(0)
  %y = f32[4,8]{1,0} parameter(1)
  %pair = (bf16[4,8]{1,0}, f32[4,8]{1,0}) tuple(%x, %y)
  %yy = f32[4,8]{1,0} get-tuple-element(%pair), index=1
  %zero = s32[] constant(0)
  %init = (s32[], bf16[4,8]{1,0}) tuple(%zero, %x)
  %loop = (s32[], bf16[4,8]{1,0}) while(%init), condition=%cond, body=%body
  {entry}
  ROOT %r = f32[] fusion(%x), kind=kInput, calls=%fused_reduce
}
"""
_UP = "{} = f32[{}]{} fusion(%x), kind=kLoop, calls=%fused_up"


@pytest.mark.parametrize(
    ("entry", "body", "stored"),
    [
        ("", "", False),
        (_UP.format("%u", "4,8", "{1,0}"), "", True),  # a kernel's output
        (_UP.format("%u", "32", "{0}"), "", True),  # any shape of that size
        (_UP.format("%u", "4,8", "{1,0:T(8,128)}"), "", True),  # TPU layout
        (_UP.format("%u", "4,7", "{1,0}"), "", False),  # smaller
        ("", _UP.format("%u", "4,8", "{1,0}"), True),  # in a loop body
        (_UP.format("%u", "4,8", "{1,0}").replace("f32", "bf16"), "", False),
    ],
)
def test_stored_f32_nv_reads_the_buffers_between_kernels(entry, body, stored):
    hlo = _HLO.replace("{entry}", entry).replace("{body}", body)
    assert _aot.stored_f32_nv(hlo, 4, 8) is stored
