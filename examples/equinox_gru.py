"""equinox's GRUCell as an rnnbench backend: `rnnbench check examples.equinox_gru:EquinoxGRU`."""
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from harness.core import layouts
from harness.core.params import Grads
from implementations.base import BackendBase

jax.config.update("jax_enable_x64", True)  # float64 runs in float64 (the check compares to 1e-10)
LAYOUT = "equinox.GRUCell"


@jax.jit
def run(layers, x, h0):
    """Stacked equinox cells over time (vmapped over the batch): x (T, B, I) -> y (T, B, H), final (L, B, H)."""
    finals = []
    for p, h in zip(layers, h0):
        I, H = p["weight_ih"].shape[1], p["weight_hh"].shape[1]
        cell = eqx.nn.GRUCell(I, H, dtype=x.dtype, key=jax.random.PRNGKey(0))
        # bias=False (the layout gives None): zero biases; equinox 0.13's use_bias=False cell adds a None bias_n
        b = jnp.zeros(3 * H, x.dtype) if p["bias"] is None else p["bias"]
        b_n = jnp.zeros(H, x.dtype) if p["bias_n"] is None else p["bias_n"]
        cell = eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias, c.bias_n), cell,
                           (p["weight_ih"], p["weight_hh"], b, b_n))
        h, x = jax.lax.scan(lambda h, x_t: (jax.vmap(cell)(x_t, h),) * 2, h, x)
        finals.append(h)
    return x, jnp.stack(finals)


class EquinoxGRU(BackendBase):
    family, variant, framework = "equinox", "equinox-gru", "jax"
    cells, algorithms = ("gru",), ("bptt",)

    def versions(self):
        return {"equinox": eqx.__version__, "jax": jax.__version__}

    def _inputs(self, spec, params, x, state):
        h0 = np.zeros(spec.state_shape(x.shape[1]), x.dtype) if state is None else state
        return layouts.to_layout(LAYOUT, spec, params), x, h0

    def _forward(self, spec, params, x, state):
        y, h = run(*self._inputs(spec, params, x, state))
        return np.asarray(y), np.asarray(h)

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        (y, h), pull = jax.vjp(run, *self._inputs(spec, params, x, state))
        d_layers, dx, dh0 = pull((jnp.zeros_like(y) if dy is None else dy,
                                  jnp.zeros_like(h) if d_final_state is None else d_final_state))
        return Grads(layouts.grad_from_layout(LAYOUT, spec, d_layers, dtype=x.dtype), np.asarray(dx), np.asarray(dh0))
