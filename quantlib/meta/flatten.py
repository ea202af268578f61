"""Flattening (SPEC §3.4, LESSONS L-M2): meta weights down to physical assets.

Physical net weight = sum_s meta_w_s * sleeve net weight (signs kept, a long and a short of the same
symbol net out), then `exposures` and the post-flatten `physical_cap_check`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.core import storage
from quantlib.core.errors import DataError
from quantlib.meta.sleeves import REQUIRED_COLUMNS, SleeveRef, value

CAP_TOL = 1e-12            # |net| > cap + CAP_TOL is a breach
ZERO_TOL = 1e-12           # |net| <= ZERO_TOL counts as flat (neither long nor short)


def load_books(sleeves: list[SleeveRef], risk_profile: str) -> dict[str, pd.DataFrame]:
    """Each sleeve's flattened book for `risk_profile` (symbol, net_weight, gross_weight).

    A sleeve: its `flattened` rows with profile == risk_profile; a nested meta: its `meta_flattened`.
    Missing files/columns raise DataError naming them.
    """
    out: dict[str, pd.DataFrame] = {}
    for ref in sleeves:
        if ref.run_dir is None:
            raise DataError(f"sleeve {ref.id} has no run directory: no flattened book to load")
        path = ref.path(ref.book)
        frame = storage.read_parquet(path)
        lacking = [c for c in REQUIRED_COLUMNS[(ref.phase, ref.book)] if c not in frame.columns]
        if lacking:
            raise DataError(f"{path} lacks columns {lacking}; re-run the stage that writes it")
        if ref.kind != "meta":
            frame = frame[frame["profile"] == value(risk_profile)]
        out[ref.id] = frame[["symbol", "net_weight", "gross_weight"]].reset_index(drop=True)
    return out


def _fmt_signed(x: float) -> str:
    return f"{x:+.4f}"


def flatten_meta(weights: pd.Series, books: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Physical book: net_weight(symbol) = sum_s meta_w_s * sleeve net_weight_s(symbol) (signs kept).

    `books`: sleeve id -> that sleeve's flattened book for the risk profile (symbol, net_weight; one
    row per symbol). gross_weight = sum_s meta_w_s * |sleeve net|; contributors = comma-joined
    "sleeve:+0.1234" contributions in weight order. A symbol long in one sleeve and short in another
    nets out (the row stays, net 0, gross > 0). Sum of physical net = sum_s meta_w_s * sum sleeve net.
    Rows sorted by gross_weight descending, then symbol.
    """
    w = pd.Series(weights, dtype=float)
    missing = [s for s in w.index if s not in books]
    extra = [s for s in books if s not in w.index]
    if missing or extra:
        raise ValueError(f"flatten_meta: meta weights and books disagree: no book for {missing}, "
                         f"no weight for {extra}")
    if not np.all(np.isfinite(w.to_numpy())):
        raise ValueError(f"flatten_meta: non-finite meta weights {w.to_dict()}")
    parts = []
    for sid, mw in w.items():
        book = books[sid]
        lacking = [c for c in ("symbol", "net_weight") if c not in book.columns]
        if lacking:
            raise ValueError(f"flatten_meta: book of sleeve {sid} lacks columns {lacking}")
        if book["symbol"].duplicated().any():
            dup = sorted(book.loc[book["symbol"].duplicated(), "symbol"].astype(str).unique())[:5]
            raise ValueError(f"flatten_meta: book of sleeve {sid} has several rows for {dup}; pass one "
                             "risk profile's book (one row per symbol)")
        net = book["net_weight"].to_numpy(dtype=float)
        if not np.all(np.isfinite(net)):
            raise ValueError(f"flatten_meta: book of sleeve {sid} has non-finite net weights")
        parts.append(pd.DataFrame({"sleeve": sid, "symbol": book["symbol"].astype(str).to_numpy(),
                                   "contribution": float(mw) * net}))
    columns = ["symbol", "net_weight", "gross_weight", "contributors"]
    if not parts or all(p.empty for p in parts):
        return pd.DataFrame(columns=columns).astype({"net_weight": float, "gross_weight": float})
    c = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    c["gross"] = c["contribution"].abs()
    order = {sid: i for i, sid in enumerate(w.index)}
    c["_order"] = c["sleeve"].map(order)
    c = c.sort_values(["symbol", "_order"], kind="stable")
    c["label"] = c["sleeve"] + ":" + c["contribution"].map(_fmt_signed)
    out = c.groupby("symbol", sort=True).agg(net_weight=("contribution", "sum"), gross_weight=("gross", "sum"),
                                             contributors=("label", ", ".join)).reset_index()
    out = out.sort_values(["gross_weight", "symbol"], ascending=[False, True], kind="stable")
    return out[columns].reset_index(drop=True)


def exposures(flat: pd.DataFrame) -> dict:
    """{gross: sum |net|, net: sum net, long: sum of positive nets, short: sum of negative nets (<= 0),
    n_long, n_short} of a flattened book (|net| <= 1e-12 counts as flat)."""
    net = pd.Series(flat["net_weight"], dtype=float).to_numpy() if len(flat) else np.zeros(0)
    long_mask, short_mask = net > ZERO_TOL, net < -ZERO_TOL
    return {"gross": float(np.abs(net).sum()), "net": float(net.sum()),
            "long": float(net[long_mask].sum()), "short": float(net[short_mask].sum()),
            "n_long": int(long_mask.sum()), "n_short": int(short_mask.sum())}


def physical_cap_check(flat: pd.DataFrame, cap: float) -> dict:
    """Post-flatten physical cap (L-M2): {passed, cap, breaches: [{symbol, net_weight}]} on |net| > cap."""
    cap = float(cap)
    if not cap > 0:
        raise ValueError(f"physical_cap_check: cap={cap} must be > 0")
    if len(flat):
        net = flat["net_weight"].astype(float)
        over = flat.loc[net.abs() > cap + CAP_TOL, ["symbol", "net_weight"]]
        over = over.reindex(over["net_weight"].abs().sort_values(ascending=False, kind="stable").index)
        breaches = [{"symbol": str(r.symbol), "net_weight": float(r.net_weight)} for r in over.itertuples()]
    else:
        breaches = []
    return {"passed": not breaches, "cap": cap, "breaches": breaches}
