"""The stage cache on the tiny test phase of `test_book`: a stage is restored from an earlier run only when
its code, parameters, inputs and external state are those the earlier run computed it from, and only
from intact files."""
from __future__ import annotations

import re

import pytest

from quantlib.core import registry, storage
from quantlib.core.runs import Run, RunOptions
from quantlib.engine import cache
from quantlib.engine import executor as book
from test_book import OK, PHASE, TEST_NOTEBOOKS, make_run, ok_stage, reopen, run_collect, stage, stage_rows  # noqa: F401

EXTERNAL_STATE: dict[str, str | None] = {"value": "state-1"}  # what `external_state` reports


def external_state(ctx) -> str | None:
    """A stage hook (registry `external`) reporting the test's external state."""
    return EXTERNAL_STATE["value"]


@pytest.fixture
def cached(make_run, monkeypatch):
    """Runs of the test phase with the cache on for it."""
    monkeypatch.setattr(registry, "CACHED_PHASES", (*registry.CACHED_PHASES, PHASE))
    EXTERNAL_STATE["value"] = "state-1"
    return make_run


def two_stages() -> tuple:
    return ok_stage("alpha"), ok_stage("beta")


def run_ok(run: Run) -> list[str]:
    ok, messages = run_collect(run)
    assert ok, messages
    return messages


def test_unchanged_rerun_restores_every_stage_with_its_files_and_provenance(cached):
    first = cached(two_stages())
    run_ok(first)
    second = cached(two_stages())
    messages = run_ok(second)

    stored = reopen(second)
    for name in ("alpha", "beta"):
        rec, origin = stored.manifest["stages"][name], reopen(first).manifest["stages"][name]
        assert rec["cached_from"] == first.id and rec["cached_from_path"] == first.id
        assert rec["outputs"] == origin["outputs"] and rec["cache_key"] == origin["cache_key"]
        for rel, digest in rec["outputs"].items():
            assert storage.sha256_file(second.dir / rel) == digest
        assert (second.dir / rec["notebook"]).read_bytes() == (first.dir / origin["notebook"]).read_bytes()
        assert (second.dir / rec["html"]).is_file()
    assert any(f"alpha: cached from {first.id}" in m for m in messages)
    assert stage_rows(second)["beta"] == f"completed (cached from `{first.id}`)"
    assert stored.manifest["status"] == "PASS"


def test_a_changed_parameter_recomputes_but_a_book_setting_does_not(cached):
    run_ok(cached(two_stages()))
    other = cached(two_stages(), env={"FW_DATA__LOOKBACK_DAYS": "123"})
    run_ok(other)
    assert not any("cached_from" in rec for rec in reopen(other).manifest["stages"].values())

    timeout = cached(two_stages(), env={"FW_BOOK__CELL_TIMEOUT_S": "77"})
    run_ok(timeout)
    assert all(rec.get("cached_from") for rec in reopen(timeout).manifest["stages"].values())


def test_a_tampered_or_missing_candidate_file_is_never_restored(cached):
    first = cached(two_stages())
    run_ok(first)
    (first.dir / "artifacts" / "alpha.txt").write_text("tampered\n")
    (first.dir / "notebooks" / "02_beta.ipynb").unlink()
    second = cached(two_stages())
    run_ok(second)
    stages = reopen(second).manifest["stages"]
    assert "cached_from" not in stages["alpha"] and "cached_from" not in stages["beta"]
    assert (second.dir / "artifacts" / "alpha.txt").read_text() == "written by stage alpha\n"


def test_a_restored_run_serves_the_next_one_and_no_cache_computes(cached):
    first = cached(two_stages())
    run_ok(first)
    second = cached(two_stages())
    run_ok(second)
    third = Run.create(first.dir.parent, first.resolved, PHASE, workspace=first.workspace,
                       options=RunOptions(cache=False))
    run_ok(third)
    assert not any("cached_from" in rec for rec in reopen(third).manifest["stages"].values())
    # computed anyway, its key recorded: a --no-cache run can serve later runs
    assert reopen(third).manifest["stages"]["alpha"]["cache_key"] == reopen(first).manifest["stages"]["alpha"]["cache_key"]
    fourth = cached(two_stages())
    run_ok(fourth)
    assert reopen(fourth).manifest["stages"]["alpha"]["cached_from"] == third.id  # the newest intact candidate


def test_a_changed_notebook_recomputes(cached, tmp_path, monkeypatch):
    run_ok(cached(two_stages()))
    edited = tmp_path / "notebooks_edited"
    edited.mkdir()
    (edited / OK).write_text((TEST_NOTEBOOKS / OK).read_text().replace("Test stage:", "Edited test stage:"))
    monkeypatch.setattr(book, "NOTEBOOKS_DIR", edited)
    again = cached(two_stages())
    run_ok(again)
    assert not any("cached_from" in rec for rec in reopen(again).manifest["stages"].values())


