import numpy as np
import pandas as pd
import pytest

from quantlib.core.errors import ProfileError
from quantlib.data.scanners import (Filter, Scanner, candidate_document, dedupe_by_base, filter_mask, load_scanner,
                               run_scanner, run_scanner_by, run_scanners, screener_table)


@pytest.fixture
def table():
    return pd.DataFrame({
        "symbol": ["B:AUSDT", "B:AUSDC", "B:BUSDT", "B:CFDUSD", "B:CUSDC", "B:DUSDT"],
        "base": ["A", "A", "B", "C", "C", "D"],
        "quote": ["USDT", "USDC", "USDT", "FDUSD", "USDC", "USDT"],
        "type": ["spot"] * 6,
        "value_traded": [9e6, 2e7, 3e6, 8e6, 7e6, np.nan],
        "recommend_all": [0.4, 0.41, -0.6, -0.1, 0.0, 0.9],
    })


@pytest.mark.parametrize("op,value,expected", [
    (">", 7e6, ["B:AUSDT", "B:AUSDC", "B:CFDUSD"]),
    (">=", 8e6, ["B:AUSDT", "B:AUSDC", "B:CFDUSD"]),
    ("<", 7e6, ["B:BUSDT"]),
    ("<=", 7e6, ["B:BUSDT", "B:CUSDC"]),
    ("==", 3e6, ["B:BUSDT"]),
    ("!=", 3e6, ["B:AUSDT", "B:AUSDC", "B:CFDUSD", "B:CUSDC"]),  # NaN never passes, even !=
    ("between", [3e6, 8e6], ["B:BUSDT", "B:CFDUSD", "B:CUSDC"]),
])
def test_numeric_ops_and_nan_policy(table, op, value, expected):
    mask = filter_mask(table, Filter(field="value_traded", op=op, value=value))
    assert list(table.loc[mask, "symbol"]) == expected


@pytest.mark.parametrize("op,value,expected", [
    ("in", ["USDC", "FDUSD"], ["B:AUSDC", "B:CFDUSD", "B:CUSDC"]),
    ("not_in", ["USDT"], ["B:AUSDC", "B:CFDUSD", "B:CUSDC"]),
    ("matches", "^B:[AB]", ["B:AUSDT", "B:AUSDC", "B:BUSDT"]),
    ("not_matches", "USDT$", ["B:AUSDC", "B:CFDUSD", "B:CUSDC"]),
])
def test_set_and_regex_ops(table, op, value, expected):
    field = "symbol" if "matches" in op else "quote"
    assert list(table.loc[filter_mask(table, Filter(field=field, op=op, value=value)), "symbol"]) == expected


def test_no_filter_unless_written(table):
    rows, funnel = run_scanner(Scanner(name="empty"), table)
    assert len(rows) == len(table) and funnel == [{"filter": "universe", "remaining": 6}]


def test_pipeline_funnel_dedupe_sort_limit(table):
    scanner = Scanner(name="s", filters=[Filter(field="recommend_all", op=">", value=-0.3)],
                      dedupe_by_base=True, quote_priority=["USDT", "USDC", "FDUSD"],
                      sort_by="recommend_all", order="desc", limit=2)
    rows, funnel = run_scanner(scanner, table)
    assert [f["remaining"] for f in funnel] == [6, 5, 3, 2]
    assert [f["filter"] for f in funnel][-2:] == ["dedupe_by_base", "limit 2"]
    assert list(rows["symbol"]) == ["B:DUSDT", "B:AUSDT"]  # A kept on USDT (priority) despite USDC's higher rating


def test_dedupe_prefers_quote_priority_then_value(table):
    kept = dedupe_by_base(table, ["USDC", "USDT"])
    assert sorted(kept["symbol"]) == ["B:AUSDC", "B:BUSDT", "B:CUSDC", "B:DUSDT"]
    kept = dedupe_by_base(table, [])
    assert "B:AUSDC" in set(kept["symbol"])  # no priority: highest value traded wins


def test_composition_appends_filters_after_parent():
    base = load_scanner("binance_spot_base")
    short = load_scanner("rating_all_short")
    assert short.filters[: len(base.filters)] == base.filters
    assert short.filters[-1] == Filter(field="recommend_all", op="<", value=0)
    assert (short.direction, short.order, short.limit, short.dedupe_by_base) == ("SHORT", "asc", 100, True)
    assert base.direction is None and base.limit == 500
    long_ = load_scanner("rating_all_long")
    assert long_.filters[-1].value == -0.3 and long_.order == "desc"  # no implicit trend gate (L-D1)
    assert len(long_.filters) == len(base.filters) + 1


def test_market_only_keeps_static_steps_only(table):
    """The base universe: static market filters (quote, type, ...) only; no time-varying filter
    (value traded, ratings), no dedupe, sort or limit -- those are decided point-in-time."""
    scanner = Scanner(name="s", filters=[Filter(field="quote", op="in", value=["USDT", "USDC"]),
                                         Filter(field="value_traded", op=">", value=5e6),
                                         Filter(field="recommend_all", op=">", value=0.5)],
                      dedupe_by_base=True, sort_by="recommend_all", limit=1)
    rows, funnel = run_scanner(scanner, table, market_only=True)
    assert sorted(rows["symbol"]) == ["B:AUSDC", "B:AUSDT", "B:BUSDT", "B:CUSDC", "B:DUSDT"]
    assert [f["filter"] for f in funnel] == ["universe", "quote in ['USDT', 'USDC']"]


