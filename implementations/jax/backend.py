"""JAX backend: ``lax.scan`` over a fused-gate cell, jitted, with reverse-mode, forward-mode (RTRL) and
truncated gradients.

Per layer, the input projection of all T steps is one ``(T·B, I_l) x (I_l, G·H)`` matmul hoisted out of the
scan (except the CPU inference forward, where a per-step projection measured faster: see ``hoist``); each scan
step does one fused ``(B, H) x (H, G·H)`` matmul for all gates. Parameters stay in the
canonical PyTorch layout and gate order (LSTM i, f, g, o; GRU r, z, n) inside the traced function, so the
gradients JAX returns are canonical too — no conversion code, no permutation to get wrong.

Everything runs through ahead-of-time compiled executables (``jax.jit(...).lower(...).compile()``), cached on
the instance per (kind, spec, variant, device, options, argument shapes and dtypes): the public calls compile
on first use, and the timing hooks compile *before* returning their callable, so no timed call compiles.

Importing this module turns on ``jax_enable_x64`` (process-wide) so that float64 really is float64.
Matrix products use ``precision="highest"`` by default: on a GPU the default would be TF32 for float32
matmuls, which breaks the equivalence checks against the NumPy reference (on the CPU it changes nothing).
"""
from __future__ import annotations

import importlib.util
import math
import os
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from harness.core import cells as _cells
from harness.core.params import Grads, LayerParams, Params
from harness.core.spec import CellSpec
from implementations.base import BackendBase
from harness.core.errors import InputError, InputTypeError

# float64 must be real float64 (JAX silently downcasts to float32 otherwise). Must happen before any array
# is created, hence at import.
jax.config.update("jax_enable_x64", True)

PRECISIONS = {"highest": lax.Precision.HIGHEST, "high": lax.Precision.HIGH, "default": lax.Precision.DEFAULT}
_CUDA_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12")

# A params pytree: one dict per layer with the canonical arrays that exist (no bias keys for bias=False).
PTree = List[Dict[str, jax.Array]]


# ---------------------------------------------------------------------------------------------------------------
# The network, as pure functions of pytrees (traced under jit)
# ---------------------------------------------------------------------------------------------------------------
def _combine(left, right):
    """The associative operator of ``h = a ⊙ h_prev + u``: applying (a₁, u₁) then (a₂, u₂)."""
    a1, u1 = left
    a2, u2 = right
    return a2 * a1, a2 * u1 + u2


def _gated_linear_layer(cell: str, lp: Dict[str, jax.Array], x: jax.Array, h0: jax.Array, *, unroll: int,
                        precision, truncation=None, probe_h: Optional[jax.Array] = None, scan: str = "sequential"):
    """A gated linear layer (:attr:`harness.core.cells.CellDef.coefficients`): all gates from one input matmul,
    then ``h_t = a_t ⊙ h_{t−1} + u_t`` by ``lax.scan`` (sequential) or ``lax.associative_scan`` (parallel: the
    first element absorbs h0). A probe enters ``u_t``, i.e. the recurrence itself (total derivative)."""
    A = jnp.einsum("tbi,gi->tbg", x, lp["w_ih"], precision=precision)
    if "b_ih" in lp:
        A = A + lp["b_ih"]
    a, u, _ = _cells.get(cell).coefficients(A, lp, jnp)
    if probe_h is not None:
        u = u + probe_h
    if scan == "parallel":
        if truncation is not None:
            raise InputError("truncation: the parallel scan has no steps to cut between")
        u = u.at[0].add(a[0] * h0)
        a = a.at[0].set(jnp.zeros_like(a[0]))
        _, y = lax.associative_scan(_combine, (a, u))
        return y, y[-1], None

    def step(h, inp):
        a_t, u_t, t = inp
        if truncation is not None:
            h = jnp.where(jnp.logical_and(t % truncation == 0, t > 0), lax.stop_gradient(h), h)
        h = a_t * h + u_t
        return h, h

    ts = jnp.arange(x.shape[0])
    h_T, y = lax.scan(step, h0, (a, u, ts), unroll=unroll)
    return y, h_T, None


