"""``rnnbench check BACKEND``: a conformance battery for any backend, built-in or plug-in.

For every cell the backend supports × layers (1, 2) × dtype it claims, on shapes that include T=1, B=1, odd sizes
and once without biases, each *part* — the output ``y``, every part of the final state, every parameter gradient,
``dx``, every part of ``dstate`` and the hidden-state gradients — is compared with the float64 NumPy reference
computed on the same (rounded) values; a part of the wrong dtype fails too (a float32 backend that computes in
float64, or in float16, is not what it claims). Then: float64 central differences of the backend's own loss on a
tiny case, the bad-input contract (wrong shapes and dtypes raise rnnbench's errors before any computation), the
timing hooks (each callable runs twice; whether it converts its inputs per call), every gradient algorithm it
declares besides BPTT (RTRL, tBPTT) against the reference's, and ``versions()``.

Each check is a :class:`Check` with its measured error; the battery passes when every check does.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

#: Relative L2 tolerance of a part against the float64 reference, by the dtype the backend computed in.
TOL = {"float64": 1e-10, "float32": 1e-4}
#: Central differences (float64): step and the allowed relative error of a directional derivative.
FD_EPS, FD_TOL = 1e-6, 1e-6
#: (T, B, I, H): a single step and a single sequence, then odd sizes everywhere.
SHAPES = ((1, 1, 3, 4), (7, 3, 5, 6))


@dataclass
class Check:
    """One check: what was compared, the measured error and its tolerance (None for pass/fail checks)."""

    name: str
    cell: str = "-"
    layers: Optional[int] = None
    dtype: str = "-"
    shape: str = "-"
    part: str = "-"
    error: Optional[float] = None
    tol: Optional[float] = None
    passed: bool = True
    detail: str = ""


@dataclass
class Result:
    backend: str
    device: str
    checks: List[Check] = field(default_factory=list)
    seconds: float = 0.0
    versions: Dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> List[Check]:
        return [c for c in self.checks if not c.passed]


def _state(spec, B: int, rng, dtype):
    shape = spec.state_shape(B)
    if spec.is_lstm:
        return (0.5 * rng.standard_normal(shape)).astype(dtype), (0.5 * rng.standard_normal(shape)).astype(dtype)
    return (0.5 * rng.standard_normal(shape)).astype(dtype)


def _parts(y, final, grads, hidden) -> List[Tuple[str, Any]]:
    out = [("y", y)]
    out += [(f"{n}_T", s) for n, s in zip(("h", "c"), final)] if isinstance(final, tuple) else [("h_T", final)]
    out += [(f"d{n}", a) for n, a in grads.params.items()]
    out.append(("dx", grads.dx))
    ds = grads.dstate
    out += [(f"d{n}0", s) for n, s in zip(("h", "c"), ds)] if isinstance(ds, tuple) else [("dh0", ds)]
    if isinstance(hidden, tuple):
        out += [("hidden_grads[h]", hidden[0]), ("hidden_grads[c]", hidden[1])]
    else:
        out.append(("hidden_grads[h]", hidden))
    return out


def _compute(be, spec, p, x, s0, dy, dfin, dh, cell_grads: bool = True):
    y, final = be.forward(spec, p, x, s0)
    g = be.vjp(spec, p, x, s0, dy, dfin)
    hidden = be.hidden_grads(spec, p, x, dh, return_cell=spec.is_lstm and cell_grads)
    return _parts(y, final, g, hidden)


def _agreement(be, ref, spec, dtype: str, T: int, B: int, seed: int) -> Iterator[Check]:
    from harness.core.params import init_params
    rng = np.random.default_rng(seed)
    p = init_params(spec, seed=seed, dtype=dtype)
    x = rng.standard_normal((T, B, spec.input_size)).astype(dtype)
    dy = rng.standard_normal((T, B, spec.hidden_size)).astype(dtype)
    s0, dfin = _state(spec, B, rng, dtype), _state(spec, B, rng, dtype)
    dh = rng.standard_normal((B, spec.hidden_size)).astype(dtype)
    common = dict(cell=spec.cell, layers=spec.num_layers, dtype=dtype,
                  shape=f"T{T} B{B} I{spec.input_size} H{spec.hidden_size}")
    from harness.core.errors import Unsupported
    cell_grads = spec.is_lstm
    try:
        try:
            got = _compute(be, spec, p, x, s0, dy, dfin, dh)
        except Unsupported as e:  # no ∂L/∂c_t (the default hidden_grads): check the rest
            if not spec.is_lstm:
                raise
            cell_grads = False
            got = _compute(be, spec, p, x, s0, dy, dfin, dh, cell_grads=False)
            yield Check("agreement", part="hidden_grads[c]", passed=True, detail=f"not offered: {e}"[:200], **common)
    except Exception as e:  # noqa: BLE001 - a backend that raises on a supported case fails the check
        yield Check("agreement", part="*", passed=False, detail=f"{type(e).__name__}: {e}"[:300], **common)
        return

    def up(a):
        return None if a is None else (tuple(np.asarray(v, np.float64) for v in a) if isinstance(a, tuple)
                                       else np.asarray(a, np.float64))
    want = _compute(ref, spec, p.astype("float64"), up(x), up(s0), up(dy), up(dfin), up(dh), cell_grads=cell_grads)
    from suites.equivalence import part_errors
    errors = part_errors(got, want)
    tol = TOL[dtype]
    for (name, a), (_, r) in zip(got, want):
        err = errors[name]
        a_dt = getattr(np.asarray(a), "dtype", None)
        wrong_dtype = a_dt is not None and a_dt.name != dtype
        detail = f"returned {a_dt.name}, asked for {dtype}" if wrong_dtype else ""
        if np.asarray(a).shape != r.shape:
            detail = f"shape {np.asarray(a).shape}, reference {r.shape}"
        yield Check("agreement", part=name, error=err, tol=tol, passed=bool(err <= tol and not wrong_dtype),
                    detail=detail, **common)


def _finite_differences(be, spec, seed: int) -> Check:
    """<∇L, d> from the backend's vjp against (L(θ+εd) − L(θ−εd)) / 2ε from its own forward, float64."""
    from harness.core.params import Params, init_params
    rng = np.random.default_rng(seed)
    p = init_params(spec, seed=seed, dtype="float64")
    T, B = 4, 2
    x = rng.standard_normal((T, B, spec.input_size))
    dy = rng.standard_normal((T, B, spec.hidden_size))
    theta = p.flat()
    d = rng.standard_normal(theta.shape)

    def L(v):
        y, _ = be.forward(spec, Params.from_flat(spec, v), x)
        return float(np.sum(np.asarray(y, np.float64) * dy))
    try:
        g = be.vjp(spec, p, x, None, dy, None).params.flat()
        fd = (L(theta + FD_EPS * d) - L(theta - FD_EPS * d)) / (2 * FD_EPS)
        err = abs(fd - float(g @ d)) / max(abs(fd), 1e-12)
    except Exception as e:  # noqa: BLE001
        return Check("finite_differences", cell=spec.cell, layers=spec.num_layers, dtype="float64", passed=False,
                     detail=f"{type(e).__name__}: {e}"[:300])
    return Check("finite_differences", cell=spec.cell, layers=spec.num_layers, dtype="float64",
                 shape=f"T{T} B{B}", part="params (directional)", error=err, tol=FD_TOL, passed=bool(err <= FD_TOL))


