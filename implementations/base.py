"""The common backend interface: validation in one place, compute in the subclasses.

A backend subclasses :class:`BackendBase` and implements the ``_forward``/``_vjp``/``_hidden_grads``
(and optionally ``_ctc``) hooks on validated NumPy inputs. The public methods check every argument
first, so every backend rejects bad input with the same message before computing anything.

For timing, ``prepare_forward``/``prepare_train`` return zero-argument callables that run one
forward (no gradient) or one forward+backward on data already converted to the backend's own
arrays and device, and return only after the device has finished (synchronised). The Timer calls
those; conversion from NumPy stays outside the timed region.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Tuple

import numpy as np

from harness.params import Grads, Params
from harness.spec import (CellSpec, State, check_hidden_cotangent, check_output_cotangent, check_sequence,
                          check_state)

ALGORITHMS = ("bptt", "rtrl", "tbptt")
DEVICES = ("cpu", "cuda")


def check_algorithm(algorithm: str, truncation, offered: Tuple[str, ...], backend: str) -> Optional[int]:
    """Validate ``algorithm``/``truncation``; raise ``NotImplementedError`` if ``backend`` lacks it."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: got {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    if algorithm == "tbptt":
        if truncation is None or isinstance(truncation, bool) or not isinstance(truncation, (int, np.integer)) \
                or truncation < 1:
            raise ValueError(f"truncation: got {truncation!r}; algorithm='tbptt' needs an integer k >= 1")
        truncation = int(truncation)
    elif truncation is not None:
        raise ValueError(f"truncation: got {truncation!r}; only meaningful with algorithm='tbptt'")
    if algorithm not in offered:
        raise NotImplementedError(f"backend {backend!r} does not offer algorithm={algorithm!r} "
                                  f"(it offers: {', '.join(offered)})")
    return truncation


def _state_dtypes(state) -> list:
    if state is None:
        return []
    if isinstance(state, tuple):
        return [s.dtype for s in state]
    return [state.dtype]