def test_an_input_artifact_hash_is_part_of_the_key(cached):
    first = cached(two_stages())
    run_ok(first)
    stored = reopen(first)
    beta = registry.find_stage(PHASE, "beta")[1]
    notebook = TEST_NOTEBOOKS / OK
    reading = beta.__class__(**{**beta.__dict__, "reads": ("alpha",)})
    before = cache.stage_key(stored, PHASE, reading, notebook)
    stored.manifest["stages"]["alpha"]["outputs"]["artifacts/alpha.txt"] = "0" * 64
    after = cache.stage_key(stored, PHASE, reading, notebook)
    assert before.key != after.key
    assert cache.stage_key(stored, PHASE, beta, notebook).key == cache.stage_key(stored, PHASE, beta, notebook).key


def hooked(name: str):
    """A stage with an external hook (reads state outside its run)."""
    base = ok_stage(name)
    return base.__class__(**{**base.__dict__, "external": "test_cache:external_state"})


def test_external_state_is_part_of_the_key_and_a_live_source_is_never_cached(cached):
    run_ok(cached((hooked("alpha"),)))
    same = cached((hooked("alpha"),))
    run_ok(same)
    assert reopen(same).manifest["stages"]["alpha"]["external_after"] == "state-1"
    assert reopen(same).manifest["stages"]["alpha"].get("cached_from")

    EXTERNAL_STATE["value"] = "state-2"
    changed = cached((hooked("alpha"),))
    run_ok(changed)
    assert "cached_from" not in reopen(changed).manifest["stages"]["alpha"]

    EXTERNAL_STATE["value"] = None  # a live venue
    live = cached((hooked("alpha"),))
    run_ok(live)
    assert "cached_from" not in reopen(live).manifest["stages"]["alpha"]
    live_again = cached((hooked("alpha"),))
    run_ok(live_again)
    assert "cached_from" not in reopen(live_again).manifest["stages"]["alpha"]


def test_a_stage_that_changed_its_external_state_is_not_a_candidate(cached, monkeypatch):
    calls = iter(["before", "after", "after", "after"])  # key of run 1, its state after, then run 2's key/after
    monkeypatch.setitem(EXTERNAL_STATE, "value", "before")
    monkeypatch.setattr(cache, "external_fingerprint", lambda run, phase, stage: next(calls))
    first = cached((hooked("alpha"),))
    run_ok(first)
    assert reopen(first).manifest["stages"]["alpha"]["external_after"] == "after"
    second = cached((hooked("alpha"),))  # its key sees "after": the first run's key saw "before"
    run_ok(second)
    assert "cached_from" not in reopen(second).manifest["stages"]["alpha"]


def test_tree_hash_sees_content_and_names_but_not_interrupted_writes(tmp_path):
    root = tmp_path / "lake"
    storage.write_text(root / "a.parquet", "x")
    storage.write_text(root / "sub" / "b.parquet", "y")
    base = storage.tree_hash(root)
    (root / ".a.parquet.abcdefgh.tmp").write_text("half")
    assert storage.tree_hash(root) == base
    storage.write_text(root / "sub" / "b.parquet", "z")
    assert storage.tree_hash(root) != base
    storage.write_text(root / "sub" / "b.parquet", "y")
    assert storage.tree_hash(root) == base
    (root / "a.parquet").rename(root / "c.parquet")
    assert storage.tree_hash(root) != base
    assert storage.tree_hash(tmp_path / "missing") == storage.tree_hash(tmp_path / "missing_too")


def test_link_or_copy_is_atomic_and_independent_of_later_rewrites(tmp_path):
    source = storage.write_text(tmp_path / "a.txt", "one")
    target = storage.link_or_copy(source, tmp_path / "out" / "b.txt")
    assert target.read_text() == "one"
    storage.write_text(source, "two")  # atomic writes replace the file: the restored copy keeps its bytes
    assert target.read_text() == "one"
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_a_page_restored_from_a_meta_sleeve_is_exported_again_for_its_own_depth(cached, tmp_path):
    top = cached((stage("chart", "shows_plotly.ipynb"),))  # sets the phase; its run gives the profile
    runs = top.dir.parent
    nested = Run.create(runs / "META" / "sleeves", top.resolved, PHASE, workspace=top.workspace, run_id="chart_sleeve",
                        options=RunOptions(depth=1, runs_root=str(runs)))
    run_ok(nested)
    run_ok(top)
    rec = reopen(top).manifest["stages"]["chart"]
    assert rec["cached_from_path"] == "META/sleeves/chart_sleeve"
    page = top.dir / rec["html"]
    srcs = re.findall(r'<script[^>]*src="([^"]+)"', page.read_text(encoding="utf-8"))
    assert srcs and all((page.parent / s).resolve().is_file() for s in srcs), srcs
    nested_page = nested.dir / reopen(nested).manifest["stages"]["chart"]["html"]
    assert all(s.startswith("../../_static/") for s in srcs), srcs  # runs/<run>/notebooks/ -> runs/_static
    assert re.search(r'src="\.\./\.\./\.\./\.\./_static/', nested_page.read_text(encoding="utf-8"))
