"""`run_book.py replay`: one rebalance decision of a sleeve run, rebuilt from its record, equals it exactly;
an edited record is a DIFF naming the artifact, field and row; nothing is written into the run."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantlib import cli
from quantlib.backtest import walkforward
from quantlib.core import registry, storage
from quantlib.core.runs import Run
from quantlib.data.scanners import Scanner
from quantlib.sleeve.selection import SelectionError
from quantlib.stages.sleeve import WALK_FORWARD_FRAMES, WALK_FORWARD_TABLES

from conftest import art

ROW = re.compile(r"^  (\S+)\s+(MATCH|DIFF)\s+(\d+)\s+(\d+)  (.*)$")


def _replay(capsys, runs_dir: Path, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["--runs-dir", str(runs_dir), "replay", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _table(out: str) -> dict[str, tuple[str, int, int]]:
    """component -> (status, recorded rows, replayed rows), in printed order."""
    rows = [ROW.match(line) for line in out.splitlines()]
    return {m[1]: (m[2], int(m[3]), int(m[4])) for m in rows if m}


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): storage.sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def _copy(run: Run, tmp_path: Path) -> Run:
    shutil.copytree(run.dir, tmp_path / "runs" / run.id)
    return Run.open(tmp_path / "runs", run.id)


def _profiles(run: Run) -> list[str]:
    return [str(p) for p in run.profile.optimizer.profiles]


def _decisions(run: Run) -> pd.Series:
    return art(run, "backtest/windows.parquet")["decision"]


def _mid(run: Run) -> pd.Timestamp:
    decisions = _decisions(run)
    return decisions.iloc[len(decisions) // 2]


def _edit_manifest(run: Run, edit) -> None:
    edit(run.manifest)
    run.save()


def test_replay_help_says_what_it_rebuilds_and_compares(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["replay", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out.startswith("usage: run_book.py replay")
    for phrase in ("RUN_ID", "--at", "--from-run", "lakehouse", "universe", "eligibility", "selection", "atoms",
                   "weights per risk profile", "trades", "Writes nothing", "Exit 0 MATCH, 1 DIFF"):
        assert phrase in " ".join(out.split()), phrase


def test_the_production_decision_replays_equal_to_the_record_and_writes_nothing(capsys, workspace, long_sleeve):
    _, run = long_sleeve
    before = _tree(run.dir)
    code, out, err = _replay(capsys, workspace.runs_dir, run.id)
    assert code == 0, out + err
    table = _table(out)
    assert list(table) == ["inputs", "universe", "eligibility", "selection", "atoms", "clusters/regime",
                           *[f"weights:{p}" for p in _profiles(run)], "trades"]
    assert {status for status, _, _ in table.values()} == {"MATCH"}, out
    weights, candidates = art(run, "artifacts/weights.parquet"), art(run, "artifacts/candidates.parquet")
    for p in _profiles(run):
        assert table[f"weights:{p}"][1:] == ((weights["profile"] == p).sum(),) * 2
    assert table["universe"][1:] == (len(candidates),) * 2
    assert table["eligibility"][1:] == (int(candidates["health"].eq("OK").sum()),) * 2
    assert table["selection"][1:] == (len(art(run, "artifacts/selection.parquet")),) * 2
    assert "inputs: lakehouse" in out.splitlines()[0] and "files as recorded" in out.splitlines()[0]
    assert "artifacts/weights.parquet[profile=hrp]" in out and "artifacts/flattened.parquet" in out
    assert out.splitlines()[-1].startswith(f"MATCH: {len(table)} components")
    assert _tree(run.dir) == before


def test_a_mid_walk_forward_rebalance_replays_equal_to_the_record_and_writes_nothing(capsys, workspace, long_sleeve):
    _, run = long_sleeve
    when = _mid(run)
    before = _tree(run.dir)
    code, out, err = _replay(capsys, workspace.runs_dir, run.id, "--at", str(when.date()))
    assert code == 0, out + err
    table = _table(out)
    assert list(table) == ["universe", "eligibility", "selection", "atoms", *[f"weights:{p}" for p in _profiles(run)],
                           "trades"]
    assert {status for status, _, _ in table.values()} == {"MATCH"}, out
    assert f"walk-forward rebalance of {when.date()}" in out.splitlines()[0]
    universe, holdings = art(run, "backtest/universe.parquet"), art(run, "backtest/holdings.parquet")
    assert table["universe"][1:] == ((universe["decision"] == when).sum(),) * 2
    at = holdings[holdings["decision"] == when]
    assert table["trades"][1:] == (int(at["weight"].ne(0).sum()),) * 2 and table["trades"][1] > 0
    for label in (f"backtest/eligibility.parquet[decision={when.date()}]", f"backtest/selection.parquet[decision={when.date()}]",
                  f"backtest/turnover.parquet[date={when.date()}]", "backtest/costs.parquet", "backtest/events.parquet"):
        assert label in out, label
    assert "is not recorded by this run" not in out
    assert _tree(run.dir) == before


@pytest.mark.parametrize("kind", ["production", "walk-forward"])
def test_an_altered_recorded_weight_is_a_diff_naming_artifact_field_and_row(capsys, long_sleeve, tmp_path, kind):
    _, run = long_sleeve
    copy = _copy(run, tmp_path)
    when = _mid(run)
    rel, argv, where = (("artifacts/weights.parquet", [], "") if kind == "production" else
                        ("backtest/holdings.parquet", ["--at", str(when.date())], f"[decision={when.date()}]"))
    frame = storage.read_parquet(copy.dir / rel)
    chosen = frame["profile"].eq("min_variance") & (frame["decision"].eq(when) if kind != "production" else True)
    i = frame.index[chosen][2]
    atom, old = frame.at[i, "atom_id"], float(frame.at[i, "weight"])
    frame.loc[i, "weight"] = new = float(np.nextafter(old, 2.0))   # one ulp: floats are compared exactly
    storage.write_parquet(copy.dir / rel, frame)

    code, out, _ = _replay(capsys, tmp_path / "runs", copy.id, *argv)
    assert code == 1, out
    table = _table(out)
    assert table["weights:min_variance"][0] == "DIFF"
    assert {table[f"weights:{p}"][0] for p in _profiles(run) if p != "min_variance"} == {"MATCH"}
    assert {table[c][0] for c in ("universe", "eligibility", "selection", "atoms")} == {"MATCH"}
    assert table["trades"][0] == ("MATCH" if kind == "production" else "DIFF")  # the orders are the targets
    first = f"{rel}{where}[profile=min_variance]: weight, row 2 (atom_id={atom}): recorded {new!r}, replayed {old!r}"
    assert f"first difference: {first}" in out
    assert out.splitlines()[-1].startswith("DIFF: ") and f"first: weights:min_variance -- {first}" in out
    assert f"note: {rel} no longer hashes as the manifest recorded" in out


def test_a_date_that_is_not_a_rebalance_names_the_nearest_rebalance_dates(capsys, workspace, long_sleeve):
    _, run = long_sleeve
    decisions = _decisions(run)
    k = len(decisions) // 2
    day = (decisions.iloc[k] + pd.Timedelta(days=1)).date()
    code, out, err = _replay(capsys, workspace.runs_dir, run.id, "--at", str(day))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"{day} is not a walk-forward rebalance date" in lines[0]
    assert f"nearest rebalances: before {decisions.iloc[k].date()}, after {decisions.iloc[k + 1].date()}" in lines[0]


def test_an_unknown_run_exits_2_with_one_line(capsys, tmp_path):
    code, out, err = _replay(capsys, tmp_path, "demo_crypto_long-20260101T000000-abcd")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "no run 'demo_crypto_long-20260101T000000-abcd'" in err


def test_a_run_without_validation_asked_for_a_date_says_so(capsys, long_sleeve, tmp_path):
    _, run = long_sleeve
    copy = _copy(run, tmp_path)
    _edit_manifest(copy, lambda m: m["stages"]["validate"].update(status="skipped"))
    code, out, err = _replay(capsys, tmp_path / "runs", copy.id, "--at", str(_mid(run).date()))
    assert code == 2 and out == ""
    assert "has no walk-forward validation (its validate stage is skipped)" in err
    assert "replay its production decision without --at" in err and len(err.strip().splitlines()) == 1


def test_a_changed_lakehouse_is_refused_and_the_run_replays_from_its_own_inputs(capsys, long_sleeve, tmp_path):
    """The copy's manifest records another hash for one lakehouse file: as if a data run rewrote it since."""
    _, run = long_sleeve
    copy = _copy(run, tmp_path)
    label = "lakehouse/features_matrix.parquet"
    assert label in copy.manifest["inputs"]
    _edit_manifest(copy, lambda m: m["inputs"].update({label: "0" * 64}))
    code, out, err = _replay(capsys, tmp_path / "runs", copy.id)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert f"changed since run {copy.id}: 1 of" in err and f"(first: {label} changed)" in err and "--from-run" in err

    code, out, err = _replay(capsys, tmp_path / "runs", copy.id, "--from-run")
    assert code == 0, out + err
    table = _table(out)
    assert "inputs" not in table and {s for s, _, _ in table.values()} == {"MATCH"}
    assert f"inputs: run {copy.id} (artifacts/returns.parquet" in out.splitlines()[0]


