"""Strategy atoms, synthetic returns and flattening (SPEC §2.3, §2.5) -- the one synthesis definition.

An atom is (symbol, logic, direction) with `direction` a typed column (`Direction`), carried end to
end and never parsed back out of a string (LESSONS L-X1). The optimizer sees synthetic-long streams:
  LONG   R_syn = R_raw
  SHORT  R_syn = -clip(R_raw, upper=1.0)      (a short loses at most 100 %)
Flattening re-applies the sign: net_weight(symbol) = sum over its atoms of sign * w, so a SHORT
atom always contributes a negative weight to its symbol.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.core.enums import Direction

ATOM_COLUMNS = ["atom_id", "symbol", "logic", "direction"]
SHORT_LOSS_CAP = 1.0


def check_directions(values: pd.Series, where: str) -> pd.Series:
    """Validate a direction column: every value LONG or SHORT (no silent default, LESSONS L-X2)."""
    bad = sorted({str(v) for v in values if v not in (Direction.LONG.value, Direction.SHORT.value)})
    if bad:
        raise ValueError(f"{where}: invalid direction value(s) {bad}; expected LONG or SHORT")
    return values.astype(str)


def atom_id(symbol: str, logic: str, direction: str) -> str:
    """A readable label for an atom (a key only: code reads the typed columns, never this string)."""
    return f"{symbol}/{logic}/{direction}"


def build_atoms(selection: pd.DataFrame) -> pd.DataFrame:
    """One atom per selected (symbol, logic, direction) row."""
    if selection.empty:
        raise ValueError("synthesis: the selection is empty; nothing to build atoms from")
    directions = check_directions(selection["direction"], "selection.parquet")
    atoms = pd.DataFrame({
        "atom_id": [atom_id(s, l, d) for s, l, d in zip(selection["symbol"], selection["logic"], directions)],
        "symbol": selection["symbol"].astype(str).to_numpy(),
        "logic": selection["logic"].astype(str).to_numpy(),
        "direction": directions.to_numpy(),
    })
    if atoms["atom_id"].duplicated().any():
        raise ValueError(f"synthesis: duplicate atoms {sorted(atoms.loc[atoms['atom_id'].duplicated(), 'atom_id'])}")
    return atoms


def signs(atoms: pd.DataFrame) -> pd.Series:
    """+1 / -1 per atom_id from the typed direction column."""
    directions = check_directions(atoms["direction"], "atoms")
    return pd.Series(np.where(directions == Direction.SHORT.value, -1.0, 1.0), index=atoms["atom_id"].to_numpy())


def synthetic_returns(raw: pd.DataFrame, atoms: pd.DataFrame) -> pd.DataFrame:
    """Dates x atom_id synthetic returns: LONG = raw, SHORT = -clip(raw, upper=1.0)."""
    missing = sorted(set(atoms["symbol"]) - set(raw.columns))
    if missing:
        raise ValueError(f"synthesis: no returns column for {missing}")
    values = raw[atoms["symbol"].to_list()].to_numpy(dtype=np.float64)
    short = (atoms["direction"] == Direction.SHORT.value).to_numpy()
    out = values.copy()
    out[:, short] = -np.minimum(values[:, short], SHORT_LOSS_CAP)
    return pd.DataFrame(out, index=raw.index, columns=atoms["atom_id"].to_list())


def contributions(weights: pd.DataFrame, atoms: pd.DataFrame) -> pd.DataFrame:
    """Per (profile, atom): the signed weight it contributes to its physical symbol.

    `weights` has columns profile, atom_id, weight; the atom -> (symbol, sign) map comes from `atoms`.
    """
    table = weights.merge(atoms[ATOM_COLUMNS], on="atom_id", how="left", validate="many_to_one")
    if table["symbol"].isna().any():
        raise ValueError(f"flatten: weights for unknown atoms {sorted(table.loc[table['symbol'].isna(), 'atom_id'])}")
    sign = np.where(check_directions(table["direction"], "atoms") == Direction.SHORT.value, -1.0, 1.0)
    return table.assign(contribution=sign * table["weight"].to_numpy())


def flatten(weights: pd.DataFrame, atoms: pd.DataFrame) -> pd.DataFrame:
    """Physical weights per (profile, symbol): net_weight = sum sign * w, gross_weight = sum |w|."""
    c = contributions(weights, atoms)
    c = c.assign(gross=c["contribution"].abs())
    out = c.groupby(["profile", "symbol"], sort=True).agg(net_weight=("contribution", "sum"),
                                                          gross_weight=("gross", "sum"))
    return out.reset_index()
