"""quantlib.data.ratings: the 26 vote rules, warm-up, groups, labels, point-in-time, panel compaction,
and a cross-check of everything against the per-symbol pandas reference (bench/reference_ratings.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantlib.data import ratings as R

NAN = np.nan
ROOT = Path(__file__).resolve().parents[2]


def _load_reference():
    spec = importlib.util.spec_from_file_location("reference_ratings", ROOT / "bench" / "reference_ratings.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ratings_reference


ratings_reference = _load_reference()


def assert_votes(actual, expected):
    np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected, dtype=float))


def random_ohlcv(T, N, seed, starts=None):
    """Random-walk OHLCV panel (T, N); column j starts at row starts[j] (NaN before)."""
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (T, N)), axis=0))
    o = c * np.exp(rng.normal(0, 0.005, (T, N)))
    h = np.maximum(o, c) * (1 + np.abs(rng.normal(0, 0.01, (T, N))))
    l = np.minimum(o, c) * (1 - np.abs(rng.normal(0, 0.01, (T, N))))
    v = rng.lognormal(10, 1, (T, N))
    if starts is not None:
        rows = np.arange(T)[:, None]
        for a in (o, h, l, c, v):
            a[rows < np.asarray(starts)[None, :]] = NAN
    return o, h, l, c, v


# ----------------------------------------------------------------------------------------------
# the rules, on crafted indicator series (buy, sell, neutral, undefined)
# ----------------------------------------------------------------------------------------------
def test_all_26_votes_have_a_rule():
    assert len(R.MA_VOTES) == 15 and len(R.OSC_VOTES) == 11
    assert set(R.RULES) == set(R.MA_VOTES) | set(R.OSC_VOTES)
    assert sum(1 for k in R.all_keys() if k.startswith("vote_")) == 26


@pytest.mark.parametrize("name", R.MA_VOTES[:-1])
def test_rule_ma(name):
    close = [10.0, 10, 10, 10]
    ma = [NAN, 9, 11, 10]  # warm-up, MA < close (buy), MA > close (sell), equal (neutral)
    assert_votes(R.vote(name, close, ma), [NAN, 1, -1, 0])


def _pairs(*cases):
    """Stack (previous bar, current bar) cases as the columns of (2, K) arrays, one array per input."""
    return [np.array(col, dtype=float).T for col in zip(*cases)]


def test_rule_ichimoku_buy_sell_and_each_condition():
    # columns: (close, conversion, base, lead 1, lead 2), each as [bar t-1, bar t]; the lines are
    # those of bar t (repeated at t-1, where only close matters). lead 1 = (conversion + base) / 2.
    up = dict(conv=10.0, base=14.0, lead1=12.0, lead2=11.0)  # lead1 > lead2
    dn = dict(conv=10.0, base=6.0, lead1=8.0, lead2=9.0)  # lead2 > lead1

    def case(c_prev, c, lines):
        return ([c_prev, c], [lines["conv"]] * 2, [lines["base"]] * 2, [lines["lead1"]] * 2, [lines["lead2"]] * 2)

    cases = [
        case(9, 13, up),  # buy: 9 < conv 10 < 13, 13 > lead1 12, 13 < base 14, lead1 > lead2
        case(10, 13, up),  # close_{t-1} == conversion: not below it -> 0 (strict)
        case(11, 13, up),  # close_{t-1} above conversion (no cross this bar) -> 0
        case(9, 14, up),  # close == base: not below it -> 0
        case(9, 12, up),  # close == lead 1: not above it -> 0
        case(9, 13, dict(up, lead2=12.5)),  # lead 1 < lead 2 -> 0 (and close > lead 2: no sell)
        case(11, 7, dn),  # sell: 11 > conv 10 > 7, 7 < lead2 9, 7 > base 6, lead2 > lead1
        case(10, 7, dn),  # close_{t-1} == conversion -> 0 (strict)
        case(11, 6, dn),  # close == base: not above it -> 0
        case(11, 9, dn),  # close == lead 2: not below it -> 0
        case(11, 7, dict(dn, lead2=7.5)),  # lead 2 < lead 1 -> 0
    ]
    close, conv, base, lead1, lead2 = _pairs(*cases)
    v = R.vote("ichimoku", close, conv, base, lead1, lead2)
    assert_votes(v[0], [NAN] * len(cases))  # no close_{t-1} on the first bar: no vote
    assert_votes(v[1], [1, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0])
    # warm-up: no vote while lead 2 (the 52-bar line) is undefined
    lead2_nan = lead2.copy()
    lead2_nan[1, 0] = NAN
    assert np.isnan(R.vote("ichimoku", close, conv, base, lead1, lead2_nan)[1, 0])


def _ichimoku_path(sell: bool) -> np.ndarray:
    """Closes (high = low = close) that end on an Ichimoku buy (or, mirrored, a sell) at row 60:
    100 x 31 bars, a 200 plateau (rows 31-50), 150 x 8, a dip to 140 and a close at 165.
    Row 60: conversion (rows 52-60) = (165 + 140) / 2 = 152.5 and close_{t-1} = 140 < 152.5 < 165;
    base (rows 35-60) = (200 + 140) / 2 = 170 > 165; lead 1 = 161.25 < 165; lead 2 (rows 9-60) =
    (200 + 100) / 2 = 150 < lead 1. The mirror 300 - c flips every inequality: a sell."""
    c = np.concatenate([np.full(31, 100.0), np.full(20, 200.0), np.full(8, 150.0), [140.0, 165.0, 166.0]])
    return 300.0 - c if sell else c


@pytest.mark.parametrize("sell", [False, True])
def test_ichimoku_vote_from_prices(sell):
    c = _ichimoku_path(sell)
    r = _ratings_1d(c, h=c, l=c)
    assert r["ichimoku_conversion"][60] == (147.5 if sell else 152.5)
    assert r["ichimoku_base"][60] == (130.0 if sell else 170.0)
    assert r["ichimoku_lead1"][60] == (138.75 if sell else 161.25)
    assert r["ichimoku_lead2"][60] == 150.0
    v = r["vote_ichimoku"]
    assert np.isnan(v[:51]).all() and not np.isnan(v[51:]).any()  # lead 2 needs 52 bars
    assert v[60] == (-1 if sell else 1)
    assert (v[51:60] == 0).all()
    assert v[61] == 0  # the next bar: close_{t-1} is already beyond the conversion line


def test_rule_rsi():
    rsi = [NAN, 25, 28, 26, 75, 72, 74, 50]
    # row1 no previous value; 28<30 rising: buy; 26 falling: 0; 75 rising: 0; 72>70 falling: sell;
    # 74 rising: 0; 50 falling but not > 70: 0
    assert_votes(R.vote("rsi", rsi), [NAN, NAN, 1, 0, 0, -1, 0, 0])


def test_rule_stoch():
    k = [NAN, 10, 15, 85, 81, 50, 10, 15, 12, 85, 84, 90, 79]
    d = [NAN, 12, 12, 80, 83, 40, 10, 10, 14, 85, 86, 85, 85]
    # row2: 10 < 12 then 15 > 12, %K and %D < 20: buy ; row3: no cross
    # row4: 85 > 80 then 81 < 83, %K and %D > 80: sell ; row5: crosses over but %K >= 20: 0
    # row6: 50 > 40 then 10 == 10: no cross ; row7: %K == %D on the previous bar (10 == 10), then
    # 15 > 10: NOT a cross (strict) ; row8: crosses under but %K < 80: 0
    # row9: equal (85 == 85) ; row10: 84 < 86 after equality: not a cross under (strict)
    # row11: crosses over, far above the low band: 0 ; row12: 90 > 85 then 79 < 85: crosses under,
    # %D > 80 but %K is not: 0
    # (a cross over with %K < 20 implies %D < %K < 20, and a cross under with %K > 80 implies
    # %D > 80, so the %D band is checked by the script but never decides on its own)
    assert_votes(R.vote("stoch", k, d), [NAN, NAN, 1, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0])


def test_rule_cci():
    cci = [NAN, -150, -120, -130, 150, 120, 90]
    assert_votes(R.vote("cci", cci), [NAN, NAN, 1, 0, 0, -1, 0])


def test_rule_adx():
    adx = [NAN, 25, 25, 25, 15, 30, 30, 30, 30, 30, 30]
    pdi = [10, 10, 22, 15, 25, 26, 10, 20, 25, 20, 15]
    mdi = [20, 20, 18, 19, 10, 10, 30, 20, 20, 20, 20]
    # row0 ADX undefined ; row1 no cross ; row2 +DI crosses over, ADX>20: buy ; row3 crosses under: sell
    # row4 crosses over but ADX<=20: 0 ; row5 no cross ; row6 crosses under, ADX 30: sell
    # row7 +DI == -DI ; row8 +DI > -DI after equality: not a cross (strict) ; row9 equal again
    # row10 +DI < -DI after equality: not a cross under (strict)
    assert_votes(R.vote("adx", adx, pdi, mdi), [NAN, 0, 1, -1, 0, 0, -1, 0, 0, 0, 0])


def test_rule_ao():
    ao = [NAN, -1.0, 0.5, 0.3, 0.4, -0.2, -0.3, -0.1, -0.4, 0.0, 0.2, 0.1, 0.15, 0.0, -0.1, 0.3, 0.2, 0.1]
    # row1: ao_{t-1} undefined -> no vote
    # row2: crosses above 0 (-1 -> 0.5): buy, already voting although ao_{t-2} is undefined
    # row3: falling above 0: 0 ; row4: saucer (0.5 > 0.3 < 0.4, all > 0): buy
    # row5: crosses below 0: sell ; row6: falling below 0 but ao_{t-2} = 0.4 > ao_{t-1}: 0
    # row7: rising below 0: 0 ; row8: mirror saucer (-0.3 < -0.1 > -0.4, below 0): sell
    # row9: -0.4 -> 0.0 is not above 0: 0 ; row10: 0.0 -> 0.2: ta.crossover(ao, 0), whose
    # previous-bar test is ao_{t-1} <= 0: buy ; row11: 0 ; row12: saucer (0.2 > 0.1 < 0.15): buy
    # row13: 0 ; row14: 0.0 -> -0.1: ta.crossunder (ao_{t-1} >= 0): sell
    # row15: -0.1 -> 0.3 crosses above: buy ; row16: falling: 0
    # row17: 0.3 > 0.2 > 0.1 is falling, not a saucer: 0
    assert_votes(R.vote("ao", ao), [NAN, NAN, 1, 0, 1, -1, 0, 0, -1, 0, 1, 0, 1, 0, -1, 1, 0, 0])
    # a rise above 0 on the first defined bar (no ao_{t-2}) is not a saucer, nor a rise after a
    # flat bar (ao_{t-2} == ao_{t-1}: the dip must be strict); the mirror below 0 likewise
    assert_votes(R.vote("ao", [NAN, 0.3, 0.4]), [NAN, NAN, 0])
    assert_votes(R.vote("ao", [0.5, 0.3, 0.3, 0.4]), [NAN, 0, 0, 0])
    assert_votes(R.vote("ao", [-0.5, -0.3, -0.3, -0.4]), [NAN, 0, 0, 0])
    assert_votes(R.vote("ao", [NAN, -1.0, 1.0]), [NAN, NAN, 1])


def test_rule_mom():
    assert_votes(R.vote("mom", [NAN, 1.0, 2.0, 2.0, 1.0]), [NAN, NAN, 1, 0, -1])


def test_rule_macd():
    assert_votes(R.vote("macd", [1.0, 1.0, 2.0, 3.0], [NAN, 0.5, 3.0, 3.0]), [NAN, 1, -1, 0])


def test_rule_stoch_rsi():
    close = [9.0, 9, 9, 11, 11, 9, 9, 11, 11, 10, 10, 9, 9]
    ema50 = [10.0, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, NAN]
    k = [10.0, 16, 18, 85, 83, 85, 83, 84, 83, 85, 83, 14, 16]
    d = [15.0, 15, 16, 82, 84, 84, 84, 84, 84, 84, 84, 14, 15]
    # row1: downtrend (close < EMA50), K/D < 20, K crosses over D: buy ; row2, row3: no cross
    # row4: uptrend, K/D > 80, K crosses under D: sell ; row5: crosses over but K > 80: 0
    # row6: crosses under but downtrend: 0 ; row7: K == D ; row8: K < D after equality: not a
    # cross under (strict) ; row9: close == EMA50 (no trend), K > D ; row10: crosses under but no
    # uptrend: 0 ; row11: K == D in a downtrend ; row12: EMA50 undefined: no vote
    assert_votes(R.vote("stoch_rsi", close, ema50, k, d), [NAN, 1, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, NAN])
    # K crosses over D in a downtrend but K is not < 20: neutral
    assert_votes(R.vote("stoch_rsi", [9.0, 9], [10.0, 10], [18.0, 25], [19.0, 24]), [NAN, 0])


def test_rule_willr():
    wr = [NAN, -90, -85, -88, -10, -15, -12, -50]
    assert_votes(R.vote("willr", wr), [NAN, NAN, 1, 0, 0, -1, 0, 0])


def test_rule_bbp():
    close = [11.0, 11, 11, 9, 9, 9, 10, 10, 11]
    ema50 = [10.0, 10, 10, 10, 10, 10, 10, 10, NAN]
    bull = [2.0, 2, 2, 2, 1.5, -0.5, 1, 0.5, 1]
    bear = [-1.0, -0.5, 0.5, -1, -1, -2, -1, -0.5, -1]
    # row1: uptrend (close > EMA50), bear < 0 and rising: buy ; row2: bear > 0: 0
    # row3: downtrend, bull not falling: 0 ; row4: downtrend, bull > 0 and falling: sell
    # row5: bull falling but < 0: 0 ; row6: close == EMA50 (no trend): 0
    # row7: bear rising and bull falling, still no trend: 0 ; row8: EMA50 undefined: no vote
    assert_votes(R.vote("bbp", close, ema50, bull, bear), [NAN, 1, 0, 0, -1, 0, 0, 0, NAN])


def test_rule_uo():
    # NaN = warm-up or a window without range (the script leaves UO undefined there): no vote
    assert_votes(R.vote("uo", [NAN, 75, 50, 25, 70, 30, NAN]), [NAN, 1, 0, -1, 0, 0, NAN])


# ----------------------------------------------------------------------------------------------
# votes computed from prices
# ----------------------------------------------------------------------------------------------
def _ratings_1d(c, h=None, l=None, v=None, **kw):
    c = np.asarray(c, dtype=float)
    h = c * 1.01 if h is None else h
    l = c * 0.99 if l is None else l
    v = np.full_like(c, 1000.0) if v is None else v
    return {k: a[:, 0] for k, a in R.compute_ratings(None, h, l, c, v, **kw).items()}


def test_ma_votes_from_prices_buy_and_sell():
    t = np.arange(300.0)
    up = _ratings_1d(100 * 1.01**t)
    down = _ratings_1d(100 * 0.99**t)
    for name in [f"{k}_{n}" for k in ("sma", "ema") for n in R.MA_WINDOWS] + ["vwma_20"]:
        n = int(name.split("_")[1])
        assert np.isnan(up["vote_" + name][: n - 1]).all()  # warm-up does not vote
        assert (up["vote_" + name][n - 1 :] == 1).all(), name  # rising price above its averages
        assert (down["vote_" + name][n - 1 :] == -1).all(), name
    # Hull removes the lag of a *linear* trend, so it needs an accelerating one: below the close of
    # an accelerating rise (buy), above the close of an accelerating fall (sell); votes from row 10
    assert np.isnan(up["vote_hma_9"][:10]).all()
    assert (up["vote_hma_9"][10:] == 1).all()
    accel_fall = _ratings_1d(1000 - 0.01 * t**2)
    assert (accel_fall["vote_hma_9"][10:] == -1).all()


def test_rsi_and_momentum_votes_from_prices():
    # 30 falling bars (RSI < 30) then one up bar: RSI rises while < 30 -> buy on that bar
    c = np.concatenate([100 - np.arange(30.0), [71.5]])
    r = _ratings_1d(c)
    assert r["rsi"][29] < 30 and r["rsi"][30] > r["rsi"][29]
    assert r["vote_rsi"][30] == 1 and (r["vote_rsi"][15:30] == 0).all()
    assert np.isnan(r["vote_rsi"][:15]).all()
    # the mirror: 30 rising bars then one down bar -> sell
    c = np.concatenate([100 + np.arange(30.0), [128.5]])
    r = _ratings_1d(c)
    assert r["rsi"][29] > 70 and r["vote_rsi"][30] == -1
    # momentum: linear rise then acceleration (buy), then deceleration (sell)
    c = np.concatenate([np.arange(20.0), 19 + 3 * np.arange(1.0, 6.0)])
    r = _ratings_1d(c)
    assert (r["vote_mom"][11:20] == 0).all() and r["vote_mom"][20] == 1
    assert np.isnan(r["vote_mom"][:11]).all()


def test_votes_equal_rules_applied_to_returned_indicators():
    o, h, l, c, v = random_ohlcv(400, 3, seed=11, starts=[0, 30, 100])
    res = R.compute_ratings(o, h, l, c, v)
    ichimoku_lines = (res["ichimoku_conversion"], res["ichimoku_base"], res["ichimoku_lead1"], res["ichimoku_lead2"])
    inputs = {
        "ichimoku": (c, *ichimoku_lines),
        "rsi": (res["rsi"],),
        "stoch": (res["stoch_k"], res["stoch_d"]),
        "cci": (res["cci"],),
        "adx": (res["adx"], res["plus_di"], res["minus_di"]),
        "ao": (res["ao"],),
        "mom": (res["mom"],),
        "macd": (res["macd"], res["macd_signal"]),
        "stoch_rsi": (c, res["ema_50"], res["stoch_rsi_k"], res["stoch_rsi_d"]),
        "willr": (res["willr"],),
        "bbp": (c, res["ema_50"], res["bull_power"], res["bear_power"]),
        "uo": (res["uo"],),
    }
    for name in R.MA_VOTES[:-1]:
        inputs[name] = (c, res[name])
    for name, args in inputs.items():
        assert_votes(res["vote_" + name], R.vote(name, *args))
    # every oscillator rule fires both ways on these 3 x 400 random bars, and so does Ichimoku;
    # all but momentum / MACD (a tie is needed for their 0) also produce neutral votes
    for name in R.OSC_VOTES + ("ichimoku",):
        votes = res["vote_" + name]
        assert (votes == 1).any() and (votes == -1).any(), name
        assert name in ("mom", "macd") or (votes == 0).any(), name


def test_trend_is_close_vs_ema50_not_sma50():
    # Stoch RSI and Bull/Bear power take their trend from EMA(50): on random bars the votes equal
    # the rules fed with EMA(50) and differ from the same rules fed with SMA(50)
    o, h, l, c, v = random_ohlcv(3000, 4, seed=13)
    res = R.compute_ratings(o, h, l, c, v)
    ema50, sma50 = res["ema_50"], res["sma_50"]
    assert (np.sign(c - ema50) != np.sign(c - sma50))[60:].mean() > 0.02  # the trends do disagree
    for name, k1, k2 in (("stoch_rsi", "stoch_rsi_k", "stoch_rsi_d"), ("bbp", "bull_power", "bear_power")):
        assert_votes(res["vote_" + name], R.vote(name, c, ema50, res[k1], res[k2]))
        with_sma = R.vote(name, c, sma50, res[k1], res[k2])
        differ = ~np.isnan(res["vote_" + name]) & (res["vote_" + name] != with_sma)
        assert differ.sum() > 0, name
    # the votes start with EMA(50) (row 49), not with their oscillator inputs (rows 32 / 13)
    assert np.isnan(res["vote_stoch_rsi"][:49]).all() and np.isnan(res["vote_bbp"][:49]).all()
    assert not np.isnan(res["vote_stoch_rsi"][49:]).any() and not np.isnan(res["vote_bbp"][49:]).any()


def test_cci_vote_uses_cci_of_close():
    from quantlib.data import indicators as ind

    o, h, l, c, v = random_ohlcv(1500, 3, seed=17)
    res = R.compute_ratings(o, h, l, c, v)
    np.testing.assert_array_equal(res["cci"], ind.cci(c, 20))
    assert_votes(res["vote_cci"], R.vote("cci", ind.cci(c, 20)))
    # a typical-price CCI would vote differently on a sizeable share of the bars
    tp_votes = R.vote("cci", ind.cci(ind.typical_price(h, l, c), 20))
    defined = ~np.isnan(tp_votes)
    assert (res["vote_cci"][defined] != tp_votes[defined]).mean() > 0.02


def test_ichimoku_votes_on_sim_demo_data():
    # SPEC §1.5: the Ichimoku component votes on real-looking data (the old rule never could)
    from quantlib.data.sources.simulated import SimExchange

    sim = SimExchange(venue="crypto", seed=7, as_of="2026-11-30")
    markets = sim.markets()
    symbols = markets.loc[(markets["quote"] == "USDT") & (markets["type"] == "spot"), "symbol"].head(6).tolist()
    bars = {s: sim.ohlcv(s, "1d").set_index("ts") for s in symbols}
    frames = {k: pd.DataFrame({s: b[k] for s, b in bars.items()}).sort_index()
              for k in ("open", "high", "low", "close", "volume")}
    keys = ["vote_ichimoku", "ichimoku_conversion", "ichimoku_base", "ichimoku_lead1", "ichimoku_lead2"]
    res = R.ratings_panel(**frames, keys=keys)
    vote = res["vote_ichimoku"]
    assert (vote == 1).to_numpy().sum() > 0 and (vote == -1).to_numpy().sum() > 0
    for s in symbols:  # every symbol votes both ways on its ~7 years of daily bars
        assert {-1.0, 0.0, 1.0} <= set(vote[s].dropna().unique()), s
    # the lines are the undisplaced 9/26/52-bar midpoints of bar t, and the votes follow the rule
    b = bars[symbols[0]]

    def mid(n):
        return ((b["high"].rolling(n).max() + b["low"].rolling(n).min()) / 2).to_numpy()

    np.testing.assert_allclose(res["ichimoku_conversion"][symbols[0]].dropna(), mid(9)[8:], rtol=1e-15)
    np.testing.assert_allclose(res["ichimoku_lead2"][symbols[0]].dropna(), mid(52)[51:], rtol=1e-15)
    lines = [res[k][symbols[0]].to_numpy() for k in keys[1:]]
    assert_votes(vote[symbols[0]], R.vote("ichimoku", frames["close"][symbols[0]].to_numpy(), *lines))


# ----------------------------------------------------------------------------------------------
# warm-up and groups
# ----------------------------------------------------------------------------------------------
#: first row (from a series' first bar) at which each vote is defined: the script's na() checks
FIRST_VOTE_ROW = {
    **{f"sma_{n}": n - 1 for n in R.MA_WINDOWS},
    **{f"ema_{n}": n - 1 for n in R.MA_WINDOWS},
    "hma_9": 10,  # WMA 9 (row 8) then WMA 3
    "vwma_20": 19,
    "ichimoku": 51,  # lead 2 (52 bars); close_{t-1} exists by then
    "rsi": 15,  # RSI from row 14, and RSI_{t-1}
    "stoch": 18,  # %D from row 17, and %D_{t-1}
    "cci": 20,  # CCI from row 19, and CCI_{t-1}
    "adx": 27,  # ADX from row 2 * 14 - 1
    "ao": 34,  # AO from row 33, and AO_{t-1} (AO_{t-2} is not required)
    "mom": 11,  # momentum from row 10, and its previous value
    "macd": 33,  # signal from row 26 + 9 - 2
    "stoch_rsi": 49,  # EMA(50) (its K/D exist from row 32)
    "willr": 14,  # %R from row 13, and %R_{t-1}
    "bbp": 49,  # EMA(50) (bull/bear power exist from row 12)
    "uo": 28,  # 28 true ranges, the first needs a previous close
}


def test_warmup_does_not_vote_first_vote_rows():
    assert set(FIRST_VOTE_ROW) == set(R.MA_VOTES + R.OSC_VOTES)
    start = 37
    o, h, l, c, v = random_ohlcv(400, 2, seed=2, starts=[0, start])
    res = R.compute_ratings(o, h, l, c, v)
    for name, row in FIRST_VOTE_ROW.items():
        for j, s in enumerate((0, start)):
            votes = res["vote_" + name][:, j]
            assert np.isnan(votes[: s + row]).all(), (name, j)
            assert not np.isnan(votes[s + row :]).any(), (name, j)


def test_group_is_mean_of_defined_votes():
    o, h, l, c, v = random_ohlcv(60, 1, seed=2)
    res = R.compute_ratings(o, h, l, c, v)
    ma_votes = np.stack([res["vote_" + n][:, 0] for n in R.MA_VOTES])
    osc_votes = np.stack([res["vote_" + n][:, 0] for n in R.OSC_VOTES])
    # at the last bar 11 MA votes are defined: SMA/EMA 10..50, HMA, VWMA, Ichimoku (lead 2 from row 51)
    assert (~np.isnan(ma_votes[:, -1])).sum() == 11
    for t in range(60):
        mv, ov = ma_votes[:, t], osc_votes[:, t]
        exp_ma = np.nanmean(mv) if (~np.isnan(mv)).any() else NAN
        exp_osc = np.nanmean(ov) if (~np.isnan(ov)).any() else NAN
        np.testing.assert_allclose(res["recommend_ma"][t, 0], exp_ma, rtol=0, atol=1e-15, equal_nan=True)
        np.testing.assert_allclose(res["recommend_other"][t, 0], exp_osc, rtol=0, atol=1e-15, equal_nan=True)
    # first defined rows: MA group at row 9 (SMA10/EMA10), oscillators at row 11 (momentum vote)
    assert np.isnan(res["recommend_ma"][:9]).all() and not np.isnan(res["recommend_ma"][9, 0])
    assert np.isnan(res["recommend_other"][:11]).all() and not np.isnan(res["recommend_other"][11, 0])
    assert res["recommend_other"][11, 0] == res["vote_mom"][11, 0]  # the only oscillator defined yet
    # if every MA warm-up counted as a neutral vote the rating would be diluted: it is not
    mv = ma_votes[:, -1]
    assert res["recommend_ma"][-1, 0] == pytest.approx(np.nansum(mv) / 11)


def test_recommend_all_is_mean_of_defined_groups():
    o, h, l, c, v = random_ohlcv(300, 4, seed=4, starts=[0, 5, 50, 200])
    res = R.compute_ratings(o, h, l, c, v)
    ma, other, all_ = res["recommend_ma"], res["recommend_other"], res["recommend_all"]
    both = ~np.isnan(ma) & ~np.isnan(other)
    np.testing.assert_allclose(all_[both], (ma[both] + other[both]) / 2, rtol=0, atol=1e-15)
    assert (both & (ma != other)).any()  # not trivially equal groups
    # the script's ratingTotal averages the groups that are defined: on a symbol's rows 9 and 10
    # only the MA group votes, and recommend_all is recommend_ma there; NaN before row 9
    only_ma = ~np.isnan(ma) & np.isnan(other)
    assert only_ma.sum() == 2 * 4
    np.testing.assert_array_equal(all_[only_ma], ma[only_ma])
    np.testing.assert_array_equal(np.isnan(all_), np.isnan(ma) & np.isnan(other))
    for j, s in enumerate([0, 5, 50, 200]):
        assert np.isnan(all_[: s + 9, j]).all() and np.array_equal(all_[s + 9 : s + 11, j], ma[s + 9 : s + 11, j])
    assert np.nanmax(np.abs(all_)) <= 1


# ----------------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------------
def test_rating_label_boundaries():
    x = np.array([1.0, 0.5000001, 0.5, 0.1000001, 0.1, 0.0, -0.1, -0.1000001, -0.5, -0.5000001, -1.0, NAN])
    expected = ["STRONG_BUY", "STRONG_BUY", "BUY", "BUY", "NEUTRAL", "NEUTRAL", "NEUTRAL", "SELL", "SELL",
                "STRONG_SELL", "STRONG_SELL", None]
    assert list(R.rating_label(x)) == expected
    s = pd.Series(x, index=list("abcdefghijkl"), name="recommend_all")
    out = R.rating_label(s)
    assert isinstance(out, pd.Series) and list(out.index) == list(s.index) and list(out) == expected
    assert R.rating_label(0.5) == "BUY" and R.rating_label(-0.5) == "SELL" and R.rating_label(NAN) is None
    assert R.rating_label(np.float64(0.6)) == "STRONG_BUY"
    # float noise in a mean of votes must not move a boundary: (-3/5 + 4/5) / 2 is 0.1 exactly in
    # rational arithmetic but 0.10000000000000003 in floating point
    noisy = (-3 / 5 + 4 / 5) * 0.5
    assert noisy > 0.1 and R.rating_label(noisy) == "NEUTRAL"
    assert R.rating_label(-noisy) == "NEUTRAL"
    assert R.rating_label(np.array([[0.2, -0.7]])).tolist() == [["BUY", "STRONG_SELL"]]


# ----------------------------------------------------------------------------------------------
# point-in-time, blocks, validation
# ----------------------------------------------------------------------------------------------
def test_point_in_time_compute_ratings():
    T, t = 500, 321
    o, h, l, c, v = random_ohlcv(T, 6, seed=7, starts=[0, 0, 40, 120, 250, 330])
    base = R.compute_ratings(o, h, l, c, v)
    rng = np.random.default_rng(8)
    o2, h2, l2, c2, v2 = (a.copy() for a in (o, h, l, c, v))
    f = rng.uniform(0.7, 1.3, (T - t - 1, 6))
    for a in (o2, h2, l2, c2):
        a[t + 1 :] *= f
    v2[t + 1 :] *= rng.uniform(0.1, 10, (T - t - 1, 6))
    changed = R.compute_ratings(o2, h2, l2, c2, v2)
    for k in base:
        np.testing.assert_array_equal(base[k][: t + 1], changed[k][: t + 1], err_msg=k)
    assert not np.array_equal(base["recommend_all"][t + 1 :], changed["recommend_all"][t + 1 :], equal_nan=True)


def test_block_size_does_not_change_results():
    o, h, l, c, v = random_ohlcv(260, 7, seed=9, starts=[0, 3, 9, 50, 70, 200, 260])
    a = R.compute_ratings(o, h, l, c, v, block=1)
    b = R.compute_ratings(o, h, l, c, v, block=3)
    d = R.compute_ratings(o, h, l, c, v, block=1000)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        np.testing.assert_array_equal(a[k], d[k], err_msg=k)
    assert np.isnan(a["recommend_all"][:, -1]).all()  # a column with no bar at all


def test_compute_ratings_validation_and_keys():
    o, h, l, c, v = random_ohlcv(80, 2, seed=1)
    res = R.compute_ratings(o, h, l, c, v, keys=["recommend_all", "rsi"])
    assert set(res) == {"recommend_all", "rsi"} and res["rsi"].shape == (80, 2)
    with pytest.raises(KeyError):
        R.compute_ratings(o, h, l, c, v, keys=["nope"])
    c_gap = c.copy()
    c_gap[40, 1] = NAN  # a gap inside a series is not allowed here (ratings_panel removes gaps)
    with pytest.raises(ValueError, match="column 1"):
        R.compute_ratings(o, h, l, c_gap, v)
    v_bad = v.copy()
    v_bad[10, 0] = NAN
    with pytest.raises(ValueError, match="volume"):
        R.compute_ratings(o, h, l, c, v_bad)
    with pytest.raises(ValueError):
        R.compute_ratings(o, h[:, :1], l, c, v)
    # values of high/low/volume before the first close are ignored
    h2 = h.copy()
    c2 = c.copy()
    c2[:5, 0] = NAN
    h2[:5, 0] = 1e9
    a = R.compute_ratings(o, h, l, c2, v)
    b = R.compute_ratings(o, h2, l, c2, v)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# ----------------------------------------------------------------------------------------------
# ratings_panel: compaction onto each symbol's own bars
# ----------------------------------------------------------------------------------------------
def _frames(T=320, N=4, seed=5):
    o, h, l, c, v = random_ohlcv(T, N, seed=seed)
    idx = pd.date_range("2020-01-01", periods=T, freq="D", tz="UTC")
    cols = [f"BINANCE:SYM{j}USDT" for j in range(N)]
    return {k: pd.DataFrame(a, index=idx, columns=cols) for k, a in zip(("open", "high", "low", "close", "volume"), (o, h, l, c, v))}


def _alone(frames, sym):
    """compute_ratings on one symbol's compacted bars, scattered back to the panel index."""
    valid = frames["close"][sym].notna().to_numpy()
    arrs = [frames[k][sym].to_numpy()[valid] for k in ("open", "high", "low", "close", "volume")]
    res = R.compute_ratings(*arrs)
    out = {}
    for k, a in res.items():
        full = np.full(len(valid), NAN)
        full[valid] = a[:, 0]
        out[k] = full
    return out


