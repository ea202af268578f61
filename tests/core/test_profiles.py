from pathlib import Path

import pytest

from quantlib.core.errors import IdentifierError, ProfileError
from quantlib.core.ids import check_run_id, check_symbol, symbol_filename
from quantlib.core.profiles import default_profiles_dir, list_profiles, load_profile
from quantlib.data.scanners import load_scanner, scanners_dir


def _profiles(tmp_path: Path, files: dict[str, str]) -> Path:
    base = (default_profiles_dir() / "base.yaml").read_text()
    (tmp_path / "base.yaml").write_text(base)
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_every_shipped_profile_and_scanner_validates():
    names = list_profiles()
    assert {"base", "demo", "demo_equities"} <= set(names)
    for name in names:
        assert load_profile(name).profile.name == name
    for path in scanners_dir().glob("*.yaml"):
        assert load_scanner(path.stem).name == path.stem


def test_inheritance_deep_merges_mappings_and_replaces_lists(tmp_path):
    d = _profiles(tmp_path, {
        "parent": "data:\n  lookback_days: 300\n  scanners: [a_scanner, b_scanner]\n",
        "child": "extends: parent\ndata:\n  scanners: [c_scanner]\n",
    })
    resolved = load_profile("child", profiles_dir=d)
    assert resolved.chain == ("child", "parent", "base")
    assert resolved.profile.data.lookback_days == 300  # inherited from parent
    assert resolved.profile.data.scanners == ["c_scanner"]  # list replaced, not appended
    assert resolved.profile.data.workers == 8  # default from base.yaml


def test_unknown_key_names_file_and_key(tmp_path):
    d = _profiles(tmp_path, {"bad": "data:\n  lookbak_days: 300\n"})
    with pytest.raises(ProfileError) as err:
        load_profile("bad", profiles_dir=d)
    assert "bad.yaml" in str(err.value) and "data.lookbak_days" in str(err.value)
    assert "unknown key" in str(err.value)


def test_bad_type_names_key(tmp_path):
    d = _profiles(tmp_path, {"bad": "data:\n  workers: many\n"})
    with pytest.raises(ProfileError, match=r"data\.workers"):
        load_profile("bad", profiles_dir=d)


def test_cycle_is_rejected_with_chain(tmp_path):
    d = _profiles(tmp_path, {"a": "extends: b\n", "b": "extends: a\n"})
    with pytest.raises(ProfileError, match=r"cyclic 'extends'.*a -> b -> a"):
        load_profile("a", profiles_dir=d)


def test_missing_profile_and_invalid_yaml(tmp_path):
    d = _profiles(tmp_path, {"broken": "data: [unclosed\n"})
    with pytest.raises(ProfileError, match="not found"):
        load_profile("nope", profiles_dir=d)
    with pytest.raises(ProfileError, match="broken.yaml: invalid YAML"):
        load_profile("broken", profiles_dir=d)


def test_profile_name_cannot_traverse_paths(tmp_path):
    with pytest.raises(IdentifierError):
        load_profile("../base", profiles_dir=tmp_path)


def test_env_overrides_apply_last_and_are_recorded():
    env = {"FW_DATA__LOOKBACK_DAYS": "321", "FW_SOURCE__AS_OF": "2026-01-02", "HOME": "/x", "FW_RUNS_DIR": "/y"}
    resolved = load_profile("demo", env=env)
    assert resolved.profile.data.lookback_days == 321
    assert resolved.profile.source.as_of == "2026-01-02"
    assert resolved.overrides["data"] == {"lookback_days": 321}
    assert "lookback_days: 321" in resolved.to_yaml()


def test_env_override_of_unknown_key_or_section_fails():
    with pytest.raises(ProfileError, match="data.bogus"):
        load_profile("demo", env={"FW_DATA__BOGUS": "1"})
    with pytest.raises(ProfileError, match="unknown profile section 'nosection'"):
        load_profile("demo", env={"FW_NOSECTION__X": "1"})


def test_invalid_anchor_symbol_is_rejected(tmp_path):
    d = _profiles(tmp_path, {"bad": "data:\n  anchors: ['btc/usdt']\n"})
    with pytest.raises(ProfileError, match="data.anchors"):
        load_profile("bad", profiles_dir=d)