def _bad_input(be, spec, dtype: str) -> Iterator[Check]:
    """Wrong shapes and dtypes must raise rnnbench's own errors before anything is computed."""
    from harness.core.errors import RnnbenchError
    from harness.core.params import init_params
    p = init_params(spec, seed=0, dtype=dtype)
    T, B = 3, 2
    good = np.zeros((T, B, spec.input_size), dtype)
    calls: List[str] = []
    hooks = ("_forward", "_vjp", "_hidden_grads")
    saved = {h: getattr(be, h) for h in hooks}
    for h in hooks:
        setattr(be, h, (lambda name: lambda *a, **k: calls.append(name))(h))
    cases: List[Tuple[str, Callable[[], Any]]] = [
        ("x of the wrong input size", lambda: be.forward(spec, p, np.zeros((T, B, spec.input_size + 1), dtype))),
        ("x of rank 2", lambda: be.forward(spec, p, np.zeros((T, spec.input_size), dtype))),
        ("x of integers", lambda: be.forward(spec, p, np.zeros((T, B, spec.input_size), np.int64))),
        ("x in another dtype than the parameters",
         lambda: be.forward(spec, p, good.astype("float32" if dtype == "float64" else "float64"))),
        ("a state of the wrong batch",
         lambda: be.forward(spec, p, good, _state(spec, B + 1, np.random.default_rng(0), dtype))),
        ("dy of the wrong shape", lambda: be.vjp(spec, p, good, None, np.zeros((T + 1, B, spec.hidden_size), dtype))),
        ("a NaN in x", lambda: be.forward(spec, p, np.full((T, B, spec.input_size), np.nan, dtype))),
    ]
    try:
        for what, fn in cases:
            calls.clear()
            try:
                fn()
                ok, detail = False, "accepted (no error)"
            except RnnbenchError as e:
                ok, detail = not calls, ("" if not calls else f"raised only after computing ({calls[0]} ran)")
                detail = detail or str(e)[:120]
            except Exception as e:  # noqa: BLE001
                ok, detail = False, f"raised {type(e).__name__} (not an rnnbench error): {e}"[:200]
            yield Check("bad_input", cell=spec.cell, dtype=dtype, part=what, passed=ok, detail=detail)
    finally:
        for h in hooks:
            setattr(be, h, saved[h])