@pytest.mark.parametrize("with_gaps", [True, False])
def test_ratings_panel_equals_each_symbol_alone(with_gaps):
    f = _frames()
    syms = list(f["close"].columns)
    # different starts (leading NaN rows)
    for k in f:
        f[k].iloc[:60, 1] = NAN
        f[k].iloc[:150, 3] = NAN
    if with_gaps:
        for k in f:
            f[k].iloc[[100, 101, 200], 0] = NAN  # missing bars inside symbol 0's history
            f[k].iloc[280:, 2] = NAN  # symbol 2 stops trading
    res = R.ratings_panel(**f, keys="all")
    assert set(res) == set(R.all_keys())
    for sym in syms:
        alone = _alone(f, sym)
        for k, df in res.items():
            assert list(df.columns) == syms and df.index.equals(f["close"].index)
            np.testing.assert_allclose(df[sym].to_numpy(), alone[k], rtol=1e-12, atol=1e-12, equal_nan=True,
                                       err_msg=f"{sym} {k}")
    if with_gaps:
        # NaN where the symbol had no bar, values right after a gap continue the symbol's own sequence
        ra = res["recommend_all"][syms[0]]
        assert ra.iloc[[100, 101, 200]].isna().all() and ra.iloc[[99, 102, 201]].notna().all()
        # different from treating the gap as a bar of a chart with holes: skipping rows matters
        assert not np.isnan(res["rsi"][syms[0]].iloc[102])
        assert res["recommend_all"][syms[2]].iloc[280:].isna().all()


