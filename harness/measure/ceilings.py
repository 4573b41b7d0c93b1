"""GEMM ceilings: the fastest this framework runs GEMM work here, measured in the same run.

An RNN's forward pass is GEMMs plus elementwise gate maths. To say how good an implementation is we
compare its achieved FLOP/s with three ceilings, each timed with :class:`harness.measure.timing.Timer` in the
same process, framework and dtype as the RNN it is compared with. A ceiling is the **best of several
strategies** (:data:`STRATEGIES`): a ceiling that an implementation beats is not a ceiling, and one GEMM
routine is not always the framework's fastest (on AMD CPUs torch's MKL ``mm`` runs at about half the rate
of its oneDNN ``linear``, which its LSTM uses). Each row says which strategy won and what the others gave.

``gemm_square``
    square GEMMs ``(N, N) x (N, N)`` for N in :data:`SQUARE_NS` (CPU 512 and 1024; CUDA 4096 and 8192), every
    strategy: the best the framework's BLAS can do. ``eff_gemm`` = achieved / this.
``input_gemm``
    the hoisted input projection of all steps at once, ``(T·B, I) x (I, G·H)``.
``recurrent``
    the GEMMs of one ideal layer forward, timed as one callable, the fastest of: ``loop`` (the hoisted
    input GEMM ``(T·B, I) x (I, G·H)`` followed by T separate per-step GEMMs ``(B, H) x (H, G·H)``, each
    writing its own output slice: the recurrence cannot be batched over time), ``fused`` (T GEMMs
    ``(B, I+H) x (I+H, G·H)`` on the concatenated input and state), and the framework's own ways (torch:
    oneDNN ``linear`` per step; JAX: the loop in one ``lax.scan``, also unrolled 8×). Its FLOPs are exactly
    the model's forward FLOPs of one layer, ``2·B·(I+H)·G·H·T``. ``eff_recurrent`` = achieved / the larger of
    this and ``gemm_square`` (the same FLOPs cannot run faster than the framework's best GEMM rate), so it
    says how close an implementation gets to "GEMMs only, elementwise work for free".

Each ceiling is measured once per worker process per (framework, device, dtype, kind, shape) and
cached; :func:`ceilings_for_case` says which were measured fresh, so the suite yields each one as a
row once. Frameworks are imported only when their ceiling is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from harness.core.errors import InputError, InputTypeError

FRAMEWORKS = ("numpy", "torch", "jax")
KINDS = ("gemm_square", "input_gemm", "recurrent")
#: Sides N of the square GEMMs per device (the best counts): around where the BLAS reaches its asymptotic rate.
SQUARE_NS = {"cpu": (512, 1024), "cuda": (4096, 8192)}
SQUARE_N = {d: max(ns) for d, ns in SQUARE_NS.items()}  # the largest (kept for callers that want one)
#: Strategies per framework and kind, tried in this order (a strategy that cannot run here is left out).
STRATEGIES: Dict[str, Dict[str, Tuple[str, ...]]] = {
    "numpy": {"gemm_square": ("matmul",), "input_gemm": ("matmul",), "recurrent": ("loop", "fused")},
    "torch": {"gemm_square": ("mm", "onednn"), "input_gemm": ("mm", "onednn"),
              "recurrent": ("loop", "fused", "onednn")},
    "jax": {"gemm_square": ("matmul",), "input_gemm": ("matmul",), "recurrent": ("scan", "scan-unroll8", "fused")},
}
#: Seed of the ceiling operands (values do not matter for speed, but denormals would: keep them O(1)).
_SEED = 12345


@dataclass(frozen=True)
class Ceiling:
    """One measured ceiling.

    Attributes:
        framework, device, dtype, kind: what was measured (``kind`` in :data:`KINDS`).
        shape: the GEMM dimensions, e.g. ``(M, K, N)``; for ``recurrent`` ``(T, B, I, H, G·H)``.
        flops: FLOPs of one call (``2·M·K·N``; recurrent ``2·T·B·(I+H)·G·H``).
        median_s, q25_s, q75_s: seconds per call; samples_s: every timed sample (seconds).
        compile_s: the first (warm-up) call, seconds.
        strategy: the strategy that gave this (the fastest); candidates: ``{"strategy@shape": GFLOP/s}`` of
        every strategy tried.
    """

    framework: str
    device: str
    dtype: str
    kind: str
    shape: Tuple[int, ...]
    flops: float
    median_s: float
    q25_s: float
    q75_s: float
    samples_s: Tuple[float, ...]
    compile_s: float
    strategy: str = ""
    candidates: Tuple[Tuple[str, float], ...] = ()

    @property
    def gflops(self) -> float:
        """Achieved GFLOP/s at the median time."""
        return self.flops / self.median_s / 1e9

    @property
    def shape_str(self) -> str:
        return "x".join(str(s) for s in self.shape)


_CACHE: Dict[tuple, Ceiling] = {}


def clear_cache() -> None:
    """Forget every cached ceiling (tests; a new run in the same process)."""
    _CACHE.clear()


class CeilingError(RuntimeError):
    """A backend's own GEMM hook failed: the case keeps its timings, loses its efficiency."""