class BackendBase:
    """Base of every backend. Subclasses set ``family``, ``variant``, ``algorithms`` and the hooks."""

    family: str = "base"
    variant: str = "base"
    algorithms: Tuple[str, ...] = ("bptt",)
    devices: Tuple[str, ...] = ("cpu",)

    def __init__(self, device: str = "cpu", **options) -> None:
        if device not in DEVICES:
            raise ValueError(f"device: got {device!r}; allowed: {', '.join(DEVICES)}")
        if device not in self.devices:
            raise ValueError(f"device: backend {self.variant!r} runs on {', '.join(self.devices)}; got {device!r}")
        self.device = device
        self.options = options

    # -- identity -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.variant

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.variant} on {self.device}>"

    @classmethod
    def probe(cls, device: str) -> Tuple[bool, str]:
        """Whether this backend can run on ``device`` here, and if not, why. Never raises."""
        return (device == "cpu", "" if device == "cpu" else f"{cls.variant} runs on the CPU only")

    def versions(self) -> dict:
        """Package versions that matter for this backend's numbers."""
        return {"numpy": np.__version__}

    def set_threads(self, n: int) -> None:
        """Set the number of intra-op threads this backend uses (default: leave as is)."""

    def path(self) -> str:
        """Which code path runs (e.g. ``cudnn``, ``native``, ``scan``), for the records."""
        return self.variant

    # -- validation ---------------------------------------------------------------------------------
    def _check(self, spec: CellSpec, params: Params, x, state) -> Tuple[np.ndarray, Optional[State]]:
        if not isinstance(spec, CellSpec):
            raise TypeError(f"spec: got {type(spec).__name__}; expected harness.spec.CellSpec")
        if not isinstance(params, Params):
            raise TypeError(f"params: got {type(params).__name__}; expected harness.params.Params")
        params.validate(spec)
        x = check_sequence(spec, x)
        state = check_state(spec, state, x.shape[1])
        for what, dt in [("x", x.dtype)] + [("state", d) for d in _state_dtypes(state)]:
            if dt != params.dtype:
                raise TypeError(f"{what}: dtype {dt} differs from the parameters' {params.dtype}; "
                                "convert one of them (all arrays of a call share one dtype)")
        return x, state

    def _check_cotangents(self, spec: CellSpec, x: np.ndarray, dy, d_final_state):
        T, B, _ = x.shape
        if dy is not None:
            dy = check_output_cotangent(spec, dy, T, B)
        d_final_state = check_state(spec, d_final_state, B, name="d_final_state")
        for what, dt in ([("dy", dy.dtype)] if dy is not None else []) + \
                [("d_final_state", d) for d in _state_dtypes(d_final_state)]:
            if dt != x.dtype:
                raise TypeError(f"{what}: dtype {dt} differs from x's {x.dtype}")
        return dy, d_final_state

    # -- public interface ---------------------------------------------------------------------------
    def forward(self, spec: CellSpec, params: Params, x, state=None) -> Tuple[np.ndarray, State]:
        """Run the network. Returns ``(y (T, B, H), final_state)`` as NumPy arrays."""
        x, state = self._check(spec, params, x, state)
        return self._forward(spec, params, x, state)

    def vjp(self, spec: CellSpec, params: Params, x, state=None, dy=None, d_final_state=None,
            algorithm: str = "bptt", truncation: Optional[int] = None) -> Grads:
        """Vector-Jacobian product of L = Σ_t <dy_t, y_t> + <dh_T, h_T> (+ <dc_T, c_T>).

        ``dy`` ``(T, B, H)`` and ``d_final_state`` (a state) default to zeros. ``algorithm``:
        ``bptt``, ``rtrl`` (exact forward-mode) or ``tbptt`` with ``truncation=k``.
        """
        truncation = check_algorithm(algorithm, truncation, self.algorithms, self.variant)
        x, state = self._check(spec, params, x, state)
        dy, d_final_state = self._check_cotangents(spec, x, dy, d_final_state)
        return self._vjp(spec, params, x, state, dy, d_final_state, algorithm, truncation)

    def hidden_grads(self, spec: CellSpec, params: Params, x, dh_T, return_cell: bool = False):
        """∂L/∂h_t of the last layer for every t, with L = <dh_T, h_T> and a zero initial state.

        Returns ``(T, B, H)``; index ``T-1`` is h_T itself (equal to ``dh_T``). With ``return_cell``
        (LSTM only), returns ``(dh, dc)``.
        """
        x, _ = self._check(spec, params, x, None)
        dh_T = check_hidden_cotangent(spec, dh_T, x.shape[1])
        if dh_T.dtype != x.dtype:
            raise TypeError(f"dh_T: dtype {dh_T.dtype} differs from x's {x.dtype}")
        if return_cell and not spec.is_lstm:
            raise ValueError(f"return_cell: only an LSTM has a cell state; got cell={spec.cell!r}")
        return self._hidden_grads(spec, params, x, dh_T, return_cell)

    def ctc(self, logits, targets, input_lengths, target_lengths, blank: int = 0, zero_infinity: bool = False):
        """CTC loss per sequence ``(B,)`` and its gradient w.r.t. the unnormalised logits ``(T, B, C)``."""
        from implementations.ctc_checks import check_ctc_inputs  # light: NumPy only
        args = check_ctc_inputs(logits, targets, input_lengths, target_lengths, blank)
        return self._ctc(*args, blank=blank, zero_infinity=zero_infinity)

    # -- timing hooks -------------------------------------------------------------------------------
    def prepare_forward(self, spec: CellSpec, params: Params, x, state=None) -> Callable[[], object]:
        """A callable running one inference forward on pre-converted data (device-synchronised)."""
        x, state = self._check(spec, params, x, state)
        return self._prepare_forward(spec, params, x, state)

    def prepare_train(self, spec: CellSpec, params: Params, x, state=None, dy=None,
                      d_final_state=None) -> Callable[[], object]:
        """A callable running one forward+backward (all gradients) on pre-converted data."""
        x, state = self._check(spec, params, x, state)
        dy, d_final_state = self._check_cotangents(spec, x, dy, d_final_state)
        if dy is None:
            dy = np.zeros((x.shape[0], x.shape[1], spec.hidden_size), dtype=x.dtype)
        return self._prepare_train(spec, params, x, state, dy, d_final_state)

    # -- hooks for subclasses -----------------------------------------------------------------------
    def _forward(self, spec, params, x, state):
        raise NotImplementedError(f"backend {self.variant!r} has no forward")

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        raise NotImplementedError(f"backend {self.variant!r} has no vjp")

    def _hidden_grads(self, spec, params, x, dh_T, return_cell):
        raise NotImplementedError(f"backend {self.variant!r} has no hidden_grads")

    def _ctc(self, logits, targets, input_lengths, target_lengths, blank, zero_infinity):
        raise NotImplementedError(f"backend {self.variant!r} has no ctc")

    def _prepare_forward(self, spec, params, x, state):
        return lambda: self._forward(spec, params, x, state)

    def _prepare_train(self, spec, params, x, state, dy, d_final_state):
        return lambda: self._vjp(spec, params, x, state, dy, d_final_state, "bptt", None)


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
