"""The check every suite runs before it times or measures a backend: the same outputs and gradients as the
float64 reference (NumPy), on the case's own weights and batch.

Shared by the throughput and memory suites and by the gate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

#: Relative L2 tolerance of the equivalence check per dtype (float32 variant vs float64 reference).
REL_TOL = {"float32": 1e-4, "float64": 1e-9}
#: The equivalence check runs at most this many steps of a long case (the weights and batch stay the case's).
CHECK_MAX_T = 100


@dataclass
class CaseData:
    """Seeded weights and inputs of one case, in float64 (the reference's precision)."""

    params: Any            # harness.core.params.Params, float64
    x: np.ndarray          # (T, B, I)
    state: Any             # (L, B, H) array, or (h, c) for LSTM
    dy: np.ndarray         # (T, B, H)
    d_state: Any           # like state

    def cast(self, dtype: str, seq_len: Optional[int] = None) -> "CaseData":
        """The same data in ``dtype`` (optionally only the first ``seq_len`` steps)."""
        def c(a):
            if a is None:
                return None
            if isinstance(a, tuple):
                return tuple(np.ascontiguousarray(p, dtype=dtype) for p in a)
            return np.ascontiguousarray(a, dtype=dtype)
        T = seq_len or self.x.shape[0]
        return CaseData(self.params.astype(dtype), c(self.x[:T]), c(self.state), c(self.dy[:T]), c(self.d_state))


def make_data(spec, batch: int, seq_len: int, seed: int) -> CaseData:
    """Weights from ``init_params(spec, seed)``; x, initial state and cotangents ~ N(0, 1) (state × 0.5)."""
    from harness.core.params import init_params

    params = init_params(spec, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed)
    shape = spec.state_shape(batch)
    x = rng.standard_normal((seq_len, batch, spec.input_size))

    def state():
        if spec.is_lstm:
            return (0.5 * rng.standard_normal(shape), 0.5 * rng.standard_normal(shape))
        return 0.5 * rng.standard_normal(shape)
    s0 = state()
    dy = rng.standard_normal((seq_len, batch, spec.hidden_size))
    return CaseData(params, x, s0, dy, state())


def _parts(y, final, grads=None) -> List[Tuple[str, np.ndarray]]:
    out = [("y", y)]
    out += [(f"final_state[{i}]", s) for i, s in enumerate(final)] if isinstance(final, tuple) \
        else [("final_state", final)]
    if grads is not None:
        out += [(f"d{n}", a) for n, a in grads.params.items()]
        out.append(("dx", grads.dx))
        ds = grads.dstate
        out += [(f"dstate[{i}]", s) for i, s in enumerate(ds)] if isinstance(ds, tuple) else [("dstate", ds)]
    return out


_REF_CACHE: Dict[tuple, tuple] = {}


def _reference(spec, data: CaseData, key: tuple, algorithm: str = "bptt", truncation: Optional[int] = None):
    """Forward and vjp of the float64 reference backend (NumPy; cached per worker process)."""
    if key not in _REF_CACHE:
        from implementations import registry
        ref = registry.reference()
        y, final = ref.forward(spec, data.params, data.x, data.state)
        # RTRL is exact: its reference is BPTT (the NumPy reference's own RTRL is checked against it in tests).
        alg = "bptt" if algorithm == "rtrl" else algorithm
        g = ref.vjp(spec, data.params, data.x, data.state, data.dy, data.d_state, algorithm=alg,
                    truncation=truncation if alg == "tbptt" else None)
        _REF_CACHE.clear()  # one shape at a time: cases of a shape run back to back, memory stays small
        _REF_CACHE[key] = (y, final, g)
    return _REF_CACHE[key]


def equivalence_error(backend, spec, data: CaseData, dtype: str, seq_len: int, ref_key: Optional[tuple] = None,
                      algorithm: str = "bptt", truncation: Optional[int] = None) -> Tuple[float, str, Dict[str, float]]:
    """Worst relative L2 error of ``backend`` against the float64 reference, where it is, and first-call times.

    One forward and one vjp (``algorithm``, ``truncation``) of ``backend`` in ``dtype`` on the first ``seq_len``
    steps; the reference computes the same algorithm and
    runs in float64 on the very same (already rounded) values, so only the arithmetic differs.
    Every output, final state and gradient is compared: ``‖a − r‖₂ / ‖r‖₂`` (absolute when ‖r‖ = 0).
    The third item holds the seconds of the variant's first ``forward`` and ``vjp`` calls
    (``check_fwd_s``, ``check_vjp_s``): for a JIT backend these include compiling the functions
    that the timed callables may reuse, so the timed ``compile_s`` alone can understate compilation.
    """
    low = data.cast(dtype, seq_len)
    ref_in = low.cast("float64")
    ry, rf, rg = _reference(spec, ref_in, (ref_key or (spec, id(data), seq_len, dtype)) + (algorithm, truncation),
                            algorithm, truncation)
    t0 = time.perf_counter()
    y, final = backend.forward(spec, low.params, low.x, low.state)
    t1 = time.perf_counter()
    g = backend.vjp(spec, low.params, low.x, low.state, low.dy, low.d_state, algorithm=algorithm,
                    truncation=truncation)
    times = {"check_fwd_s": t1 - t0, "check_vjp_s": time.perf_counter() - t1}
    errors = part_errors(_parts(y, final, g), _parts(ry, rf, rg))
    times["parts"] = errors
    worst, where = 0.0, ""
    for name, err in errors.items():
        if not err <= worst:
            worst, where = err, name
    return worst, where, times


def part_errors(got: List[Tuple[str, Any]], ref: List[Tuple[str, np.ndarray]]) -> Dict[str, float]:
    """Relative L2 error ``‖a − r‖₂ / ‖r‖₂`` (absolute when ‖r‖ = 0) of every named part, in order;
    ``inf`` for a part of the wrong shape or with non-finite values."""
    out: Dict[str, float] = {}
    for (name, a), (_, r) in zip(got, ref):
        a = np.asarray(a, dtype=np.float64)
        if a.shape != r.shape:
            out[name] = math.inf
            continue
        denom = float(np.linalg.norm(r))
        err = float(np.linalg.norm(a - r)) / (denom if denom > 0 else 1.0)
        out[name] = err if math.isfinite(err) else math.inf
    return out


def disagreement(errors: Dict[str, float], tol: float, dtype: str, what: str = "not timed") -> str:
    """The reason of a failed check, naming *every* part past the tolerance (in order: outputs first, so a
    forward bug is not mistaken for a backward one), e.g. ``y 0.41, final_state[0] 0.38, dl0.w_ih 0.52``."""
    bad = [(n, e) for n, e in errors.items() if not e <= tol]
    shown = ", ".join(f"{n} {e:.3g}" for n, e in bad[:8]) + (f", … ({len(bad) - 8} more)" if len(bad) > 8 else "")
    ok = len(errors) - len(bad)
    return (f"disagrees with the NumPy reference ({dtype}, relative tolerance {tol:g}): {shown}"
            + (f"; the other {ok} part(s) agree" if ok else "") + f"; {what}")
