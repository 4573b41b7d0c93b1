"""The linear RNN's NumPy step and its vector-Jacobian product (no registration here: importing has no side effects)."""


def linear_forward(lp, x_t, state):
    (h,) = state
    a = x_t @ lp.w_ih.T + h @ lp.w_hh.T
    if lp.b_ih is not None:
        a = a + lp.b_ih + lp.b_hh
    return (a,), None


def linear_backward(lp, x_t, state, cache, d_new):
    (h,) = state
    (da,) = d_new
    d = {"w_ih": da.T @ x_t, "w_hh": da.T @ h}
    if lp.b_ih is not None:
        d["b_ih"] = da.sum(axis=0)
        d["b_hh"] = d["b_ih"].copy()
    return d, da @ lp.w_ih, (da @ lp.w_hh,)