@pytest.mark.parametrize("symbol", ["BINANCE:BTCUSDT", "SIMEQ:SPY", "BINANCE:BTCUSDT.P", "X:A_B-C"])
def test_valid_symbols(symbol):
    assert check_symbol(symbol) == symbol


@pytest.mark.parametrize("symbol", ["btcusdt", "BINANCE:../../etc", "BINANCE:BTC/USDT", ":BTC", "BINANCE:", "A:B:C", ""])
def test_invalid_symbols(symbol):
    with pytest.raises(IdentifierError, match="invalid symbol"):
        check_symbol(symbol)


@pytest.mark.parametrize("run_id", ["../evil", "a/b", "..", ".", "x..y", "a b", "", "run;rm"])
def test_invalid_run_ids(run_id):
    with pytest.raises(IdentifierError, match="invalid run id"):
        check_run_id(run_id)


def test_symbol_filename():
    assert symbol_filename("BINANCE:BTCUSDT") == "BINANCE_BTCUSDT"


# ------------------------------------------------------------------ enums (quantlib.core.enums)

@pytest.mark.parametrize("text, key, allowed", [
    ("optimizer:\n  engine: cvxpy\n", "optimizer.engine", ["native", "riskfolio"]),
    ("optimizer:\n  linkage: wards\n", "optimizer.linkage",
     ["single", "complete", "average", "weighted", "centroid", "median", "ward"]),
    ("optimizer:\n  profiles: [hrp, minvar]\n", "optimizer.profiles.1",
     ["hrp", "min_variance", "max_sharpe", "risk_parity", "equal_weight"]),
    ("meta:\n  allocation:\n    method: max_sharpe\n", "meta.allocation.method", ["risk_parity", "hrp", "min_variance"]),
    ("meta:\n  allocation:\n    risk_profile: sharpe\n", "meta.allocation.risk_profile",
     ["hrp", "min_variance", "max_sharpe", "risk_parity", "equal_weight"]),
])
def test_enum_fields_reject_unknown_values_naming_the_allowed_ones(tmp_path, text, key, allowed):
    d = _profiles(tmp_path, {"bad": text})
    with pytest.raises(ProfileError) as err:
        load_profile("bad", profiles_dir=d)
    msg = str(err.value)
    assert "bad.yaml" in msg and f"'{key}'" in msg
    assert all(f"'{a}'" in msg for a in allowed)


def test_enum_fields_hold_members_and_dump_as_plain_strings(tmp_path):
    import json

    import yaml

    from quantlib.core.enums import Engine, Linkage, MetaMethod, RiskMethod

    d = _profiles(tmp_path, {"p": "optimizer:\n  engine: riskfolio\n  linkage: median\n  profiles: [max_sharpe, hrp]\n"})
    resolved = load_profile("p", profiles_dir=d)
    opt, alloc = resolved.profile.optimizer, resolved.profile.meta.allocation
    assert opt.engine is Engine.RISKFOLIO and opt.linkage is Linkage.MEDIAN   # any of scipy's seven
    assert opt.profiles == [RiskMethod.MAX_SHARPE, RiskMethod.HRP] and opt.profiles == ["max_sharpe", "hrp"]
    assert isinstance(alloc.method, MetaMethod) and isinstance(alloc.risk_profile, RiskMethod)
    # str() / f-strings / JSON give the plain value (file names, labels, artifacts)
    assert f"tearsheet_{opt.profiles[0]}.html" == "tearsheet_max_sharpe.html" and str(opt.engine) == "riskfolio"
    assert json.loads(json.dumps(opt.model_dump()))["profiles"] == ["max_sharpe", "hrp"]
    doc = yaml.safe_load(resolved.to_yaml())["profile"]["optimizer"]
    assert doc["engine"] == "riskfolio" and type(doc["engine"]) is str
    assert doc["linkage"] == "median" and doc["profiles"] == ["max_sharpe", "hrp"]
    # the dump validates back to the same profile
    again = type(resolved.profile).model_validate(yaml.safe_load(resolved.to_yaml())["profile"])
    assert again == resolved.profile