def framework_of(backend) -> Optional[str]:
    """Whose ceilings measure ``backend``: ``own:<name>`` when its :meth:`gemm` hook provides them, else the
    framework it declares (``numpy``, ``torch``, ``jax``), else None (no ceilings: efficiency not computed)."""
    if _own_builder(backend) is not None:
        return f"own:{backend.name}"
    fw = getattr(backend, "framework", None)
    return fw if fw in FRAMEWORKS else None


def _own_builder(backend):
    """A builder over the backend's ``gemm`` hook, or None when it does not provide its own GEMMs."""
    hook = getattr(backend, "gemm", None)
    if hook is None:
        return None
    try:
        probe = hook("gemm_square", (8, 8, 8), "float32")
    except NotImplementedError:
        return None
    except Exception as e:  # noqa: BLE001 - a broken hook costs its ceilings, not the case
        raise CeilingError(f"backend {getattr(backend, 'name', backend)!r}: gemm() raised "
                           f"{type(e).__name__}: {e}") from None
    if probe is None:
        return None

    def build(kind, shape, device, dtype):
        got = hook(kind, shape, dtype)
        if got is None:
            raise InputError(f"backend {backend.name!r}: gemm() gave no {kind} callable for {shape}")
        return got if isinstance(got, tuple) else (got, None)
    return build


# -- per-framework callables --------------------------------------------------------------------------
# Each builder(kind, shape, device, dtype, strategy) returns (fn, sync): fn runs the GEMM work once on operands
# already in place; sync (or None) waits for the device. Building happens outside the timed region. A
# strategy that cannot run here raises Unavailable and is left out.

class Unavailable(Exception):
    """This strategy does not exist in this build or on this device."""


def _numpy_builder(kind: str, shape: Tuple[int, ...], device: str, dtype: str, strategy: str = "matmul"):
    if device != "cpu":
        raise InputError(f"device: numpy ceilings run on the CPU only; got {device!r}")
    rng = np.random.default_rng(_SEED)
    if kind == "recurrent":
        T, B, I, H, N = shape
        if strategy == "fused":
            xh = rng.standard_normal((T, B, I + H)).astype(dtype)
            w = rng.standard_normal((I + H, N)).astype(dtype)
            out = np.empty((T, B, N), dtype=dtype)

            def fn():
                for t in range(T):
                    np.matmul(xh[t], w, out=out[t])
            return fn, None
        x = rng.standard_normal((T * B, I)).astype(dtype)
        w_in = rng.standard_normal((I, N)).astype(dtype)
        xw = np.empty((T * B, N), dtype=dtype)
        h = rng.standard_normal((T, B, H)).astype(dtype)
        w = rng.standard_normal((H, N)).astype(dtype)
        out = np.empty((T, B, N), dtype=dtype)

        def fn():
            np.matmul(x, w_in, out=xw)
            for t in range(T):
                np.matmul(h[t], w, out=out[t])
        return fn, None
    M, K, N = shape
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    c = np.empty((M, N), dtype=dtype)
    return (lambda: np.matmul(a, b, out=c)), None


