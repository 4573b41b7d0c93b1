"""Gradient-norm analysis: the theory module, the checks of issue 5, bad input, the suite and its report."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from implementations import registry as backends
from harness.core.params import Params, init_params
from harness.core.spec import CellSpec
from suites.gradients import theory as th
from suites.base import Case, RunContext
from suites.gradients.suite import SUITE

NP = backends.get("numpy")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setting(cell, rho=None, bias=0.0, scale=1.0, T=300, H=128, B=8, I=32, seed=0, dtype="float64"):
    """Params, drive-scaled inputs and a unit cotangent, as the suite builds them."""
    spec = CellSpec(cell, I, H)
    p = init_params(spec, seed=seed, init="default" if rho is None else "orthogonal", rho=rho, gate_bias=bias)
    x = th.drive_scaled_inputs(p.layers[0].w_ih, T, B, scale, seed)
    dh = th.unit_cotangent(B, H, seed)
    return spec, p.astype(dtype), x.astype(dtype), dh.astype(dtype)


def _rates(cell, rho=None, bias=0.0, scale=1.0, **kw):
    """(fitted rate of h, of c or None, predicted rate) for one setting."""
    spec, p, x, dh = _setting(cell, rho, bias, scale, **kw)
    out = NP.hidden_grads(spec, p, x, dh, return_cell=spec.is_lstm)
    g, gc = out if spec.is_lstm else (out, None)
    y, _ = NP.forward(spec, p, x)
    fit = th.fit_rate(th.step_norms(g))
    fit_c = th.fit_rate(th.step_norms(gc)) if gc is not None else None
    if cell in ("lstm", "gru"):
        factors = th.step_factors(th.rms_over_units(th.gate_sequence(spec, p, x, y)))
    else:
        factors = th.step_factors(th.rms_over_units(th.fprime_from_outputs(cell, y)), th.sigma_rms(p.layers[0].w_hh))
    pred = th.predicted_rate(factors, fit_c or fit)
    return fit.rate, (fit_c.rate if fit_c else None), pred


# -- the checks of the issue -------------------------------------------------------------------------

@pytest.mark.parametrize("rho", [0.5, 0.9, 1.0, 1.1, 1.5, 3.0])
def test_linear_recurrence_is_exactly_rho_to_the_k(rho):
    H, B, T = 32, 4, 700
    q = init_params(CellSpec("rnn_tanh", 3, H), seed=1, init="orthogonal", rho=1.0).layers[0].w_hh
    dh = th.unit_cotangent(B, H, seed=1)
    g = th.linear_hidden_grads(rho * q, dh, T)
    health = th.curve_health(g)
    norms = th.masked_norms(th.step_norms(g), health)
    err, n = th.linear_exact_error(norms, rho)
    assert err <= 1e-10
    if rho == 3.0:  # 3^k passes float64's largest number at k = 646: recorded, and compared only before
        assert health.overflow_step is not None and 640 <= health.overflow_step <= 650
        assert np.isnan(norms[health.overflow_step:]).all()
        assert health.overflow_step - 2 <= n <= health.overflow_step
    else:
        assert health.ok and n == T
    if rho != 1.0:
        assert th.fit_rate(norms).rate == pytest.approx(rho, rel=1e-10)


def test_linear_gradients_pass_finite_differences():
    q = init_params(CellSpec("rnn_tanh", 3, 8), seed=2, init="orthogonal", rho=0.9).layers[0]
    x = th.drive_scaled_inputs(q.w_ih, 6, 3, 1.0, seed=2)
    dh = th.unit_cotangent(3, 8, seed=2)
    g = th.linear_hidden_grads(q.w_hh, dh, 6)
    assert th.fd_check_linear(q.w_hh, q.w_ih, x, dh, g) <= 1e-8
    assert th.fd_check_linear(q.w_hh, q.w_ih, x, dh, g * 1.001) > 1e-4  # a wrong gradient is caught


@pytest.mark.parametrize("rho", [0.5, 0.9, 1.0, 1.1, 1.5, 3.0])
def test_tanh_rate_within_3_percent_of_rho_rms_tanh_prime(rho):
    fitted, _, predicted = _rates("rnn_tanh", rho=rho, scale=0.1)
    assert fitted == pytest.approx(predicted, rel=0.03)


def test_tanh_rho_1_5_grows_with_small_inputs_and_decays_with_large():
    grow, _, _ = _rates("rnn_tanh", rho=1.5, scale=0.1)
    decay, _, _ = _rates("rnn_tanh", rho=1.5, scale=1.0)
    assert grow > 1.0 > decay


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gate_bias_makes_gradients_decay_slower(cell):
    rates_h, rates_c = [], []
    for b in (0.0, 1.0, 2.0, 3.0):
        rh, rc, _ = _rates(cell, bias=b, scale=1.0, T=200, H=64)
        rates_h.append(rh)
        rates_c.append(rc)
    assert th.monotonic_increasing(rates_h), rates_h
    assert all(r < 1 for r in rates_h)
    if cell == "lstm":
        assert th.monotonic_increasing(rates_c), rates_c


@pytest.mark.parametrize("cell,rho,bias", [("rnn_tanh", 1.5, 0.0), ("rnn_relu", 0.9, 0.0), ("rnn_tanh", None, 0.0),
                                           ("lstm", None, 2.0), ("gru", None, 1.0)])
def test_hidden_grads_pass_finite_differences(cell, rho, bias):
    spec, p, x, dh = _setting(cell, rho, bias, T=7, H=16, I=8, B=3)
    out = NP.hidden_grads(spec, p, x, dh, return_cell=spec.is_lstm)
    g, gc = out if spec.is_lstm else (out, None)
    assert th.fd_check_hidden_grads(NP.forward, spec, p, x, dh, g, gc) <= 1e-7
    bad = g.copy()
    bad[2] *= 1.01
    assert th.fd_check_hidden_grads(NP.forward, spec, p, x, dh, bad, gc) > 1e-4
    if gc is not None:
        bad_c = gc.copy()
        bad_c[1] *= 1.01
        assert th.fd_check_hidden_grads(NP.forward, spec, p, x, dh, g, bad_c) > 1e-4


# -- the pieces ----------------------------------------------------------------------------------------

def test_fit_rate_on_a_geometric_curve_and_its_error():
    k = np.arange(200)
    fit = th.fit_rate(3.0 * 0.8 ** k)
    assert fit.rate == pytest.approx(0.8, rel=1e-12) and fit.rate_err < 1e-12 and fit.r2 == pytest.approx(1.0)
    assert (fit.k_lo, fit.k_hi, fit.n_points) == (th.FIT_SKIP, 199, 190)
    noisy = 0.9 ** k * np.exp(0.05 * np.random.default_rng(0).standard_normal(200))
    f2 = th.fit_rate(noisy, window=(0, 199))
    assert abs(f2.rate - 0.9) < 4 * f2.rate_err + 1e-3 and f2.rate_err > 0


def test_fit_window_stops_at_the_first_bad_point_and_empty_windows_are_errors():
    n = 0.5 ** np.arange(100.0)
    n[40:] = np.nan
    assert th.fit_rate(n).k_hi == 39
    with pytest.raises(ValueError, match="empty fit window.*k=12"):
        n2 = 0.5 ** np.arange(100.0)
        n2[12] = 0.0
        th.fit_rate(n2)
    with pytest.raises(ValueError, match="empty fit window"):
        th.fit_rate(np.ones(8))  # shorter than the 10-step transient
    with pytest.raises(ValueError, match="empty fit window"):
        th.fit_rate(n, window=(30, 60))  # NaN inside an explicit window
    with pytest.raises(ValueError, match="window"):
        th.fit_rate(n, window=(20, 100))
    with pytest.raises(TypeError, match="window"):
        th.fit_rate(n, window=(1.5, 20))
    with pytest.raises(ValueError, match="skip"):
        th.fit_rate(n, skip=-1)
    with pytest.raises(ValueError, match="norms"):
        th.fit_rate(np.ones((3, 3)))


def test_norms_do_not_underflow_in_the_squares():
    g = np.full((3, 2, 4), 1e-200)
    g[1] = 1e200
    n = th.step_norms(g)
    assert n[0] == pytest.approx(1e-200 * math.sqrt(8)) and n[1] == pytest.approx(1e200 * math.sqrt(8))


def test_float32_underflow_and_overflow_are_found_and_masked():
    spec, p, x, dh = _setting("rnn_tanh", rho=0.5, scale=1.0, T=200, H=32, I=8, dtype="float32")
    g = NP.hidden_grads(spec, p, x, dh)
    h = th.curve_health(g)
    assert h.underflow_step is not None and 50 < h.underflow_step < 120 and h.overflow_step is None
    masked = th.masked_norms(th.step_norms(g), h)
    assert np.isnan(masked[h.underflow_step:]).all() and np.isfinite(masked[:h.underflow_step]).all()
    assert "float32 underflow from k=" in h.reason() and "NaN" in h.reason()
    assert th.fit_rate(masked).k_hi == h.underflow_step - 1
    # The same setting in float64 survives much further.
    g64 = NP.hidden_grads(spec, p.astype("float64"), x.astype("float64"), dh.astype("float64"))
    assert th.curve_health(g64).valid_k > 3 * h.underflow_step or th.curve_health(g64).ok
    # Overflow: an inf entry.
    g2 = np.ones((5, 1, 2))
    g2[1, 0, 0] = np.inf
    assert th.curve_health(g2).overflow_step == 3 and th.curve_health(g2).valid_k == 2
    # A gradient that is exactly zero out of the blue is not an underflow (a backend returning zeros).
    g3 = np.ones((5, 1, 2))
    g3[:3] = 0.0
    h3 = th.curve_health(g3)
    assert h3.zero_step == 2 and h3.underflow_step is None and "not an underflow" in h3.reason()


def test_exploding_relu_forward_invalidates_the_whole_curve():
    spec, p, x, dh = _setting("rnn_relu", rho=3.0, scale=1.0, T=200, H=32, I=8, dtype="float32")
    with np.errstate(all="ignore"):
        y, _ = NP.forward(spec, p, x)
        g = NP.hidden_grads(spec, p, x, dh)
    t = th.forward_nonfinite_step(y)
    assert t is not None and t < 200
    h = th.curve_health(g, y)
    assert h.overflow_step == 1 and h.underflow_step is None and not h.ok


def test_pascanu_conditions_and_bound():
    pc = th.pascanu_conditions(0.9, 1.0)
    assert pc["sufficient_vanish"] and not pc["necessary_explode"]
    pc = th.pascanu_conditions(1.2, 1.0)
    assert not pc["sufficient_vanish"] and pc["necessary_explode"]
    spec, p, x, dh = _setting("rnn_tanh", rho=1.1, scale=1.0, T=100, H=32, I=8)
    n = th.step_norms(NP.hidden_grads(spec, p, x, dh))
    smax = th.sigma_max(p.layers[0].w_hh)
    assert smax == pytest.approx(1.1, rel=1e-12) and th.sigma_rms(p.layers[0].w_hh) == pytest.approx(1.1, rel=1e-12)
    holds, worst = th.pascanu_bound_check(n, smax, 1.0)
    assert holds and worst <= 0
    assert not th.pascanu_bound_check(1.2 ** np.arange(10.0), 1.1, 1.0)[0]
    with pytest.raises(ValueError, match="gamma"):
        th.pascanu_conditions(1.0, 0.0)


def test_gate_sequence_matches_the_definition_and_times():
    spec, p, x, dh = _setting("lstm", bias=3.0, T=20, H=8, I=4, B=2)
    y, _ = NP.forward(spec, p, x)
    f = th.gate_sequence(spec, p, x, y)
    lp, H = p.layers[0], 8
    a0 = x[0] @ lp.w_ih[H:2 * H].T + lp.b_ih[H:2 * H] + lp.b_hh[H:2 * H]  # h_0 = 0
    np.testing.assert_allclose(f[0], 1 / (1 + np.exp(-a0)), rtol=1e-12)
    assert 0.9 < f.mean() < 1
    assert th.forgetting_time(0.5) == 2.0 and th.forgetting_time(1.0) == math.inf
    assert th.memory_time(math.exp(-0.1)) == pytest.approx(10.0) and th.memory_time(1.2) == math.inf
    with pytest.raises(ValueError, match="forget|update|lstm"):
        th.gate_sequence(CellSpec("rnn_tanh", 4, 8), p, x, y)
    with pytest.raises(ValueError, match="mean_gate"):
        th.forgetting_time(1.5)
    with pytest.raises(ValueError, match="rate"):
        th.memory_time(0.0)


def test_clip_global_norm_like_torch():
    spec = CellSpec("gru", 3, 4)
    g = init_params(spec, seed=0).map(lambda a: a * 10)
    total = th.global_norm(g)
    clipped, before, coef = th.clip_global_norm(g, 1.0)
    assert before == pytest.approx(total) and coef == pytest.approx(1.0 / (total + 1e-6))
    assert th.global_norm(clipped) == pytest.approx(1.0, rel=1e-5)
    same, _, coef2 = th.clip_global_norm(g, 10 * total)
    assert coef2 == 1.0 and th.global_norm(same) == pytest.approx(total)
    torch = pytest.importorskip("torch")
    ps = []
    for _, a in g.items():
        p = torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.float64))
        p.grad = torch.tensor(a)
        ps.append(p)
    norm = torch.nn.utils.clip_grad_norm_(ps, 1.0)  # clips the .grad tensors in place
    assert float(norm) == pytest.approx(total, rel=1e-12)
    got = math.sqrt(sum(float((p.grad ** 2).sum()) for p in ps))
    assert got == pytest.approx(th.global_norm(clipped), rel=1e-12)
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="max_norm"):
            th.clip_global_norm(g, bad)
    with pytest.raises(TypeError, match="grads"):
        th.global_norm({"w": np.ones(3)})


def test_curve_disagreement():
    g = np.random.default_rng(0).standard_normal((10, 2, 3))
    assert th.curve_disagreement(g, g) == (0.0, 0)
    g2 = g.copy()
    g2[3] *= 1 + 1e-6  # index 3 is k = 6
    d, k = th.curve_disagreement(g2, g)
    assert d == pytest.approx(1e-6, rel=1e-6) and k == 6
    g3 = g.copy()
    g3[0, 0, 0] = np.nan
    assert th.curve_disagreement(g3, g) == (math.inf, 9)
    with pytest.raises(ValueError, match="shape"):
        th.curve_disagreement(g[:5], g)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_curve_disagreement_stops_where_the_reference_leaves_full_precision(dtype):
    """XLA's CPU code flushes subnormals to zero, NumPy does not: in a vanishing curve, a backend that gives
    exact zeros once the reference is subnormal is not wrong (the full preset's JAX agreement checks at
    T = 1000 failed with relative difference 1 there), but one that is off while the reference still has
    its full precision is."""
    rng = np.random.default_rng(1)
    T = 200
    decay = np.float64(0.02) if dtype == "float64" else np.float64(0.3)
    g = (rng.standard_normal((T, 3, 8)) * decay ** np.arange(T)[::-1, None, None]).astype(dtype)
    flushed = g.copy()
    flushed[np.abs(flushed) < np.finfo(dtype).tiny] = 0  # what flush-to-zero gives
    k_sub = int(np.argmax(th.step_norms(g) < np.finfo(dtype).tiny))
    assert 0 < k_sub < T
    d, k = th.curve_disagreement(flushed, g)
    assert d <= (1e-10 if dtype == "float64" else 1e-3), (d, k)
    bad = flushed.copy()
    k_bad = int(np.argmax(th.step_norms(g) < th.full_precision_floor(dtype) * 1e3))  # still full precision
    bad[T - 1 - k_bad] *= 1.01
    d, k = th.curve_disagreement(bad, g)
    assert k == k_bad and d == pytest.approx(0.01, rel=1e-3)


def test_finite_differences_at_the_full_presets_size_have_a_roundoff_floor():
    """B·H = 4096, rho = 3: L = <dh_T, h_T> sums terms of size 3^10, and rounding alone put the plain
    relative error of a correct gradient at 2.5e-6 (the full preset failed there at 1e-6). With the
    roundoff floor a correct gradient passes, and a gradient off by 0.1 % still fails."""
    H, B, I, T = 128, 32, 32, 10
    base = init_params(CellSpec("rnn_tanh", I, H), seed=1, init="orthogonal", rho=1.0).layers[0]
    w = 3.0 * base.w_hh
    x = th.drive_scaled_inputs(base.w_ih, T, B, 1.0, seed=1)
    dh = th.unit_cotangent(B, H, seed=1)
    g = th.linear_hidden_grads(w, dh, T)
    assert th.fd_check_linear(w, base.w_ih, x, dh, g, seed=1) <= 1e-6
    assert th.fd_check_linear(w, base.w_ih, x, dh, g * 1.001, seed=1) > 1e-4
    bad = g.copy()
    bad[-1] *= 1.001  # the step with the smallest adjoint here (norm 1)
    assert th.fd_check_linear(w, base.w_ih, x, dh, bad, seed=1) > 1e-4


def test_inputs_are_scaled_by_their_drive():
    w = init_params(CellSpec("rnn_tanh", 7, 16), seed=0).layers[0].w_ih
    x = th.drive_scaled_inputs(w, 50, 4, 0.3, seed=1)
    assert math.sqrt(np.mean((x @ w.T) ** 2)) == pytest.approx(0.3, rel=1e-12)
    d = th.unit_cotangent(4, 16, seed=3, dtype="float32")
    assert d.dtype == np.float32 and np.linalg.norm(d) == pytest.approx(1.0, rel=1e-6)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="scale"):
            th.drive_scaled_inputs(w, 5, 2, bad, 0)
    with pytest.raises(ValueError, match="T"):
        th.drive_scaled_inputs(w, 0, 2, 1.0, 0)
    with pytest.raises(ValueError, match="batch"):
        th.unit_cotangent(0, 3, 0)
    with pytest.raises(TypeError, match="dtype"):
        th.unit_cotangent(2, 3, 0, dtype="int32")


def test_bad_inputs_of_the_theory_functions():
    with pytest.raises(ValueError, match="g: got shape"):
        th.step_norms(np.ones((3, 4)))
    with pytest.raises(TypeError, match="g:"):
        th.step_norms([[[1.0]]])
    with pytest.raises(ValueError, match="w_hh"):
        th.linear_hidden_grads(np.ones((3, 4)), np.ones((2, 3)), 5)
    with pytest.raises(ValueError, match="dh_T"):
        th.linear_hidden_grads(np.eye(3), np.ones((2, 4)), 5)
    with pytest.raises(ValueError, match="T"):
        th.linear_hidden_grads(np.eye(3), np.ones((2, 3)), 0)
    with pytest.raises(ValueError, match="square"):
        th.sigma_rms(np.ones((2, 3)))
    with pytest.raises(ValueError, match="cell"):
        th.fprime_from_outputs("lstm", np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="max_points"):
        th.subsample(np.ones(5), 1)
    spec, p, x, dh = _setting("rnn_tanh", rho=1.0, T=4, H=4, I=2, B=2, dtype="float32")
    with pytest.raises(TypeError, match="float64"):
        th.fd_check_hidden_grads(NP.forward, spec, p, x, dh, np.ones((4, 2, 4), np.float32))


def test_subsample_keeps_full_resolution_up_to_1000():
    v, stride = th.subsample(np.arange(1000.0))
    assert stride == 1 and len(v) == 1000
    v, stride = th.subsample(np.arange(5000.0))
    assert stride == 5 and len(v) == 1000


# -- the suite -----------------------------------------------------------------------------------------

def test_cases_and_their_bad_input():
    cs = SUITE.cases("smoke", ["numpy", "torch", "jax"], "cpu")
    kinds = {(c.backend, c.settings["kind"]) for c in cs}
    assert kinds == {("numpy", "sweep"), ("numpy", "linear"), ("torch", "agree"), ("jax", "agree"),
                     ("numpy", "gated"), ("torch", "gated"), ("jax", "gated")}
    assert len({c.key for c in cs}) == len(cs)
    quick = SUITE.cases("quick", ["numpy"], "cpu")
    tanh = [c for c in quick if c.cell == "rnn_tanh" and c.dtype == "float64"][0]
    assert tanh.seq_len == 1000
    assert {(g[0], g[2]) for g in tanh.settings["grid"]} >= {(r, s) for r in (0.5, 0.9, 1.0, 1.1, 1.5, 3.0, None)
                                                             for s in (0.1, 1.0)}
    lstm = [c for c in quick if c.cell == "lstm" and c.dtype == "float64"][0]
    assert sorted({g[1] for g in lstm.settings["grid"]}) == [0.0, 1.0, 2.0, 3.0]
    seeded = lambda cs: [c for c in cs if c.settings["kind"] != "gated"]  # noqa: E731 - the gated cases have one seed
    assert len(seeded(SUITE.cases("full", ["numpy"], "cpu"))) == 3 * len(seeded(quick))  # three seeds
    assert all(c.backend == "torch" for c in SUITE.cases("quick", ["numpy", "torch"], "cuda"))  # NumPy: CPU only
    with pytest.raises(ValueError, match="preset"):
        SUITE.cases("huge", ["numpy"])
    with pytest.raises(TypeError, match="backends"):
        SUITE.cases("smoke", "numpy")
    with pytest.raises(ValueError, match="device"):
        SUITE.cases("smoke", ["numpy"], "tpu")
    bad = Case(suite="gradients", name="x", backend="numpy", cell="rnn_tanh", settings={"kind": "nope"})
    with pytest.raises(ValueError, match="kind"):
        list(SUITE.run(bad, RunContext(preset="smoke")))


def test_cases_import_no_framework():
    # Cases ask each named backend what it declares (importing its module): NumPy's imports no framework.
    code = ("import sys, suites.gradients.suite as g; g.SUITE.cases('full', ['numpy']); "
            "import suites.gradients.report; "
            "print(any(m in sys.modules for m in ('torch', 'jax', 'matplotlib.pyplot')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def smoke_rows():
    rows = []
    for c in SUITE.cases("smoke", ["numpy"], "cpu"):
        rows += list(SUITE.run(c, RunContext(preset="smoke")))
    return rows


def test_smoke_suite_records_every_check_ok(smoke_rows):
    checks = [r for r in smoke_rows if r["metric"].startswith("check_")]
    names = {r["metric"] for r in checks}
    assert names == {"check_linear_exact", "check_tanh_rate_theory", "check_tanh_saturation",
                     "check_forget_bias_monotonic", "check_update_bias_monotonic", "check_finite_difference",
                     "check_pascanu", "check_exact_product"}
    bad = [(r["metric"], r["reason"]) for r in checks if r["status"] != "ok" or r["value"] != 1.0]
    assert not bad
    metrics = {r["metric"] for r in smoke_rows}
    assert metrics >= {"grad_norm_h", "grad_norm_c", "decay_rate", "decay_rate_c", "predicted_rate",
                       "rate_rel_error", "sigma_max", "pascanu_sufficient_vanish", "pascanu_necessary_explode",
                       "mean_forget_gate", "forget_time", "mean_update_gate", "update_time", "param_grad_norm",
                       "clipped_norm", "memory_time"}
    curves = [r for r in smoke_rows if r["metric"] == "grad_norm_h" and r["extra"]["kind"] == "sweep"]
    for r in curves:
        assert len(r["extra"]["norms"]) == 50 and r["extra"]["norms"][0] == pytest.approx(1.0, rel=1e-6)
        assert len(r["extra"]["theory"]) == 50
    # every fixed-size float64 sweep curve has its finite-difference check
    fd = {(r["cell"], r["extra"]["setting"], r["dtype"]) for r in checks if r["metric"] == "check_finite_difference"}
    assert {(r["cell"], r["extra"]["setting"], r["dtype"]) for r in curves} <= fd


def test_report_section_from_smoke_rows(smoke_rows, tmp_path):
    pytest.importorskip("matplotlib")
    from harness.measure.records import RowWriter, load
    from suites.gradients.report import section

    run = tmp_path / "run"
    with RowWriter(str(run), "r1") as w:
        for r in smoke_rows:
            w.write(r)
    df = load(str(run))
    fig_dir = str(run / "figures")
    md = section(df, fig_dir, run_dir=str(run))
    for name in ("gradients_curves.png", "gradients_rate_vs_rho.png", "gradients_heatmap.png",
                 "gradients_rate_vs_bias.png", "gradients_param_norm.png", "gradients_float32.png",
                 "gradients_gated.png"):
        assert os.path.getsize(os.path.join(fig_dir, name)) > 10_000, name
        assert f"(figures/{name})" in md
    assert "Fitted vs predicted rates" in md and "Pascanu" in md and "All checks passed." in md
    assert "failed" not in md.lower().split("### checks")[0]  # no figure failed
    assert "Saturation: with ρ = 1.5 the gradient grows" in md
    assert section(df.iloc[0:0], fig_dir).endswith("_No gradient rows._")


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_smoke_agreement_cases_on_other_backends(name):
    pytest.importorskip(name)
    info = backends.probe(name, "cpu")
    if not info.available:
        pytest.skip(f"{name}: {info.reason}")
    rows = []
    for c in SUITE.cases("smoke", [name], "cpu"):
        rows += list(SUITE.run(c, RunContext(preset="smoke")))
    if any(r["status"] == "skipped" and "hidden_grads" in r["reason"] for r in rows):
        pytest.skip(f"{name} offers no hidden_grads")
    checks = [r for r in rows if r["metric"].startswith("check_")]
    assert {r["metric"] for r in checks} >= {"check_backend_agreement", "check_finite_difference"}
    assert not [(r["metric"], r["reason"]) for r in checks if r["status"] != "ok"]
    diffs = [r["value"] for r in rows if r["metric"] == "backend_max_rel_diff"]
    assert len(diffs) == 4 and max(diffs) <= 1e-10


def test_torch_native_on_cpu_is_left_out_by_default_and_says_why_when_named():
    """torch-native only means something on CUDA: a default run leaves it out (the runner takes the available
    backends); named explicitly on the CPU, its cases exist and the runner records them skipped with the probe's
    reason (never silently dropped)."""
    from implementations import registry
    info = registry.probe("torch-native", "cpu")
    if registry.probe("torch", "cpu").available:
        assert not info.available and "needs CUDA" in info.reason
    from suites.gradients.suite import SUITE
    cpu = SUITE.cases("smoke", ["numpy", "torch", "torch-native"], "cpu")
    assert [c for c in cpu if c.backend == "torch"] and [c for c in cpu if c.backend == "torch-native"]
