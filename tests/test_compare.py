"""``rnnbench compare`` on synthetic run directories: verdicts, deterministic metrics, bad input."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("pandas")

from harness.compare import compare  # noqa: E402
from harness.cli.main import main  # noqa: E402
from harness.measure.records import RowWriter, make_row, write_meta  # noqa: E402

MACHINE = {"cpu": "Test CPU", "cores": 2}


def _fields(case: str, backend: str = "numpy", suite: str = "throughput") -> dict:
    return {"suite": suite, "case": case, "backend": backend, "variant": backend, "device": "cpu",
            "dtype": "float32", "cell": "lstm"}


def make_run(path, rows, preset="smoke", machine=MACHINE, meta=None) -> str:
    """A run directory holding ``rows`` (dicts from make_row) and a meta.json (plus ``meta``)."""
    path = str(path)
    with RowWriter(path, "run") as w:
        for r in rows:
            for x in (r if isinstance(r, list) else [r]):
                w.write(x)
    write_meta(path, {"preset": preset, "machine": machine, "run_id": os.path.basename(path), **(meta or {})})
    return path


def timed(case: str, median_ms: float, seed: int, n: int = 40, spread: float = 0.02, processes: int = 3,
          between: float = 0.01, **kw) -> list:
    """Rows of one timing from ``processes`` independent processes (each shifted by ~``between``, relative)."""
    rng = np.random.default_rng(seed)
    metric = kw.pop("metric", "fwd_ms")
    out = []
    for k in range(processes):
        s = median_ms * (1 + between * rng.standard_normal()) * (1 + spread * rng.standard_normal(n))
        extra = {"process": k, "processes": processes} if processes > 1 else {}
        out.append(make_row(_fields(case), metric, float(np.median(s)), "ms", samples=s, mode="fwd", **extra, **kw))
    return out


def exact(case: str, metric: str, value: float, unit: str = "rel", **kw) -> dict:
    return make_row(_fields(case), metric, value, unit, **kw)


def run_cli(*argv) -> int:
    return main(["compare", *map(str, argv)])


def test_clear_slowdown_is_detected_and_exits_1(tmp_path, capsys):
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 1), timed("gru-s", 1.0, 2)])
    new = make_run(tmp_path / "b", [timed("lstm-s", 1.3, 3), timed("gru-s", 1.0, 4)])
    md = tmp_path / "out.md"
    fig = tmp_path / "fig.png"
    assert run_cli(base, new, "--markdown", md, "--figure", fig) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "lstm-s" in out
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    by_case = {r.label["case"]: r for r in rep.rows}
    assert by_case["lstm-s"].verdict == "slower"
    assert 1.2 < by_case["lstm-s"].ratio < 1.4
    assert by_case["lstm-s"].ci_lo > 1.1 and by_case["lstm-s"].p < 1e-3 and by_case["lstm-s"].procs == (3, 3)
    assert by_case["gru-s"].verdict == "same"
    g, k = rep.geomeans()["throughput"]
    assert k == 2 and 1.05 < g < 1.2
    text = md.read_text()
    assert "| lstm-s [mode=fwd] |" in text and "**slower**" in text
    assert fig.stat().st_size > 1000


def test_identical_distributions_are_same_and_exit_0(tmp_path, capsys):
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 5)])
    new = make_run(tmp_path / "b", [timed("lstm-s", 1.0, 6)])
    assert run_cli(base, new) == 0
    assert "OK: no regression" in capsys.readouterr().out


def test_faster_and_rates_are_normalised(tmp_path):
    rng = np.random.default_rng(0)
    rate_b = [make_row(_fields("c"), "tokens_rate", 10.0, "GFLOP/s", samples=10 * (1 + 0.01 * rng.standard_normal(30)),
                       process=k, processes=3) for k in range(3)]
    rate_n = [make_row(_fields("c"), "tokens_rate", 5.0, "GFLOP/s", samples=5 * (1 + 0.01 * rng.standard_normal(30)),
                       process=k, processes=3) for k in range(3)]
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 7), rate_b])
    new = make_run(tmp_path / "b", [timed("lstm-s", 0.7, 8), rate_n])
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    by = {r.label["metric"]: r for r in rep.rows}
    assert by["fwd_ms"].verdict == "faster"
    # half the GFLOP/s is twice as slow: normalised ratio about 2, verdict slower
    assert by["tokens_rate"].verdict == "slower" and 1.9 < by["tokens_rate"].ratio < 2.1


def test_deterministic_error_beyond_tolerance_fails(tmp_path, capsys):
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 9), exact("lstm-s", "equiv_error", 1e-7, tol=1e-4)])
    new = make_run(tmp_path / "b", [timed("lstm-s", 1.0, 10), exact("lstm-s", "equiv_error", 3e-4, tol=1e-4)])
    assert run_cli(base, new) == 1
    out = capsys.readouterr().out
    assert "equiv_error" in out and "worse" in out
    # a small change of a tiny error is not a regression
    new2 = make_run(tmp_path / "c", [timed("lstm-s", 1.0, 11), exact("lstm-s", "equiv_error", 2e-7, tol=1e-4)])
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new2))
    assert [r.verdict for r in rep.rows if r.kind == "exact"] == ["same"]


def test_exact_rules():
    assert compare.judge_exact("rtrl_bytes", "bytes", 1_000_000, 1_000_100, None)[0] == "same"
    assert compare.judge_exact("rtrl_bytes", "bytes", 1_000_000, 1_500_000, None)[0] == "worse"
    assert compare.judge_exact("check_fd", "", 1, 0, None)[0] == "worse"
    assert compare.judge_exact("ctc_max_error", "", 1e-13, 5e-13, "float64")[0] == "same"
    assert compare.judge_exact("ctc_max_error", "", 1e-13, 1e-6, "float64")[0] == "worse"
    assert compare.judge_exact("ctc_max_error", "", 1e-13, float("nan"), "float64")[0] == "worse"
    assert compare.judge_exact("decay_rate", "1/step", 0.5, 0.6, None)[0] == "changed"


def test_different_machines_are_refused_unless_told_then_times_are_descriptive(tmp_path, capsys):
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 12), exact("lstm-s", "equiv_error", 1e-7)])
    new = make_run(tmp_path / "b", [timed("lstm-s", 2.0, 13), exact("lstm-s", "equiv_error", 1e-7)],
                   machine={"cpu": "Other CPU", "cores": 64})
    assert run_cli(base, new) == 2  # refused: says which machines and what to pass
    err = capsys.readouterr().err
    assert "'Other CPU' (64 cores" in err and "--across-machines" in err and "Traceback" not in err
    assert run_cli(base, new, "--across-machines") == 0  # the 2x is a machine difference: a number, not a verdict
    cap = capsys.readouterr()
    assert "different machines" in cap.err and "descriptive" in cap.out and "1.99" in cap.out
    # a deterministic metric that got worse still fails across machines
    bad = make_run(tmp_path / "e", [timed("lstm-s", 2.0, 16), exact("lstm-s", "equiv_error", 1e-2)],
                   machine={"cpu": "Other CPU", "cores": 64})
    assert run_cli(base, bad, "--across-machines") == 1
    # only timings: descriptive ratios, exit 0
    b2 = make_run(tmp_path / "c", [timed("lstm-s", 1.0, 14)])
    n2 = make_run(tmp_path / "d", [timed("lstm-s", 1.0, 15)], machine={"cpu": "Other CPU", "cores": 64})
    assert run_cli(b2, n2, "--across-machines") == 0


def test_mismatched_presets_compare_the_common_cases(tmp_path, capsys):
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 16), timed("only-base", 1.0, 17)], preset="smoke")
    new = make_run(tmp_path / "b", [timed("lstm-s", 1.0, 18), timed("only-new", 1.0, 19)], preset="quick")
    assert run_cli(base, new) == 0
    cap = capsys.readouterr()
    assert "different presets" in cap.err and "only in BASE" in cap.err
    assert "only-base" not in cap.out
    b2 = make_run(tmp_path / "c", [timed("x", 1.0, 20)], preset="smoke")
    n2 = make_run(tmp_path / "d", [timed("y", 1.0, 21)], preset="quick")
    assert run_cli(b2, n2) == 2
    assert "nothing to compare" in capsys.readouterr().err


def test_no_samples_and_missing_dir_exit_2(tmp_path, capsys):
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 22)])
    nos = make_run(tmp_path / "b", [make_row(_fields("lstm-s"), "fwd_ms", 1.0, "ms", mode="fwd")])
    assert run_cli(base, nos) == 2
    assert "no raw samples" in capsys.readouterr().err
    assert run_cli(base, tmp_path / "missing") == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(base, empty) == 2
    assert "rows.jsonl" in capsys.readouterr().err
    assert run_cli(base, base, "--threshold", "0.9") == 2


def test_error_status_becomes_worse(tmp_path):
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 23), timed("gru-s", 1.0, 24)])
    bad = make_row(_fields("gru-s"), "fwd_ms", None, "ms", status="error", reason="boom", mode="fwd")
    new = make_run(tmp_path / "b", [timed("lstm-s", 1.0, 25), bad])
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    assert {r.label["case"]: r.verdict for r in rep.rows} == {"lstm-s": "same", "gru-s": "worse"}


def _asv_file(path, value, ci, machine="m1"):
    data = {"commit_hash": "abc123", "env_name": "existing-py", "params": {"machine": machine},
            "result_columns": ["result", "params", "version", "started_at", "duration", "stats_ci_99_a",
                               "stats_ci_99_b", "stats_q_25", "stats_q_75", "stats_number", "stats_repeat",
                               "samples", "profile"],
            "results": {"bench.TimeThroughput.time_forward": [[value, None], [["'numpy'"], ["'lstm'", "'gru'"]],
                                                              "v", 0, 1.0, [ci[0], None], [ci[1], None],
                                                              None, None, None, None, None, None],
                        "bench.Track.track_ctc_max_error": [[1e-12], [], "v", 0, 1.0]},
            "version": 2}
    path.write_text(json.dumps(data))
    return str(path)


def test_asv_result_files(tmp_path, capsys):
    a = _asv_file(tmp_path / "a.json", 1e-3, (0.95e-3, 1.05e-3))
    b = _asv_file(tmp_path / "b.json", 2e-3, (1.9e-3, 2.1e-3))
    assert run_cli(a, b) == 1
    out = capsys.readouterr().out
    assert "time_forward" in out and "slower" in out and "CIs apart" in out
    assert run_cli(a, _asv_file(tmp_path / "c.json", 1.01e-3, (0.96e-3, 1.06e-3))) == 0
    capsys.readouterr()
    assert run_cli(a, tmp_path) == 2  # an asv file against a directory


def test_one_process_per_side_is_inconclusive_not_a_verdict(tmp_path, capsys):
    """All samples from one process: a 30 % difference cannot be told from a process effect; exit 0, said so."""
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 1, processes=1)])
    new = make_run(tmp_path / "b", [timed("lstm-s", 1.3, 3, processes=1)])
    assert run_cli(base, new) == 0
    out = capsys.readouterr().out
    assert "INCONCLUSIVE" in out and "fewer than 3 processes" in out
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    assert rep.rows[0].verdict == "inconclusive" and rep.rows[0].procs == (1, 1)


def test_same_on_too_few_processes_is_said_to_be_untested(tmp_path, capsys):
    """2 processes against 3 with equal times: the ratio is within the threshold, but nothing was tested; the
    summary line says so instead of a plain 'no regression'."""
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 1, processes=2)])
    new = make_run(tmp_path / "b", [timed("lstm-s", 1.0, 3)])
    assert run_cli(base, new) == 0
    out = capsys.readouterr().out
    assert "1 'same' within the threshold but untested (fewer than 3 processes" in out
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    assert rep.rows[0].verdict == "same" and rep.rows[0].procs == (2, 3)
    both = make_run(tmp_path / "c", [timed("lstm-s", 1.0, 4)])
    assert "untested" not in compare.summary_line(compare.compare_sets(compare.load_any(new),
                                                                        compare.load_any(both)))


def test_processes_that_disagree_are_inconclusive(tmp_path):
    """A 20 % shift that is within the spread between processes (sd 25 %) is not called a slowdown."""
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 11, between=0.25)])
    new = make_run(tmp_path / "b", [timed("lstm-s", 1.2, 12, between=0.25)])
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    r = rep.rows[0]
    assert r.verdict in ("inconclusive", "same") and not rep.failed and r.procs == (3, 3)


def test_process_rows_merge_into_one_measurement(tmp_path):
    """records.load merges the processes: one row, the median of the process medians, samples by process."""
    from harness.measure import records
    rows = timed("lstm-s", 1.0, 21)
    d = make_run(tmp_path / "a", [rows])
    df = records.load(d)
    assert len(df) == 1 and int(df.processes.iloc[0]) == 3
    assert df.value.iloc[0] == pytest.approx(float(np.median([r["value"] for r in rows])))
    assert [len(g) for g in df.process_samples.iloc[0]] == [40, 40, 40] and df.n.iloc[0] == 120
    assert len(records.load(d, merge=False)) == 3


def test_merged_value_lies_inside_its_bracket(tmp_path):
    """The merged median is of the process values, so its q25-q75 is of them too: a process that took many more
    samples than the others (here 400 at 1 ms against 3 x 5 at 2 ms) would put the median of the process values
    outside the pooled samples' quartiles."""
    from harness.measure import records
    rows = [make_row(_fields("c"), "fwd_ms", ms, "ms", samples=[ms] * n, mode="fwd", process=k, processes=4)
            for k, (ms, n) in enumerate([(1.0, 400), (2.0, 5), (2.0, 5), (2.0, 5)])]
    r = records.load(make_run(tmp_path / "a", [rows])).iloc[0]
    assert r.value == 2.0 and r.q25 <= r.value <= r.q75 and r.n == 415
    assert np.percentile(r.samples, 75) < r.value  # what the pooled bracket would have said
    one = records.load(make_run(tmp_path / "b", [timed("c", 1.0, 5, processes=1)])).iloc[0]
    assert one.q25 < one.value < one.q75  # a single process: its own samples' quartiles