def _timing_hooks(be, spec, dtype: str) -> Iterator[Check]:
    from harness.core.params import init_params
    rng = np.random.default_rng(1)
    p = init_params(spec, seed=1, dtype=dtype)
    x = rng.standard_normal((5, 2, spec.input_size)).astype(dtype)
    dy = rng.standard_normal((5, 2, spec.hidden_size)).astype(dtype)
    native = getattr(be, "prepares_natively", True)
    for mode, prep in (("prepare_forward", lambda: be.prepare_forward(spec, p, x)),
                       ("prepare_train", lambda: be.prepare_train(spec, p, x, None, dy))):
        try:
            fn = prep()
            fn()
            fn()
            ok, detail = callable(fn), ""
        except Exception as e:  # noqa: BLE001
            ok, detail = False, f"{type(e).__name__}: {e}"[:200]
        if ok and not native:
            detail = "the default: _forward/_vjp on NumPy arrays, any conversion inside the timed call (implement " \
                     "convert + _forward_native/_train_native, or _prepare_*, to time only the computation)"
        yield Check("timing_hooks", cell=spec.cell, dtype=dtype, part=mode, passed=ok, detail=detail)


def run_check(name: str, device: str = "cpu", cells: Optional[List[str]] = None, log: Optional[Callable] = None,
              layers: Tuple[int, ...] = (1, 2)) -> Result:
    """The whole battery on backend ``name`` (see the module docstring). Raises BackendError if it cannot run."""
    from harness.core import cells as cell_registry
    from harness.core.spec import CellSpec
    from implementations import registry
    t0 = time.perf_counter()
    be = registry.get(name, device)
    ref = registry.reference()
    res = Result(name, device)
    try:
        res.versions = dict(be.versions())
        ok = bool(res.versions) and all(isinstance(k, str) and isinstance(v, str) for k, v in res.versions.items())
        res.checks.append(Check("versions", passed=ok, detail=", ".join(f"{k} {v}" for k, v in res.versions.items())
                                if ok else f"versions() must be a non-empty dict of str: got {res.versions!r}"[:200]))
    except Exception as e:  # noqa: BLE001
        res.checks.append(Check("versions", passed=False, detail=f"{type(e).__name__}: {e}"[:200]))
    todo = [c for c in (cells or be.supported_cells()) if c in cell_registry.names()]
    for c in todo:
        for L in layers:
            for dtype in be.dtypes:
                for i, (T, B, I, H) in enumerate(SHAPES):
                    spec = CellSpec(c, I, H, num_layers=L)
                    if be.supports(spec, dtype):
                        continue
                    res.checks += list(_agreement(be, ref, spec, dtype, T, B, seed=17 * i + L))
                if log:
                    log(f"check {name}: {c} L={L} {dtype}")
        small = CellSpec(c, 3, 4)
        dt = "float64" if "float64" in be.dtypes else be.dtypes[0]
        no_bias = CellSpec(c, 5, 6, bias=False)  # the layouts without biases are a common slip too
        if not be.supports(no_bias, dt):
            res.checks += [Check(k.name, k.cell, k.layers, k.dtype, k.shape + " bias=False", k.part, k.error, k.tol,
                                 k.passed, k.detail) for k in _agreement(be, ref, no_bias, dt, 7, 3, seed=5)]
        if "float64" in be.dtypes and not be.supports(small, "float64"):
            res.checks.append(_finite_differences(be, small, seed=3))
        if not be.supports(small, dt):
            res.checks += list(_bad_input(be, small, dt))
            res.checks += list(_timing_hooks(be, small, dt))
        res.checks += list(_algorithms(be, ref, CellSpec(c, 5, 6), dt))
    if not todo:
        res.checks.append(Check("cells", passed=False, detail=f"backend {name!r} supports none of the registered "
                                                                f"cells ({', '.join(cell_registry.names())})"))
    res.seconds = time.perf_counter() - t0
    return res


