"""The executor: a phase's stages (`quantlib.core.registry`) run with papermill into a run directory.

A stage fails (and with it the run) on a failing cell, a timeout
(papermill does not mark those in the saved notebook, so we record it) or a missing declared output.

Where the resume decisions live: `run_phase`'s loop skips a stage that is `stage_complete` (and
optional stages named in `skip`); after the first stage that runs, every later one runs (or is restored
from an earlier run by the stage cache, `engine.cache`). Whether a run may be resumed at all (phase,
profile, live writer, changed profile) is `engine.resume`'s.

Interruption: while `run_phase` runs, SIGTERM (like Ctrl-C) raises `RunInterrupted` in the main thread
(`interruptible`); the run is recorded INTERRUPTED with the stage it stopped in (that stage's record
`interrupted`), its kernel is stopped, manifest and INDEX.md are written, and the exception goes on to
the caller (the CLI exits 130 / 143). A meta's kernel is interrupted first, so the sleeve runs inside it
record their own interruption (`GRACE_S`); a nested run left RUNNING whose process is gone is then
recorded INTERRUPTED by the meta (`settle_nested`). Signals that arrive during that bookkeeping are
held and raised once it is done.
"""
from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from quantlib.core import registry, storage
from quantlib.core.errors import RunInterrupted, StageError, WorkbookError, first_line, interruptible
from quantlib.core.figures import compact_notebook_figures, notebook_json, run_static_root
from quantlib.core.registry import Stage, stages
from quantlib.core.runs import MANIFEST, REPORT_PHASES, Run, current_process, utc_now
from quantlib.core.workspace import Workspace
from quantlib.engine import cache, html, notebook_engine
from quantlib.engine import kernel as stage_kernel
from quantlib.engine.html import HtmlExports
from quantlib.engine.index import write_index
from quantlib.engine.run_report import record_report

NOTEBOOKS_DIR: Path | None = None  # None: the run's workspace's notebooks/ (tests point it elsewhere)
DATA_INPUTS = "data_inputs"  # the artifact in which a stage records what it read outside its run
GRACE_S = 20.0  # an interrupted meta waits this long for the sleeve runs inside its kernel to record it
SETTLE_S = 5.0  # ... and this long, once its kernel is gone, for their processes to end


def notebook_name(index: int, stage: Stage) -> str:
    return f"{index:02d}_{stage.name}.ipynb"


def stage_complete(run: Run, stage: Stage) -> bool:
    """Completed in the manifest and every declared output present with the recorded hash."""
    record = run.manifest["stages"].get(stage.name, {})
    if record.get("status") != "completed":
        return False
    for rel, digest in record.get("outputs", {}).items():
        path = run.path(rel)
        if not path.exists() or storage.sha256_file(path) != digest:
            return False
    return True