def test_gemm_ceilings_are_context_not_judged(tmp_path):
    """A slower GEMM ceiling says the machine was slower, not the code: counted, never a regression."""
    rng = np.random.default_rng(3)
    rows = lambda v: [make_row(_fields("c"), "ceiling_gflops", v, "GFLOP/s",  # noqa: E731
                               samples=v * (1 + 0.01 * rng.standard_normal(30)), process=k, processes=3)
                      for k in range(3)]
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 7), rows(200.0)])
    new = make_run(tmp_path / "b", [timed("lstm-s", 1.0, 8), rows(100.0)])
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    assert not rep.failed and rep.untested == 1 and all(r.label["metric"] != "ceiling_gflops" for r in rep.rows)


def _family(path, slow_case_factor=1.0, process_speed=(1.0, 1.0, 1.0), seed=0, control="ctl/v1"):
    """A CPU run of one backend with 4 cases x 3 processes, each timing with its per-control twin; process k runs
    process_speed[k] slower (a slow worker or a slow spell of the machine: the control workload timed next to
    every sample is slowed alike); case 'c0' is slow_case_factor slower."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(4):
        for k, f in enumerate(process_speed):
            s = (1.0 + i) * f * (slow_case_factor if i == 0 else 1.0) * (1 + 0.01 * rng.standard_normal(30))
            ctl = 0.1 * f * (1 + 0.01 * rng.standard_normal(30))
            rows.append(make_row(_fields(f"c{i}"), "fwd_ms", float(np.median(s)), "ms", samples=s, mode="fwd",
                                 process=k, processes=3))
            rows.append(make_row(_fields(f"c{i}"), "fwd_ms_per_control", float(np.median(s / ctl)), "ratio",
                                 samples=s / ctl, mode="fwd", process=k, processes=3, control=control))
    return make_run(path, rows)


def test_timings_are_judged_per_control_which_cancels_slow_processes(tmp_path):
    """Slow processes (and a slow spell) hit a timing and the control beside it alike: per control, a case's
    1.25x slowdown stands out where the raw times' processes disagree, and nothing else moves."""
    base = _family(tmp_path / "a", process_speed=(1.0, 1.6, 1.0), seed=1)
    new = _family(tmp_path / "b", slow_case_factor=1.25, process_speed=(1.0, 1.0, 1.7), seed=2)
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    by = {r.label["case"]: r for r in rep.rows}
    assert set(by) == {"c0", "c1", "c2", "c3"} and rep.untested == 4  # the twins are judged with their timing
    assert by["c0"].verdict == "slower" and by["c0"].ratio_rel == pytest.approx(1.25, rel=0.03)
    assert "per control 1.2" in by["c0"].why
    assert all(by[c].verdict == "same" for c in ("c1", "c2", "c3")), [(c, by[c].verdict) for c in by]