def _algorithms(be, ref, spec, dtype: str) -> Iterator[Check]:
    """Every gradient algorithm the backend declares besides BPTT (``rtrl``, ``tbptt`` with k = 3), one layer,
    T = 7, B = 3: its parameter gradients and ``dstate`` against the reference's, computed by the same algorithm
    on the same (rounded) values (tBPTT's truncation bias is the reference's too)."""
    from harness.core.params import init_params
    T, B = 7, 3
    for alg in [a for a in be.algorithms if a != "bptt"]:
        if be.supports(spec, dtype, alg) or ref.supports(spec, "float64", alg):
            continue
        rng = np.random.default_rng(29)
        p = init_params(spec, seed=29, dtype=dtype)
        x = rng.standard_normal((T, B, spec.input_size)).astype(dtype)
        dy = rng.standard_normal((T, B, spec.hidden_size)).astype(dtype)
        k = 3 if alg == "tbptt" else None
        try:
            got = be.vjp(spec, p, x, None, dy, None, algorithm=alg, truncation=k)
            want = ref.vjp(spec, p.astype("float64"), x.astype(np.float64), None, dy.astype(np.float64), None,
                           algorithm=alg, truncation=k)
        except Exception as e:  # noqa: BLE001 - a declared algorithm that fails is a failed check, not a crash
            yield Check("algorithm", spec.cell, 1, dtype, f"T{T} B{B}", alg, passed=False,
                        detail=f"{type(e).__name__}: {e}"[:200])
            continue
        for part, a, b in (("params", got.params.flat(), want.params.flat()),
                           ("dstate", np.asarray(got.dstate if not isinstance(got.dstate, tuple) else got.dstate[0]),
                            np.asarray(want.dstate if not isinstance(want.dstate, tuple) else want.dstate[0]))):
            err = float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-300))
            yield Check("algorithm", spec.cell, 1, dtype, f"T{T} B{B}", f"{alg} {part}", err, TOL[dtype],
                        passed=bool(err <= TOL[dtype]))


# -- output ----------------------------------------------------------------------------------------------

def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else ("inf" if math.isinf(v) else f"{v:.2e}")


def rows(res: Result, only_failed: bool = False) -> List[List[str]]:
    return [[c.name, c.cell, "-" if c.layers is None else str(c.layers), c.dtype, c.shape, c.part, _fmt(c.error),
             _fmt(c.tol), "ok" if c.passed else "FAIL", c.detail]
            for c in res.checks if c.passed is False or not only_failed]


HEADERS = ["check", "cell", "L", "dtype", "shape", "part", "error", "tol", "verdict", "detail"]


def summary(res: Result) -> str:
    n, bad = len(res.checks), len(res.failed)
    verdict = "PASS" if res.passed else f"FAIL ({bad} of {n} checks)"
    return f"rnnbench check {res.backend} on {res.device}: {verdict}; {n} checks in {res.seconds:.1f} s"


def format_text(res: Result, verbose: bool = False) -> str:
    from harness.measure.format import text_table
    body = rows(res, only_failed=not verbose)
    lines = [text_table(HEADERS, body)] if body else []
    if not verbose and res.passed:
        lines.append("(every check passed; --verbose lists them all with their measured errors)")
    lines.append(summary(res))
    return "\n".join(lines)


def format_markdown(res: Result) -> str:
    head = "| " + " | ".join(HEADERS) + " |\n|" + "|".join("---" for _ in HEADERS) + "|\n"
    body = "".join("| " + " | ".join(v.replace("|", "\\|") for v in r) + " |\n" for r in rows(res))
    return f"### {summary(res)}\n\n{head}{body}"


def cli_check(args) -> int:
    """``rnnbench check BACKEND [--device D] [--cell C ...] [--markdown FILE] [--verbose]``: 0 pass, 1 fail."""
    import sys
    from harness.core.errors import UsageError
    from implementations import registry
    problem = registry.resolution_problem(args.backend) if ":" in args.backend else None
    if problem:
        raise UsageError(f"backend {args.backend!r}: {problem}")
    info = registry.probe(args.backend, args.device)
    if not info.available:
        raise UsageError(f"backend {args.backend!r} cannot run on {args.device} here: {info.reason}")
    from harness.core import cells as cell_registry
    offered = list((info.capabilities or {}).get("cells") or ())
    for c in args.cell or ():
        if c not in cell_registry.names():
            raise UsageError(f"--cell: got {c!r}; allowed: {', '.join(cell_registry.names())}")
        if offered and c not in offered:
            raise UsageError(f"--cell {c!r}: backend {args.backend!r} does not support it (it supports: "
                             f"{', '.join(offered)})")
    res = run_check(args.backend, args.device, cells=args.cell or None,
                    log=(lambda m: print(m, file=sys.stderr)) if args.verbose else None)
    print(format_text(res, verbose=args.verbose))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(format_markdown(res))
    return 0 if res.passed else 1
