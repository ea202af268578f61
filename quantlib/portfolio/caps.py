"""Atom and cluster weight caps: the floors that keep them feasible, and the one cap projection.

Effective caps (`effective_caps`, the only place where caps are floored -- the optimizer, both
engines, the sleeve window and the recorded `optimization.json` all take them from here): the
per-atom cap is raised to 1/n if lower; the cluster cap to 1/n_clusters if lower, and further, if
needed, to the smallest value for which sum_c min(cap, n_c * atom_cap) >= 1, so the capped problem
is always feasible. Without clusters the cluster cap is 1.

How the optimizer uses them:
- For `min_variance` and `max_sharpe` the caps are constraints of the optimization
  (0 <= w_i <= atom_cap, sum over a cluster <= cluster_cap).
- For `hrp`, `risk_parity` and `equal_weight` the weights are computed unconstrained and then passed
  through ONE deterministic projection `apply_caps` shared by both engines: first the cluster totals
  are clipped to min(cluster_cap, n_c * atom_cap) and the excess is redistributed to the uncapped
  clusters in proportion to their weight (repeated until no cluster exceeds its cap); the atoms of
  each cluster are rescaled to the new total; then, within each cluster, atoms are clipped to
  atom_cap and the excess is redistributed proportionally among the uncapped atoms of that cluster
  (repeated). Feasible weights are returned unchanged. It is not a Euclidean projection: it keeps
  the relative weights of uncapped names, which is what capping a heuristic allocation should do.
- Solver output of the constrained methods also passes through `apply_caps`, which there only
  repairs cap violations at solver tolerance.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.core.errors import OptimizationError


def effective_caps(n_atoms: int, cluster_sizes: np.ndarray | None, cluster_cap: float,
                   atom_cap: float) -> tuple[float, float]:
    """(atom cap, cluster cap) actually used: raised so that the capped problem is feasible.

    atom cap >= 1/n; cluster cap >= 1/n_clusters and >= the smallest c with
    sum_k min(c, n_k * atom_cap) >= 1. Without clusters the cluster cap is 1.
    """
    u = min(1.0, max(float(atom_cap), 1.0 / n_atoms))
    if cluster_sizes is None or len(cluster_sizes) <= 1:
        return u, 1.0
    sizes = np.asarray(cluster_sizes, dtype=float)
    c = min(1.0, max(float(cluster_cap), 1.0 / len(sizes)))
    cap_k = np.sort(sizes * u)
    if np.minimum(c, cap_k).sum() < 1.0 - 1e-12:
        # smallest c with sum min(c, cap_k) = 1: clusters with cap_k <= c contribute cap_k, the rest c
        for j in range(len(cap_k)):
            rest = len(cap_k) - j
            cand = (1.0 - cap_k[:j].sum()) / rest
            if cand <= cap_k[j] + 1e-15:
                c = max(c, float(cand))
                break
        c = min(c, 1.0)
    return float(u), float(c)


def waterfill(v: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Clip v to cap and redistribute the excess proportionally among the uncapped entries, repeatedly."""
    v = v.astype(float).copy()
    fixed = np.zeros(len(v), dtype=bool)
    limit = cap * (1.0 + 1e-14)          # ignore round-off excess (1/n * n may exceed 1 by an ulp)
    for _ in range(len(v) + 1):
        over = (~fixed) & (v > limit)
        if not over.any():
            break
        excess = float(np.sum(v[over] - cap[over]))
        v[over] = cap[over]
        fixed |= over
        free = ~fixed
        base = v[free].sum()
        if base > 0:
            v[free] += excess * v[free] / base
        else:  # nothing to scale: fill the remaining room proportionally
            room = cap[free] - v[free]
            v[free] += excess * room / room.sum()
    return v


def apply_caps_array(w: np.ndarray, labels: np.ndarray | None, u: float, c: float) -> np.ndarray:
    """`apply_caps` on arrays: labels = cluster index 0..k-1 per atom (or None); u, c effective caps."""
    w = np.asarray(w, dtype=float).copy()
    n = len(w)
    if labels is None:
        labels = np.zeros(n, dtype=np.intp)
        c = 1.0
    k = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=k)
    tot = np.bincount(labels, weights=w, minlength=k)
    cap_k = np.minimum(c, sizes * u)
    new_tot = tot if k == 1 else waterfill(tot, cap_k)
    if not np.array_equal(new_tot, tot):
        scale = np.divide(new_tot, tot, out=np.zeros(k), where=tot > 0)
        w = w * scale[labels]
        empty = (tot <= 0) & (new_tot > 0)
        for j in np.flatnonzero(empty):   # only if a cluster had zero weight and must absorb some
            w[labels == j] = new_tot[j] / sizes[j]
    if (w > u).any():
        for j in range(k):
            idx = np.flatnonzero(labels == j)
            if (w[idx] > u).any():
                w[idx] = waterfill(w[idx], np.full(len(idx), u))
    return w


def apply_caps(w: pd.Series, clusters: pd.Series | None = None, cluster_cap: float = 1.0,
               atom_cap: float = 0.25) -> pd.Series:
    """Deterministic cap projection shared by both engines (see module docstring).

    `w`: weights >= 0 summing to 1, indexed by atom; `clusters`: atom -> cluster id (None = no
    cluster caps). Caps are first raised with `effective_caps`.
    """
    labels, sizes = cluster_labels(pd.Index(w.index), clusters, "apply_caps")
    u, c = effective_caps(len(w), sizes, cluster_cap, atom_cap)
    out = apply_caps_array(w.to_numpy(dtype=float), labels, u, c)
    return pd.Series(out, index=w.index, name=w.name)


def cluster_labels(atoms: pd.Index, clusters: pd.Series | None,
                   what: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Cluster index 0..k-1 per atom (in `atoms` order) and cluster sizes, or (None, None).

    `what` names the caller in the OptimizationError raised for a duplicated or missing label.
    """
    if clusters is None:
        return None, None
    if clusters.index.has_duplicates:
        dup = clusters.index[clusters.index.duplicated()].unique().tolist()
        raise OptimizationError(f"{what}: atoms {dup[:10]} appear more than once in `clusters`; "
                                "pass one cluster label per atom")
    labels = clusters.reindex(atoms)
    missing = atoms[labels.isna().to_numpy()].tolist()
    if missing:
        raise OptimizationError(
            f"{what}: atoms {missing[:10]} have no cluster id in `clusters`; "
            "pass a cluster label for every atom (or clusters=None)")
    codes, _ = pd.factorize(labels, sort=True)
    codes = codes.astype(np.intp)
    return codes, np.bincount(codes)


__all__ = ["apply_caps", "apply_caps_array", "cluster_labels", "effective_caps", "waterfill"]