def test_a_whole_run_on_a_slower_machine_is_not_a_regression(tmp_path):
    """Every process of NEW 1.5x slower: the raw times say 1.5x with p ~ 0; per control nothing changed, and a
    note says the machine itself was slower."""
    base = _family(tmp_path / "a", seed=5)
    new = _family(tmp_path / "b", process_speed=(1.5, 1.5, 1.5), seed=6)
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    assert not rep.failed and all(r.verdict == "same" for r in rep.rows)
    assert all(r.ratio == pytest.approx(1.5, rel=0.03) and r.p < 0.01 for r in rep.rows)
    assert any("ran 1.50x as long in NEW" in n for n in rep.notes), rep.notes


def test_different_control_workloads_fall_back_to_raw_times(tmp_path):
    base = _family(tmp_path / "a", seed=7)
    new = _family(tmp_path / "b", process_speed=(1.5, 1.5, 1.5), seed=8, control="ctl/v2")
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    assert any("different control workloads" in n for n in rep.notes)
    assert rep.failed and all(np.isnan(r.ratio_rel) for r in rep.rows)  # judged on raw times: 1.5x slower


def test_a_faster_case_is_faster_and_fails_nothing(tmp_path):
    base = _family(tmp_path / "a", seed=3)
    new = _family(tmp_path / "b", slow_case_factor=0.5, seed=4)  # c0 got 2x faster; c1..c3 unchanged
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    by = {r.label["case"]: r for r in rep.rows}
    assert by["c0"].verdict == "faster" and not rep.failed


