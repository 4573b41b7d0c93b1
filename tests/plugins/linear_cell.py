"""A test-only cell, defined entirely outside harness/ and suites/: the linear RNN
``h' = W_ih x + b_ih + W_hh h + b_hh`` (identity activation), with its NumPy step.

Importing this module registers both; worker processes import it through ``RNNBENCH_PLUGINS=tests.plugins.linear_cell``.
This file is all it takes to add a cell that the NumPy backend runs through every suite.
"""
from __future__ import annotations

import numpy as np

from harness.core import cells
from implementations.numpy import steps
from tests.plugins.linear_steps import linear_backward, linear_forward

CELL = cells.register(cells.CellDef("linear_rnn", ("h",), activation="identity",
                                    description="linear RNN (identity activation), a test-only plug-in cell"))


steps.register("linear_rnn", steps.NumpyStep(linear_forward, linear_backward), replace=True)


def tanh_step() -> steps.NumpyStep:
    """The tanh RNN as a generic step: the engine run on it must match the fused reference exactly."""
    def fwd(lp, x_t, state):
        (h,) = state
        a = x_t @ lp.w_ih.T + h @ lp.w_hh.T
        if lp.b_ih is not None:
            a = a + lp.b_ih + lp.b_hh
        h2 = np.tanh(a)
        return (h2,), h2

    def bwd(lp, x_t, state, h2, d_new):
        (h,) = state
        da = d_new[0] * (1.0 - h2 * h2)
        d = {"w_ih": da.T @ x_t, "w_hh": da.T @ h}
        if lp.b_ih is not None:
            d["b_ih"] = da.sum(axis=0)
            d["b_hh"] = d["b_ih"].copy()
        return d, da @ lp.w_ih, (da @ lp.w_hh,)
    return steps.NumpyStep(fwd, bwd)


def lstm_step() -> steps.NumpyStep:
    """The LSTM (gates i, f, g, o; state (h, c)) as a generic step, to check the engine's two-part states."""
    def sig(a):
        return 0.5 * (1.0 + np.tanh(0.5 * a))

    def fwd(lp, x_t, state):
        h, c = state
        H = h.shape[1]
        a = x_t @ lp.w_ih.T + h @ lp.w_hh.T
        if lp.b_ih is not None:
            a = a + lp.b_ih + lp.b_hh
        i, f, g, o = sig(a[:, :H]), sig(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), sig(a[:, 3 * H:])
        c2 = f * c + i * g
        tc = np.tanh(c2)
        return (o * tc, c2), (i, f, g, o, c, tc)

    def bwd(lp, x_t, state, cache, d_new):
        h, _ = state
        i, f, g, o, c, tc = cache
        dh, dc = d_new
        dc = dc + dh * o * (1.0 - tc * tc)
        da = np.concatenate([dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g),
                             dh * tc * o * (1 - o)], axis=1)
        d = {"w_ih": da.T @ x_t, "w_hh": da.T @ h}
        if lp.b_ih is not None:
            d["b_ih"] = da.sum(axis=0)
            d["b_hh"] = d["b_ih"].copy()
        return d, da @ lp.w_ih, (da @ lp.w_hh, dc * f)
    return steps.NumpyStep(fwd, bwd)