def _torch_builder(kind: str, shape: Tuple[int, ...], device: str, dtype: str, strategy: str = "mm"):
    import torch

    if device == "cuda":
        # Ceilings must be in the same arithmetic as the RNNs they normalise: full fp32, no TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(_SEED)
    onednn = strategy == "onednn"
    if onednn and (device != "cpu" or not torch.backends.mkldnn.is_available() or dtype != "float32"):
        raise Unavailable("oneDNN linear: float32 on a CPU build with mkldnn only")

    def rand(*s):
        return torch.randn(*s, generator=gen, dtype=dt).to(device)

    def linear(w_t):  # y = a @ w_t through oneDNN (weights pre-packed, as torch's LSTM keeps them)
        w = w_t.t().contiguous().to_mkldnn()
        return lambda a: torch._C._nn.mkldnn_linear(a, w, None)

    sync = torch.cuda.synchronize if device == "cuda" else None
    if kind == "recurrent":
        T, B, I, H, N = shape
        if strategy == "fused":
            xh, w = rand(T, B, I + H), rand(I + H, N)
            out = torch.empty(T, B, N, dtype=dt, device=device)

            def fn():
                with torch.no_grad():
                    for t in range(T):
                        torch.mm(xh[t], w, out=out[t])
            return fn, sync
        x, w_in, h, w = rand(T * B, I), rand(I, N), rand(T, B, H), rand(H, N)
        if onednn:
            lin_in, lin = linear(w_in), linear(w)
            xm = x.to_mkldnn()
            hm = [h[t].contiguous().to_mkldnn() for t in range(T)]

            def fn():
                with torch.no_grad():
                    lin_in(xm)
                    for t in range(T):
                        lin(hm[t])
            return fn, None
        xw = torch.empty(T * B, N, dtype=dt, device=device)
        out = torch.empty(T, B, N, dtype=dt, device=device)

        def fn():
            with torch.no_grad():
                torch.mm(x, w_in, out=xw)
                for t in range(T):
                    torch.mm(h[t], w, out=out[t])
        return fn, sync
    M, K, N = shape
    a, b = rand(M, K), rand(K, N)
    if onednn:
        lin, am = linear(b), a.to_mkldnn()

        def fn():
            with torch.no_grad():
                lin(am)
        return fn, None
    c = torch.empty(M, N, dtype=dt, device=device)

    def fn():
        with torch.no_grad():
            torch.mm(a, b, out=c)
    return fn, sync


def _jax_builder(kind: str, shape: Tuple[int, ...], device: str, dtype: str, strategy: str = "matmul"):
    import jax
    import jax.numpy as jnp

    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise InputError("dtype: float64 JAX ceilings need jax_enable_x64 (set by the JAX backend)")
    dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
    rng = np.random.default_rng(_SEED)
    hi = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes: same arithmetic as the RNNs

    def put(*s):
        return jax.device_put(rng.standard_normal(s).astype(dtype), dev)

    if kind == "recurrent":
        T, B, I, H, N = shape
        if strategy == "fused":
            xh, w = put(T, B, I + H), put(I + H, N)

            @jax.jit
            def fused(xh, w):
                return jax.lax.scan(lambda c, v: (c, jnp.matmul(v, w, precision=hi)), None, xh)[1]
            return (lambda: jax.block_until_ready(fused(xh, w))), None
        unroll = 8 if strategy == "scan-unroll8" else 1
        x, w_in, h, w = put(T * B, I), put(I, N), put(T, B, H), put(H, N)

        @jax.jit
        def loop(x, w_in, h, w):
            # The input GEMM, then T step GEMMs inside one scan, as an RNN's scan runs them.
            xw = jnp.matmul(x, w_in, precision=hi)
            return xw, jax.lax.scan(lambda c, ht: (c, jnp.matmul(ht, w, precision=hi)), None, h,
                                    unroll=min(unroll, T))[1]
        return (lambda: jax.block_until_ready(loop(x, w_in, h, w))), None
    M, K, N = shape
    a, b = put(M, K), put(K, N)
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision=hi))
    return (lambda: jax.block_until_ready(mm(a, b))), None


_BUILDERS: Dict[str, Callable] = {"numpy": _numpy_builder, "torch": _torch_builder, "jax": _jax_builder}


def _flops(kind: str, shape: Tuple[int, ...]) -> float:
    if kind == "recurrent":
        T, B, I, H, N = shape
        return 2.0 * T * B * (I + H) * N
    M, K, N = shape
    return 2.0 * M * K * N


def _check_args(framework, kind, shape, dtype, builder) -> Tuple[int, ...]:
    if builder is None and framework not in FRAMEWORKS:
        raise InputError(f"framework: got {framework!r}; allowed: {', '.join(FRAMEWORKS)}")
    if kind not in KINDS:
        raise InputError(f"kind: got {kind!r}; allowed: {', '.join(KINDS)}")
    want = 5 if kind == "recurrent" else 3
    if len(shape) != want or any(int(s) < 1 for s in shape):
        raise InputError(f"shape: got {shape!r}; {kind} needs {want} positive integers")
    if dtype not in ("float32", "float64"):
        raise InputTypeError(f"dtype: got {dtype!r}; allowed: float32, float64")
    return tuple(int(s) for s in shape)