@pytest.mark.parametrize("bad", ["../../etc", "..", "a/b", "run id"])
def test_pinned_run_ids_are_checked_when_the_profile_loads(tmp_path, bad):
    d = _profiles(tmp_path, {
        "pair": f"meta:\n  sleeves:\n    - {{id: fine, profile: base}}\n    - {{id: evil, profile: base, run_id: '{bad}'}}\n",
        "pinned_data": f"sleeve:\n  data_run_id: '{bad}'\n"})
    with pytest.raises(ProfileError) as info:
        load_profile("pair", profiles_dir=d)
    message = str(info.value)
    assert str(d / "pair.yaml") in message and "meta.sleeves.1.run_id" in message
    assert "sleeve 'evil'" in message and "invalid run id" in message and "letters, digits" in message
    assert "Value error" not in message
    with pytest.raises(ProfileError, match=r"pinned_data\.yaml.*'sleeve\.data_run_id': pinned data run: invalid run id"):
        load_profile("pinned_data", profiles_dir=d)
    ok = load_profile("pair", profiles_dir=d, env={"FW_META__SLEEVES": "[{id: a, profile: base, run_id: x-20260101T000000-ab12}]"})
    assert ok.profile.meta.sleeves[0].run_id == "x-20260101T000000-ab12"


# ------------------------------------------------------------------ -p section.key=value, kinds
@pytest.mark.parametrize("text, var", [("data.lookback_days=300", ("FW_DATA__LOOKBACK_DAYS", "300")),
                                       ("meta.allocation={method: hrp}", ("FW_META__ALLOCATION", "{method: hrp}")),
                                       ("source.as_of=", ("FW_SOURCE__AS_OF", "")),
                                       ("book.export_html=a=b", ("FW_BOOK__EXPORT_HTML", "a=b"))])
def test_param_var_is_the_fw_variable_giving_the_same_override(text, var):
    from quantlib.core.profiles import param_var

    assert param_var(text) == var


@pytest.mark.parametrize("text", ["lookback_days=3", "data.lookback_days", "a.b.c=1", ".x=1", "data.=1"])
def test_param_var_refuses_other_forms(text):
    from quantlib.core.profiles import param_var

    with pytest.raises(ProfileError, match="expected section.key=value"):
        param_var(text)


def test_p_wins_over_the_variable_and_is_recorded_like_one():
    from quantlib.core.profiles import ParamEnv

    env = ParamEnv({"FW_DATA__LOOKBACK_DAYS": "200", "HOME": "/x"}, ["data.lookback_days=250"])
    assert env["FW_DATA__LOOKBACK_DAYS"] == "250" and env["HOME"] == "/x"
    resolved = load_profile("demo", env=env)
    assert resolved.profile.data.lookback_days == 250 and resolved.overrides == {"data": {"lookback_days": 250}}
    assert resolved.overrides == load_profile("demo", env={"FW_DATA__LOOKBACK_DAYS": "250"}).overrides


def test_profile_kind_agrees_with_the_profile_table_for_every_shipped_profile():
    from quantlib.core.profiles import profile_kind
    from quantlib.engine.panel import profile_kind as table_kind  # the profile table's own reading of the files

    kinds = {name: profile_kind(load_profile(name)) for name in list_profiles()}
    assert kinds == {name: table_kind(name) for name in kinds}
    assert kinds["demo"] == "data" and kinds["demo_crypto_long"] == "sleeve" and kinds["demo_meta"] == "meta"


def test_check_kind_names_the_command_that_runs_the_profile():
    from quantlib.core.profiles import check_kind

    check_kind(load_profile("demo_crypto_long"), "sleeve")
    with pytest.raises(ProfileError, match=r"'demo_equities' is a data profile, not a meta profile; run it with "
                                           r"`run_book.py data --profile demo_equities`"):
        check_kind(load_profile("demo_equities"), "meta")
    # a sleeve list given by override makes any profile a meta
    meta = load_profile("demo", env={"FW_META__SLEEVES": "[{id: a, profile: demo_crypto_long}]"})
    with pytest.raises(ProfileError, match="is a meta profile, not a data profile"):
        check_kind(meta, "data")


def test_a_missing_profile_suggests_the_closest_name(tmp_path):
    d = _profiles(tmp_path, {"crypto_long": "description: x\n"})
    with pytest.raises(ProfileError, match=r"'crypto_lnog' not found: .*did you mean 'crypto_long'\? \(known: base, crypto_long\)"):
        load_profile("crypto_lnog", profiles_dir=d)
    with pytest.raises(ProfileError) as err:
        load_profile("zzzz", profiles_dir=d)
    assert "did you mean" not in str(err.value)