def test_ratings_panel_default_keys_and_validation():
    f = _frames(T=120, N=2)
    res = R.ratings_panel(**f)
    assert set(res) == {"recommend_all", "recommend_ma", "recommend_other", "rsi", "adx"}
    bad = {k: df.copy() for k, df in f.items()}
    bad["high"].iloc[50, 1] = NAN
    with pytest.raises(ValueError, match="SYM1"):
        R.ratings_panel(**bad)
    shifted = dict(f, low=f["low"].iloc[::-1])
    with pytest.raises(ValueError):
        R.ratings_panel(**shifted)
    unsorted = {k: df.iloc[::-1] for k, df in f.items()}
    with pytest.raises(ValueError):
        R.ratings_panel(**unsorted)
    # a missing volume on a bar counts as zero volume (VWMA weight 0), not as a missing bar
    nv = {k: df.copy() for k, df in f.items()}
    nv["volume"].iloc[70, 0] = NAN
    zv = {k: df.copy() for k, df in f.items()}
    zv["volume"].iloc[70, 0] = 0.0
    a, b = R.ratings_panel(**nv, keys="all"), R.ratings_panel(**zv, keys="all")
    pd.testing.assert_frame_equal(a["vwma_20"], b["vwma_20"])


def test_point_in_time_ratings_panel():
    f = _frames(T=300, N=3, seed=12)
    for k in f:
        f[k].iloc[[50, 51, 180], 0] = NAN
        f[k].iloc[:90, 2] = NAN
    t = 210
    g = {k: df.copy() for k, df in f.items()}
    rng = np.random.default_rng(1)
    for k in ("open", "high", "low", "close"):
        g[k].iloc[t + 1 :] *= rng.uniform(0.8, 1.2, (len(g[k]) - t - 1, 3))
    g["close"].iloc[250, 1] = NAN  # later bars may also appear / disappear
    for k in g:
        g[k].iloc[250, 1] = NAN
    a, b = R.ratings_panel(**f, keys="all"), R.ratings_panel(**g, keys="all")
    for k in a:
        pd.testing.assert_frame_equal(a[k].iloc[: t + 1], b[k].iloc[: t + 1], check_exact=True)


