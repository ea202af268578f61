"""quantlib.portfolio.caps: the one place caps are floored, the cap projection and cluster labels."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlib.core.errors import OptimizationError
from quantlib.portfolio.caps import apply_caps, apply_caps_array, cluster_labels, effective_caps, waterfill


def test_effective_caps_floor_the_atom_cap_at_one_over_n():
    assert effective_caps(10, None, 1.0, 0.01) == (0.1, 1.0)
    assert effective_caps(3, None, 1.0, 0.25) == (1 / 3, 1.0)
    assert effective_caps(40, None, 1.0, 0.25) == (0.25, 1.0)     # above the floor: unchanged
    assert effective_caps(1, None, 1.0, 0.25) == (1.0, 1.0)
    assert effective_caps(5, None, 1.0, 2.0) == (1.0, 1.0)        # never above 1


def test_effective_caps_floor_the_cluster_cap_at_one_over_n_clusters():
    # 20 atoms in 5 clusters of 4, atom cap 0.25 (each cluster can hold 1.0): only the 1/5 floor binds
    sizes = np.full(5, 4)
    assert effective_caps(20, sizes, 0.15, 0.25) == (0.25, 0.2)    # CRISIS 0.15 -> 1/5
    assert effective_caps(20, sizes, 0.3, 0.25) == (0.25, 0.3)
    # no clusters, or a single cluster: no cluster cap
    assert effective_caps(20, None, 0.15, 0.25)[1] == 1.0
    assert effective_caps(20, np.array([20]), 0.15, 0.25)[1] == 1.0


def test_effective_caps_raise_the_cluster_cap_until_the_caps_add_up_to_one():
    # 3 clusters, one a single atom capped at 0.25: 0.25 + 2c >= 1 needs c >= 0.375 > 1/3
    u, c = effective_caps(12, np.array([6, 5, 1]), 0.2, 0.25)
    assert u == 0.25 and c == pytest.approx(0.375, abs=1e-15)
    assert np.minimum(c, np.array([6, 5, 1]) * u).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n, sizes, cluster_cap, atom_cap", [
    (10, None, 1.0, 0.01), (12, [6, 5, 1], 0.2, 0.25), (20, [4] * 5, 0.15, 0.25), (30, [8, 3, 9, 3, 1, 6], 0.08, 0.05),
    (23, [3, 2] + [1] * 18, 0.01, 0.01), (7, [7], 0.1, 0.1),
])
def test_effective_caps_are_idempotent(n, sizes, cluster_cap, atom_cap):
    """Floored caps fed back in come out bit-identical: a caller that floors first (or an older
    regime.json holding floored caps) gets the same caps, hence the same weights."""
    sizes = None if sizes is None else np.array(sizes)
    u, c = effective_caps(n, sizes, cluster_cap, atom_cap)
    assert effective_caps(n, sizes, c, u) == (u, c)
    floored_first = (max(cluster_cap, 1 / len(sizes)) if sizes is not None else cluster_cap, max(atom_cap, 1 / n))
    assert effective_caps(n, sizes, *floored_first) == (u, c)


def test_waterfill_clips_and_redistributes_proportionally():
    out = waterfill(np.array([0.5, 0.3, 0.2]), np.full(3, 0.4))
    np.testing.assert_allclose(out, [0.4, 0.36, 0.24], atol=1e-15)
    v = np.array([0.2, 0.3, 0.5])
    assert np.array_equal(waterfill(v, np.full(3, 0.5)), v)          # feasible: unchanged


def test_apply_caps_array_is_apply_caps_on_arrays():
    rng = np.random.default_rng(5)
    atoms = [f"a{i}" for i in range(15)]
    w = pd.Series(rng.dirichlet(np.full(15, 0.3)), index=atoms)
    cl = pd.Series(np.arange(15) % 4, index=atoms)
    labels, sizes = cluster_labels(pd.Index(atoms), cl, "test")
    u, c = effective_caps(15, sizes, 0.3, 0.1)
    assert np.array_equal(apply_caps(w, cl, 0.3, 0.1).to_numpy(), apply_caps_array(w.to_numpy(), labels, u, c))


def test_cluster_labels_codes_sizes_and_errors():
    atoms = pd.Index(["x", "y", "z", "w"])
    labels, sizes = cluster_labels(atoms, pd.Series({"w": 7, "x": 3, "y": 7, "z": 3}), "t")
    assert labels.tolist() == [0, 1, 0, 1] and sizes.tolist() == [2, 2]
    assert cluster_labels(atoms, None, "t") == (None, None)
    with pytest.raises(OptimizationError, match=r"t: atoms \['w'\] have no cluster id"):
        cluster_labels(atoms, pd.Series({"x": 1, "y": 1, "z": 2}), "t")
    with pytest.raises(OptimizationError, match="more than once"):
        cluster_labels(atoms, pd.Series([1, 1, 2, 2, 3], index=["x", "y", "z", "w", "x"]), "t")
