"""Deliberately broken variants of a plug-in (each a subtle bug someone could ship), for ``rnnbench check``:
each must be rejected with the wrong part named."""
from __future__ import annotations

import numpy as np

from harness.core.params import Grads, Params
from tests.plugins.acme_backend import AcmeRNN, SwappedGates  # noqa: F401 - SwappedGates: two gates swapped


def _blocks(spec, fn):
    """Params with ``fn(name, array)`` applied to every array of every layer."""
    return Params([type(lp)(**{n: (None if a is None else fn(n, a)) for n, a in
                               ((n, getattr(lp, n)) for n in ("w_ih", "w_hh", "b_ih", "b_hh"))})
                   for lp in spec])


class DroppedBias(AcmeRNN):
    """Forgets b_hh in the forward pass (a common slip when a library folds the two biases)."""

    def _forward(self, spec, params, x, state):
        return super()._forward(spec, _blocks(params.layers, lambda n, a: a * 0 if n == "b_hh" else a), x, state)


class TransposedWeight(AcmeRNN):
    """Uses each (H, H) gate block of w_hh transposed (the (H_in, H_out) vs (H_out, H_in) mix-up)."""

    def _forward(self, spec, params, x, state):
        H = spec.hidden_size

        def t(n, a):
            if n != "w_hh":
                return a
            return np.concatenate([a[g * H:(g + 1) * H].T for g in range(a.shape[0] // H)], axis=0)
        return super()._forward(spec, _blocks(params.layers, t), x, state)


class ForgetOffset(AcmeRNN):
    """Leaves a forget-gate bias of +1 in (Keras' unit_forget_bias, applied on top of the given biases)."""

    def _forward(self, spec, params, x, state):
        H = spec.hidden_size

        def off(n, a):
            if n == "b_ih" and spec.cell == "lstm":
                a = a.copy()
                a[H:2 * H] += 1.0
            return a
        return super()._forward(spec, _blocks(params.layers, off), x, state)


class OneBiasGradient(AcmeRNN):
    """Gives a folded bias's gradient to b_ih only (b_hh's gradient left at zero)."""

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        g = super()._vjp(spec, params, x, state, dy, d_final_state, algorithm, truncation)
        for lp in g.params.layers:
            if lp.b_hh is not None:
                lp.b_hh[...] = 0.0
        return g


class ShiftedHiddenGrads(AcmeRNN):
    """Returns ∂L/∂h_t one step off (the classic off-by-one between h_t and the state after step t)."""

    def _hidden_grads(self, spec, params, x, dh_T, return_cell):
        out = super()._hidden_grads(spec, params, x, dh_T, return_cell)
        shift = (lambda a: np.concatenate([a[1:], a[-1:]], axis=0))
        return tuple(shift(a) for a in out) if return_cell else shift(out)


class HalfPrecision(AcmeRNN):
    """Claims float32, computes the forward in float16."""

    def _forward(self, spec, params, x, state):
        if x.dtype != np.float32:
            return super()._forward(spec, params, x, state)
        lo = params.map(lambda a: a.astype(np.float16).astype(np.float32))
        y, f = super()._forward(spec, lo, x.astype(np.float16).astype(np.float32), state)
        return y.astype(np.float16).astype(np.float32), f


#: class name -> the parts ``rnnbench check`` must name (at least these fail; y first where the forward is wrong)
EXPECTED = {
    "SwappedGates": {"y"},
    "DroppedBias": {"y"},
    "TransposedWeight": {"y"},
    "ForgetOffset": {"y"},
    "OneBiasGradient": {"dl0.b_hh"},
    "ShiftedHiddenGrads": {"hidden_grads[h]"},
    "HalfPrecision": {"y"},
}
