import json

from quantlib.core import live


def test_reports_are_json_lines_in_the_named_file_and_nothing_without_it(tmp_path, monkeypatch):
    monkeypatch.delenv(live.ENV_VAR, raising=False)
    assert list(live.track(["a", "b"], "x", 2)) == ["a", "b"]  # no variable: no file anywhere, items unchanged
    target = tmp_path / "progress.jsonl"
    monkeypatch.setenv(live.ENV_VAR, str(target))
    assert list(live.track(iter("abc"), "walk-forward windows", 3)) == ["a", "b", "c"]
    live.note("sleeve a PASS")
    docs = [json.loads(line) for line in target.read_text().splitlines()]
    assert docs == [{"step": "walk-forward windows", "done": k, "total": 3} for k in range(4)] + [{"note": "sleeve a PASS"}]


def test_an_unwritable_progress_file_never_fails_the_loop(tmp_path, monkeypatch):
    monkeypatch.setenv(live.ENV_VAR, str(tmp_path / "missing-dir" / "p.jsonl"))
    assert list(live.track(range(3), "x", 3)) == [0, 1, 2]