def test_a_flag_of_any_process_survives_the_merge(tmp_path):
    """A key only process 2 wrote (e.g. ceiling_defect) is in the merged row; the first process's values win."""
    from harness.measure import records
    rows = [make_row(_fields("c"), "eff_gemm", v, "ratio", process=k, processes=3, note=f"p{k}",
                     **({"ceiling_defect": "beaten"} if k == 2 else {})) for k, v in enumerate((0.8, 0.9, 1.3))]
    df = records.load(make_run(tmp_path / "a", [rows]))
    assert len(df) == 1 and df.ceiling_defect.iloc[0] == "beaten" and df.note.iloc[0] == "p0"
    assert df.value.iloc[0] == pytest.approx(0.9)


def test_a_run_that_shared_the_machine_gets_a_note(tmp_path):
    """load1 beyond the run's own threads is recorded per row; compare says when a side ran under foreign load."""
    quiet = [dict(r, extra={**r["extra"], "load1": 2.1, "threads": 2}) for r in timed("lstm-s", 1.0, 1)]
    busy = [dict(r, extra={**r["extra"], "load1": 3.9, "threads": 2}) for r in timed("lstm-s", 1.0, 2)]
    rep = compare.compare_sets(compare.load_any(make_run(tmp_path / "a", [quiet])),
                               compare.load_any(make_run(tmp_path / "b", [busy])))
    notes = " ".join(rep.notes)
    assert "NEW ran while other work loaded the machine" in notes and "BASE ran" not in notes