def test_grouped_run_equals_one_run_per_group(table):
    """`run_scanner_by` over dates == `run_scanner` on each date's rows (filters, dedupe, sort, limit)."""
    scanner = Scanner(name="s", filters=[Filter(field="recommend_all", op=">", value=-0.3)],
                      dedupe_by_base=True, quote_priority=["USDT", "USDC", "FDUSD"],
                      sort_by="recommend_all", order="desc", limit=2)
    day2 = table.assign(recommend_all=-table["recommend_all"])
    history = pd.concat([table.assign(date=1), day2.assign(date=2), table.iloc[:1].assign(date=3)],
                        ignore_index=True)
    rows, funnel = run_scanner_by(scanner, history, "date")
    for date, frame in ((1, table), (2, day2), (3, table.iloc[:1])):
        alone, steps = run_scanner(scanner, frame)
        got = rows[rows["date"] == date].drop(columns="date").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, alone.reset_index(drop=True))
        mine = funnel[funnel["date"] == date]
        assert list(mine["remaining"]) == [s["remaining"] for s in steps]
        assert list(mine["filter"]) == [s["filter"] for s in steps]
    assert list(rows["date"]) == sorted(rows["date"])


def test_unknown_field_and_bad_values(table, tmp_path):
    with pytest.raises(ProfileError, match="unknown field 'nope'"):
        run_scanner(Scanner(name="s", filters=[Filter(field="nope", op=">", value=1)]), table)
    d = tmp_path / "scanners"
    d.mkdir()
    (d / "bad_regex.yaml").write_text("filters:\n  - {field: symbol, op: matches, value: '(['}\n")
    (d / "bad_key.yaml").write_text("filtres: []\n")
    (d / "bad_op.yaml").write_text("filters:\n  - {field: symbol, op: '=~', value: x}\n")
    (d / "loop_a.yaml").write_text("extends: loop_b\n")
    (d / "loop_b.yaml").write_text("extends: loop_a\n")
    with pytest.raises(ProfileError, match="invalid regular expression"):
        load_scanner("bad_regex", profiles_dir=tmp_path)
    with pytest.raises(ProfileError, match="bad_key.yaml.*'filtres'.*unknown key"):
        load_scanner("bad_key", profiles_dir=tmp_path)
    with pytest.raises(ProfileError, match="bad_op.yaml.*filters.0.op"):
        load_scanner("bad_op", profiles_dir=tmp_path)
    with pytest.raises(ProfileError, match="cyclic"):
        load_scanner("loop_a", profiles_dir=tmp_path)


def test_parallel_run_equals_sequential_and_document_contract(sim):
    table = screener_table(sim.markets(), sim.tickers())
    scanners = [load_scanner(n) for n in ("binance_spot_base", "rating_all_long", "rating_ma_short")]
    parallel = run_scanners(scanners, table, market_only=True)
    for s in scanners:
        rows, funnel = run_scanner(s, table, market_only=True)
        pd.testing.assert_frame_equal(parallel[s.name][0], rows)
    rows, funnel = parallel["binance_spot_base"]
    assert not rows["base"].isin(["USDC", "FDUSD", "TUSD", "DAI", "USDP", "PAXG", "XAUT"]).any()
    assert (rows["type"] == "spot").all() and rows["quote"].isin(["USDT", "USDC", "FDUSD"]).all()
    # the base universe is every market the static filters admit: illiquid and delisted ones too
    # (their liquidity and trading status are decided point-in-time)
    assert {"BINANCE:DELISTUSDT", "BINANCE:ZEROVOLUSDT"} <= set(rows["symbol"])
    doc = candidate_document(scanners[0], rows, funnel, "run-1", "2026-11-25T00:00:00+00:00")
    assert doc["count"] == len(doc["candidates"]) == len(rows)
    assert {"scanner", "run_id", "generated_at", "direction", "logic", "count", "funnel", "candidates"} <= set(doc)
    assert all(c["recommend_all"] is None for c in doc["candidates"])  # NaN becomes null in JSON


@pytest.mark.parametrize("written, fix", [("5e6", "write 5000000"), ("1.5e6", "write 1500000"), ("25E-2", "write 0.25")])
def test_a_number_yaml_reads_as_a_string_is_refused_naming_scanner_filter_and_fix(tmp_path, written, fix):
    (tmp_path / "scanners").mkdir()
    (tmp_path / "scanners" / "liquid.yaml").write_text(
        f"filters:\n  - {{field: exchange, op: '==', value: SIM}}\n  - {{field: value_traded, op: '>', value: {written}}}\n")
    with pytest.raises(ProfileError) as err:
        load_scanner("liquid", profiles_dir=tmp_path)
    message = str(err.value)
    assert message.startswith(f"scanner 'liquid' filter on 'value_traded' (>) in {tmp_path / 'scanners' / 'liquid.yaml'}")
    assert f"value '{written}' is a string" in message and message.endswith(fix)
    (tmp_path / "scanners" / "liquid.yaml").write_text(
        "filters:\n  - {field: value_traded, op: between, value: [1e3, 5.0e+6]}\n")
    with pytest.raises(ProfileError, match=r"value '1e3' is a string .* write 1000$"):
        load_scanner("liquid", profiles_dir=tmp_path)
    (tmp_path / "scanners" / "liquid.yaml").write_text(  # text compared as text stays allowed
        "filters:\n  - {field: base, op: '==', value: '1e3'}\n  - {field: value_traded, op: '>', value: 5.0e+6}\n")
    assert load_scanner("liquid", profiles_dir=tmp_path).filters[1].value == 5e6
