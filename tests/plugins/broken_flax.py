"""The flax example broken on purpose, one slip each, at the level where it happens in real code (the flax
parameter tree, the gradient conversion): ``rnnbench check`` must catch each and name the wrong part."""
from __future__ import annotations

import numpy as np

from harness.core.params import Grads

flax_lstm = __import__("examples.flax_lstm", fromlist=["FlaxLSTM"])


class _Edit(flax_lstm.FlaxLSTM):
    def edit(self, layer: dict, H: int) -> dict:
        return layer

    def _inputs(self, spec, params, x, state):
        layers, x, h0, c0 = super()._inputs(spec, params, x, state)
        return [self.edit({k: dict(v) for k, v in lay.items()}, spec.hidden_size) for lay in layers], x, h0, c0


class SwappedGates(_Edit):
    """The input and forget gates' kernels swapped (a mis-ordered split of a fused kernel)."""

    def edit(self, lay, H):
        lay["ii"], lay["if"] = lay["if"], lay["ii"]
        lay["hi"], lay["hf"] = lay["hf"], lay["hi"]
        return lay


class TransposedWeight(_Edit):
    """Each recurrent kernel transposed ((H_in, H_out) read as (H_out, H_in))."""

    def edit(self, lay, H):
        for g in ("hi", "hf", "hg", "ho"):
            lay[g]["kernel"] = np.ascontiguousarray(lay[g]["kernel"].T)
        return lay


class ForgetOffset(_Edit):
    """A forget-gate bias of +1 left in on top of the converted one (Keras' unit_forget_bias habit)."""

    def edit(self, lay, H):
        lay["hf"]["bias"] = lay["hf"]["bias"] + 1.0
        return lay


class OneBiasGradient(flax_lstm.FlaxLSTM):
    """The folded bias's gradient handed to b_ih only."""

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        g = super()._vjp(spec, params, x, state, dy, d_final_state, algorithm, truncation)
        for lp in g.params.layers:
            if lp.b_hh is not None:
                lp.b_hh[...] = 0.0
        return Grads(g.params, g.dx, g.dstate)


class LowPrecision(flax_lstm.FlaxLSTM):
    """Claims float32, computes it in bfloat16-like precision (inputs and weights rounded to float16)."""

    def _inputs(self, spec, params, x, state):
        if x.dtype == np.float32:
            params = params.map(lambda a: a.astype(np.float16).astype(np.float32))
            x = x.astype(np.float16).astype(np.float32)
        return super()._inputs(spec, params, x, state)


EXPECTED = {"SwappedGates": {"y", "h_T", "c_T"}, "TransposedWeight": {"y"}, "ForgetOffset": {"y", "c_T"},
            "OneBiasGradient": {"dl0.b_hh", "dl1.b_hh"}, "LowPrecision": {"y"}}
