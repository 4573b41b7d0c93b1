"""The control workload: a fixed piece of CPU work that every timing on the CPU is paired with.

Timings of one case on a shared 2-core VM drift by up to about 1.5x between runs, between processes and in
spells of a second or two (the host's other tenants, frequency changes). A timing taken right next to a fixed
workload, and expressed in units of it, moves far less: both see the same spell. That is what lets
``rnnbench compare`` judge two runs made at different times (see ``docs/trust.md``).

The control is a small tanh RNN forward written here in NumPy (B=8, I=H=32, T=20, float32): small GEMMs,
elementwise maths and a Python loop, the same kinds of work as the cases it is paired with. It belongs to the
harness, not to any implementation, so that no change of the code under test changes it. Its identity
(:data:`CONTROL_ID`) is written into every row that uses it; change the workload and you must change the id
(two runs with different ids are not judged against each other's controls).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

CONTROL_ID = "numpy-tanh-rnn-B8-I32-H32-T20-float32/v1"
_B, _I, _H, _T = 8, 32, 32, 20
_SEED = 20261202


def make_control() -> Callable[[], np.ndarray]:
    """A zero-argument callable that runs the control workload once (returns the final state ``(B, H)``)."""
    rng = np.random.default_rng(_SEED)
    w = (rng.standard_normal((_I + _H, _H)) / np.sqrt(_I + _H)).astype(np.float32)
    b = np.zeros(_H, np.float32)
    x = rng.standard_normal((_T, _B, _I)).astype(np.float32)
    xh = np.empty((_B, _I + _H), np.float32)

    def control() -> np.ndarray:
        h = np.zeros((_B, _H), np.float32)
        for t in range(_T):
            xh[:, :_I] = x[t]
            xh[:, _I:] = h
            h = np.tanh(xh @ w + b)
        return h

    return control
