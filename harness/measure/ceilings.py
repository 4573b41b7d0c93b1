"""GEMM ceilings: what a framework's matrix multiply achieves here, measured in the same run.

An RNN's forward pass is GEMMs plus elementwise gate maths. To say how good an implementation is we
compare its achieved FLOP/s with three ceilings, each timed with :class:`harness.measure.timing.Timer` in the
same process, framework and dtype as the RNN it is compared with:

``gemm_square``
    one large square GEMM ``(N, N) x (N, N)``: the best the BLAS/cuBLAS can do (N = 1024 on the CPU,
    8192 on CUDA). ``eff_gemm`` = achieved / this.
``input_gemm``
    the hoisted input projection of all steps at once, ``(T·B, I) x (I, G·H)``.
``recurrent``
    the GEMMs of one ideal layer forward, timed as one callable: the hoisted input GEMM
    ``(T·B, I) x (I, G·H)`` followed by T separate per-step GEMMs ``(B, H) x (H, G·H)``, each writing its
    own output slice (the recurrence cannot be batched over time). Its FLOPs are exactly the model's
    forward FLOPs of one layer, ``2·B·(I+H)·G·H·T``, so ``eff_recurrent`` = achieved / this says how
    close an implementation gets to "GEMMs only, elementwise work for free". One callable (one JIT
    dispatch in JAX) so that per-call overhead is counted once, as in the RNN itself.

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
#: Side N of the square GEMM per device: large enough to reach the BLAS's asymptotic rate.
SQUARE_N = {"cpu": 1024, "cuda": 8192}
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
# Each builder returns (fn, sync): fn runs the GEMM(s) once on operands already in place; sync (or None)
# waits for the device. Building happens outside the timed region.

def _numpy_builder(kind: str, shape: Tuple[int, ...], device: str, dtype: str):
    if device != "cpu":
        raise InputError(f"device: numpy ceilings run on the CPU only; got {device!r}")
    rng = np.random.default_rng(_SEED)
    if kind == "recurrent":
        T, B, I, H, N = shape
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


def _torch_builder(kind: str, shape: Tuple[int, ...], device: str, dtype: str):
    import torch

    if device == "cuda":
        # Ceilings must be in the same arithmetic as the RNNs they normalise: full fp32, no TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(_SEED)

    def rand(*s):
        return torch.randn(*s, generator=gen, dtype=dt).to(device)

    sync = torch.cuda.synchronize if device == "cuda" else None
    if kind == "recurrent":
        T, B, I, H, N = shape
        x, w_in, h, w = rand(T * B, I), rand(I, N), rand(T, B, H), rand(H, N)
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
    c = torch.empty(M, N, dtype=dt, device=device)

    def fn():
        with torch.no_grad():
            torch.mm(a, b, out=c)
    return fn, sync


def _jax_builder(kind: str, shape: Tuple[int, ...], device: str, dtype: str):
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
        x, w_in, h, w = put(T * B, I), put(I, N), put(T, B, H), put(H, N)

        @jax.jit
        def loop(x, w_in, h, w):
            # The input GEMM, then T step GEMMs inside one scan, as an RNN's scan runs them.
            xw = jnp.matmul(x, w_in, precision=hi)
            return xw, jax.lax.scan(lambda c, ht: (c, jnp.matmul(ht, w, precision=hi)), None, h)[1]
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


def measure(framework: str, kind: str, shape: Tuple[int, ...], device: str = "cpu", dtype: str = "float32",
            budget_s: float = 0.3, builder: Optional[Callable] = None) -> Tuple[Ceiling, bool]:
    """Time one ceiling (or return the cached one). Returns ``(ceiling, fresh)``.

    Args:
        framework: ``numpy``, ``torch`` or ``jax``.
        kind: ``gemm_square`` / ``input_gemm`` with ``shape = (M, K, N)``, or ``recurrent`` with
            ``shape = (T, B, I, H, G·H)``.
        budget_s: seconds of timed repeats (the Timer's budget).
        builder: for a backend's own GEMMs (``framework`` ``own:<name>``): ``builder(kind, shape, device, dtype)
            -> (fn, sync)``.
    """
    if builder is None and framework not in FRAMEWORKS:
        raise InputError(f"framework: got {framework!r}; allowed: {', '.join(FRAMEWORKS)}")
    if kind not in KINDS:
        raise InputError(f"kind: got {kind!r}; allowed: {', '.join(KINDS)}")
    want = 5 if kind == "recurrent" else 3
    if len(shape) != want or any(int(s) < 1 for s in shape):
        raise InputError(f"shape: got {shape!r}; {kind} needs {want} positive integers")
    if dtype not in ("float32", "float64"):
        raise InputTypeError(f"dtype: got {dtype!r}; allowed: float32, float64")
    shape = tuple(int(s) for s in shape)
    key = (framework, device, dtype, kind, shape)
    if key in _CACHE:
        return _CACHE[key], False
    from harness.measure.timing import Timer

    fn, sync = (builder or _BUILDERS[framework])(kind, shape, device, dtype)
    m = Timer(fn, sync=sync, budget_s=budget_s).run()
    c = Ceiling(framework, device, dtype, kind, shape, _flops(kind, shape), float(m.median), float(m.q25),
                float(m.q75), tuple(float(s) for s in m.samples), float(m.compile_s))
    _CACHE[key] = c
    return c, True


def case_shapes(spec, batch: int, seq_len: int, device: str = "cpu") -> Dict[str, Tuple[int, ...]]:
    """The three ceiling shapes of a case (layer 0's input size; stacked layers have I = H)."""
    G, H, I = spec.gates, spec.hidden_size, spec.input_size
    n = SQUARE_N.get(device, 1024)
    return {"gemm_square": (n, n, n), "input_gemm": (seq_len * batch, I, G * H),
            "recurrent": (seq_len, batch, I, H, G * H)}


def ceilings_for_case(framework: str, spec, batch: int, seq_len: int, device: str = "cpu",
                      dtype: str = "float32", budget_s: float = 0.3, backend=None) -> List[Tuple[Ceiling, bool]]:
    """The three ceilings of a case, in :data:`KINDS` order, each with its ``fresh`` flag (``backend``: whose
    own ``gemm`` hook to use when ``framework`` is ``own:<name>``)."""
    builder = _own_builder(backend) if (backend is not None and framework.startswith("own:")) else None
    return [measure(framework, kind, shape, device, dtype, budget_s, builder)
            for kind, shape in case_shapes(spec, batch, seq_len, device).items()]
