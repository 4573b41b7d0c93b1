"""The scan cost model against counts taken from running the algorithms it describes."""
from __future__ import annotations

import numpy as np
import pytest

from harness.core.errors import InputError
from harness.core.scan_model import FORMS, scan_cost


def _odd_even(elems, counter):
    """lax.associative_scan's recursion on a list, counting combines (the structure the model counts)."""
    def comb(x, y):
        counter[0] += 1
        return (y[0] * x[0], y[0] * x[1] + y[1])
    n = len(elems)
    if n < 2:
        return list(elems)
    reduced = [comb(elems[i], elems[i + 1]) for i in range(0, n - 1, 2)]
    odd = _odd_even(reduced, counter)
    if n % 2 == 0:
        even = [comb(odd[i], elems[2 * i + 2]) for i in range(len(odd) - 1)]
    else:
        even = [comb(odd[i], elems[2 * i + 2]) for i in range(len(odd))]
    even = [elems[0]] + even
    out = []
    for i in range(n):
        out.append(even[i // 2] if i % 2 == 0 else odd[i // 2])
    return out


@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 13, 64, 100])
def test_odd_even_counts_the_combines_of_the_recursion_and_it_scans(T):
    rng = np.random.default_rng(T)
    a, u = rng.uniform(0.5, 1.0, T), rng.standard_normal(T)
    counter = [0]
    got = _odd_even(list(zip(a, u)), counter)
    h, want = 0.0, []
    for t in range(T):
        h = a[t] * h + u[t]
        want.append(h)
    np.testing.assert_allclose([g[1] for g in got], want, rtol=1e-12)  # the recursion is a scan
    assert scan_cost("odd-even", T, 1, 8)["flops"] == 3 * counter[0]


@pytest.mark.parametrize("T", [1, 2, 7, 64, 1000])
def test_hillis_steele_counts_its_rounds(T):
    c = scan_cost("hillis-steele", T, 3, 4)
    rounds = int(np.ceil(np.log2(T))) if T > 1 else 0
    assert c["depth"] == rounds
    assert c["flops"] == 3 * 3 * sum(T - 2 ** r for r in range(rounds))
    seq = scan_cost("sequential", T, 3, 4)
    assert seq["flops"] == 2 * T * 3 and seq["bytes"] == 3 * T * 3 * 4 and seq["depth"] == T
    if T >= 64:  # more work than the sequential form, by about (3/2)·log2 T
        assert c["flops"] > 1.2 * np.log2(T) * seq["flops"]


def test_bad_arguments_are_named():
    with pytest.raises(InputError, match="allowed: " + ", ".join(FORMS)):
        scan_cost("blelloch", 8, 1, 4)
    with pytest.raises(InputError, match=">= 1"):
        scan_cost("sequential", 0, 1, 4)