def _layer(cell: str, lp: Dict[str, jax.Array], x: jax.Array, h0: jax.Array, c0: Optional[jax.Array], *,
           unroll: int, precision, hoist: bool = True, truncation=None, probe_h: Optional[jax.Array] = None,
           probe_c: Optional[jax.Array] = None, scan: str = "sequential"):
    """One layer over the sequence. x ``(T, B, I_l)``, h0/c0 ``(B, H)``. Returns ``(y (T,B,H), h_T, c_T)``.

    ``hoist``: compute the input projection of all steps as one matmul before the scan (else one
    ``(B, I_l) x (I_l, G·H)`` matmul per step inside it).
    ``truncation=k`` (an int or a traced integer scalar): the carried state entering step t (t % k == 0,
    t > 0) is wrapped in ``stop_gradient``, which cuts the recurrent adjoint there exactly as ``numpy_rnn``
    does (the outputs h_t still get their own cotangent dy; the initial state keeps the first chunk's).
    ``probe_h``/``probe_c`` ``(T, B, H)``: zeros added to each new h_t / c_t, so that d(loss)/d(probe_t) is the
    total derivative with respect to h_t / c_t.
    """
    T = x.shape[0]
    H = h0.shape[-1]
    bias = "b_ih" in lp
    if cell in _cells.GATED_LINEAR_CELLS:
        return _gated_linear_layer(cell, lp, x, h0, unroll=unroll, precision=precision, truncation=truncation,
                                   probe_h=probe_h, scan=scan)
    # Hoisted input projection for all steps: one big matmul, no bias. The biases are added inside the step,
    # where they fuse into the gate arithmetic for free; a separate broadcast-add over the (T, B, G·H) result
    # was a full extra pass over it (measured: ~25 % of an LSTM forward on the CPU). The GRU keeps b_hh on the
    # recurrent side because r multiplies it: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    w_ih = lp["w_ih"]
    xw = jnp.einsum("tbi,gi->tbg", x, w_ih, precision=precision) if hoist else x
    b_x = None if not bias else (lp["b_ih"] if cell == "gru" else lp["b_ih"] + lp["b_hh"])
    b_hn = lp["b_hh"] if (bias and cell == "gru") else None
    w_hh = lp["w_hh"]  # (G·H, H): contracted on its dim 1 directly, no transposed copy
    lstm = cell == "lstm"

    def step(carry, inp):
        h, c = carry
        xw_t, t, dh_probe, dc_probe = inp
        if truncation is not None:
            cut = jnp.logical_and(t % truncation == 0, t > 0)
            h = jnp.where(cut, lax.stop_gradient(h), h)
            if lstm:
                c = jnp.where(cut, lax.stop_gradient(c), c)
        # the one fused recurrent matmul of the step: (B, H) x (H, G·H)
        hw = lax.dot_general(h, w_hh, (((1,), (1,)), ((), ())), precision=precision)
        if not hoist:  # xw_t is x_t here
            xw_t = lax.dot_general(xw_t, w_ih, (((1,), (1,)), ((), ())), precision=precision)
        if b_x is not None:
            xw_t = xw_t + b_x
        c_new = None
        if cell == "rnn_tanh":
            h_new = jnp.tanh(xw_t + hw)
        elif cell == "rnn_relu":
            h_new = jax.nn.relu(xw_t + hw)
        elif lstm:
            a = xw_t + hw
            i = jax.nn.sigmoid(a[:, :H])
            f = jax.nn.sigmoid(a[:, H:2 * H])
            g = jnp.tanh(a[:, 2 * H:3 * H])
            o = jax.nn.sigmoid(a[:, 3 * H:])
            c_new = f * c + i * g
            if dc_probe is not None:
                c_new = c_new + dc_probe
            h_new = o * jnp.tanh(c_new)
        else:  # gru
            if b_hn is not None:
                hw = hw + b_hn
            r = jax.nn.sigmoid(xw_t[:, :H] + hw[:, :H])
            z = jax.nn.sigmoid(xw_t[:, H:2 * H] + hw[:, H:2 * H])
            n = jnp.tanh(xw_t[:, 2 * H:] + r * hw[:, 2 * H:])
            h_new = (1 - z) * n + z * h
        if dh_probe is not None:
            h_new = h_new + dh_probe
        return (h_new, c_new), h_new

    ts = jnp.arange(T) if truncation is not None else None
    (h_T, c_T), y = lax.scan(step, (h0, c0 if lstm else None), (xw, ts, probe_h, probe_c), unroll=unroll)
    return y, h_T, c_T