def test_a_run_recorded_before_the_window_eligibility_and_selection_files_still_replays(capsys, long_sleeve, tmp_path):
    _, run = long_sleeve
    copy = _copy(run, tmp_path)
    for rel in ("backtest/eligibility.parquet", "backtest/selection.parquet"):
        (copy.dir / rel).unlink()
        _edit_manifest(copy, lambda m, rel=rel: m["stages"]["validate"]["outputs"].pop(rel))
    code, out, err = _replay(capsys, tmp_path / "runs", copy.id, "--at", str(_mid(run).date()), "--from-run")
    assert code == 0, out + err
    assert "note: backtest/eligibility.parquet is not recorded by this run: eligibility compared with the healthy " \
           "rows of backtest/universe.parquet" in out
    assert "not compared: the window's selection table (backtest/selection.parquet is not recorded" in out
    assert _table(out)["eligibility"][0] == "MATCH"


def test_a_cash_window_replays_as_cash(capsys, long_sleeve, tmp_path, monkeypatch):
    """A rebalance whose selection cannot form a book (planted here) records no selection and no
    holdings, and sells everything: its replay matches with 0 rows and the same turnover and costs."""
    _, run = long_sleeve
    copy = _copy(run, tmp_path)
    returns, screener = art(copy, "artifacts/returns.parquet"), art(copy, "artifacts/screener.parquet")
    scanners = [Scanner.model_validate(s) for s in art(copy, "artifacts/universe.json")["scanners"]]
    profile = copy.profile.model_copy(update={"backtest": copy.profile.backtest.model_copy(
        update={"simulators": ["reference"]})})
    cash = _mid(run)
    real = walkforward.decide_window

    def decide(r, c, p, end):
        if end == cash:
            raise SelectionError("selection (HTR): only 1 asset(s) survive")
        return real(r, c, p, end)

    wf = walkforward.run(returns, screener, scanners, art(copy, "artifacts/benchmark.parquet")["benchmark"], profile,
                         decide=decide)
    for name, attribute in {**WALK_FORWARD_FRAMES, **WALK_FORWARD_TABLES}.items():
        frame = getattr(wf, attribute)
        storage.write_parquet(copy.path(registry.path("sleeve", name)),
                              frame.rename_axis("date") if name in WALK_FORWARD_FRAMES else frame)
    monkeypatch.setattr(walkforward, "decide_window", decide)

    code, out, err = _replay(capsys, tmp_path / "runs", copy.id, "--at", str(cash.date()), "--from-run")
    assert code == 0, out + err
    table = _table(out)
    assert {status for status, _, _ in table.values()} == {"MATCH"}, out
    assert table["selection"][1:] == (0, 0) and table["weights:hrp"][1:] == (0, 0) and table["trades"][1:] == (0, 0)
    assert table["universe"][1] > 0 and wf.turnover.loc[cash, "hrp"] > 0   # everything was sold that day
