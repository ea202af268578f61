"""Straightforward per-symbol pandas implementation of the Technical Ratings (SPEC §1.5).

The rules are those of TradingView's built-in "Technical Ratings" script, transcribed bar by bar
from its Pine source (``x[1]`` = ``x.shift()``): strict crossovers written out as in the script,
trend = close vs EMA(50), ``cci(close, 20)``, the undisplaced Ichimoku rule, the ultimate
oscillator undefined when a true-range sum is 0, recommend_all = mean of the defined groups.

Written independently of ``quantlib.data.indicators`` / ``quantlib.data.ratings`` (pandas rolling windows,
``ewm`` for the seeded EMAs, ``rolling.apply`` for WMA and the CCI mean deviation, row-by-row
Series logic for the votes) so that it can serve as a cross-check in ``tests/data/test_ratings.py``
and as the slow baseline in ``bench/bench_ratings.py``. Not optimized on purpose.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MA_WINDOWS = (10, 20, 30, 50, 100, 200)


def _seeded_ewm(x: pd.Series, n: int, alpha: float) -> pd.Series:
    """EMA with smoothing ``alpha`` seeded by the mean of the first n valid values of x."""
    valid = x.notna().to_numpy()
    out = pd.Series(np.nan, index=x.index)
    if valid.sum() < n:
        return out
    p = int(np.argmax(valid))
    seeded = x.copy()
    seeded.iloc[: p + n - 1] = np.nan
    seeded.iloc[p + n - 1] = x.iloc[p : p + n].mean()
    return seeded.ewm(alpha=alpha, adjust=False).mean()


def ema(x: pd.Series, n: int) -> pd.Series:
    return _seeded_ewm(x, n, 2.0 / (n + 1))


def rma(x: pd.Series, n: int) -> pd.Series:
    return _seeded_ewm(x, n, 1.0 / n)


def wma(x: pd.Series, n: int) -> pd.Series:
    w = np.arange(1, n + 1, dtype=float)
    return x.rolling(n).apply(lambda a: float(np.dot(a, w) / w.sum()), raw=True)


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    """num / den with 0 where den == 0."""
    return (num / den.where(den != 0)).where(den != 0, 0.0).where(num.notna() & den.notna())


def _stoch(src: pd.Series, hi: pd.Series, lo: pd.Series, n: int) -> pd.Series:
    hh, ll = hi.rolling(n).max(), lo.rolling(n).min()
    return 100.0 * _ratio(src - ll, hh - ll)


def _vote(buy: pd.Series, sell: pd.Series, defined: pd.Series) -> pd.Series:
    v = pd.Series(0.0, index=buy.index)
    v[buy.fillna(False).astype(bool)] = 1.0
    v[sell.fillna(False).astype(bool)] = -1.0
    v[~defined.astype(bool)] = np.nan
    return v


def ratings_reference(df: pd.DataFrame) -> pd.DataFrame:
    """Ratings of one symbol. ``df`` has columns open/high/low/close/volume (any case), one row per
    bar of the symbol (no missing rows), oldest first. Returns a DataFrame on df's index with the
    same keys as :func:`quantlib.data.ratings.compute_ratings`."""
    d = df.rename(columns=str.lower)
    h, l, c, v = (d[k].astype(float) for k in ("high", "low", "close", "volume"))
    out: dict[str, pd.Series] = {}
    votes_ma: dict[str, pd.Series] = {}
    votes_osc: dict[str, pd.Series] = {}

    # moving averages
    for n in MA_WINDOWS:
        out[f"sma_{n}"] = c.rolling(n).mean()
        out[f"ema_{n}"] = ema(c, n)
    out["hma_9"] = wma(2 * wma(c, 4) - wma(c, 9), 3)
    vsum = v.rolling(20).sum()
    out["vwma_20"] = ((c * v).rolling(20).sum() / vsum).where(vsum != 0)
    for name in [f"sma_{n}" for n in MA_WINDOWS] + [f"ema_{n}" for n in MA_WINDOWS] + ["hma_9", "vwma_20"]:
        ma = out[name]
        votes_ma[name] = _vote(ma < c, ma > c, ma.notna())

    def mid(n):
        return (h.rolling(n).max() + l.rolling(n).min()) / 2

    conv, base, lead2 = mid(9), mid(26), mid(52)
    lead1 = (conv + base) / 2
    out.update(ichimoku_conversion=conv, ichimoku_base=base, ichimoku_lead1=lead1, ichimoku_lead2=lead2)
    c1 = c.shift()
    votes_ma["ichimoku"] = _vote(
        (lead1 > lead2) & (c > lead1) & (c < base) & (c1 < conv) & (c > conv),
        (lead2 > lead1) & (c < lead2) & (c > base) & (c1 > conv) & (c < conv),
        lead1.notna() & lead2.notna() & base.notna() & conv.notna() & c1.notna(),
    )

    ema50 = out["ema_50"]  # PriceAvg of the script
    up, down = c > ema50, c < ema50

    # RSI (TradingView formula)
    ch = c.diff()
    ag, al = rma(ch.clip(lower=0), 14), rma((-ch).clip(lower=0), 14)
    rsi = pd.Series(
        np.where(al == 0, 100.0, np.where(ag == 0, 0.0, 100.0 - 100.0 / (1.0 + ag / al))), index=c.index
    ).where(ag.notna())
    out["rsi"] = rsi
    votes_osc["rsi"] = _vote((rsi < 30) & (rsi > rsi.shift()), (rsi > 70) & (rsi < rsi.shift()), rsi.shift().notna())

    # Stochastic 14, 3, 3
    k = _stoch(c, h, l, 14).rolling(3).mean()
    dd = k.rolling(3).mean()
    out["stoch_k"], out["stoch_d"] = k, dd
    k1, d1 = k.shift(), dd.shift()
    votes_osc["stoch"] = _vote(
        (k < 20) & (dd < 20) & (k > dd) & (k1 < d1),
        (k > 80) & (dd > 80) & (k < dd) & (k1 > d1),
        k.notna() & dd.notna() & k1.notna() & d1.notna(),
    )

    # CCI 20 of close (the script's cci(close, 20))
    md = c.rolling(20).apply(lambda a: float(np.mean(np.abs(a - a.mean()))), raw=True)
    cci = _ratio(c - c.rolling(20).mean(), 0.015 * md)
    out["cci"] = cci
    votes_osc["cci"] = _vote((cci < -100) & (cci > cci.shift()), (cci > 100) & (cci < cci.shift()), cci.shift().notna())

    # DMI / ADX 14 (TradingView ta.dmi)
    upm, dnm = h.diff(), -l.diff()
    pdm = pd.Series(np.where((upm > dnm) & (upm > 0), upm, 0.0), index=c.index).where(upm.notna())
    mdm = pd.Series(np.where((dnm > upm) & (dnm > 0), dnm, 0.0), index=c.index).where(dnm.notna())
    pc = c.shift()
    tr = pd.concat([h - l, (h - pc).abs(), (l - pc).abs()], axis=1).max(axis=1, skipna=False)
    atr = rma(tr, 14)
    pdi, mdi = 100 * _ratio(rma(pdm, 14), atr), 100 * _ratio(rma(mdm, 14), atr)
    dx = 100 * _ratio((pdi - mdi).abs(), pdi + mdi)
    adx = rma(dx, 14)
    out.update(plus_di=pdi, minus_di=mdi, adx=adx)
    p1, m1 = pdi.shift(), mdi.shift()
    votes_osc["adx"] = _vote(
        (adx > 20) & (p1 < m1) & (pdi > mdi),
        (adx > 20) & (p1 > m1) & (pdi < mdi),
        adx.notna() & p1.notna() & m1.notna() & pdi.notna() & mdi.notna(),
    )

    # Awesome oscillator
    hl2 = (h + l) / 2
    ao = hl2.rolling(5).mean() - hl2.rolling(34).mean()
    a1, a2 = ao.shift(1), ao.shift(2)
    out["ao"] = ao
    # ta.crossover(ao, 0): ao > 0 and ao[1] <= 0 (Pine's definition); a saucer needs ao[2]
    votes_osc["ao"] = _vote(
        ((ao > 0) & (a1 <= 0)) | ((ao > 0) & (a1 > 0) & (ao > a1) & (a2 > a1)),
        ((ao < 0) & (a1 >= 0)) | ((ao < 0) & (a1 < 0) & (ao < a1) & (a2 < a1)),
        ao.notna() & a1.notna(),
    )

    # Momentum 10
    mom = c - c.shift(10)
    out["mom"] = mom
    votes_osc["mom"] = _vote(mom > mom.shift(), mom < mom.shift(), mom.shift().notna())

    # MACD 12, 26, 9
    macd = ema(c, 12) - ema(c, 26)
    sig = ema(macd, 9)
    out.update(macd=macd, macd_signal=sig, macd_hist=macd - sig)
    votes_osc["macd"] = _vote(macd > sig, macd < sig, sig.notna())

    # Stochastic RSI 14, 14, 3, 3
    sk = _stoch(rsi, rsi, rsi, 14).rolling(3).mean()
    sd = sk.rolling(3).mean()
    out["stoch_rsi_k"], out["stoch_rsi_d"] = sk, sd
    sk1, sd1 = sk.shift(), sd.shift()
    votes_osc["stoch_rsi"] = _vote(
        down & (sk < 20) & (sd < 20) & (sk > sd) & (sk1 < sd1),
        up & (sk > 80) & (sd > 80) & (sk < sd) & (sk1 > sd1),
        ema50.notna() & sk.notna() & sd.notna() & sk1.notna() & sd1.notna(),
    )

    # Williams %R 14
    hh, ll = h.rolling(14).max(), l.rolling(14).min()
    wr = -100 * _ratio(hh - c, hh - ll)
    out["willr"] = wr
    votes_osc["willr"] = _vote((wr < -80) & (wr > wr.shift()), (wr > -20) & (wr < wr.shift()), wr.shift().notna())

    # Bull / bear power 13
    e13 = ema(c, 13)
    bull, bear = h - e13, l - e13
    out.update(ema_13=e13, bull_power=bull, bear_power=bear)
    votes_osc["bbp"] = _vote(
        up & (bear < 0) & (bear > bear.shift()),
        down & (bull > 0) & (bull < bull.shift()),
        ema50.notna() & bear.shift().notna() & bull.shift().notna(),
    )

    # Ultimate oscillator 7, 14, 28
    tl = pd.concat([l, pc], axis=1).min(axis=1, skipna=False)
    th = pd.concat([h, pc], axis=1).max(axis=1, skipna=False)
    bp, trr = c - tl, th - tl

    sums = {n: (bp.rolling(n).sum(), trr.rolling(n).sum()) for n in (7, 14, 28)}
    flat = pd.concat([sums[n][1] == 0 for n in sums], axis=1).any(axis=1)  # script: UO = na

    def avg(n):
        return _ratio(*sums[n])

    uo = (100 * (4 * avg(7) + 2 * avg(14) + avg(28)) / 7).mask(flat)
    out["uo"] = uo
    votes_osc["uo"] = _vote(uo > 70, uo < 30, uo.notna())

    # ratings: mean of the defined votes per group
    vm = pd.DataFrame(votes_ma)
    vo = pd.DataFrame(votes_osc)
    out["recommend_ma"] = vm.mean(axis=1, skipna=True)
    out["recommend_other"] = vo.mean(axis=1, skipna=True)
    # the script's ratingTotal: mean of the group ratings that are defined
    out["recommend_all"] = pd.concat([out["recommend_ma"], out["recommend_other"]], axis=1).mean(axis=1, skipna=True)
    for name, s in {**votes_ma, **votes_osc}.items():
        out["vote_" + name] = s
    return pd.DataFrame(out, index=df.index)
