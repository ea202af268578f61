"""TradingView Technical Ratings (SPEC §1.5), vectorized over a (time x symbol) panel.

* :func:`compute_ratings` works on (T, N) numpy arrays whose columns start at their first finite
  close (leading NaN rows) and have no gaps after that.
* :func:`ratings_panel` takes aligned DataFrames with gaps (a symbol's bars are the rows where its
  close is finite), compacts each symbol onto its own bar sequence, computes, and scatters back.
* :func:`rating_label` maps ratings to STRONG_BUY / BUY / NEUTRAL / SELL / STRONG_SELL.

Votes are +1 (buy), -1 (sell), 0 (neutral) or NaN (the component's inputs are not defined yet:
warm-up does not vote). A group rating is the mean of the votes that are defined (NaN if none);
``recommend_all = (recommend_ma + recommend_other) / 2`` (NaN if either is NaN).
Point-in-time by construction: the value at row t uses rows <= t only.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from . import indicators as ind

__all__ = [
    "MA_WINDOWS",
    "MA_VOTES",
    "OSC_VOTES",
    "RATING_KEYS",
    "PANEL_DEFAULT_KEYS",
    "compute_ratings",
    "ratings_panel",
    "rating_label",
    "all_keys",
]

MA_WINDOWS = (10, 20, 30, 50, 100, 200)
#: the 15 votes of the moving-average group (vote key = "vote_" + name)
MA_VOTES = tuple(
    [f"sma_{n}" for n in MA_WINDOWS] + [f"ema_{n}" for n in MA_WINDOWS] + ["hma_9", "vwma_20", "ichimoku"]
)
#: the 11 votes of the oscillator group
OSC_VOTES = ("rsi", "stoch", "cci", "adx", "ao", "mom", "macd", "stoch_rsi", "willr", "bbp", "uo")
RATING_KEYS = ("recommend_all", "recommend_ma", "recommend_other")
#: indicator values returned next to the votes
INDICATOR_KEYS = tuple(
    [f"sma_{n}" for n in MA_WINDOWS]
    + [f"ema_{n}" for n in MA_WINDOWS]
    + ["hma_9", "vwma_20"]
    + ["ichimoku_conversion", "ichimoku_base", "ichimoku_span_a", "ichimoku_span_b"]
    + ["rsi", "stoch_k", "stoch_d", "cci", "adx", "plus_di", "minus_di", "ao", "mom"]
    + ["macd", "macd_signal", "macd_hist", "stoch_rsi_k", "stoch_rsi_d", "willr"]
    + ["ema_13", "bull_power", "bear_power", "uo"]
)
PANEL_DEFAULT_KEYS = ("recommend_all", "recommend_ma", "recommend_other", "rsi", "adx")


def all_keys() -> tuple[str, ...]:
    """Every key :func:`compute_ratings` can return."""
    return RATING_KEYS + INDICATOR_KEYS + tuple("vote_" + v for v in MA_VOTES + OSC_VOTES)


# ----------------------------------------------------------------------------------------------
# votes
# ----------------------------------------------------------------------------------------------
def _vote(buy: np.ndarray, sell: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """+1 where buy, -1 where sell, 0 otherwise; NaN where ``defined`` is NaN.

    ``defined`` is any array that is NaN exactly where some input of the rule is undefined
    (e.g. the sum of those inputs); multiplying it by 0 propagates the NaN.
    """
    v = buy.astype(np.float64)
    v -= sell
    v += defined * 0.0
    return v


def _ma_vote(close: np.ndarray, ma: np.ndarray) -> np.ndarray:
    # sign(close - MA): +1 if MA < close, -1 if MA > close, 0 if equal, NaN if MA undefined
    return np.sign(close - ma)


def _rising_vote(x: np.ndarray, x1: np.ndarray, buy_cond: np.ndarray, sell_cond: np.ndarray):
    """buy if buy_cond and rising, sell if sell_cond and falling (needs x_t and x_{t-1})."""
    return _vote(buy_cond & (x > x1), sell_cond & (x < x1), x1 + x)


def _cross_over(a, b, a1, b1):
    return (a1 <= b1) & (a > b)


def _cross_under(a, b, a1, b1):
    return (a1 >= b1) & (a < b)


def _group_mean(votes: list[np.ndarray]) -> np.ndarray:
    """Mean of the defined (non-NaN) votes, NaN where none is defined."""
    total = np.zeros_like(votes[0])
    count = np.zeros(votes[0].shape, dtype=np.int8)
    tmp = np.empty_like(votes[0])
    for v in votes:
        # votes are -1/0/+1/NaN: fmax maps NaN to -2, corrected below by +2 per undefined vote
        np.fmax(v, -2.0, out=tmp)
        total += tmp
        count += v == v
    total += 2.0 * (len(votes) - count)
    out = np.full_like(total, np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


def _block(high, low, close, volume, start) -> dict[str, np.ndarray]:
    """All indicators, votes and ratings for one (T, B) block (pre-start rows are NaN)."""
    r: dict[str, np.ndarray] = {}
    c = close
    lag = ind.lag

    # --- moving averages -----------------------------------------------------------------------
    sm = ind._sma_multi(c, MA_WINDOWS)
    for n in MA_WINDOWS:
        r[f"sma_{n}"] = sm[n]
        r[f"ema_{n}"] = ind._recursive(c, n, 2.0 / (n + 1.0), start)
    r["hma_9"] = ind._hma(c, 9)
    r["vwma_20"] = ind._vwma(c, volume, 20)
    hh = ind._rolling(high, (9, 14, 26, 52), np.maximum)
    ll = ind._rolling(low, (9, 14, 26, 52), np.minimum)
    conv, base, span_a, span_b = ind._ichimoku_from_extremes(hh, ll, 9, 26, 52)
    r["ichimoku_conversion"], r["ichimoku_base"] = conv, base
    r["ichimoku_span_a"], r["ichimoku_span_b"] = span_a, span_b

    for name in MA_VOTES[:-1]:
        r["vote_" + name] = _ma_vote(c, r[name])
    ichi_buy = (span_a > span_b) & (base > span_a) & (conv > base) & (c > conv)
    ichi_sell = (span_a < span_b) & (base < span_a) & (conv < base) & (c < conv)
    r["vote_ichimoku"] = _vote(ichi_buy, ichi_sell, span_b)  # span B has the longest warm-up

    # --- oscillators ---------------------------------------------------------------------------
    sma50 = sm[50]
    up_trend = c > sma50
    down_trend = c < sma50

    rsi = ind._rsi(c, 14, start)
    rsi1 = lag(rsi)
    r["rsi"] = rsi
    r["vote_rsi"] = _rising_vote(rsi, rsi1, rsi < 30.0, rsi > 70.0)

    k, d = ind._stoch_from_extremes(c, hh[14], ll[14], 3, 3)
    k1, d1 = lag(k), lag(d)
    r["stoch_k"], r["stoch_d"] = k, d
    r["vote_stoch"] = _vote(
        (k < 20.0) & _cross_over(k, d, k1, d1), (k > 80.0) & _cross_under(k, d, k1, d1), k1 + d1
    )

    cci = ind._cci((high + low + c) / 3.0, 20)
    r["cci"] = cci
    r["vote_cci"] = _rising_vote(cci, lag(cci), cci < -100.0, cci > 100.0)

    pdi, mdi, adx = ind._dmi(high, low, c, 14, 14, start)
    pdi1, mdi1 = lag(pdi), lag(mdi)
    r["plus_di"], r["minus_di"], r["adx"] = pdi, mdi, adx
    strong = adx > 20.0
    r["vote_adx"] = _vote(
        strong & _cross_over(pdi, mdi, pdi1, mdi1), strong & _cross_under(pdi, mdi, pdi1, mdi1), adx + pdi1 + mdi1
    )

    ao = ind._ao((high + low) / 2.0, 5, 34)
    ao1, ao2 = lag(ao, 1), lag(ao, 2)
    r["ao"] = ao
    pos = (ao > 0.0) & (ao1 > 0.0) & (ao2 > 0.0)
    neg = (ao < 0.0) & (ao1 < 0.0) & (ao2 < 0.0)
    ao_buy = ((ao1 <= 0.0) & (ao > 0.0)) | (pos & (ao2 > ao1) & (ao1 < ao))
    ao_sell = ((ao1 >= 0.0) & (ao < 0.0)) | (neg & (ao2 < ao1) & (ao1 > ao))
    r["vote_ao"] = _vote(ao_buy, ao_sell, ao2)

    mom = ind._shift_op(c, c, 10, np.subtract)
    r["mom"] = mom
    r["vote_mom"] = np.sign(mom - lag(mom))

    macd, sig, hist = ind._macd(c, 12, 26, 9, start)
    r["macd"], r["macd_signal"], r["macd_hist"] = macd, sig, hist
    r["vote_macd"] = np.sign(hist)

    srk, srd = ind._stoch_rsi_from_rsi(rsi, 14, 3, 3)
    srk1, srd1 = lag(srk), lag(srd)
    r["stoch_rsi_k"], r["stoch_rsi_d"] = srk, srd
    r["vote_stoch_rsi"] = _vote(
        down_trend & (srk < 20.0) & (srd < 20.0) & _cross_over(srk, srd, srk1, srd1),
        up_trend & (srk > 80.0) & (srd > 80.0) & _cross_under(srk, srd, srk1, srd1),
        sma50 + srk1 + srd1,
    )

    willr = ind._willr_from_extremes(c, hh[14], ll[14])
    r["willr"] = willr
    r["vote_willr"] = _rising_vote(willr, lag(willr), willr < -80.0, willr > -20.0)

    e13 = ind._recursive(c, 13, 2.0 / 14.0, start)
    bull, bear = high - e13, low - e13
    bull1, bear1 = lag(bull), lag(bear)
    r["ema_13"], r["bull_power"], r["bear_power"] = e13, bull, bear
    r["vote_bbp"] = _vote(
        up_trend & (bear < 0.0) & (bear > bear1),
        down_trend & (bull > 0.0) & (bull < bull1),
        sma50 + bear1,
    )

    uo = ind._uo(high, low, c, 7, 14, 28)
    r["uo"] = uo
    r["vote_uo"] = _vote(uo > 70.0, uo < 30.0, uo)

    # --- groups --------------------------------------------------------------------------------
    ma = _group_mean([r["vote_" + v] for v in MA_VOTES])
    other = _group_mean([r["vote_" + v] for v in OSC_VOTES])
    r["recommend_ma"], r["recommend_other"] = ma, other
    r["recommend_all"] = (ma + other) * 0.5
    return r


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def _as_panel(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"compute_ratings: {name} must be a (T, N) array, got shape {a.shape}")
    return a


def _resolve_keys(keys) -> tuple[str, ...]:
    known = all_keys()
    if keys is None or keys == "all":
        return known
    if isinstance(keys, str):
        keys = (keys,)
    keys = tuple(keys)
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise KeyError(f"compute_ratings: unknown output keys {unknown}; valid keys: {list(known)}")
    return keys


def compute_ratings(
    open,
    high,
    low,
    close,
    volume,
    *,
    keys: Iterable[str] | str | None = None,
    block: int = 64,
) -> dict[str, np.ndarray]:
    """Technical ratings of every bar of every column of a (T, N) OHLCV panel (SPEC §1.5).

    Inputs are (T, N) float arrays (1-D is treated as one column). Each column starts at its first
    finite close (leading NaN rows are allowed, values of high/low/volume before that row are
    ignored) and must be finite in high, low, close and volume from there on (ValueError
    otherwise). ``open`` is accepted for interface symmetry; no rating component uses it.

    Returns {key: (T, N) float64 array} for ``keys`` (default: all of :func:`all_keys`):
    ``recommend_all/ma/other``, every indicator value (``sma_10`` ... ``ema_200``, ``hma_9``,
    ``vwma_20``, ``ichimoku_*``, ``rsi``, ``stoch_k/d``, ``cci``, ``adx``, ``plus_di``, ``minus_di``,
    ``ao``, ``mom``, ``macd``, ``macd_signal``, ``macd_hist``, ``stoch_rsi_k/d``, ``willr``,
    ``ema_13``, ``bull_power``, ``bear_power``, ``uo``) and the 26 votes ``vote_<name>`` for
    name in :data:`MA_VOTES` + :data:`OSC_VOTES`.

    Columns are processed in blocks of ``block`` symbols (each block fully vectorized) so the
    working set stays in cache and memory stays bounded; results do not depend on ``block``.
    """
    h, l, c, v = (_as_panel(n, x) for n, x in (("high", high), ("low", low), ("close", close), ("volume", volume)))
    if open is not None:
        o = _as_panel("open", open)
        if o.shape != c.shape:
            raise ValueError(f"compute_ratings: open has shape {o.shape}, close {c.shape}")
    for name, x in (("high", h), ("low", l), ("volume", v)):
        if x.shape != c.shape:
            raise ValueError(f"compute_ratings: {name} has shape {x.shape}, close {c.shape}")
    want = _resolve_keys(keys)
    T, N = c.shape
    start = ind.first_valid(c)
    out = {k: np.empty((T, N), order="F") for k in want}
    block = max(int(block), 1)
    rows = np.arange(T)[:, None]
    for j0 in range(0, N, block):  # blocks of symbols; everything inside is vectorized
        j1 = min(j0 + block, N)
        s = start[j0:j1]
        pre = rows < s[None, :]
        arrs = []
        for name, x in (("high", h), ("low", l), ("close", c), ("volume", v)):
            xb = np.array(x[:, j0:j1], dtype=np.float64, order="F")
            np.copyto(xb, np.nan, where=pre)
            bad = ~np.isfinite(xb) & ~pre
            if bad.any():
                t_bad, j_bad = np.nonzero(bad)
                raise ValueError(
                    f"compute_ratings: {name} is not finite at row {t_bad[0]} of column {j0 + j_bad[0]} "
                    "after that column's first close; remove missing bars (see ratings_panel) "
                    "instead of leaving NaN inside a series"
                )
            arrs.append(xb)
        res = _block(*arrs, s)
        for k in want:
            out[k][:, j0:j1] = res[k]
    return out


def ratings_panel(
    open,
    high,
    low,
    close,
    volume,
    *,
    keys: Iterable[str] | str | None = PANEL_DEFAULT_KEYS,
    block: int = 64,
):
    """Ratings of an aligned OHLCV panel of DataFrames (index = UTC bar timestamps, columns = symbols).

    A symbol's bars are the rows where its close is finite: symbols may start at different dates
    and have missing bars (NaN rows) inside their history. Each symbol's indicators are computed
    on its OWN bar sequence (missing rows skipped, as a chart would): the panel is compacted by
    right-aligning each column's valid rows, computed with :func:`compute_ratings`, and the
    results are scattered back to the original timestamps (NaN where the symbol had no bar).

    high and low must be finite on every bar (ValueError naming the symbols otherwise); a missing
    volume on a bar counts as 0 volume. Returns {key: DataFrame} for ``keys`` (default
    recommend_all/ma/other, rsi, adx; ``"all"`` or None for every key).
    """
    import pandas as pd

    frames = {"open": open, "high": high, "low": low, "close": close, "volume": volume}
    for name, f in frames.items():
        if not isinstance(f, pd.DataFrame):
            raise TypeError(f"ratings_panel: {name} must be a DataFrame, got {type(f).__name__}")
    idx, cols = close.index, close.columns
    for name, f in frames.items():
        if not (f.index.equals(idx) and f.columns.equals(cols)):
            raise ValueError(f"ratings_panel: {name} is not aligned with close (same index and columns required)")
    if not (idx.is_monotonic_increasing and idx.is_unique):
        raise ValueError("ratings_panel: the index must be unique and increasing (bars oldest first)")
    want = _resolve_keys(keys)

    C = close.to_numpy(dtype=np.float64)
    H = high.to_numpy(dtype=np.float64)
    L = low.to_numpy(dtype=np.float64)
    V = volume.to_numpy(dtype=np.float64)
    T, N = C.shape
    valid = np.isfinite(C)
    bad = valid & ~(np.isfinite(H) & np.isfinite(L))
    if bad.any():
        syms = [str(s) for s in cols[np.nonzero(bad.any(axis=0))[0][:10]]]
        raise ValueError(f"ratings_panel: high/low missing on bars where close is present for {syms}; fix the data")
    V = np.where(valid & ~np.isfinite(V), 0.0, V)

    cnt = valid.sum(axis=0)
    Lc = int(cnt.max()) if N else 0
    right_aligned = bool((valid == (np.arange(T)[:, None] >= (T - cnt)[None, :])).all())
    if right_aligned:
        # no gaps and every symbol runs to the last row: compaction is a row slice
        sl = slice(T - Lc, T)
        res = compute_ratings(None, H[sl], L[sl], C[sl], V[sl], keys=want, block=block)
        result = {}
        for k in want:
            full = np.full((T, N), np.nan)
            full[sl] = res[k]
            result[k] = pd.DataFrame(full, index=idx, columns=cols)
        return result

    rows, cidx = np.nonzero(valid)  # row-major order
    rank = np.cumsum(valid, axis=0)[rows, cidx] - 1
    dest = (Lc - cnt)[cidx] + rank
    src_flat = rows * N + cidx  # into C-ordered (T, N)
    dst_flat_c = dest * N + cidx  # into C-ordered (Lc, N)

    def compact(X):
        comp = np.full(Lc * N, np.nan)
        comp[dst_flat_c] = X.reshape(-1)[src_flat]
        return comp.reshape(Lc, N)

    res = compute_ratings(None, compact(H), compact(L), compact(C), compact(V), keys=want, block=block)
    dst_flat_f = cidx * Lc + dest  # into F-ordered (Lc, N) results
    result = {}
    for k in want:
        full = np.full(T * N, np.nan)
        full[src_flat] = np.asfortranarray(res[k]).reshape(-1, order="F")[dst_flat_f]
        result[k] = pd.DataFrame(full.reshape(T, N), index=idx, columns=cols)
    return result


_LABELS = np.array(["STRONG_SELL", "SELL", "NEUTRAL", "BUY", "STRONG_BUY"], dtype=object)


def rating_label(x):
    """Label a rating (scalar, array or Series; vectorized).

    > 0.5 STRONG_BUY, (0.1, 0.5] BUY, [-0.1, 0.1] NEUTRAL, [-0.5, -0.1) SELL, < -0.5 STRONG_SELL,
    NaN -> None. Values are rounded to 12 decimals first so that float noise in a mean of votes
    (e.g. (2/15 + 1/15) / 2) cannot move a value that is exactly on a boundary.
    Returns str/None for a scalar, an object ndarray for an array, a Series for a Series.
    """
    import pandas as pd

    if isinstance(x, pd.Series):
        return pd.Series(rating_label(x.to_numpy(dtype=np.float64)), index=x.index, name=x.name, dtype=object)
    a = np.asarray(x, dtype=np.float64)
    r = np.round(a, 12)
    with np.errstate(invalid="ignore"):
        code = (r >= -0.5).astype(np.int8) + (r >= -0.1) + (r > 0.1) + (r > 0.5)
    out = _LABELS[code]
    out = np.where(np.isnan(a), None, out)
    if out.ndim == 0:
        return out.item()
    return out
