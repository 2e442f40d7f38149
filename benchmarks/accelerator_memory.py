"""GPU and TPU memory of the divergences and fused heads, without the hardware.

Compiles each step for an NVIDIA H100/H200 or one TPU v5e/v6e chip on this
CPU-only machine (deviceless, ahead of time: the real XLA GPU/TPU pipeline,
GEMM autotuning skipped, nothing run, no time measured) and prints, per
target, the compiled memory (``memory_analysis()``) against each step's budget.
The cases, budgets and anchors are in ``benchmarks/_aot.py``;
``tests/test_accelerator_memory.py`` asserts the same budgets.

Reproduce (from the repository root; one environment holds both backends)::

    python3 -m venv .venv-aot && .venv-aot/bin/pip install -e ".[aot]"
    export JAX_PLATFORMS=cpu  # the script sets it too, when unset
    .venv-aot/bin/python benchmarks/accelerator_memory.py --target h100
    .venv-aot/bin/python benchmarks/accelerator_memory.py --target v5e
    .venv-aot/bin/python benchmarks/accelerator_memory.py  # all four targets

or with separate environments: ``jax==0.10.2 jaxlib==0.10.2
jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2`` for the GPU targets,
``jax[tpu]==0.10.2`` for the TPU ones, each with ``pip install -e .``. A target
whose backend is not installed is skipped with the reason. ``--only fused``
keeps the cases whose name contains "fused"; ``--hlo-dir DIR`` writes each
optimised HLO. Each case compiles in 1-20 s on two cores.

Columns: temp, out = XLA's temporary and output bytes (MiB); temp U = temp in
units of one bf16 [8192, 128256] array (dense steps, budget 0.05 U: a floor of
0); ratio = temp + out over the anchor (fused steps); limit = the budget of
that ratio ("-": reported only); f32 stored = whether a float32 [N, V] array is
stored between kernels (a top-level buffer of the optimised HLO).
"""

from __future__ import annotations

import os

# Set before JAX starts: the CUDA plugin must not look for a GPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import _aot  # noqa: E402
import jax  # noqa: E402

COLUMNS = (
    ("case", 42),
    ("temp MiB", 9),
    ("out MiB", 8),
    ("temp+out", 9),
    ("temp U", 7),
    ("anchor", 14),
    ("anchor MiB", 10),
    ("ratio", 6),
    ("limit", 6),
    ("result", 6),
    ("f32 stored", 10),
    ("s", 4),
)


def _row(*cells: str) -> str:
    return "  ".join(
        f"{cell:<{width}}" if i == 0 else f"{cell:>{width}}"
        for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


def _mib(nbytes: float) -> str:
    return f"{nbytes / _aot.MIB:,.1f}"


def measure(target: str, case: _aot.Case, hlo_dir: pathlib.Path | None) -> str:
    """One table row: compile ``case`` for ``target`` and compare with its budget."""
    start = time.perf_counter()
    try:
        compiled = _aot.compile_case(target, case)
        base = _aot.baseline_memory(target, case)
    except Exception as e:  # noqa: BLE001 - a failed case is a row, not a crash
        message = " ".join(str(e).split())
        return f"{case.name:<42}  ERROR {type(e).__name__}: {message[:160]}"
    seconds = time.perf_counter() - start
    m = _aot.memory(compiled)
    hlo = _aot.hlo_text(compiled)
    if hlo_dir is not None:
        (hlo_dir / f"{target}-{case.name}.hlo.txt").write_text(hlo)
    ratio = case.ratio(m, base)
    verdict = case.passes(m, hlo, base)
    dense = case.dense
    return _row(
        case.name,
        _mib(m.temp),
        _mib(m.out),
        _mib(m.temp_out),
        f"{ratio:.3f}" if dense and ratio is not None else "",
        case.anchor,
        _mib(base.temp_out)
        if base is not None
        else ("" if case.anchor_mib is None else f"{case.anchor_mib:,.0f}"),
        f"{ratio:.2f}" if not dense and ratio is not None else "",
        "-" if case.limit is None else f"{case.limit:g}",
        {True: "pass", False: "FAIL", None: "-"}[verdict],
        "yes" if _aot.stored_f32_nv(hlo, case.n, _aot.V) else "no",
        f"{seconds:.0f}",
    )


def table(target: str, only: str, hlo_dir: pathlib.Path | None) -> None:
    """Print the table of every case of ``target`` whose name contains ``only``."""
    reason = _aot.why_unavailable(target)
    if reason is not None:
        print(f"\n## {target}: skipped, {reason}\n", flush=True)
        return
    dev = _aot.device(target)
    print(f"\n## {target}: {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    print(_row(*(name for name, _ in COLUMNS)), flush=True)
    for case in _aot.cases(target):
        if only in case.name:
            print(measure(target, case, hlo_dir), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="all", choices=(*_aot.TARGETS, "all"))
    parser.add_argument("--only", default="", help="keep cases whose name has this")
    parser.add_argument("--hlo-dir", type=pathlib.Path, help="write each HLO here")
    args = parser.parse_args(argv)
    if args.hlo_dir is not None:
        args.hlo_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"# U = one bf16 [{_aot.N}, {_aot.V}] array = {_mib(_aot.U)} MiB; fused "
        f"heads H = {_aot.H}, bf16, value_and_grad w.r.t. (x, w), frozen teacher."
    )
    print(f"# Liger anchors: {_aot.LIGER_SOURCE}.")
    print(
        f"# TPU anchors: the default accumulation's temp + out at commit "
        f"{_aot.TPU_BASELINE_COMMIT}, on the same chip."
    )
    targets = _aot.TARGETS if args.target == "all" else (args.target,)
    for target in targets:
        table(target, args.only, args.hlo_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
