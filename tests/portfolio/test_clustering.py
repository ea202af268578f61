"""portfolio.clustering.match_labels: cluster ids carried over by maximum overlap (hand-computed)."""
from __future__ import annotations

import pandas as pd

from quantlib.portfolio.clustering import match_labels


def test_swapped_ids_are_undone_and_a_new_group_gets_a_fresh_id():
    prev = pd.Series({"a": 1, "b": 1, "c": 2, "d": 2, "e": 3})
    cur = pd.Series({"a": 2, "b": 2, "c": 1, "d": 1, "e": 1, "f": 3})
    # overlaps: cur 1 = {c, d, e} shares c, d with prev 2 and e with prev 3; cur 2 = {a, b} = prev 1;
    # cur 3 = {f} shares nothing. Best total: 1 -> 2 (2), 2 -> 1 (2), 3 unmatched -> fresh 4.
    assert match_labels(prev, cur, next_id=4) == ({1: 2, 2: 1, 3: 4}, 5)


def test_the_assignment_maximizes_the_total_not_each_cluster_greedily():
    prev = pd.Series({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 2, "g": 2})
    cur = pd.Series({"a": 10, "b": 10, "c": 10, "f": 10, "g": 10, "d": 20, "e": 20})
    # overlaps: 10-1 = 3 (a, b, c), 10-2 = 2 (f, g), 20-1 = 2 (d, e), 20-2 = 0.
    # greedy (largest first) 10 -> 1 leaves 20 unmatched: total 3; optimum 10 -> 2, 20 -> 1: total 4.
    assert match_labels(prev, cur, next_id=3) == ({10: 2, 20: 1}, 3)


def test_fewer_clusters_now_each_previous_id_used_once():
    prev = pd.Series({"a": 1, "b": 2, "c": 3})
    cur = pd.Series({"a": 7, "b": 7, "c": 7})
    # one current cluster overlapping each previous one by 1: it takes one of them (ties: the first)
    mapping, nxt = match_labels(prev, cur, next_id=4)
    assert mapping == {7: 1} and nxt == 4


def test_no_previous_clusters_gives_fresh_ids_in_id_order():
    assert match_labels(pd.Series(dtype=float), pd.Series({"x": 5, "y": 2}), next_id=1) == ({2: 1, 5: 2}, 3)
    assert match_labels(pd.Series({"x": 1}), pd.Series(dtype=float), next_id=2) == ({}, 2)


def test_the_overlap_counts_are_pandas_crosstab_s():
    """The overlap matrix (counted with numpy) equals pd.crosstab's on random labels with gaps: the same ids result
    as an assignment over the crosstab (the former implementation)."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(3)
    for _ in range(20):
        items = [f"a{i}" for i in range(40)]
        prev = pd.Series(rng.integers(1, 6, 40).astype(float), index=items)
        cur = pd.Series(rng.integers(1, 8, 40).astype(float), index=items).sample(frac=0.9, random_state=1)
        prev[rng.random(40) < 0.1] = np.nan
        mapping, _ = match_labels(prev, cur, next_id=100)
        cur_ids, prev_ids = sorted(cur.dropna().unique()), sorted(prev.dropna().unique())
        shared = cur.index.intersection(prev.index)
        overlap = (pd.crosstab(cur.reindex(shared), prev.reindex(shared))
                   .reindex(index=cur_ids, columns=prev_ids, fill_value=0).to_numpy())
        rows, cols = linear_sum_assignment(-overlap)
        expected = {cur_ids[r]: prev_ids[c] for r, c in zip(rows, cols) if overlap[r, c] > 0}
        assert {k: v for k, v in mapping.items() if v < 100} == expected
