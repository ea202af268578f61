"""Post-analysis (SPEC §2.8): dendrogram order, cluster map, factor embedding, drift table, HTML plots."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from quantlib.portfolio import clustering
from quantlib.sleeve import postanalysis as pa


def _two_blocks(n_days: int = 250, seed: int = 3) -> pd.DataFrame:
    """Atoms a0..a3 driven by factor A, b0..b3 by an independent factor B; columns interleaved."""
    rng = np.random.default_rng(seed)
    fa, fb = rng.normal(0, 0.02, n_days), rng.normal(0, 0.02, n_days)
    cols = {}
    for i in range(4):
        cols[f"a{i}"] = fa + rng.normal(0, 0.006, n_days)
        cols[f"b{i}"] = fb + rng.normal(0, 0.006, n_days)
    order = ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]
    idx = pd.date_range("2024-01-01", periods=n_days, freq="D")
    return pd.DataFrame(cols, index=idx)[order]


@pytest.fixture(scope="module")
def blocks() -> pd.DataFrame:
    return _two_blocks()


# ----------------------------------------------------------------------------- dendrogram / cluster map
def test_dendrogram_order_makes_correlated_blocks_contiguous(blocks):
    order, labels = pa.dendrogram_order(blocks)
    assert sorted(order) == sorted(blocks.columns)
    groups = [name[0] for name in order]
    # one switch between the blocks: aaaa bbbb or bbbb aaaa
    assert sum(g1 != g2 for g1, g2 in zip(groups, groups[1:])) == 1
    assert groups in (list("aaaabbbb"), list("bbbbaaaa"))
    assert labels.nunique() == 2
    assert labels[["a0", "a1", "a2", "a3"]].nunique() == 1 and labels[["b0", "b1", "b2", "b3"]].nunique() == 1
    pd.testing.assert_series_equal(labels, clustering.ward_clusters(blocks).labels)


def test_cluster_map_z_is_permuted_average_correlation(blocks):
    fig = pa.cluster_map(blocks)
    order, labels = pa.dendrogram_order(blocks)
    rho = clustering.average_correlation(blocks)
    heat = fig.data[0]
    assert heat.type == "heatmap"
    assert list(heat.x) == order and list(heat.y) == order
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), rho.loc[order, order].to_numpy(), atol=1e-12)
    # it is a real permutation, not the input order
    assert order != list(blocks.columns)
    assert "Cluster map" in fig.layout.title.text
    # one outline per cluster, covering the contiguous blocks [0,3] and [4,7]
    rects = sorted((s.x0, s.x1) for s in fig.layout.shapes)
    assert rects == [(-0.5, 3.5), (3.5, 7.5)]


def test_cluster_map_and_factor_map_need_two_atoms(blocks):
    one = blocks[["a0"]]
    with pytest.raises(ValueError, match="at least 2 atoms"):
        pa.cluster_map(one)
    with pytest.raises(ValueError, match="at least 2 atoms"):
        pa.factor_map(one, pd.Series([1], index=["a0"]))


def test_nan_returns_are_rejected_naming_the_atom(blocks):
    bad = blocks.copy()
    bad.iloc[5, 2] = np.nan
    for call in (lambda: pa.dendrogram_order(bad), lambda: pa.cluster_map(bad),
                 lambda: pa.factor_embedding(bad, clustering.ward_clusters(blocks).labels)):
        with pytest.raises(ValueError, match=r"NaN.*a1"):
            call()


# ----------------------------------------------------------------------------- factor embedding
def _pairwise(xy: np.ndarray) -> np.ndarray:
    return np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))


def test_classical_mds_recovers_points_on_a_line():
    pts = np.array([0.0, 1.0, 3.0, 7.0, 7.5])
    d = np.abs(pts[:, None] - pts[None, :])
    xy = pa.classical_mds(d)
    np.testing.assert_allclose(_pairwise(xy), d, atol=1e-9)
    np.testing.assert_allclose(xy[:, 1], 0.0, atol=1e-7)  # rank 1: second axis is empty
    # centred, and the sign rule puts the largest-|x| point (7.5, i.e. +4.6 from the mean) on the + side
    assert abs(xy[:, 0].sum()) < 1e-9
    assert xy[:, 0].argmax() == 4 and xy[4, 0] > 0


def test_classical_mds_recovers_a_2d_configuration():
    pts = np.array([[0, 0], [3, 0], [0, 4], [3, 4], [1, 2], [-2, 1]], dtype=float)
    d = _pairwise(pts)
    xy = pa.classical_mds(d)
    np.testing.assert_allclose(_pairwise(xy), d, atol=1e-9)
    for k in range(2):  # sign convention
        assert xy[np.argmax(np.abs(xy[:, k])), k] > 0


def test_factor_embedding_is_deterministic_and_separates_blocks(blocks):
    labels = clustering.ward_clusters(blocks).labels
    emb = pa.factor_embedding(blocks, labels)
    assert list(emb.columns) == ["x", "y", "cluster"]
    assert list(emb.index) == list(blocks.columns)
    assert emb["cluster"].to_dict() == labels.to_dict()
    again = pa.factor_embedding(blocks.copy(), labels.copy())
    pd.testing.assert_frame_equal(emb, again)
    a, b = emb.loc[["a0", "a1", "a2", "a3"], "x"], emb.loc[["b0", "b1", "b2", "b3"], "x"]
    assert (a.max() < b.min()) or (b.max() < a.min())
    # it is MDS of the correlation distance: its first axis is the leading one
    dist = clustering.correlation_distance(clustering.average_correlation(blocks)).to_numpy()
    np.testing.assert_allclose(emb[["x", "y"]].to_numpy(), pa.classical_mds(dist), atol=1e-12)
    assert emb["x"].var() > emb["y"].var()


def test_factor_embedding_requires_a_label_per_atom(blocks):
    with pytest.raises(ValueError, match="no cluster label.*b3"):
        pa.factor_embedding(blocks, pd.Series(1, index=blocks.columns[:-1]))


def test_factor_map_categorical_clusters_and_weight_sizes(blocks):
    labels = clustering.ward_clusters(blocks).labels
    weights = pd.Series({"a0": 0.4, "b0": 0.1, "a1": 0.2})
    fig = pa.factor_map(blocks, labels, weights)
    assert sorted(t.name for t in fig.data) == ["cluster 1", "cluster 2"]
    sizes = {atom: s for t in fig.data for atom, s in zip(t.text, t.marker.size)}
    assert sizes["a0"] > sizes["a1"] > sizes["b0"] > sizes["b3"]  # b3 has no weight: smallest marker
    assert set(sizes) == set(blocks.columns)
    assert len({t.marker.color for t in fig.data}) == 2


# ----------------------------------------------------------------------------- drift
def _history() -> pd.DataFrame:
    t1, t2, t3 = pd.Timestamp("2025-01-01"), pd.Timestamp("2025-01-11"), pd.Timestamp("2025-01-21")
    rows = [
        (t1, "p", "A", 0.5, 1), (t1, "p", "B", 0.3, 1), (t1, "p", "C", 0.2, 2),
        (t2, "p", "A", 0.4, 1), (t2, "p", "B", 0.2, 2), (t2, "p", "D", 0.4, 3),
        (t3, "p", "B", 0.5, 2), (t3, "p", "D", 0.3, 1), (t3, "p", "E", 0.2, 1),
        # a second profile, listed out of order: must not leak into "p"
        (t2, "q", "A", 1.0, 1), (t1, "q", "A", 0.5, 1), (t1, "q", "Z", 0.5, 1),
    ]
    return pd.DataFrame(rows, columns=["rebalance", "profile", "atom_id", "weight", "cluster"])


def test_drift_table_hand_computed():
    table = pa.drift_table(_history())
    assert list(table.columns) == list(pa.DRIFT_COLUMNS)
    p = table[table["profile"] == "p"].reset_index(drop=True)
    assert list(p["rebalance"]) == [pd.Timestamp("2025-01-01"), pd.Timestamp("2025-01-11"), pd.Timestamp("2025-01-21")]
    assert list(p["n_atoms"]) == [3, 3, 3]
    assert list(p["n_clusters"]) == [2, 3, 2]
    # t2 vs t1: |0.4-0.5| + |0.2-0.3| + |0-0.2| + |0.4-0| = 0.8 -> 0.4; t3 vs t2: 0.4+0.3+0.1+0.2 = 1.0 -> 0.5
    assert np.isnan(p.loc[0, "turnover"])
    assert p.loc[1, "turnover"] == pytest.approx(0.4)
    assert p.loc[2, "turnover"] == pytest.approx(0.5)
    # entered: D at t2 (0.4); E at t3 (0.2)
    assert np.isnan(p.loc[0, "weight_entered"])
    assert p.loc[1, "weight_entered"] == pytest.approx(0.4)
    assert p.loc[2, "weight_entered"] == pytest.approx(0.2)
    # cluster changes among atoms held in both: t2 {A: 1->1, B: 1->2} = 1; t3 {B: 2->2, D: 3->1} = 1
    assert pd.isna(p.loc[0, "cluster_changes"])
    assert list(p["cluster_changes"].iloc[1:]) == [1, 1]
    q = table[table["profile"] == "q"].reset_index(drop=True)
    assert list(q["rebalance"]) == [pd.Timestamp("2025-01-01"), pd.Timestamp("2025-01-11")]
    assert q.loc[1, "turnover"] == pytest.approx(0.5)  # |1-0.5| + |0-0.5| = 1 -> 0.5
    assert q.loc[1, "weight_entered"] == 0.0


def test_drift_table_rejects_bad_history():
    h = _history()
    with pytest.raises(ValueError, match="lacks column"):
        pa.drift_table(h.drop(columns="cluster"))
    with pytest.raises(ValueError, match="duplicate"):
        pa.drift_table(pd.concat([h, h.iloc[:1]]))


def test_drift_monitor_and_cluster_composition():
    h = _history()
    fig = pa.drift_monitor(h, "p")
    areas = [t for t in fig.data if t.type == "scatter"]
    bars = [t for t in fig.data if t.type == "bar"]
    assert sorted(t.name for t in areas) == ["A", "B", "C", "D", "E"]
    assert all(t.stackgroup for t in areas)
    d = next(t for t in areas if t.name == "D")
    np.testing.assert_allclose(d.y, [0.0, 0.4, 0.3])
    assert len(bars) == 1 and bars[0].yaxis == "y2"
    np.testing.assert_allclose(np.asarray(bars[0].y, dtype=float), [np.nan, 0.4, 0.5])
    comp = pa.cluster_composition(h, "p")
    by = {t.name: list(t.y) for t in comp.data}
    # stable ids (test_stable_cluster_ids_by_hand): t1 {1: A+B, 2: C}, t2 {1: A, 3: B, 4: D}, t3 {3: B, 4: D+E}
    assert by == {"cluster 1": [0.8, 0.4, 0.0], "cluster 2": [0.2, 0.0, 0.0], "cluster 3": [0.0, 0.2, 0.5],
                  "cluster 4": [0.0, 0.4, 0.5]}
    assert comp.layout.barmode in ("stack", "relative")
    with pytest.raises(ValueError, match="profile 'zz' not in history"):
        pa.drift_monitor(h, "zz")


# ----------------------------------------------------------------------------- output
def test_figure_html_loads_the_shared_plotlyjs_without_cdn(tmp_path, blocks):
    from quantlib.core.figures import plotly_js_bytes, write_figure_html

    labels = clustering.ward_clusters(blocks).labels
    for name, fig in {"cluster_map": pa.cluster_map(blocks), "factor_map": pa.factor_map(blocks, labels)}.items():
        path = write_figure_html(fig, tmp_path / "plots" / f"{name}.html")
        html = path.read_text(encoding="utf-8")
        assert "Plotly.newPlot" in html
        assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?https?:", html, re.I)
        srcs = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", html)
        assert srcs == ["_static/" + srcs[0].split("/")[-1]]  # outside a run: the page's own folder's _static/
        assert (path.parent / srcs[0]).read_bytes() == plotly_js_bytes()
        assert len(html) < 1_000_000  # the bundle is not inside


def test_import_is_light():
    code = "import sys, quantlib.sleeve.postanalysis; print(any(m.split('.')[0] in ('plotly', 'scipy') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------------------- stable cluster ids
def test_stable_cluster_ids_by_hand():
    # t1 keeps {A, B} = 1, {C} = 2 (next fresh id 3).
    # t2: raw 1 = {A} overlaps old 1 by A; raw 2 = {B} also overlaps only old 1; raw 3 = {D} overlaps nothing.
    #     One old id per new cluster: the assignment gives old 1 to raw 1 (total overlap 1 either way;
    #     scipy picks the first row), raw 2 -> fresh 3, raw 3 -> fresh 4.
    # t3: raw 1 = {D, E} overlaps 4 (D); raw 2 = {B} overlaps 3 (B): 1 -> 4, 2 -> 3.
    h = pa.stable_cluster_ids(_history())
    p = h[h["profile"] == "p"]
    got = {(str(r.rebalance.date()), r.atom_id): int(r.cluster) for r in p.itertuples()}
    assert got == {("2025-01-01", "A"): 1, ("2025-01-01", "B"): 1, ("2025-01-01", "C"): 2,
                   ("2025-01-11", "A"): 1, ("2025-01-11", "B"): 3, ("2025-01-11", "D"): 4,
                   ("2025-01-21", "B"): 3, ("2025-01-21", "D"): 4, ("2025-01-21", "E"): 4}
    assert set(h.loc[h["profile"] == "q", "cluster"]) == {1}  # profiles are relabelled separately
    # the groups themselves never change: same-cluster pairs per rebalance are identical
    raw = _history()
    for (reb, prof), snap in raw.groupby(["rebalance", "profile"]):
        new = h[(h["rebalance"] == reb) & (h["profile"] == prof)].set_index("atom_id")["cluster"]
        old = snap.set_index("atom_id")["cluster"]
        assert all((old[a] == old[b]) == (new[a] == new[b]) for a in old.index for b in old.index)


def test_stable_cluster_ids_undo_a_pure_renumbering_and_keep_missing():
    t1, t2 = pd.Timestamp("2025-01-01"), pd.Timestamp("2025-02-01")
    rows = [(t1, "p", a, 0.25, c) for a, c in zip("ABCD", [1, 1, 2, 2])]
    rows += [(t2, "p", a, 0.25, c) for a, c in zip("ABCD", [2, 2, 1, np.nan])]  # ids swapped, D unclustered
    h = pa.stable_cluster_ids(pd.DataFrame(rows, columns=list(pa.HISTORY_COLUMNS)))
    second = h[h["rebalance"] == t2].set_index("atom_id")["cluster"]
    assert second[["A", "B", "C"]].tolist() == [1, 1, 2] and pd.isna(second["D"])
    assert str(h["cluster"].dtype) == "Int64"


def test_cluster_composition_draws_the_top_clusters_and_other():
    t = [pd.Timestamp("2025-01-01") + pd.Timedelta(days=10 * i) for i in range(2)]
    rows = [(d, "p", f"a{k}", (k + 1) / 78.0, k + 1) for d in t for k in range(12)]  # 12 clusters, weights 1..12
    rows.append((t[0], "p", "loose", 0.0, np.nan))
    comp = pa.cluster_composition(pd.DataFrame(rows, columns=list(pa.HISTORY_COLUMNS)), "p", top=10)
    names = [tr.name for tr in comp.data]
    assert len(names) == 12 and names[-2:] == ["other clusters (2)", "unclustered"]
    other = comp.data[-2]
    np.testing.assert_allclose(other.y, [(1 + 2) / 78.0] * 2)  # the two lightest clusters summed
    assert len({tr.marker.color for tr in comp.data[:10]}) == 10  # shown clusters: one colour each


def test_drift_monitor_draws_the_top_atoms_and_other():
    t = [pd.Timestamp("2025-01-01") + pd.Timedelta(days=10 * i) for i in range(3)]
    rows = [(d, "p", f"atom{k:02d}", (k + 1) / 105.0, 1) for d in t for k in range(14)]  # weights 1..14 / 105
    fig = pa.drift_monitor(pd.DataFrame(rows, columns=list(pa.HISTORY_COLUMNS)), "p", top=10)
    areas = [tr for tr in fig.data if tr.type == "scatter"]
    assert [a.name for a in areas[:3]] == ["atom13", "atom12", "atom11"]  # largest mean first
    assert len(areas) == 11 and areas[-1].name == "other (4 atoms)"
    np.testing.assert_allclose(areas[-1].y, [(1 + 2 + 3 + 4) / 105.0] * 3)
    total = np.sum([np.asarray(a.y, dtype=float) for a in areas], axis=0)
    np.testing.assert_allclose(total, [1.0] * 3)  # nothing lost: the stack still sums to the book


def test_short_names_cut_the_shared_prefix_and_suffix_only_when_labels_stay_distinct():
    names = ["BINANCE:SUSHIUSDT/rating_all/LONG", "BINANCE:ICPUSDT/rating_all/LONG"]
    assert pa.short_names(names) == (["SUSHIUSDT", "ICPUSDT"], "BINANCE:…/rating_all/LONG")
    mixed = ["BINANCE:AUSDT/rating_all/LONG", "BINANCE:AUSDT/rating_ma/LONG"]
    assert pa.short_names(mixed) == (["rating_all", "rating_ma"], "BINANCE:AUSDT/…/LONG")
    assert pa.short_names(["x", "y"]) == (["x", "y"], "")
    assert pa.short_names(["p:x/s", "p:/s"]) == (["p:x/s", "p:/s"], "")  # a cut would leave an empty label
    assert pa.short_names(["a/b", "a/b/c"]) == (["b", "b/c"], "a/…")