def _network(cell: str, params: PTree, x: jax.Array, state, *, unroll: int, precision, hoist: bool = True,
             truncation=None, probe_h=None, probe_c=None, scan: str = "sequential"):
    """The stacked network. Returns ``(y (T,B,H), final_state)``; probes apply to the last layer."""
    lstm = cell == "lstm"
    h0s, c0s = state if lstm else (state, None)
    hs, cs = [], []
    inp = x
    last = len(params) - 1
    for l, lp in enumerate(params):
        inp, h_T, c_T = _layer(cell, lp, inp, h0s[l], c0s[l] if lstm else None, unroll=unroll,
                               precision=precision, hoist=hoist, truncation=truncation,
                               probe_h=probe_h if l == last else None, probe_c=probe_c if l == last else None,
                               scan=scan)
        hs.append(h_T)
        cs.append(c_T)
    final = (jnp.stack(hs), jnp.stack(cs)) if lstm else jnp.stack(hs)
    return inp, final


def _tree_dot(a, b):
    """Σ over all leaves of <a, b> (a scalar)."""
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _make_fns(cell: str, unroll: int, precision, rtrl_chunk: int = 256, hoist_forward: bool = True,
              hoist_grads: bool = True, scan: str = "sequential"):
    """The pure functions the backend compiles, closed over the static configuration.

    ``hoist_forward`` applies to the inference forward, ``hoist_grads`` to everything that differentiates;
    ``scan`` to the gated linear cells (``sequential`` or ``parallel``).
    """
    net = lambda p, x, s, **kw: _network(cell, p, x, s, unroll=unroll, precision=precision,  # noqa: E731
                                         hoist=hoist_grads, scan=scan, **kw)

    def forward(p, x, s):
        return _network(cell, p, x, s, unroll=unroll, precision=precision, hoist=hoist_forward, scan=scan)

    def vjp(p, x, s, dy, dfinal):
        _, pull = jax.vjp(lambda p_, x_, s_: net(p_, x_, s_), p, x, s)
        return pull((dy, dfinal))

    def tbptt(p, x, s, dy, dfinal, k):
        # k is a traced int32 scalar: one executable serves every truncation length of a shape.
        _, pull = jax.vjp(lambda p_, x_, s_: net(p_, x_, s_, truncation=k), p, x, s)
        return pull((dy, dfinal))

    def hidden_grads(p, x, dh_T):
        T, B, _ = x.shape
        L = len(p)
        H = dh_T.shape[-1]
        z = jnp.zeros((L, B, H), x.dtype)
        s = (z, z) if cell == "lstm" else z
        probes = (jnp.zeros((T, B, H), x.dtype),) * (2 if cell == "lstm" else 1)

        def loss(pr):
            _, final = net(p, x, s, probe_h=pr[0], probe_c=pr[1] if len(pr) > 1 else None)
            h_T = final[0] if cell == "lstm" else final
            return jnp.vdot(dh_T, h_T[-1])

        return jax.grad(loss)(probes)

    def rtrl(p, x, s, dy, dfinal):
        # Forward mode through the scan: each jvp carries the tangent of (h_t, c_t) along one direction in
        # parameter space through time — one column block of the RTRL influence matrix M_t = dh_t/dθ —
        # and contracts it with the cotangents as it goes. Directions are the unit vectors of the flat
        # parameter vector, rtrl_chunk at a time (vmap inside a chunk, lax.map across chunks) so that the
        # tangent memory stays bounded at rtrl_chunk × (T·B·G·H) whatever P is.
        flat, unravel = ravel_pytree(p)
        P = flat.shape[0]
        C = min(rtrl_chunk, P)
        n_chunks = math.ceil(P / C)

        def loss(theta):
            y, final = net(unravel(theta), x, s)
            return jnp.vdot(dy, y) + _tree_dot(dfinal, final)

        def chunk(start):
            basis = jax.nn.one_hot(start + jnp.arange(C), P, dtype=flat.dtype)  # rows past P are all zero
            return jax.vmap(lambda v: jax.jvp(loss, (flat,), (v,))[1])(basis)

        g = lax.map(chunk, jnp.arange(n_chunks) * C).reshape(-1)[:P]
        # dx and d(initial state) by reverse mode: forward mode would need one tangent per input entry
        # (T·B·I of them), which is impractical and not what RTRL is about (RTRL is the parameter gradient).
        _, pull = jax.vjp(lambda x_, s_: net(p, x_, s_), x, s)
        dx, ds = pull((dy, dfinal))
        return unravel(g), dx, ds

    return {"forward": forward, "vjp": vjp, "tbptt": tbptt, "hidden_grads": hidden_grads, "rtrl": rtrl}


