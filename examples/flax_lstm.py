"""flax.linen's OptimizedLSTMCell as an rnnbench backend: `rnnbench check examples.flax_lstm:FlaxLSTM`."""
from functools import partial

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from harness.core import layouts
from harness.core.params import Grads
from implementations.base import BackendBase

jax.config.update("jax_enable_x64", True)  # float64 runs in float64 (the check compares to 1e-10)
LAYOUT = "flax.OptimizedLSTMCell"


@partial(jax.jit, static_argnums=0)
def run(hidden, layers, x, h0, c0):
    """Stacked flax cells over time: x (T, B, I) -> y (T, B, H), final (h, c) each (L, B, H)."""
    cell = nn.OptimizedLSTMCell(hidden, dtype=x.dtype, param_dtype=x.dtype)
    hs, cs = [], []
    for p, h, c in zip(layers, h0, c0):
        (c, h), x = jax.lax.scan(lambda carry, x_t, p=p: cell.apply({"params": p}, carry, x_t), (c, h), x)
        hs.append(h)
        cs.append(c)
    return x, (jnp.stack(hs), jnp.stack(cs))


class FlaxLSTM(BackendBase):
    family, variant, framework = "flax", "flax-lstm", "jax"
    cells, algorithms = ("lstm",), ("bptt",)

    def versions(self):
        return {"flax": flax.__version__, "jax": jax.__version__}

    def _inputs(self, spec, params, x, state):
        zeros = np.zeros(spec.state_shape(x.shape[1]), x.dtype)
        h0, c0 = state if state is not None else (zeros, zeros)
        return layouts.to_layout(LAYOUT, spec, params), x, h0, c0

    def _forward(self, spec, params, x, state):
        y, (h, c) = run(spec.hidden_size, *self._inputs(spec, params, x, state))
        return np.asarray(y), (np.asarray(h), np.asarray(c))

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        (y, final), pull = jax.vjp(partial(run, spec.hidden_size), *self._inputs(spec, params, x, state))
        dy = jnp.zeros_like(y) if dy is None else dy
        d_final = tuple(jnp.zeros_like(f) for f in final) if d_final_state is None else d_final_state
        d_layers, dx, dh0, dc0 = pull((dy, tuple(d_final)))
        return Grads(layouts.grad_from_layout(LAYOUT, spec, d_layers, dtype=x.dtype), np.asarray(dx),
                     (np.asarray(dh0), np.asarray(dc0)))

    # Timing: convert once (outside the timed region), then time only the computation on device arrays.
    def convert(self, spec, params, x, state=None, dy=None, d_final_state=None):
        args = jax.device_put(self._inputs(spec, params, x, state))
        return args, jnp.zeros(x.shape[:2] + (spec.hidden_size,), x.dtype) if dy is None else jnp.asarray(dy)

    def _forward_native(self, spec, native):
        return jax.block_until_ready(run(spec.hidden_size, *native[0]))

    def _train_native(self, spec, native):
        (y, final), pull = jax.vjp(partial(run, spec.hidden_size), *native[0])
        return jax.block_until_ready(pull((native[1], tuple(jnp.zeros_like(f) for f in final))))