def test_t_test_on_logs_edge_cases():
    from harness.measure.stats import t_logs_p
    same, other = np.zeros(3), np.ones(3)
    assert t_logs_p(same, same) == 1.0 and t_logs_p(same, other) == 0.0  # no spread on either side
    assert np.isnan(t_logs_p(np.zeros(1), other))
    assert t_logs_p(np.array([0.0, 0.01, -0.01]), np.array([0.2, 0.21, 0.19])) < 0.01


def _backend_run(path, case_shift, seed, control="ctl/v1", n_proc=3, proc_sd=0.01, backends=None, meta=None):
    """A CPU run: case i's per-control value is (1 + i) * case_shift[i], with process-to-process noise proc_sd
    (one number, or one per case); case i belongs to backends[i] (default: all "numpy")."""
    rng = np.random.default_rng(seed)
    sds = proc_sd if isinstance(proc_sd, (list, tuple)) else [proc_sd] * len(case_shift)
    names = backends or ["numpy"] * len(case_shift)
    rows = []
    for i, f in enumerate(case_shift):
        for k in range(n_proc):
            lvl = (1.0 + i) * f * float(np.exp(sds[i] * rng.standard_normal()))
            s = lvl * (1 + 0.01 * rng.standard_normal(30))
            ctl = 0.1 * (1 + 0.01 * rng.standard_normal(30))
            fields = _fields(f"c{i}", backend=names[i])
            rows.append(make_row(fields, "fwd_ms", float(np.median(s * ctl)), "ms", samples=s * ctl,
                                 mode="fwd", process=k, processes=n_proc))
            rows.append(make_row(fields, "fwd_ms_per_control", float(np.median(s)), "ratio", samples=s,
                                 mode="fwd", process=k, processes=n_proc, control=control))
    return make_run(path, rows, meta=meta)