def run_phase(run: Run, phase: str, say: Callable[[str], None] = print, skip: dict[str, str] | None = None) -> bool:
    """Execute every stage of `phase` not yet complete; return True if the run passed.

    `skip` maps optional stage names to the reason they are skipped (recorded, shown in INDEX.md).
    Ctrl-C or SIGTERM: the run is recorded INTERRUPTED and `KeyboardInterrupt` / `RunInterrupted` is raised.
    """
    plan = stages(phase)
    profile = run.profile
    skip = skip or {}
    run.manifest["skipped"] = dict(skip)
    start_recording(run)
    rerun = False
    # the kernel (prestarted when the caller could) and the terminal's view of what it reports (core.live)
    kernel, live = stage_kernel.for_run(phase, progress=say is print)
    exports = HtmlExports(run_static_root(run))  # pages load the runs root's _static/ (plotly.js, CSS)
    ok = False
    with interruptible() as signals:
        try:
            for index, stage in enumerate(plan, start=1):
                if stage.optional and stage.name in skip:
                    run.stage(stage.name).update(status="skipped", reason=skip[stage.name])
                    say(f"[{index}/{len(plan)}] {stage.name}: skipped ({skip[stage.name]})")
                    continue
                if not rerun and stage_complete(run, stage):
                    say(f"[{index}/{len(plan)}] {stage.name}: complete, skipped (resume)")
                    continue
                rerun = True
                key = cache.stage_key(run, phase, stage, source_notebook(run, stage))
                hit = cache.find(run, stage, key) if key and run.options.cache else None
                if hit:
                    seconds = cache.restore(run, stage, hit, key, f"notebooks/{notebook_name(index, stage)}")
                    trust_notebook(run.dir / "notebooks" / notebook_name(index, stage))
                    if profile.book.export_html and not run.stage(stage.name).get("html"):
                        exports.submit(run.dir / "notebooks" / notebook_name(index, stage), run.stage(stage.name))
                    record_outside_reads(run, stage)
                    run.save()
                    say(f"[{index}/{len(plan)}] {stage.name}: cached from {hit.run.id} ({seconds:.1f} s; "
                        f"computed there in {hit.record.get('seconds', 0):.1f} s)")
                    continue
                say(f"[{index}/{len(plan)}] {stage.name}: running {stage.notebook} ...")
                seconds = execute_stage(run, index, stage, profile.book.cell_timeout_s, profile.book.export_html,
                                        kernel, exports)
                cache.record_computed(run, phase, stage, key)
                run.save()
                say(f"[{index}/{len(plan)}] {stage.name}: ok ({seconds:.1f} s)")
            run.manifest["status"] = "PASS"
            run.manifest.pop("error", None)  # a resumed run that now passes drops the old failure
            ok = True
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (RunInterrupted)
            signals["hold"] = True
            mark_interrupted(run, signal_name(exc))
            say(f"INTERRUPTED ({signal_name(exc)}) in stage {run.manifest['interrupted']['stage'] or '-'}")
            raise
        except Exception as exc:  # a WorkbookError carries its own message; anything else is named
            message = str(exc) if isinstance(exc, WorkbookError) else f"internal error: {type(exc).__name__}: {exc}"
            mark_failed(run, message)
            say(f"FAIL: {message}")
        finally:
            signals["hold"] = True  # a second Ctrl-C / SIGTERM waits until the records are written
            interrupted = run.manifest["status"] == "INTERRUPTED"
            if interrupted and (run.dir / "sleeves").is_dir():
                kernel.interrupt()  # the sleeve runs inside a meta's kernel record their own interruption
                settle_nested(run, GRACE_S)
            kernel.close()
            live.close()
            exports.wait()
            if interrupted:
                settle_nested(run, SETTLE_S)
            run.manifest["finished_at"] = utc_now()
            if phase in REPORT_PHASES and not interrupted:
                record_report(run, say)  # report.html, also when a gate failed; its sha256 in the manifest
            run.save()
            write_index(run, phase)
    if signals["pending"] is not None:
        raise RunInterrupted(signals["pending"])
    return ok


def signal_name(exc: BaseException) -> str:
    """SIGTERM / SIGINT for a `RunInterrupted`, SIGINT for a plain KeyboardInterrupt."""
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def start_recording(run: Run) -> None:
    """The run is RUNNING, written by this process; a resume is recorded with the status it had."""
    if run.manifest.get("stages"):
        run.manifest.setdefault("resumes", []).append(
            {"at": utc_now(), "status": run.status, "interrupted": run.manifest.get("interrupted")})
    run.manifest.pop("interrupted", None)
    run.manifest.update(status="RUNNING", process=current_process())
    run.save()


def mark_interrupted(run: Run, by: str) -> None:
    """INTERRUPTED, with the stage it stopped in (its record `interrupted`); the manifest is saved by the caller."""
    running = [name for name, rec in run.manifest["stages"].items() if rec.get("status") == "running"]
    for name in running:
        run.manifest["stages"][name].update(status="interrupted", ended_at=utc_now())
    run.manifest.pop("error", None)
    run.manifest.update(status="INTERRUPTED", interrupted={"by": by, "at": utc_now(),
                                                           "stage": running[0] if running else None})


def mark_failed(run: Run, message: str) -> None:
    """FAIL with `message`, also on the stage it stopped in; the manifest is saved by the caller."""
    run.manifest["status"] = "FAIL"
    run.manifest["error"] = message
    for record in run.manifest["stages"].values():
        if record.get("status") == "running":
            record.update(status="failed", error=message)


def settle_dead(run_dir: Path, message: str) -> list[Path]:
    """A run its process can no longer finish (its Ray worker died), and the runs nested in it (a nested meta's
    sleeves, run in the same process): each still RUNNING is recorded FAIL with `message` (manifest, INDEX.md);
    returns their directories. On another host a RUNNING record would read RUNNING until it is STALE (12 h),
    and a resume of the meta would refuse it meanwhile."""
    settled = []
    run_dir = Path(run_dir)
    for manifest in [run_dir / MANIFEST, *sorted((run_dir / "sleeves").rglob(MANIFEST))]:
        try:
            run = Run.at(manifest.parent)
        except WorkbookError:
            continue  # it died before this run existed
        if run.manifest.get("status") != "RUNNING":
            continue
        mark_failed(run, message)
        run.manifest["finished_at"] = utc_now()
        run.save()
        write_index(run, run.manifest["phase"])
        settled.append(run.dir)
    return settled


