"""The point-in-time universe (SPEC §2.7): screener history, base universe, scanners at any date,
strict health on the window only, and invariance to everything after the date (incl. which symbols exist)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlib.core.errors import ProfileError
from quantlib.sleeve.health import close_to_returns
from quantlib.data.scanners import Filter, Scanner, load_scanner
from quantlib.data.sources.base import MARKET_COLUMNS
from quantlib.sleeve.universe import (base_universe, candidates_at, check_point_in_time, funnel_text, screener_history,
                               universe_at)

DAYS = pd.date_range("2026-01-01", periods=40, freq="D", tz="UTC")
SYMBOLS = ["X:AUSDT", "X:BUSDT", "X:CUSDT", "X:DUSDT", "X:EUSDT"]


def _panel() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(5)
    close = pd.DataFrame(100 * np.cumprod(1 + rng.normal(0, 0.02, (len(DAYS), len(SYMBOLS))), axis=0),
                         index=DAYS, columns=SYMBOLS)
    close.loc[: DAYS[19], "X:CUSDT"] = np.nan      # listed on day 20
    close.loc[DAYS[30]:, "X:DUSDT"] = np.nan       # delisted: last bar on day 29
    volume = pd.DataFrame(1000.0, index=DAYS, columns=SYMBOLS).where(close.notna())
    volume.loc[DAYS[10]:DAYS[14], "X:EUSDT"] = 0.0  # traded nothing on days 10..14
    return {"open": close, "high": close * 1.01, "low": close * 0.99, "close": close, "volume": volume}


def _symbols() -> pd.DataFrame:
    """A symbol table as the data phase writes it (every market column, listing history)."""
    table = pd.DataFrame({"symbol": SYMBOLS, "exchange": "X", "base": [s[2] for s in SYMBOLS], "quote": "USDT",
                          "type": "spot", "active": [True, True, True, False, True], "tick_size": 0.01,
                          "lot_size": 0.001})
    for column in MARKET_COLUMNS:
        if column not in table.columns:
            table[column] = np.nan
    return table.assign(updated_at=DAYS[-1], first_seen=DAYS[0],
                        inactive_since=[pd.NaT, pd.NaT, pd.NaT, DAYS[35], pd.NaT])


def _features(panel) -> pd.DataFrame:
    close = panel["close"]
    ts, sym = np.nonzero(close.notna().to_numpy())
    rating = np.tile(np.linspace(-0.9, 0.9, len(SYMBOLS)), (len(DAYS), 1))
    rating[25:, 0] = 0.95                           # A turns strongly bullish on day 25
    return pd.DataFrame({"ts": DAYS[ts], "symbol": np.array(SYMBOLS)[sym], "recommend_all": rating[ts, sym],
                         "recommend_ma": rating[ts, sym], "recommend_other": 0.0, "adx": 20.0, "rsi": 50.0})


def _registry(bar_ts) -> pd.DataFrame:
    return pd.DataFrame([{"symbol": "X:BUSDT", "status": "TOXIC", "reason": "spike", "detected_at": DAYS[-1],
                          "bar_ts": bar_ts, "value": 6.0}])


@pytest.fixture
def screener():
    panel = _panel()
    return screener_history(panel, _symbols(), _features(panel), _registry(DAYS[33]), flat_bars=5)


def _rows(screener, day):
    return screener[screener["date"] == DAYS[day]].set_index("symbol")


def test_screener_rows_exist_only_while_a_symbol_trades_and_is_not_flagged(screener):
    assert "X:CUSDT" not in _rows(screener, 19).index and "X:CUSDT" in _rows(screener, 20).index   # listing
    assert "X:DUSDT" in _rows(screener, 29).index and "X:DUSDT" not in _rows(screener, 30).index   # delisting
    assert "X:BUSDT" in _rows(screener, 32).index and "X:BUSDT" not in _rows(screener, 33).index   # toxic from bar_ts
    assert "X:EUSDT" in _rows(screener, 13).index and "X:EUSDT" not in _rows(screener, 14).index   # 5 bars no volume
    assert "X:EUSDT" in _rows(screener, 15).index


def test_screener_fields_use_bars_up_to_that_bar(screener):
    panel = _panel()
    close, row = panel["close"], _rows(screener, 12)
    a = row.loc["X:AUSDT"]
    assert a["value_traded"] == pytest.approx(close.at[DAYS[12], "X:AUSDT"] * 1000.0)
    assert a["perf_1w"] == pytest.approx((close.at[DAYS[12], "X:AUSDT"] / close.at[DAYS[5], "X:AUSDT"] - 1) * 100)
    assert a["change_pct"] == pytest.approx((close.at[DAYS[12], "X:AUSDT"] / close.at[DAYS[11], "X:AUSDT"] - 1) * 100)
    assert np.isnan(a["perf_1m"])                             # no bar 30 days before day 12
    assert a["volatility_d"] == pytest.approx((1.01 - 0.99) / 0.99 * 100)
    assert _rows(screener, 24).at["X:AUSDT", "recommend_all"] == pytest.approx(-0.9)   # the flip is on day 25
    assert _rows(screener, 25).at["X:AUSDT", "recommend_all"] == pytest.approx(0.95)
    assert bool(_rows(screener, 29).at["X:DUSDT", "active"])   # inactive only from inactive_since


def test_base_universe_is_the_symbol_table_not_todays_markets():
    table = _symbols()
    scanner = Scanner(name="s", direction="LONG", filters=[Filter(field="active", op="==", value=True),
                                                           Filter(field="quote", op="==", value="USDT")])
    assert base_universe(table, [scanner], SYMBOLS) == SYMBOLS          # D is inactive today, still in
    assert base_universe(table, [scanner], SYMBOLS[:2]) == SYMBOLS[:2]  # only symbols with stored bars


def test_universe_at_each_date_equals_the_scanner_on_that_dates_rows(screener):
    scanner = Scanner(name="long", direction="LONG", logic="r", filters=[Filter(field="recommend_all", op=">", value=0)],
                      sort_by="recommend_all", order="desc", limit=2)
    pool, funnel = universe_at(screener, [scanner], [DAYS[24], DAYS[26]])
    assert pool.loc[pool["date"] == DAYS[24], "symbol"].tolist() == ["X:DUSDT", "X:EUSDT"]
    assert pool.loc[pool["date"] == DAYS[26], "symbol"].tolist() == ["X:AUSDT", "X:EUSDT"]
    assert set(pool["direction"]) == {"LONG"} and set(pool["scanner"]) == {"long"}
    assert "recommend_all > 0 2" in funnel_text(funnel, DAYS[24])


def test_a_scanner_field_without_history_fails_naming_the_scanner_field_and_fix():
    live = Scanner(name="live_only", direction="LONG", filters=[Filter(field="last_price_change", op=">", value=0)])
    with pytest.raises(ProfileError, match=r"scanner 'live_only' uses field 'last_price_change'.*instead.*"
                                           r"profiles/scanners/live_only.yaml"):
        check_point_in_time([live])
    check_point_in_time([load_scanner(n) for n in ("rating_all_long", "rating_all_short", "rating_ma_long")])


def test_candidates_health_is_assessed_on_the_window_up_to_the_date_only():
    panel = _panel()
    returns = close_to_returns(panel["close"])
    screener = screener_history(panel, _symbols(), _features(panel), _registry(DAYS[33]))
    scanner = Scanner(name="all", direction="SHORT", logic="r")
    pool, funnel = candidates_at(returns, screener, [scanner], [DAYS[28], DAYS[34]], window=8,
                                 min_history_days=5, toxic_return=5.0)
    at = lambda d: pool[pool["date"] == DAYS[d]].set_index("symbol")["health"].to_dict()  # noqa: E731
    assert at(28) == {"X:AUSDT": "OK", "X:BUSDT": "OK", "X:CUSDT": "OK", "X:DUSDT": "OK", "X:EUSDT": "OK"}
    assert "X:DUSDT" not in at(34) and "X:BUSDT" not in at(34)  # delisted, toxic since day 33
    steps = funnel[(funnel["date"] == DAYS[28])]
    assert steps["filter"].iloc[-1] == "strict health" and steps["remaining"].iloc[-1] == 5


def test_nothing_after_the_date_changes_the_universe_at_the_date_including_new_listings():
    """Point-in-time: perturb every bar and feature after day 27, delist A and list a new symbol
    after it: the candidates and their health at day 27 are identical."""
    panel, symbols = _panel(), _symbols()
    returns = close_to_returns(panel["close"])
    scanners = [Scanner(name="l", direction="LONG", logic="r", filters=[Filter(field="value_traded", op=">", value=0)],
                        sort_by="recommend_all", limit=3)]
    base = candidates_at(returns, screener_history(panel, symbols, _features(panel), _registry(DAYS[33])), scanners,
                         [DAYS[27]], window=10, min_history_days=5, toxic_return=5.0)
    rng = np.random.default_rng(1)
    moved = {k: v.copy() for k, v in panel.items()}
    later = DAYS > DAYS[27]
    for k in moved:
        moved[k].loc[later] = moved[k].loc[later] * rng.uniform(0.5, 7.0, (int(later.sum()), len(SYMBOLS)))
    moved["close"].loc[later, "X:AUSDT"] = np.nan
    new = pd.Series(np.where(later, 50.0, np.nan), index=DAYS)
    for k in moved:
        moved[k]["X:NEWUSDT"] = new if k != "volume" else new * 0 + 1e9
    symbols2 = pd.concat([symbols, symbols.iloc[:1].assign(symbol="X:NEWUSDT", base="NEW")], ignore_index=True)
    features = _features(panel)
    features.loc[features["ts"] > DAYS[27], "recommend_all"] = 1.0
    returns2 = close_to_returns(moved["close"])
    after = candidates_at(returns2, screener_history(moved, symbols2, features, _registry(DAYS[28])), scanners,
                          [DAYS[27]], window=10, min_history_days=5, toxic_return=5.0)
    pd.testing.assert_frame_equal(base[0], after[0])
    pd.testing.assert_frame_equal(base[1], after[1])


def test_a_base_universe_spanning_two_exchanges_is_refused(tmp_path):
    """Calendars differ across venues: a sleeve's scanners must name one exchange."""
    from quantlib.core.errors import DataError
    from quantlib.data.lakehouse import Lakehouse
    from quantlib.core.profiles import load_profile
    from quantlib.stages.sleeve import load_sleeve_inputs

    lake = Lakehouse(tmp_path / "lake")
    table = pd.concat([_symbols().iloc[:1], _symbols().iloc[:1].assign(symbol="Y:AUSDT", exchange="Y")])
    lake.root.mkdir(parents=True)
    table.to_parquet(lake.symbols_path)
    bars = pd.DataFrame({"ts": DAYS, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0})
    for symbol in table["symbol"]:
        lake.ohlcv_path(symbol, "1d").parent.mkdir(parents=True, exist_ok=True)
        bars.to_parquet(lake.ohlcv_path(symbol, "1d"))
    profile = load_profile("demo_crypto_long").profile
    scanner = Scanner(name="no_venue", direction="LONG", filters=[Filter(field="quote", op="==", value="USDT")])
    with pytest.raises(DataError, match=r"several exchanges \['X', 'Y'\].*add an \{field: exchange"):
        load_sleeve_inputs(lake, profile, [scanner])