# ----------------------------------------------------------------------------------------------
# cross-check against the straightforward per-symbol pandas implementation
# ----------------------------------------------------------------------------------------------
def test_cross_check_against_pandas_reference():
    T, starts = 600, [0, 17, 120, 380]
    o, h, l, c, v = random_ohlcv(T, len(starts), seed=21, starts=starts)
    res = R.compute_ratings(o, h, l, c, v)
    for j, s in enumerate(starts):
        df = pd.DataFrame({"open": o[s:, j], "high": h[s:, j], "low": l[s:, j], "close": c[s:, j], "volume": v[s:, j]})
        ref = ratings_reference(df)
        assert set(ref.columns) == set(R.all_keys())
        assert np.isnan(res["recommend_all"][:s, j]).all()
        for k in ref.columns:
            ours, theirs = res[k][s:, j], ref[k].to_numpy()
            np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=f"{k} warm-up (col {j})")
            scale = np.maximum(1.0, np.abs(theirs))
            err = np.nanmax(np.abs(ours - theirs) / scale) if (~np.isnan(theirs)).any() else 0.0
            tol = 1e-9 if k.startswith("recommend") else 1e-8
            assert err <= tol, f"{k} col {j}: {err:.3e}"
        # the votes agree exactly (they are discrete)
        for name in R.MA_VOTES + R.OSC_VOTES:
            np.testing.assert_array_equal(res["vote_" + name][s:, j], ref["vote_" + name].to_numpy())