def settle_nested(run: Run, wait_s: float) -> list[Run]:
    """Wait up to `wait_s` for the runs nested in `run` (a meta's `sleeves/`) to stop RUNNING; one whose
    process is gone (STALE) is recorded INTERRUPTED here. Returns those still RUNNING."""
    deadline = time.monotonic() + wait_s
    while True:
        live = []
        for path in sorted((run.dir / "sleeves").rglob(MANIFEST)):
            try:
                child = Run.at(path.parent)
                status = child.status
            except WorkbookError:
                continue
            if status == "STALE":
                mark_interrupted(child, f"interrupted meta run {run.id}")
                child.manifest["finished_at"] = utc_now()
                child.save()
                write_index(child, child.manifest["phase"])
            elif status == "RUNNING":
                live.append(child)
        if not live or time.monotonic() >= deadline:
            return live
        time.sleep(0.2)


RESET_SOURCE = """\
# the book runs every stage of a run in one kernel: drop the previous stage's variables (imports stay cached;
# cheaper than %reset -f, which also runs a full garbage collection)
for _name in [n for n in get_ipython().user_ns if not n.startswith("_") and n not in get_ipython().user_ns_hidden]:
    del get_ipython().user_ns[_name]
Out.clear()"""


def with_namespace_reset(source: Path):
    """The notebook with a namespace-reset cell (tagged `book-reset`) before its parameters cell."""
    import nbformat

    nb = nbformat.read(str(source), as_version=4)
    tags = [c.get("metadata", {}).get("tags", []) for c in nb.cells]
    at = next((i for i, t in enumerate(tags) if "parameters" in t), 0)
    cell = nbformat.v4.new_code_cell(RESET_SOURCE)
    cell.metadata["tags"] = ["book-reset"]
    nb.cells.insert(at, cell)
    return nb


def execute_stage(run: Run, index: int, stage: Stage, timeout_s: int, export_html: bool,
                  kernel: "stage_kernel.SharedKernel | None" = None, exports: "HtmlExports | None" = None) -> float:
    """Run one stage notebook with papermill; verify and hash its outputs; record it in the manifest."""
    km = kernel.manager() if kernel else None  # start the kernel first: it boots while papermill imports
    notary()  # the user's notebook secret exists before any nested run (a meta's sleeves) signs in parallel
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    source = source_notebook(run, stage)
    target = run.dir / "notebooks" / notebook_name(index, stage)
    record = run.stage(stage.name)
    record.update(status="running", started_at=utc_now(), notebook=f"notebooks/{target.name}",
                  outputs={}, error=None, html=None, notebook_sha256=None, html_sha256=None)
    run.save()
    start = time.perf_counter()
    interrupted = False
    try:
        pm.execute_notebook(with_namespace_reset(source) if kernel else str(source), str(target),
                            parameters={"run_dir": str(run.dir.resolve()), "profile": run.manifest["profile"]},
                            kernel_name="python3", progress_bar=False, execution_timeout=timeout_s,
                            report_mode=False, extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            km=km, engine_name=notebook_engine.register())
    except KeyboardInterrupt:  # the run records it (run_phase); no HTML of a half-run notebook
        interrupted = True
        _cancel_pending()
        raise
    except PapermillExecutionError as exc:
        if kernel:
            kernel.close()
        raise _fail(run, stage, record, start,
                    f"stage {stage.name} failed in {target} cell {exc.exec_count}: {exc.ename}: "
                    f"{first_line(exc.evalue)}") from None
    except Exception as exc:  # timeouts and dead kernels are not marked in the notebook by papermill
        if kernel:
            kernel.close()
        cell = _running_cell(target)
        kind = "timed out" if "timeout" in type(exc).__name__.lower() else "aborted"
        raise _fail(run, stage, record, start,
                    f"stage {stage.name} {kind} in {target} cell {cell} "
                    f"({type(exc).__name__}: {first_line(str(exc))}); limit book.cell_timeout_s={timeout_s}") from None
    finally:
        if target.exists() and not interrupted:
            finish_notebook(target)
        if export_html and target.exists() and not interrupted:
            (exports.submit if exports else html.export_html)(target, record)
    seconds = time.perf_counter() - start
    record["notebook_sha256"] = storage.sha256_file(target)  # `run_book.py verify` re-hashes it
    outputs = {}
    missing = []
    for rel in stage.expanded_outputs(run.profile):
        path = run.path(rel)
        if path.exists():
            outputs[rel] = storage.sha256_file(path)
        else:
            missing.append(rel)
    if missing:
        raise _fail(run, stage, record, start,
                    f"stage {stage.name} did not write declared output(s) {', '.join(missing)} ({target})")
    lake_root = Workspace(run.workspace).resolve(run.profile.data.lakehouse)
    record.update(status="completed", ended_at=utc_now(), seconds=round(seconds, 3), outputs=outputs,
                  lakehouse_outputs={rel: storage.sha256_file(lake_root / rel)
                                     for rel in stage.lakehouse_writes if (lake_root / rel).exists()})
    record_outside_reads(run, stage)
    return seconds  # the caller saves the manifest (with the stage's cache key)