# ---------------------------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------------------------
def _cuda_plugin_installed() -> bool:
    """Whether a CUDA build of jaxlib (a ``jax_cuda*_plugin``) is installed, without importing it."""
    for name in _CUDA_PLUGINS:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def _jax_device(device: str):
    """The JAX device for ``"cpu"`` or ``"cuda"`` (the first GPU). Raises RuntimeError when there is none."""
    if device == "cuda":
        gpus = jax.devices("gpu")  # RuntimeError when no GPU backend is present
        if not gpus:
            raise RuntimeError("jax.devices('gpu') is empty")
        return gpus[0]
    return jax.devices("cpu")[0]


def _no_gpu_reason(err: Optional[BaseException]) -> str:
    if not _cuda_plugin_installed():
        return "no GPU visible to JAX: jaxlib is the CPU build (install 'jax[cuda12]' for CUDA)"
    return f"no GPU visible to JAX: {type(err).__name__}: {err}" if err else "no GPU visible to JAX"


# ---------------------------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------------------------
class JaxBackend(BackendBase):
    """RNN/LSTM/GRU as ``lax.scan`` in JAX (XLA), float32/float64, on the CPU or a CUDA GPU.

    Options:
        unroll: steps per scan iteration (``lax.scan(unroll=...)``); ``variant`` is ``jax`` for 1 and
            ``jax-unroll{n}`` otherwise.
        precision: matmul precision, ``highest`` (default: true float32 on GPUs, no TF32), ``high`` or ``default``.
        rtrl_chunk: parameter directions pushed forward together by ``algorithm="rtrl"`` (memory bound).
        hoist: whether the input projection of all steps is one matmul before the scan. ``None`` (default):
            always for gradients; for the inference forward on a GPU only. Measured on the CPU (XLA:CPU, LSTM
            B=64, T=100, I=H=256, float32): the per-step (B, I)x(I, 4H) matmul already runs as fast per FLOP as
            the big one, and the hoisted (T, B, 4H) intermediate costs an extra trip through memory, so the
            hoisted forward was ~25 % slower there (per-step: on par with flax's OptimizedLSTMCell); with
            gradients, hoisting wins (dx and dW_ih become two big matmuls after the scan).
    """

    family = "jax"
    framework = "jax"
    variant = "jax"
    algorithms = ("bptt", "rtrl", "tbptt")
    devices = ("cpu", "cuda")
    cells = ("rnn_tanh", "rnn_relu", "lstm", "gru") + _cells.GATED_LINEAR_CELLS
    SCANS = ("sequential", "parallel")

    def __init__(self, device: str = "cpu", unroll: int = 1, precision: str = "highest", rtrl_chunk: int = 256,
                 hoist: Optional[bool] = None, scan: str = "sequential", **options) -> None:
        if isinstance(unroll, bool) or not isinstance(unroll, (int, np.integer)) or unroll < 1:
            raise InputError(f"unroll: got {unroll!r}; allowed: an integer >= 1")
        if precision not in PRECISIONS:
            raise InputError(f"precision: got {precision!r}; allowed: {', '.join(PRECISIONS)}")
        if isinstance(rtrl_chunk, bool) or not isinstance(rtrl_chunk, (int, np.integer)) or rtrl_chunk < 1:
            raise InputError(f"rtrl_chunk: got {rtrl_chunk!r}; allowed: an integer >= 1")
        if hoist is not None and not isinstance(hoist, (bool, np.bool_)):
            raise InputTypeError(f"hoist: got {hoist!r}; allowed: None (automatic), True or False")
        if scan not in self.SCANS:
            raise InputError(f"scan: got {scan!r}; allowed: {', '.join(self.SCANS)}")
        self.unroll = int(unroll)
        self.precision = precision
        self.rtrl_chunk = int(rtrl_chunk)
        self.scan = scan
        self.variant = "jax" if self.unroll == 1 else f"jax-unroll{self.unroll}"
        if scan == "parallel":  # lax.associative_scan: only a gated linear recurrence is a scan
            self.variant += "-pscan"
            self.cells = _cells.GATED_LINEAR_CELLS
            self.algorithms = ("bptt", "rtrl")
            self.scan_form = "odd-even"
        # An unrolled scan compiles for long: timed on the anchor shapes; CTC and memory are the scan's.
        self.sweep = "full" if self.unroll == 1 else "anchors"
        if scan == "parallel":
            self.sweep = "gated-linear"
        super().__init__(device=device, unroll=self.unroll, precision=precision, rtrl_chunk=self.rtrl_chunk,
                         hoist=hoist, scan=scan, **options)
        self.hoist_forward = bool(hoist) if hoist is not None else device == "cuda"
        self.hoist_grads = bool(hoist) if hoist is not None else True
        self._jdev = None  # resolved lazily, so that set_threads can still act before JAX starts its backends
        self._cache: Dict[tuple, Callable] = {}
        self._fns: Dict[tuple, dict] = {}
        #: how many executables this instance compiled (tests use it to check caching)
        self.compile_count = 0
        self.threads_note = "XLA default (one intra-op thread per core)"

    # -- identity and environment ------------------------------------------------------------------
    @classmethod
    def probe(cls, device: str) -> Tuple[bool, str]:
        if device == "cpu":
            return True, ""
        if device != "cuda":
            return False, f"unknown device {device!r}"
        try:
            _jax_device("cuda")
        except Exception as e:  # RuntimeError "Unknown backend: 'gpu'..." on a CPU-only jaxlib
            return False, _no_gpu_reason(e)
        return True, ""

    @property
    def jax_device(self):
        """The ``jax.Device`` this backend places its arrays on (looked up on first use)."""
        if self._jdev is None:
            try:
                self._jdev = _jax_device(self.device)
            except RuntimeError as e:
                raise RuntimeError(f"device={self.device!r}: {_no_gpu_reason(e)}") from None
        return self._jdev

    def path(self) -> str:
        if self.scan == "parallel":
            return "lax.associative_scan"
        return "lax.scan" if self.unroll == 1 else f"lax.scan(unroll={self.unroll})"

    def versions(self) -> dict:
        import jaxlib
        v = {"numpy": np.__version__, "jax": jax.__version__, "jaxlib": getattr(jaxlib, "__version__", "?")}
        try:
            from importlib.metadata import version
            v["optax"] = version("optax")
        except Exception:
            pass
        try:
            v["device_kind"] = self.jax_device.device_kind
            v["platform"] = self.jax_device.platform
        except Exception as e:  # versions() must not fail because a device went away
            v["device_kind"] = f"unavailable ({e})"
        v["matmul_precision"] = self.precision
        v["input_projection"] = (f"forward: {'hoisted' if self.hoist_forward else 'per step'}, "
                                 f"gradients: {'hoisted' if self.hoist_grads else 'per step'}")
        v["threads"] = self.threads_note
        return v

    def set_threads(self, n: int) -> None:
        """Best effort: limit XLA's CPU intra-op thread pool to ``n`` threads.

        What can be controlled: the XLA CPU client sizes its intra-op pool from the environment variable
        ``PJRT_NPROC`` when the client is created, and ``--xla_cpu_multi_thread_eigen=false`` (in
        ``XLA_FLAGS``, read at the same moment) keeps Eigen's matmul/conv kernels single-threaded; both are set
        here for ``n == 1`` (only ``PJRT_NPROC`` for ``n > 1``). What cannot: once JAX has created its backends
        in this process (any array, device query or compile — by this or any other code), neither is read
        again, and there is no run-time knob; then this only records (``threads_note``, shown in
        ``versions()``) and warns that the setting did not apply. Run thread sweeps in fresh processes.
        GPU execution is unaffected.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"n: got {n!r}; allowed: an integer >= 1")
        n = int(n)
        from jax._src import xla_bridge
        if xla_bridge.backends_are_initialized():
            eigen_off = "--xla_cpu_multi_thread_eigen=false" in os.environ.get("XLA_FLAGS", "").split()
            if os.environ.get("PJRT_NPROC") == str(n) and eigen_off == (n == 1):
                # Already what JAX started with (a second JAX backend in the same worker): nothing to warn about.
                self.threads_note = f"PJRT_NPROC={n}" + (", eigen single-threaded" if n == 1 else "")
                return
            self.threads_note = (f"requested {n}, not applied: JAX backends were already initialised "
                                 f"(PJRT_NPROC={os.environ.get('PJRT_NPROC', 'unset')})")
            warnings.warn(f"JaxBackend.set_threads({n}): {self.threads_note}; set threads in a fresh process "
                          "before JAX starts", RuntimeWarning, stacklevel=2)
            return
        os.environ["PJRT_NPROC"] = str(n)
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_cpu_multi_thread_eigen")]
        if n == 1:
            flags.append("--xla_cpu_multi_thread_eigen=false")
        os.environ["XLA_FLAGS"] = " ".join(flags)
        self.threads_note = f"PJRT_NPROC={n}" + (", eigen single-threaded" if n == 1 else "")

    # -- conversion ---------------------------------------------------------------------------------
    def _put(self, a):
        return None if a is None else jax.device_put(np.ascontiguousarray(a), self.jax_device)

    def _put_params(self, params: Params) -> PTree:
        return [{n: self._put(a) for n, a in lp.items()} for lp in params.layers]

    def _put_state(self, spec: CellSpec, state, B: int, dtype):
        if state is None:
            z = np.zeros(spec.state_shape(B), dtype=dtype)
            state = (z, z) if spec.is_lstm else z
        return tuple(self._put(s) for s in state) if spec.is_lstm else self._put(state)

    @staticmethod
    def _to_params(tree) -> Params:
        return Params([LayerParams(**{n: np.array(a) for n, a in lp.items()}) for lp in tree])

    @staticmethod
    def _to_state(s):
        return tuple(np.array(a) for a in s) if isinstance(s, (tuple, list)) else np.array(s)

    # -- compilation cache --------------------------------------------------------------------------
    def _compiled(self, kind: str, spec: CellSpec, args: tuple) -> Callable:
        """The compiled executable of ``kind`` for these arguments' shapes/dtypes (compiled at most once)."""
        sig = tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree_util.tree_leaves(args))
        treedef = jax.tree_util.tree_structure(args)
        key = (kind, spec, self.variant, self.device, self.precision, self.hoist_forward, self.hoist_grads,
               self.rtrl_chunk if kind == "rtrl" else None, str(treedef), sig)
        exe = self._cache.get(key)
        if exe is None:
            if spec.cell not in self._fns:
                self._fns[spec.cell] = _make_fns(spec.cell, self.unroll, PRECISIONS[self.precision],
                                                 self.rtrl_chunk, self.hoist_forward, self.hoist_grads, self.scan)
            exe = jax.jit(self._fns[spec.cell][kind]).lower(*args).compile()
            self._cache[key] = exe
            self.compile_count += 1
        return exe

    def _forward_args(self, spec, params, x, state):
        return (self._put_params(params), self._put(x), self._put_state(spec, state, x.shape[1], x.dtype))

    def _vjp_args(self, spec, params, x, state, dy, d_final_state):
        T, B, _ = x.shape
        if dy is None:
            dy = np.zeros((T, B, spec.hidden_size), dtype=x.dtype)
        return self._forward_args(spec, params, x, state) + (
            self._put(dy), self._put_state(spec, d_final_state, B, x.dtype))

    # -- hooks --------------------------------------------------------------------------------------
    def _forward(self, spec, params, x, state):
        args = self._forward_args(spec, params, x, state)
        y, final = self._compiled("forward", spec, args)(*args)
        return np.array(y), self._to_state(final)

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        args = self._vjp_args(spec, params, x, state, dy, d_final_state)
        kind = "rtrl" if algorithm == "rtrl" else "vjp"
        if algorithm == "tbptt" and truncation < x.shape[0]:
            # k >= T never cuts (a cut needs 0 < t < T with t % k == 0), so that case is plain BPTT.
            kind = "tbptt"
            args = args + (jax.device_put(np.int32(truncation), self.jax_device),)
        dp, dx, ds = self._compiled(kind, spec, args)(*args)
        extra = {"algorithm": algorithm}
        if truncation is not None:
            extra["truncation"] = truncation
        if algorithm == "rtrl":
            extra["mode"] = f"forward (jax.jvp through {self.path()}) for params; reverse for dx, dstate"
        return Grads(params=self._to_params(dp), dx=np.array(dx), dstate=self._to_state(ds), extra=extra)

    def _hidden_grads(self, spec, params, x, dh_T, return_cell):
        args = (self._put_params(params), self._put(x), self._put(dh_T))
        g = self._compiled("hidden_grads", spec, args)(*args)
        if return_cell:
            return np.array(g[0]), np.array(g[1])
        return np.array(g[0])

    def _ctc(self, logits, targets, input_lengths, target_lengths, blank, zero_infinity):
        from implementations.jax import ctc as jax_ctc  # written separately; imported only when CTC is asked for
        # Inputs were validated by BackendBase.ctc already (check=False skips a second pass).
        return jax_ctc.ctc(logits, targets, input_lengths, target_lengths, blank=blank, zero_infinity=zero_infinity,
                           device=self.device, check=False)

    def measured_as(self, what: str) -> str:
        # Unrolling changes the schedule, not what CTC computes or what the scan stores; the parallel scan's CTC is
        # jax's (its memory is its own).
        if what == "ctc" and self.scan == "parallel":
            return "jax"
        return "jax" if what in ("ctc", "memory") and self.unroll != 1 else self.name

    def _prepare_ctc(self, logits, targets, input_lengths, target_lengths, blank):
        from implementations.jax import ctc as jax_ctc
        return jax_ctc.prepare(logits, targets, input_lengths, target_lengths, blank, device=self.device)

    def ctc_path(self) -> str:
        return f"optax-{self.device}"

    def ctc_native_report(self, logits, targets, input_lengths, target_lengths, blank=0) -> list:
        """optax's own ``ctc_loss`` before normalisation: its finite stand-in for an impossible alignment, the
        gradient it gives such items, and the gradient on padded frames."""
        from implementations.ctc_checks import check_ctc_inputs, feasible
        from implementations.jax import ctc as jax_ctc
        x, tg, il, tl = check_ctc_inputs(logits, targets, input_lengths, target_lengths, blank)
        bad = np.flatnonzero(~feasible(tg, il, tl))
        loss, grad, info = jax_ctc.ctc_native(x, tg, il, tl, blank, device=self.device)
        return [
            ("native_impossible_loss", float(loss[bad[0]]) if bad.size else float("nan"), "nats",
             {"path": info["path"], "note": f"optax's finite stand-in (log_epsilon={info['log_epsilon']:g}) "
                                            "for an impossible alignment (harness: inf)"}),
            ("native_impossible_grad_max", float(np.abs(grad[:, bad]).max(initial=0.0)), "abs",
             {"path": info["path"], "note": "max |grad| optax gives impossible items (harness: 0)"}),
            ("native_padded_grad_max", info["padded_grad_max"], "abs",
             {"path": info["path"], "note": "max |grad| on padded frames (harness: exactly 0)"}),
        ]

    def peak_memory(self, spec, params, x, dy, d_final_state, algorithm="bptt", truncation=None, **options) -> dict:
        """GPU: ``peak_bytes_in_use`` around one compiled gradient; CPU: the compiled executable's
        ``memory_analysis()`` (temp + output + argument sizes) — XLA's estimate, nothing is measured."""
        from harness.core.errors import Unsupported
        self._check(spec, params, x, None)
        self.check_supported(spec, x.dtype, algorithm)
        T = x.shape[0]
        kind = "rtrl" if algorithm == "rtrl" else ("tbptt" if algorithm == "tbptt" and truncation < T else "vjp")
        args = self._vjp_args(spec, params, x, None, dy, d_final_state)
        if kind == "tbptt":
            args = args + (jax.device_put(np.int32(truncation), self.jax_device),)
        exe = self._compiled(kind, spec, args)
        out = {"scope": f"compiled {kind} (params+dx+dstate)"}
        if self.device == "cuda":
            dev = self.jax_device
            jax.block_until_ready(args)
            base = dev.memory_stats().get("bytes_in_use", 0)
            jax.block_until_ready(exe(*args))
            out.update(peak_bytes=int(dev.memory_stats()["peak_bytes_in_use"] - base), method="jax_peak_bytes")
            return out
        ma = exe.memory_analysis()
        if ma is None:
            raise Unsupported("memory_analysis() is not available for this executable")
        parts = {n: int(getattr(ma, f"{n}_size_in_bytes", 0) or 0) for n in ("temp", "output", "argument")}
        out.update(peak_bytes=sum(parts.values()), method="xla_memory_analysis", estimate=True,
                   **{f"{n}_bytes": v for n, v in parts.items()})
        return out

    def _prepare(self, kind, spec, args) -> Callable[[], object]:
        exe = self._compiled(kind, spec, args)
        jax.block_until_ready(exe(*args))  # first run outside the timed region (allocations, thread pools)

        def run():
            return jax.block_until_ready(exe(*args))
        return run

    def _prepare_forward(self, spec, params, x, state):
        return self._prepare("forward", spec, self._forward_args(spec, params, x, state))

    def _prepare_train(self, spec, params, x, state, dy, d_final_state):
        return self._prepare("vjp", spec, self._vjp_args(spec, params, x, state, dy, d_final_state))
