"""TradingView Technical Ratings (SPEC §1.5), vectorized over a (time x symbol) panel.

* :func:`compute_ratings` works on (T, N) numpy arrays whose columns start at their first finite
  close (leading NaN rows) and have no gaps after that.
* :func:`ratings_panel` takes aligned DataFrames with gaps (a symbol's bars are the rows where its
  close is finite), compacts each symbol onto its own bar sequence, computes, and scatters back.
* :func:`rating_label` maps ratings to STRONG_BUY / BUY / NEUTRAL / SELL / STRONG_SELL.

The rules are those of TradingView's built-in "Technical Ratings" script (SPEC §1.5): strict
crossovers, trend = close vs EMA(50), CCI of close, the script's undisplaced Ichimoku rule.
Votes are +1 (buy), -1 (sell), 0 (neutral) or NaN (the component's inputs are not defined yet:
warm-up does not vote). A group rating is the mean of the votes that are defined (NaN if none);
``recommend_all = (recommend_ma + recommend_other) / 2``, or the one group that is defined (the
script averages the defined groups; only the first bars, before any oscillator votes, differ).
Point-in-time by construction: the value at row t uses rows <= t only.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from quantlib.data import indicators as ind

__all__ = [
    "MA_WINDOWS",
    "MA_VOTES",
    "OSC_VOTES",
    "RATING_KEYS",
    "INDICATOR_KEYS",
    "PANEL_DEFAULT_KEYS",
    "compute_ratings",
    "ratings_panel",
    "rating_label",
    "all_keys",
    "RULES",
    "vote",
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
    + ["ichimoku_conversion", "ichimoku_base", "ichimoku_lead1", "ichimoku_lead2"]
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
class _Group:
    """Accumulates the votes of one group as int8 sums and counts (cheap byte arithmetic).

    Each rule supplies boolean ``buy``, ``sell`` and ``defined`` arrays; ``buy``/``sell`` must be
    False where the rule is not defined. The float vote (+1/-1/0, NaN when undefined) is only
    materialized when it is a requested output.
    """

    def __init__(self, shape, out: dict, want_votes: bool):
        self.total = np.zeros(shape, dtype=np.int8)
        self.count = np.zeros(shape, dtype=np.int8)
        self.out = out
        self.want_votes = want_votes

    def add(self, name: str, buy: np.ndarray, sell: np.ndarray, defined: np.ndarray) -> None:
        d = buy.view(np.int8) - sell.view(np.int8)
        d *= defined  # a rule row that is not defined never counts, whatever buy/sell say
        self.total += d
        self.count += defined
        if self.want_votes:
            self.out["vote_" + name] = np.where(defined, d, np.nan)

    def mean(self) -> np.ndarray:
        out = np.full(self.total.shape, np.nan)
        np.divide(self.total, self.count, out=out, where=self.count > 0)
        return out


def _defined(x: np.ndarray) -> np.ndarray:
    return x == x  # False where NaN


def _cross_over(a: np.ndarray, b: np.ndarray, a1: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """a crosses over b at t: a_{t-1} < b_{t-1} and a_t > b_t (strict on both bars, SPEC §1.5)."""
    return (a1 < b1) & (a > b)


def _cross_under(a: np.ndarray, b: np.ndarray, a1: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """a crosses under b at t: a_{t-1} > b_{t-1} and a_t < b_t (strict on both bars, SPEC §1.5)."""
    return (a1 > b1) & (a < b)


#: what every rule returns: boolean (buy, sell, defined) arrays
Rule = tuple[np.ndarray, np.ndarray, np.ndarray]


# Each rule returns boolean arrays (buy, sell, defined). Comparisons with NaN are False, so an
# undefined input never produces a buy or a sell; `defined` marks the rows where the rule votes
# (the inputs the script checks with na()). "rising" = x_t > x_{t-1}, "falling" = x_t < x_{t-1};
# uptrend = close > EMA(50), downtrend = close < EMA(50) (SPEC §1.5, TradingView's script).
def rule_ma(close: np.ndarray, ma: np.ndarray) -> Rule:
    """MA vote: buy if MA < close, sell if MA > close (0 if equal); undefined while MA is NaN."""
    return ma < close, ma > close, _defined(ma)


def rule_ichimoku(close: np.ndarray, conversion: np.ndarray, base: np.ndarray, lead1: np.ndarray,
                  lead2: np.ndarray) -> Rule:
    """TradingView's Technical Ratings Ichimoku rule on the lines of bar t (no displacement).

    buy:  lead 1 > lead 2 and close > lead 1 and close < base and close_{t-1} < conversion < close;
    sell: lead 2 > lead 1 and close < lead 2 and close > base and close_{t-1} > conversion > close.
    lead 1 = (conversion + base) / 2, lead 2 = the 52-bar midpoint. Undefined until every line and
    close_{t-1} exist (lead 2, the longest window, is the last).
    """
    c1 = ind.lag(close)
    buy = (lead1 > lead2) & (close > lead1) & (close < base) & (c1 < conversion) & (close > conversion)
    sell = (lead2 > lead1) & (close < lead2) & (close > base) & (c1 > conversion) & (close < conversion)
    defined = _defined(lead1) & _defined(lead2) & _defined(base) & _defined(conversion) & _defined(c1)
    return buy, sell, defined


def _turning_outside(x: np.ndarray, low: float, high: float) -> Rule:
    """Buy if x < low and rising, sell if x > high and falling (needs x_t and x_{t-1})."""
    x1 = ind.lag(x)
    return (x < low) & (x > x1), (x > high) & (x < x1), _defined(x1) & _defined(x)


def _band_cross(k: np.ndarray, d: np.ndarray, low: float, high: float) -> Rule:
    """Buy if K and D < low and K crosses over D, sell if K and D > high and K crosses under D
    (Stochastic and Stoch RSI); needs K, D at t and t-1."""
    k1, d1 = ind.lag(k), ind.lag(d)
    buy = (k < low) & (d < low) & _cross_over(k, d, k1, d1)
    sell = (k > high) & (d > high) & _cross_under(k, d, k1, d1)
    return buy, sell, _defined(k1) & _defined(d1) & _defined(k) & _defined(d)


def rule_rsi(rsi: np.ndarray) -> Rule:
    """Buy if RSI < 30 and rising, sell if RSI > 70 and falling."""
    return _turning_outside(rsi, 30.0, 70.0)


def rule_stoch(k: np.ndarray, d: np.ndarray) -> Rule:
    """Buy if %K < 20 and %D < 20 and %K crosses over %D; sell if %K > 80 and %D > 80 and %K
    crosses under %D."""
    return _band_cross(k, d, 20.0, 80.0)


def rule_cci(cci: np.ndarray) -> Rule:
    """Buy if CCI < -100 and rising, sell if CCI > 100 and falling (CCI 20 of close)."""
    return _turning_outside(cci, -100.0, 100.0)


def rule_adx(adx: np.ndarray, plus_di: np.ndarray, minus_di: np.ndarray) -> Rule:
    """Buy if ADX > 20 and +DI crosses over -DI, sell if ADX > 20 and +DI crosses under -DI."""
    p1, m1 = ind.lag(plus_di), ind.lag(minus_di)
    strong = adx > 20.0
    buy = strong & _cross_over(plus_di, minus_di, p1, m1)
    sell = strong & _cross_under(plus_di, minus_di, p1, m1)
    defined = _defined(adx) & _defined(p1) & _defined(m1) & _defined(plus_di) & _defined(minus_di)
    return buy, sell, defined


def rule_ao(ao: np.ndarray) -> Rule:
    """Buy if AO crosses above 0 or saucer (ao_t > 0, ao_{t-1} > 0, ao_t > ao_{t-1},
    ao_{t-2} > ao_{t-1}); sell if AO crosses below 0 or the mirror saucer below 0.

    As in the script: the zero cross is Pine's ``ta.crossover(ao, 0)`` (ao_{t-1} <= 0 < ao_t,
    mirror ``ta.crossunder``), and the vote is defined once ao_t and ao_{t-1} exist; on that first
    bar ao_{t-2} is NaN, so only a zero cross can fire (a comparison with NaN is False).
    """
    a1, a2 = ind.lag(ao, 1), ind.lag(ao, 2)
    defined = _defined(a1) & _defined(ao)
    buy = ((a1 <= 0.0) & (ao > 0.0)) | ((ao > 0.0) & (a1 > 0.0) & (ao > a1) & (a2 > a1))
    sell = ((a1 >= 0.0) & (ao < 0.0)) | ((ao < 0.0) & (a1 < 0.0) & (ao < a1) & (a2 < a1))
    return buy, sell, defined


def rule_mom(mom: np.ndarray) -> Rule:
    """Buy if momentum is rising, sell if falling."""
    m1 = ind.lag(mom)
    return mom > m1, mom < m1, _defined(m1) & _defined(mom)


def rule_macd(macd: np.ndarray, signal: np.ndarray) -> Rule:
    """Buy if MACD > signal, sell if MACD < signal."""
    return macd > signal, macd < signal, _defined(macd) & _defined(signal)


def rule_stoch_rsi(close: np.ndarray, ema50: np.ndarray, k: np.ndarray, d: np.ndarray) -> Rule:
    """Buy if downtrend (close < EMA50) and K, D < 20 and K crosses over D;
    sell if uptrend (close > EMA50) and K, D > 80 and K crosses under D. Undefined while EMA50 is."""
    buy, sell, defined = _band_cross(k, d, 20.0, 80.0)
    buy &= close < ema50
    sell &= close > ema50
    return buy, sell, defined & _defined(ema50)


def rule_willr(willr: np.ndarray) -> Rule:
    """Buy if %R < -80 and rising, sell if %R > -20 and falling."""
    return _turning_outside(willr, -80.0, -20.0)


def rule_bbp(close: np.ndarray, ema50: np.ndarray, bull: np.ndarray, bear: np.ndarray) -> Rule:
    """Buy if uptrend (close > EMA50) and bear power < 0 and rising; sell if downtrend
    (close < EMA50) and bull power > 0 and falling. Undefined while EMA50 is."""
    bull1, bear1 = ind.lag(bull), ind.lag(bear)
    buy = (close > ema50) & (bear < 0.0) & (bear > bear1)
    sell = (close < ema50) & (bull > 0.0) & (bull < bull1)
    defined = _defined(ema50) & _defined(bull1) & _defined(bear1) & _defined(bull) & _defined(bear)
    return buy, sell, defined


def rule_uo(uo: np.ndarray) -> Rule:
    """Buy if the ultimate oscillator > 70, sell if < 30 (undefined where UO is NaN: warm-up or a
    window with no range, see :func:`quantlib.data.indicators.ultimate_oscillator`)."""
    return uo > 70.0, uo < 30.0, _defined(uo)


#: vote name -> rule; the inputs of each rule are listed in its signature
RULES = {name: rule_ma for name in MA_VOTES[:-1]}
RULES.update(
    ichimoku=rule_ichimoku,
    rsi=rule_rsi,
    stoch=rule_stoch,
    cci=rule_cci,
    adx=rule_adx,
    ao=rule_ao,
    mom=rule_mom,
    macd=rule_macd,
    stoch_rsi=rule_stoch_rsi,
    willr=rule_willr,
    bbp=rule_bbp,
    uo=rule_uo,
)


def vote(name: str, *inputs) -> np.ndarray:
    """The vote array of rule ``name`` (a key of :data:`RULES`) on the given indicator arrays.

    Inputs are 1-D or (T, N) arrays (time along axis 0). Returns float64 +1 / -1 / 0, NaN where
    the rule is undefined.
    """
    buy, sell, defined = RULES[name](*(np.asarray(x, dtype=np.float64) for x in inputs))
    d = buy.view(np.int8) - sell.view(np.int8)
    return np.where(defined, d, np.nan)


def _block(high, low, close, volume, start, want_votes: bool = True) -> dict[str, np.ndarray]:
    """All indicators, votes and ratings for one (T, B) block (pre-start rows are NaN)."""
    r: dict[str, np.ndarray] = {}
    c = close
    ma_group = _Group(c.shape, r, want_votes)
    osc = _Group(c.shape, r, want_votes)

    # --- moving-average group ------------------------------------------------------------------
    sm = ind._sma_multi(c, MA_WINDOWS)
    for n in MA_WINDOWS:
        r[f"sma_{n}"] = sm[n]
        r[f"ema_{n}"] = ind._recursive(c, n, 2.0 / (n + 1.0), start)
    r["hma_9"] = ind._hma(c, 9)
    r["vwma_20"] = ind._vwma(c, volume, 20)
    for name in MA_VOTES[:-1]:
        # NaN MA (warm-up, zero-volume VWMA) does not vote
        ma_group.add(name, *rule_ma(c, r[name]))

    hh = ind._rolling(high, (9, 14, 26, 52), np.maximum)
    ll = ind._rolling(low, (9, 14, 26, 52), np.minimum)
    conv, base, lead1, lead2 = ind._ichimoku_from_extremes(hh, ll, 9, 26, 52)
    r["ichimoku_conversion"], r["ichimoku_base"] = conv, base
    r["ichimoku_lead1"], r["ichimoku_lead2"] = lead1, lead2
    ma_group.add("ichimoku", *rule_ichimoku(c, conv, base, lead1, lead2))

    # --- oscillator group ----------------------------------------------------------------------
    ema50 = r["ema_50"]  # the trend of Stoch RSI and Bull/Bear power
    r["rsi"] = rsi = ind._rsi(c, 14, start)
    osc.add("rsi", *rule_rsi(rsi))

    k, d = ind._stoch_from_extremes(c, hh[14], ll[14], 3, 3)
    r["stoch_k"], r["stoch_d"] = k, d
    osc.add("stoch", *rule_stoch(k, d))

    r["cci"] = cci = ind._cci(c, 20)  # the script's cci(close, 20)
    osc.add("cci", *rule_cci(cci))

    pdi, mdi, adx = ind._dmi(high, low, c, 14, 14, start)
    r["plus_di"], r["minus_di"], r["adx"] = pdi, mdi, adx
    osc.add("adx", *rule_adx(adx, pdi, mdi))

    r["ao"] = ao = ind._ao((high + low) / 2.0, 5, 34)
    osc.add("ao", *rule_ao(ao))

    r["mom"] = mom = ind._shift_op(c, c, 10, np.subtract)
    osc.add("mom", *rule_mom(mom))

    macd, sig, hist = ind._macd(c, 12, 26, 9, start)
    r["macd"], r["macd_signal"], r["macd_hist"] = macd, sig, hist
    osc.add("macd", *rule_macd(macd, sig))

    srk, srd = ind._stoch_rsi_from_rsi(rsi, 14, 3, 3)
    r["stoch_rsi_k"], r["stoch_rsi_d"] = srk, srd
    osc.add("stoch_rsi", *rule_stoch_rsi(c, ema50, srk, srd))

    r["willr"] = willr = ind._willr_from_extremes(c, hh[14], ll[14])
    osc.add("willr", *rule_willr(willr))

    e13 = ind._recursive(c, 13, 2.0 / 14.0, start)
    bull, bear = high - e13, low - e13
    r["ema_13"], r["bull_power"], r["bear_power"] = e13, bull, bear
    osc.add("bbp", *rule_bbp(c, ema50, bull, bear))

    r["uo"] = uo = ind._uo(high, low, c, 7, 14, 28)
    osc.add("uo", *rule_uo(uo))

    # --- ratings -------------------------------------------------------------------------------
    ma = ma_group.mean()
    other = osc.mean()
    r["recommend_ma"], r["recommend_other"] = ma, other
    r["recommend_all"] = _mean_of_groups(ma, other)
    return r


def _mean_of_groups(ma: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(ma + other) / 2 where both groups are defined, else the defined one (NaN if neither), as
    the script's ratingTotal (sum of the defined group ratings / their count)."""
    both = (ma + other) * 0.5
    return np.where(np.isnan(ma), other, np.where(np.isnan(other), ma, both))


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
    block: int = 16,
) -> dict[str, np.ndarray]:
    """Technical ratings of every bar of every column of a (T, N) OHLCV panel (SPEC §1.5).

    Inputs are (T, N) float arrays (1-D is treated as one column). Each column starts at its first
    finite close (leading NaN rows are allowed, values of high/low/volume before that row are
    ignored) and must be finite in high, low, close and volume from there on (ValueError
    otherwise). ``open`` is accepted for interface symmetry; no rating component uses it.

    Returns {key: (T, N) float64 array} for ``keys`` (default: all of :func:`all_keys`):
    ``recommend_all/ma/other``, every indicator value (``sma_10`` ... ``ema_200``, ``hma_9``,
    ``vwma_20``, ``ichimoku_conversion/base/lead1/lead2`` (undisplaced), ``rsi``, ``stoch_k/d``,
    ``cci`` (of close), ``adx``, ``plus_di``, ``minus_di``, ``ao``, ``mom``, ``macd``,
    ``macd_signal``, ``macd_hist``, ``stoch_rsi_k/d``, ``willr``, ``ema_13``, ``bull_power``,
    ``bear_power``, ``uo``) and the 26 votes ``vote_<name>`` for
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
    out = {k: np.empty((T, N)) for k in want}
    want_votes = any(k.startswith("vote_") for k in want)
    block = max(int(block), 1)
    for j0 in range(0, N, block):  # blocks of symbols; everything inside is vectorized
        j1 = min(j0 + block, N)
        s = start[j0:j1]
        R = int(min(T, s.max(initial=0)))
        pre = np.arange(R)[:, None] < s[None, :]  # rows before each column's first close
        arrs = []
        for name, x in (("high", h), ("low", l), ("close", c), ("volume", v)):
            xb = np.array(x[:, j0:j1], dtype=np.float64, order="C")
            np.copyto(xb[:R], np.nan, where=pre)
            ok = np.isfinite(xb).sum(axis=0) == T - np.minimum(s, T)
            if not ok.all():
                j_bad = int(np.nonzero(~ok)[0][0])
                t_bad = int(s[j_bad] + np.nonzero(~np.isfinite(xb[s[j_bad]:, j_bad]))[0][0])
                raise ValueError(
                    f"compute_ratings: {name} is not finite at row {t_bad} of column {j0 + j_bad} "
                    "after that column's first close; remove missing bars (see ratings_panel) "
                    "instead of leaving NaN inside a series"
                )
            arrs.append(xb)
        res = _block(*arrs, s, want_votes)
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
    block: int = 16,
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
    result = {}
    for k in want:
        full = np.full(T * N, np.nan)
        full[src_flat] = res[k].reshape(-1)[dst_flat_c]
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