def test_processes_that_agree_by_chance_are_not_believed_more_than_the_backend_usually_agrees(tmp_path):
    """A backend whose processes typically scatter 20 %: one case whose 3+3 processes happen to agree to 0.5 %
    and sit 1.22x apart is not a regression (its test takes the backend's typical variance)."""
    sds = [0.005] + [0.2] * 7
    base = _backend_run(tmp_path / "a", [1.0] * 8, seed=1, proc_sd=sds)
    new = _backend_run(tmp_path / "b", [1.22] + [1.0] * 7, seed=2, proc_sd=sds)
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    c0 = next(r for r in rep.rows if r.label["case"] == "c0")
    assert c0.ratio_rel == pytest.approx(1.22, rel=0.02) and c0.verdict != "slower" and c0.scatter > 1.1
    assert "typically scatter" in c0.why
    tight = _backend_run(tmp_path / "c", [1.22] + [1.0] * 7, seed=3, proc_sd=0.005)  # the same shift, tight
    base2 = _backend_run(tmp_path / "d", [1.0] * 8, seed=4, proc_sd=0.005)
    rep = compare.compare_sets(compare.load_any(base2), compare.load_any(tight))
    assert [r.label["case"] for r in rep.failed] == ["c0"]


def test_a_tight_backend_still_shows_one_slow_case_and_a_backend_wide_slowdown(tmp_path):
    base = _backend_run(tmp_path / "a", [1.0] * 8, seed=3)
    one = _backend_run(tmp_path / "b", [1.2] + [1.0] * 7, seed=4)
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(one))
    assert [r.label["case"] for r in rep.failed] == ["c0"]
    every = _backend_run(tmp_path / "c", [1.3] * 8, seed=5)  # every case 1.3x: they move together
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(every))
    assert len(rep.failed) == 8


def test_a_variant_with_one_case_takes_its_familys_scatter(tmp_path):
    """A variant with a single case cannot estimate its own process scatter: it takes its framework family's
    (declared in meta.json's capabilities). Here the family scatters 20 % per process, the variant's one case's
    3+3 processes happen to agree to 0.5 % and sit 1.25x apart: not a regression. The same runs without the
    families (an older meta.json) pool that case over every case, most of them tight, and call it one."""
    names = ["fam-a"] * 6 + ["fam-b"] + ["tight"] * 20
    sds = [0.2] * 6 + [0.005] + [0.005] * 20
    caps = {"backend_capabilities": {"fam-a@cpu": {"family": "fam"}, "fam-b@cpu": {"family": "fam"},
                                     "tight@cpu": {"family": "tight"}}}
    shift = [1.0] * 6 + [1.25] + [1.0] * 20
    for meta, slower in ((caps, False), ({}, True)):
        d = tmp_path / ("caps" if meta else "none")
        base = _backend_run(d / "a", [1.0] * 27, seed=11, proc_sd=sds, backends=names, meta=meta)
        new = _backend_run(d / "b", shift, seed=12, proc_sd=sds, backends=names, meta=meta)
        rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
        c6 = next(r for r in rep.rows if r.label["case"] == "c6")
        assert c6.ratio_rel == pytest.approx(1.25, rel=0.03)
        assert (c6.verdict == "slower") is slower, c6.why


def test_malformed_capabilities_give_no_families(tmp_path):
    d = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 1)],
                 meta={"backend_capabilities": {"x@cpu": "torch", "y@cpu": {"family": 3}, "z@cpu": {"family": "jax"}}})
    rs = compare.load_any(d)
    assert rs.families == {"z@cpu": "jax"} and rs.family("x", "cpu") == "x" and rs.family("z", "cpu") == "jax"


def test_different_thread_counts_get_a_note(tmp_path):
    base = make_run(tmp_path / "a", [timed("lstm-s", 1.0, 31)], meta={"threads": 1})
    new = make_run(tmp_path / "b", [timed("lstm-s", 1.0, 32)], meta={"threads": 2})
    rep = compare.compare_sets(compare.load_any(base), compare.load_any(new))
    assert any("different thread counts: BASE 1 vs NEW 2" in n for n in rep.notes)
    same = compare.compare_sets(compare.load_any(base), compare.load_any(base))
    assert not any("thread counts" in n for n in same.notes)
