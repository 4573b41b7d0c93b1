"""What the GPU reference (``scripts/gpu-reference``, :mod:`harness.cli.gpu_reference`) runs through
``rnnbench run``: two plug-in suites and the TF32 twins of the CUDA backends.

Plug-in suites (``rnnbench run harness.cli.gpu_plugins:THROUGHPUT`` / ``...:SCAN`` / ``...:MEMORY``). Their rows are the
built-in suites' rows (``suite`` is ``throughput`` / ``memory``), so ``rnnbench report`` and ``compare``
read them with nothing to import; only the case lists differ:

``THROUGHPUT`` (``full`` preset)
    PyTorch fastrnns' default shape (LSTM T=100 B=64 I=H=512) and Baidu DeepBench's CUDA training and
    inference shapes (``suites.throughput.suite``'s lists), float32. The cell-loop variants (``torch-cell``,
    ``torch-compile``, ``jax-unroll8`` and their TF32 twins) run the anchor shapes only (fastrnns and one
    DeepBench shape per cell and mode); the fused ones (cuDNN, native, ``lax.scan``) run all of them.
    Cases come in priority order (:func:`throughput_cases`): when the time limit stops a run, what is
    missing is the tail. ``smoke``/``quick``: the same structure on tiny shapes (a pipeline check on the CPU).
``SCAN`` (``full`` preset)
    minGRU at H=1024 across T = 64 … 16384 at B·T = 65536, float32: the sequential forms (torch's cell loop,
    ``lax.scan``) against the parallel scans (``torch-pscan``, ``jax-pscan``); the report's crossover table says
    from which T the scan wins on the GPU.
``MEMORY`` (``full`` preset)
    device memory of BPTT against RTRL, float64: where a backend offers RTRL (JAX), both algorithms at the
    same points (an H sweep at two lengths for BPTT, so that the suite's summary derives the crossover
    length T*, and a T sweep); a BPTT-only backend (torch) a BPTT T sweep.

TF32 twins (``module:Class`` backends; the registry names them ``harness.cli.gpu_plugins:TorchTF32`` etc.):
the same code as ``torch``/``torch-native``/``torch-cell``/``torch-compile``/``jax``/``jax-unroll8``, timed
with TF32 on (torch: ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``; JAX:
matmul precision ``default``, which is TF32 for float32 on Ampere and newer GPUs), while their equivalence
check (``forward``/``vjp``/``hidden_grads``) runs with TF32 off — TF32's 10-bit mantissa is far outside the
float32 tolerance (1e-4) of the check, so the check vouches for the code path, not for TF32's rounding.
Their GEMM ceilings (the backend's ``gemm`` hook) are TF32 GEMMs too, so ``eff_gemm`` compares like with
like. The torch twins switch TF32 on only inside each timed call and back off after it (torch's flags are
process-wide; the fp32 backends of the same worker must not see them).

The classes are built on first access (module ``__getattr__``): importing this module needs NumPy only, and
a JAX worker never imports torch (nor a torch worker JAX).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from suites.base import Case
from suites.memory.suite import MemorySuite, Point
from suites.throughput.suite import (DEEPBENCH_INFER_CUDA, DEEPBENCH_TRAIN_CUDA, FASTRNNS, MODES, Shape,
                                     ThroughputSuite)

MODULE = "harness.cli.gpu_plugins"

#: built-in backend -> its TF32 twin (a ``module:Class`` name)
TF32_TWINS: Dict[str, str] = {
    "torch": f"{MODULE}:TorchTF32",
    "torch-native": f"{MODULE}:TorchNativeTF32",
    "torch-cell": f"{MODULE}:TorchCellTF32",
    "torch-compile": f"{MODULE}:TorchCompileTF32",
    "jax": f"{MODULE}:JaxTF32",
    "jax-unroll8": f"{MODULE}:JaxUnroll8TF32",
}
_BASE_OF = {v: k for k, v in TF32_TWINS.items()}
#: Variants timed on the anchor shapes only (compile time or a Python loop per step), cheapest first: in the
#: case order each of these groups comes after every fused variant has had every shape.
ANCHOR_ONLY = ("torch-cell", "jax-unroll8", "torch-compile")

#: Shapes every variant runs, besides fastrnns: (cell, H, B, T) of DeepBench's lists, one per cell and mode.
DEEPBENCH_ANCHORS = (("lstm", 2048, 64, 25), ("gru", 2816, 32, 187), ("rnn_tanh", 2560, 64, 50),
                     ("lstm", 1536, 4, 50))


def base_backend(name: str) -> str:
    """The built-in backend a name is (itself, or the one a TF32 twin doubles)."""
    return _BASE_OF.get(name, name)


def is_tf32(name: str) -> bool:
    return name in _BASE_OF


def sweep_of(name: str) -> str:
    """``anchors`` for the cell-loop variants (and their twins), ``full`` for every other backend."""
    return "anchors" if base_backend(name) in ANCHOR_ONLY else "full"


# -- throughput -------------------------------------------------------------------------------------------
def throughput_shapes(preset: str = "full") -> List[Shape]:
    """The shapes in priority order: fastrnns, the DeepBench anchors, then the rest of DeepBench's CUDA lists
    (training: forward and training; inference: forward only). ``all_variants`` marks the anchors.

    ``smoke``/``quick``: one tiny shape per anchor (H=16, B=2, T=5; I=H), the same tags and modes."""
    if preset not in ("smoke", "quick", "full"):
        from harness.core.errors import InputError
        raise InputError(f"preset: got {preset!r}; allowed: smoke, quick, full")
    anchors = set(DEEPBENCH_ANCHORS)
    rows = [("deepbench-train", MODES, r) for r in DEEPBENCH_TRAIN_CUDA]
    rows += [("deepbench-inference", ("fwd",), r) for r in DEEPBENCH_INFER_CUDA]
    deep = [Shape(cell, h, b, t, tags=(tag,), modes=modes, all_variants=(cell, h, b, t) in anchors)
            for tag, modes, (h, b, t, cell) in rows]
    fast = Shape(FASTRNNS.cell, FASTRNNS.hidden, FASTRNNS.batch, FASTRNNS.seq_len, FASTRNNS.input,
                 FASTRNNS.layers, FASTRNNS.dtype, ("fastrnns",), MODES, True)
    key = {a: i for i, a in enumerate(DEEPBENCH_ANCHORS)}
    first = sorted((s for s in deep if s.all_variants), key=lambda s: key[(s.cell, s.hidden, s.batch, s.seq_len)])
    shapes = [fast] + first + [s for s in deep if not s.all_variants]
    if preset != "full":
        shapes = [Shape(s.cell, 16, 2, 5, tags=s.tags, modes=s.modes, all_variants=True)
                  for s in shapes if s.all_variants]
    out: Dict[str, Shape] = {}
    for s in shapes:  # one case name per shape (the DeepBench lists hold no duplicates; the tiny ones may)
        out.setdefault(s.name, s)
    return list(out.values())


def throughput_order(shapes: Sequence[Shape], backends: Sequence[str]) -> List[Tuple[Shape, str]]:
    """(shape, backend) pairs in the order they run: when a run is stopped at its time limit, the tail is lost.

    1. the first shape (fastrnns) with every backend — the headline comparison;
    2. every other shape with the ``full`` backends (fused kernels: cheap per case), shape by shape;
    3. for each group of :data:`ANCHOR_ONLY` in turn (cell loop, unrolled scan, torch.compile — dearest
       last), the other anchor shapes with that group's backends (the variant and its TF32 twin together).
    Within a shape the backends keep the order given (the NumPy reference is computed once per shape and
    worker, so a shape's cases stay together).
    """
    names = list(dict.fromkeys(backends))
    if not shapes:
        return []
    out = [(shapes[0], b) for b in names if sweep_of(b) == "full" or shapes[0].all_variants]
    full = [b for b in names if sweep_of(b) == "full"]
    out += [(s, b) for s in shapes[1:] for b in full]
    for group in ANCHOR_ONLY:
        members = [b for b in names if base_backend(b) == group]
        out += [(s, b) for s in shapes[1:] if s.all_variants for b in members]
    return out


def throughput_cases(preset: str, backends: Sequence[str], device: str) -> List[Case]:
    """The THROUGHPUT suite's cases (see :func:`throughput_order`); settings as the built-in suite's."""
    return [Case(suite="throughput", name=s.name, backend=b, device=device, cell=s.cell, layers=s.layers,
                 batch=s.batch, seq_len=s.seq_len, input_size=s.input_size, hidden_size=s.hidden, dtype=s.dtype,
                 settings={"tags": ",".join(s.tags), "modes": ",".join(s.modes)})
            for s, b in throughput_order(throughput_shapes(preset), backends)]


class GpuReferenceThroughput(ThroughputSuite):
    """The throughput suite at the GPU reference's shapes (rows are ``throughput`` rows)."""

    name = "throughput"
    #: one process per case (the built-in suite's 3 are for ``compare``; the GPU reference has 8 minutes)
    processes = 1
    #: per-case limit when ``--timeout`` is not given (a torch.compile case compiles forward and backward)
    timeout_s = 120.0

    def cases(self, preset: str, backends: Optional[List[str]] = None, device: str = "cpu") -> List[Case]:
        self.check_args(preset, device)
        return self.case_list(preset, backends or self.default_backends(), device)

    def case_list(self, preset: str, backends: Sequence[str], device: str) -> List[Case]:
        return throughput_cases(preset, backends, device)

    def default_backends(self) -> Tuple[str, ...]:
        return THROUGHPUT_BACKENDS


THROUGHPUT_BACKENDS = ("torch", "torch-native", "torch-cell", "torch-compile", "jax", "jax-unroll8")
THROUGHPUT = GpuReferenceThroughput()


# -- gated linear cells: sequential against parallel scan -------------------------------------------------------
#: (H, B·T) of the GPU scan sweep; T from 64 to 16384 at a fixed B·T, so every point does the same GEMM work (past
#: T = 16384 torch's cell loop alone, T kernel launches forward and about 3·T backward, would use up the part's time).
SCAN_H, SCAN_TOKENS = 1024, 65536
SCAN_T = (64, 256, 1024, 4096, 16384)
SCAN_BACKENDS = ("torch-cell", "torch-pscan", "jax", "jax-pscan")


def scan_shapes(preset: str = "full") -> List[Shape]:
    """minGRU across T at fixed B·T (``full``: H=1024, B·T = 65536, float32), in priority order: the ends of the
    sweep first (the ratio at the longest T is the headline), then the middle. ``smoke``/``quick``: H=16, B·T=64."""
    from suites.throughput.suite import GATED_TAG
    if preset not in ("smoke", "quick", "full"):
        from harness.core.errors import InputError
        raise InputError(f"preset: got {preset!r}; allowed: smoke, quick, full")
    H, tokens, ts = (SCAN_H, SCAN_TOKENS, SCAN_T) if preset == "full" else (16, 64, (4, 16, 64))
    order = [ts[-1], ts[0]] + list(ts[1:-1])
    return [Shape("mingru", H, tokens // t, t, tags=("scan-T", GATED_TAG)) for t in order]


def scan_cases(preset: str, backends: Sequence[str], device: str) -> List[Case]:
    """The SCAN suite's cases: every backend at one T before the next T (a cut loses whole T points)."""
    return [Case(suite="throughput", name=s.name, backend=b, device=device, cell=s.cell, layers=s.layers,
                 batch=s.batch, seq_len=s.seq_len, input_size=s.input_size, hidden_size=s.hidden, dtype=s.dtype,
                 settings={"tags": ",".join(s.tags), "modes": ",".join(s.modes)})
            for s in scan_shapes(preset) for b in dict.fromkeys(backends)]


class GpuReferenceScan(GpuReferenceThroughput):
    """The throughput suite's scan sweep at GPU sizes (rows are ``throughput`` rows)."""

    def case_list(self, preset: str, backends: Sequence[str], device: str) -> List[Case]:
        return scan_cases(preset, backends, device)

    def default_backends(self) -> Tuple[str, ...]:
        return SCAN_BACKENDS


SCAN = GpuReferenceScan()


# -- memory -----------------------------------------------------------------------------------------------
#: Backends that offer RTRL (the others get BPTT only). A table, so that the case list stays pure.
RTRL_BACKENDS = ("numpy", "jax")


def memory_points(backend: str, preset: str = "full") -> List[Point]:
    """The memory points of a backend, most informative first (BPTT vs RTRL at the same points).

    ``full``: with RTRL — an H sweep (rnn_tanh, B=8, H 32/64/128: BPTT at T=10 and 40, RTRL at T=10; the
    suite's summary fits the memory exponents in H and the crossover T*) and a T sweep (H=16, T 200/800, both
    algorithms); BPTT only — a T sweep at H=64, B=8, T 200/400/800. ``smoke``/``quick``: the same on tiny sizes.
    """
    small = preset != "full"
    hs, t_pair = ((8, 16), (5, 10)) if small else ((32, 64, 128), (10, 40))
    t_sweep_h, ts = (8, (10, 20)) if small else (16, (200, 800))
    pts: List[Point] = []
    if base_backend(backend) in RTRL_BACKENDS:
        for H in hs:
            pts += [Point("H", "rnn_tanh", 8, T, H, "bptt") for T in t_pair]
            pts.append(Point("H", "rnn_tanh", 8, t_pair[0], H, "rtrl"))
        for T in ts:
            pts += [Point("T", "rnn_tanh", 8, T, t_sweep_h, alg) for alg in ("bptt", "rtrl")]
    else:
        pts += [Point("T", "rnn_tanh", 8, T, 16 if small else 64, "bptt")
                for T in ((10, 20) if small else (200, 400, 800))]
    return pts


def memory_cases(preset: str, backends: Sequence[str], device: str) -> List[Case]:
    """One case per point, each backend's ``summary`` case right after its points (the runner runs a family's
    cases in one worker, in this order)."""
    out: List[Case] = []
    for b in dict.fromkeys(backends):
        pts = memory_points(b, preset)
        for p in pts:
            out.append(Case(suite="memory", name=p.name, backend=b, device=device, cell=p.cell, layers=p.layers,
                            batch=p.batch, seq_len=p.seq_len, input_size=p.hidden, hidden_size=p.hidden,
                            dtype="float64", settings={"sweep": p.sweep, "algorithm": p.algorithm,
                                                       "truncation": p.truncation, "impl": p.impl}))
        if pts:
            out.append(Case(suite="memory", name=f"summary-{b}", backend=b, device=device,
                            settings={"kind": "summary", "family": b}))
    return out


class GpuReferenceMemory(MemorySuite):
    """The memory suite at the GPU reference's points (rows are ``memory`` rows)."""

    name = "memory"
    timeout_s = 120.0

    def cases(self, preset: str, backends: Optional[List[str]] = None, device: str = "cpu") -> List[Case]:
        self.check_args(preset, device)
        return memory_cases(preset, backends or MEMORY_BACKENDS, device)


MEMORY_BACKENDS = ("jax", "torch")
MEMORY = GpuReferenceMemory()


# -- TF32 twins ---------------------------------------------------------------------------------------------
_TORCH_TWINS = {"TorchTF32": "TorchBackend", "TorchNativeTF32": "TorchNativeBackend",
                "TorchCellTF32": "TorchCellBackend", "TorchCompileTF32": "TorchCompileBackend"}
_JAX_TWINS = {"JaxTF32": 1, "JaxUnroll8TF32": 8}
_TF32_NOTE = "timed with TF32 on; equivalence checked with TF32 off (TF32 rounding is not covered by the check)"
#: GEMM ceiling operands' seed (values do not matter for speed; as harness.measure.ceilings)
_SEED = 12345


def _torch_twin(base_name: str) -> type:
    import torch

    from implementations.torch import backend as tb
    base = getattr(tb, base_name)

    @contextlib.contextmanager
    def tf32(be, on: bool):
        old = (be.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        be.allow_tf32 = on  # TorchBackend._ctx passes it to cudnn.flags
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
        try:
            yield
        finally:
            be.allow_tf32 = old[0]
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[1], old[2]

    class Twin(base):
        __doc__ = f"``{base.variant}`` timed with TF32 on (CUDA only); checked with TF32 off."
        variant = f"{base.variant}+tf32"
        devices = ("cuda",)

        def __init__(self, device: str = "cuda", **options) -> None:
            options.pop("allow_tf32", None)
            # TF32 off outside the timed calls: the constructor sets torch's process-wide flags from this.
            super().__init__(device, allow_tf32=False, **options)

        @classmethod
        def probe(cls, device: str) -> Tuple[bool, str]:
            if device != "cuda":
                return False, "TF32 is a CUDA setting: this twin runs on cuda only"
            ok, reason = super().probe(device)
            if ok and torch.cuda.get_device_capability(0)[0] < 8:
                return False, "TF32 needs compute capability 8.0 or newer (Ampere+)"
            return ok, reason

        def versions(self) -> dict:
            return {**super().versions(), "tf32": _TF32_NOTE}

        def _forward(self, *a):
            with tf32(self, False):
                return super()._forward(*a)

        def _vjp(self, *a):
            with tf32(self, False):
                return super()._vjp(*a)

        def _hidden_grads(self, *a):
            with tf32(self, False):
                return super()._hidden_grads(*a)

        def _timed(self, fn):
            def run():
                with tf32(self, True):
                    return fn()
            return run

        def _prepare_forward(self, *a):
            return self._timed(super()._prepare_forward(*a))

        def _prepare_train(self, *a):
            return self._timed(super()._prepare_train(*a))

        def gemm(self, kind: str, shape: Tuple[int, ...], dtype: str):
            """TF32 GEMM ceilings, the same GEMMs as harness.measure.ceilings' torch ones."""
            dt = getattr(torch, dtype)
            gen = torch.Generator().manual_seed(_SEED)

            def rand(*s):
                return torch.randn(*s, generator=gen, dtype=dt).to(self.device)
            if kind == "recurrent":
                T, B, I, H, N = shape
                x, w_in, h, w = rand(T * B, I), rand(I, N), rand(T, B, H), rand(H, N)
                xw = torch.empty(T * B, N, dtype=dt, device=self.device)
                out = torch.empty(T, B, N, dtype=dt, device=self.device)

                def fn():
                    torch.mm(x, w_in, out=xw)
                    for t in range(T):
                        torch.mm(h[t], w, out=out[t])
            else:
                M, K, N = shape
                a, b = rand(M, K), rand(K, N)
                c = torch.empty(M, N, dtype=dt, device=self.device)

                def fn():
                    torch.mm(a, b, out=c)

            def timed():
                with torch.no_grad(), tf32(self, True):
                    fn()
            return timed, (torch.cuda.synchronize if self.device == "cuda" else None)

    Twin.__name__ = Twin.__qualname__ = next(k for k, v in _TORCH_TWINS.items() if v == base_name)
    Twin.__module__ = MODULE
    return Twin


def _jax_twin(unroll: int) -> type:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from implementations.jax.backend import JaxBackend

    class Twin(JaxBackend):
        __doc__ = ("``jax``/``jax-unroll8`` timed with matmul precision ``default`` (TF32 for float32 on Ampere+); "
                   "checked at ``highest``.")
        devices = ("cuda",)

        def __init__(self, device: str = "cuda", unroll: int = unroll, **options) -> None:
            options.pop("precision", None)
            super().__init__(device, unroll=unroll, precision="default", **options)
            self.variant = f"{self.variant}+tf32"
            # forward / vjp / hidden_grads (the equivalence check, the conformance battery) run at "highest"
            self._checker = JaxBackend(device, unroll=unroll, precision="highest", **options)

        @classmethod
        def probe(cls, device: str) -> Tuple[bool, str]:
            if device != "cuda":
                return False, "TF32 is a CUDA setting: this twin runs on cuda only"
            ok, reason = super().probe(device)
            if ok:
                cc = getattr(jax.devices("gpu")[0], "compute_capability", None)
                try:
                    if cc is not None and float(cc) < 8.0:
                        return False, f"TF32 needs compute capability 8.0 or newer (Ampere+); this GPU has {cc}"
                except (TypeError, ValueError):
                    pass
            return ok, reason

        def versions(self) -> dict:
            return {**super().versions(), "tf32": _TF32_NOTE + " (the check at matmul precision highest)"}

        def _forward(self, *a):
            return self._checker._forward(*a)

        def _vjp(self, *a):
            return self._checker._vjp(*a)

        def _hidden_grads(self, *a):
            return self._checker._hidden_grads(*a)

        def gemm(self, kind: str, shape: Tuple[int, ...], dtype: str):
            """GEMM ceilings at matmul precision ``default`` (as harness.measure.ceilings' JAX ones otherwise)."""
            dev = self.jax_device
            rng = np.random.default_rng(_SEED)
            p = jax.lax.Precision.DEFAULT

            def put(*s):
                return jax.device_put(rng.standard_normal(s).astype(dtype), dev)
            if kind == "recurrent":
                T, B, I, H, N = shape
                x, w_in, h, w = put(T * B, I), put(I, N), put(T, B, H), put(H, N)

                @jax.jit
                def loop(x, w_in, h, w):
                    xw = jnp.matmul(x, w_in, precision=p)
                    return xw, jax.lax.scan(lambda c, ht: (c, jnp.matmul(ht, w, precision=p)), None, h)[1]
                return (lambda: jax.block_until_ready(loop(x, w_in, h, w))), None
            M, K, N = shape
            a, b = put(M, K), put(K, N)
            mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision=p))
            return (lambda: jax.block_until_ready(mm(a, b))), None

    name = next(k for k, v in _JAX_TWINS.items() if v == unroll)
    Twin.__name__ = Twin.__qualname__ = name
    Twin.__module__ = MODULE
    return Twin


def __getattr__(name: str) -> Any:
    """Build a TF32 twin class on first access (so that importing this module imports no framework)."""
    if name in _TORCH_TWINS:
        cls = _torch_twin(_TORCH_TWINS[name])
    elif name in _JAX_TWINS:
        cls = _jax_twin(_JAX_TWINS[name])
    else:
        raise AttributeError(f"module {MODULE!r} has no attribute {name!r}")
    globals()[name] = cls
    return cls