@lru_cache(maxsize=1)
def notary():
    """The notebook notary of the user running the book (nbformat's default: the secret and the signature
    database in their Jupyter data dir, `jupyter --data-dir`), the one JupyterLab checks for that user."""
    from nbformat.sign import NotebookNotary

    try:
        notary = NotebookNotary()
        _ = notary.secret  # read, or created once (0600) by the first process
        return notary
    except Exception:  # noqa: BLE001 - e.g. an unwritable data dir: notebooks stay unsigned
        return None


def finish_notebook(notebook: Path) -> None:
    """An executed notebook read once, signed (`trust_notebook`) and its figures compacted (one line per
    figure, not one per number: `figures.compact_notebook_figures`)."""
    doc = notebook_json(notebook)
    if doc is None:
        return
    trust_notebook(notebook, doc)  # first: compaction changes `doc` in place
    compact_notebook_figures(notebook, doc)


def trust_notebook(notebook: Path, doc: dict | None = None) -> bool:
    """Sign an executed notebook (its content, not the file: the signature is stored in the notary's
    database, the notebook's bytes and recorded sha256 do not change; `doc`: its JSON, already read).
    Returns whether it is signed; never fails a stage (a notary that cannot write leaves the notebook
    untrusted, as before)."""
    import nbformat

    signer = notary()
    if signer is None:
        return False
    try:
        nb = nbformat.read(str(notebook), as_version=4) if doc is None else nbformat.from_dict(doc)
        signer.sign(nb)  # one database commit (check_signature would be a second one)
        return getattr(signer.store, "db", True) is not None  # nbformat skips the store without its database
    except Exception:  # noqa: BLE001 - e.g. a read-only or locked signature database
        return False


def source_notebook(run: Run, stage: Stage) -> Path:
    """The stage's notebook where the run reads its code (`Run.code_root`: its workspace, or the copy Ray
    shipped to the node it runs on), or in NOTEBOOKS_DIR."""
    return (NOTEBOOKS_DIR or Workspace(run.code_root).notebooks) / stage.notebook


def record_outside_reads(run: Run, stage: Stage) -> None:
    """Copy what a stage read outside the run (lakehouse files, data run) into the manifest."""
    if stage.writes_name(DATA_INPUTS):
        run.record_read(storage.read_json(run.path(registry.path(run.manifest["phase"], DATA_INPUTS))))


def _cancel_pending(wait_s: float = 5.0) -> None:
    """Cancel papermill's coroutines an interrupt left in this thread's event loop (else they run on whenever
    the loop runs again -- stopping the kernel -- and report a dead kernel). Inside a kernel (a meta's
    sleeves) a loop is already running and papermill ran in jupyter_core's runner thread: nothing to do here.
    Never raises: it must not turn the interrupt into a failure."""
    from jupyter_core.utils import ensure_event_loop

    try:
        asyncio.get_running_loop()
        return
    except RuntimeError:
        pass
    try:
        loop = ensure_event_loop()
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=wait_s))
        for task in tasks:  # nbclient turns the cancellation into DeadKernelError: retrieved, so never logged
            if task.done() and not task.cancelled():
                task.exception()
    except RuntimeError:  # a closed or busy loop: the kernel is stopped anyway, the tasks die with it
        return


def _fail(run: Run, stage: Stage, record: dict, start: float, message: str) -> StageError:
    record.update(status="failed", ended_at=utc_now(), seconds=round(time.perf_counter() - start, 3),
                  error=message)
    run.save()
    return StageError(message)


def _running_cell(notebook: Path) -> str:
    """The execution count (or index) of the cell that was running when execution stopped (`notebook_engine`
    marks it failed)."""
    nb = notebook_json(notebook) or {}
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("metadata", {}).get("papermill", {}).get("status") == "failed":
            return str(cell.get("execution_count") or f"#{i}")
    return "?"