def _time_one(framework, kind, shape, device, dtype, budget_s, strategy, build) -> Ceiling:
    """One strategy at one shape (cached per process)."""
    key = (framework, device, dtype, kind, shape, strategy)
    if key not in _CACHE:
        from harness.measure.timing import Timer
        fn, sync = build(kind, shape, device, dtype, strategy)
        m = Timer(fn, sync=sync, budget_s=budget_s).run()
        _CACHE[key] = Ceiling(framework, device, dtype, kind, shape, _flops(kind, shape), float(m.median),
                              float(m.q25), float(m.q75), tuple(float(s) for s in m.samples), float(m.compile_s),
                              strategy=strategy)
    return _CACHE[key]


def measure(framework: str, kind: str, shape: Tuple[int, ...], device: str = "cpu", dtype: str = "float32",
            budget_s: float = 0.3, builder: Optional[Callable] = None,
            shapes: Optional[List[Tuple[int, ...]]] = None) -> Tuple[Ceiling, bool]:
    """Time one ceiling: every strategy of the framework for ``kind`` (at ``shape``, or at each of ``shapes``),
    and return the fastest, with every candidate's GFLOP/s. Returns ``(ceiling, fresh)``; ``fresh`` is False
    when the same ceiling was already returned in this process.

    Args:
        framework: ``numpy``, ``torch`` or ``jax``.
        kind: ``gemm_square`` / ``input_gemm`` with ``shape = (M, K, N)``, or ``recurrent`` with
            ``shape = (T, B, I, H, G·H)``.
        budget_s: seconds of timed repeats per strategy (the Timer's budget).
        builder: for a backend's own GEMMs (``framework`` ``own:<name>``): ``builder(kind, shape, device, dtype)
            -> (fn, sync)``: one strategy, ``own``.
        shapes: several shapes of the same kind (the square sizes); the best over all of them counts.
    """
    todo = [_check_args(framework, kind, sh, dtype, builder) for sh in (shapes or [shape])]
    key = (framework, device, dtype, kind, tuple(todo), "best")
    if key in _CACHE:
        return _CACHE[key], False
    if builder is not None:
        strategies: Tuple[str, ...] = ("own",)
        build = lambda k, sh, d, dt, _s: builder(k, sh, d, dt)  # noqa: E731
    else:
        strategies, build = STRATEGIES[framework][kind], _BUILDERS[framework]
    got: List[Ceiling] = []
    for sh in todo:
        for st in strategies:
            try:
                got.append(_time_one(framework, kind, sh, device, dtype, budget_s, st, build))
            except Unavailable:
                continue
    if not got:
        raise InputError(f"no {kind} strategy of {framework!r} can run here")
    best = max(got, key=lambda c: c.gflops)
    cands = tuple((f"{c.strategy}@{c.shape_str}", c.gflops) for c in got)
    out = Ceiling(**{**best.__dict__, "candidates": cands})
    _CACHE[key] = out
    return out, True


def case_shapes(spec, batch: int, seq_len: int, device: str = "cpu") -> Dict[str, Tuple[int, ...]]:
    """The three ceiling shapes of a case (layer 0's input size; stacked layers have I = H); the square one
    is the largest of :data:`SQUARE_NS` (:func:`ceilings_for_case` tries them all)."""
    G, H, I = spec.gates, spec.hidden_size, spec.input_size
    n = SQUARE_N.get(device, 1024)
    return {"gemm_square": (n, n, n), "input_gemm": (seq_len * batch, I, G * H),
            "recurrent": (seq_len, batch, I, H, G * H)}


def ceilings_for_case(framework: str, spec, batch: int, seq_len: int, device: str = "cpu",
                      dtype: str = "float32", budget_s: float = 0.3, backend=None) -> List[Tuple[Ceiling, bool]]:
    """The three ceilings of a case, in :data:`KINDS` order, each with its ``fresh`` flag (``backend``: whose
    own ``gemm`` hook to use when ``framework`` is ``own:<name>``). The square ceiling is the best over
    :data:`SQUARE_NS`."""
    builder = _own_builder(backend) if (backend is not None and framework.startswith("own:")) else None
    out = []
    for kind, shape in case_shapes(spec, batch, seq_len, device).items():
        shapes = [(n, n, n) for n in SQUARE_NS.get(device, (1024,))] if kind == "gemm_square" else None
        out.append(measure(framework, kind, shape, device, dtype, budget_s, builder, shapes=shapes))
    return out
