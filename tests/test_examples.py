"""The worked plug-ins in examples/: each passes `rnnbench check`, and one runs through every suite's smoke cases."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = [("examples.flax_lstm:FlaxLSTM", "flax", "lstm"), ("examples.equinox_gru:EquinoxGRU", "equinox", "gru")]


@pytest.mark.slow
@pytest.mark.parametrize("name,needs,cell", EXAMPLES)
def test_example_passes_the_conformance_battery(name, needs, cell):
    pytest.importorskip(needs)
    from harness.check.battery import run_check
    res = run_check(name)
    assert res.passed, [(c.name, c.cell, c.dtype, c.part, c.error, c.detail) for c in res.failed][:6]
    agreement = [c for c in res.checks if c.name == "agreement"]
    assert {c.cell for c in agreement} == {cell} and {c.layers for c in agreement} == {1, 2}
    assert {c.dtype for c in agreement} == {"float32", "float64"}


@pytest.mark.parametrize("name,needs,cell", EXAMPLES)
def test_examples_stay_short(name, needs, cell):
    path = os.path.join(ROOT, *name.split(":")[0].split(".")) + ".py"
    with open(path) as f:
        assert len(f.read().splitlines()) <= 65  # the converters do the layout work


@pytest.mark.slow
def test_the_flax_example_runs_through_every_suite(tmp_path):
    pytest.importorskip("flax")
    out = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "harness", "run", "--preset", "smoke", "--backend",
                        "examples.flax_lstm:FlaxLSTM", "--out", out, "--no-progress"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with open(os.path.join(out, "rows.jsonl")) as f:
        rows = [x for x in map(json.loads, f) if "metric" in x]
    ok = {(x["suite"], x["metric"]) for x in rows if x["status"] == "ok" and x.get("cell") in ("lstm", None)}
    for need in [("throughput", "train_ms"), ("throughput", "eff_gemm"), ("memory", "peak_bytes"),
                 ("gradients", "check_backend_agreement"), ("gradients", "check_finite_difference")]:
        assert need in ok, need
    ctc = [x for x in rows if x["suite"] == "ctc"]
    assert ctc and all(x["status"] == "skipped" and "has no CTC" in x["reason"] for x in ctc)
    tp = [x for x in rows if x["suite"] == "throughput" and x["metric"] == "train_ms" and x["status"] == "ok"]
    assert tp and all(x["extra"]["prepare"] == "native" for x in tp)  # it converts once, outside the timing


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["SwappedGates", "TransposedWeight", "ForgetOffset", "OneBiasGradient",
                                     "LowPrecision"])
def test_broken_variants_of_the_flax_example_are_caught_with_the_part_named(variant):
    pytest.importorskip("flax")
    from harness.check.battery import run_check
    from tests.plugins import broken_flax
    res = run_check(f"tests.plugins.broken_flax:{variant}", layers=(1,))
    failed = {c.part for c in res.failed if c.name == "agreement"}
    assert not res.passed and {p for p in broken_flax.EXPECTED[variant] if not p.startswith("dl1")} <= failed, \
        (variant, sorted(failed))
    if variant == "OneBiasGradient":  # a gradient-only slip: nothing else is blamed
        assert failed == {"dl0.b_hh"}
