"""The walk-forward's windows decided in parallel (`backtest.workers`): the same `WalkForward` as the
sequential run, field by field and exactly; a failing window's error as the sequential run raises it;
`workers=1` never starts a pool; the profile key's bounds."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from conftest import art, spy_local_pools
from quantlib.backtest import walkforward as backtest
from quantlib.backtest.walkforward import WalkForward, windows
from quantlib.core import parallel
from quantlib.core.errors import GateError, ProfileError
from quantlib.core.gates import GateResult
from quantlib.core.profiles import load_profile

pytestmark = pytest.mark.skipif(not parallel.can_fork(), reason="the local pool forks (Linux)")


@pytest.fixture
def pools(monkeypatch) -> list[int]:
    return spy_local_pools(monkeypatch)


def _inputs(run):
    from quantlib.data.scanners import Scanner

    scanners = [Scanner.model_validate(s) for s in art(run, "artifacts/universe.json")["scanners"]]
    return (art(run, "artifacts/returns.parquet"), art(run, "artifacts/screener.parquet"), scanners,
            art(run, "artifacts/benchmark.parquet")["benchmark"])


def _workers(profile, workers: int | None, **backtest_keys):
    return profile.model_copy(update={"backtest": profile.backtest.model_copy(update={"workers": workers,
                                                                                     **backtest_keys})})


def _plan(run):
    returns = art(run, "artifacts/returns.parquet")
    cfg = backtest.settings(run.profile)
    return windows(returns.index, cfg.train_days, cfg.test_days)


def assert_same_walk_forward(a: WalkForward, b: WalkForward) -> None:
    """Every field of two walk-forwards equal: frames exactly (values, dtypes, index), targets per
    profile, the parity gate's document."""
    for field in dataclasses.fields(WalkForward):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y, check_exact=True, obj=field.name)
        elif isinstance(x, GateResult):
            assert x.to_dict() == y.to_dict(), field.name
        else:
            assert list(x) == list(y), field.name
            for method in x:
                pd.testing.assert_frame_equal(x[method], y[method], check_exact=True, obj=f"targets[{method}]")


def test_parallel_windows_give_the_sequential_walk_forward_exactly(long_sleeve, pools):
    from quantlib.sleeve.selection import SelectionError
    from quantlib.sleeve.window import decide_window

    _, run = long_sleeve
    plan = _plan(run)
    cash = {plan[2].decision, plan[7].decision}

    def decide(r, c, p, end):   # a planted closure: reaches the forked workers as it is
        if end in cash:
            raise SelectionError("selection (HTR): only 1 asset(s) survive")
        return decide_window(r, c, p, end)

    sequential = backtest.run(*_inputs(run), _workers(run.profile, 1), decide=decide)
    assert pools == []
    par = backtest.run(*_inputs(run), _workers(run.profile, 2), decide=decide)
    assert pools == [2]
    assert len(par.windows) >= 6 and set(par.windows.loc[par.windows["selected"].eq(0), "decision"]) == cash
    assert par.parity.checked and len(par.targets) == len(run.profile.optimizer.profiles)
    assert_same_walk_forward(sequential, par)


@pytest.mark.parametrize("error", [GateError, ValueError], ids=["gate_error", "any_exception"])
def test_a_failing_window_raises_in_a_worker_as_in_the_sequential_run(long_sleeve, pools, error):
    """Window 3 fails in the worker (this process waits in window 1 until it has), and with another error
    the last window, which the worker decides first: the parallel run raises window 3's error, its type
    and message those of the sequential run."""
    import multiprocessing

    from quantlib.sleeve.window import decide_window

    _, run = long_sleeve
    plan = _plan(run)

    def planted(reached):
        def decide(r, c, p, end):
            if end == plan[0].decision and reached is not None:
                assert reached.wait(60), "the worker never reached window 3"
            if end == plan[2].decision:
                if reached is not None:
                    reached.set()
                raise error("planted failure in window 3")
            if end == plan[-1].decision:
                raise RuntimeError("planted failure in the last window")
            return decide_window(r, c, p, end)
        return decide

    raised = {}
    for workers in (1, 2):
        reached = multiprocessing.get_context("fork").Event() if workers > 1 else None
        with pytest.raises(Exception) as info:
            backtest.run(*_inputs(run), _workers(run.profile, workers, simulators=["reference"]),
                         decide=planted(reached))
        raised[workers] = info.value
    assert pools == [2]
    assert type(raised[2]) is type(raised[1]) and str(raised[2]) == str(raised[1])
    expected = backtest.BacktestError if error is GateError else ValueError
    assert type(raised[1]) is expected and "planted failure in window 3" in str(raised[1])


def test_ctrl_c_during_the_windows_leaves_no_worker_behind(long_sleeve, pools):
    import psutil

    _, run = long_sleeve

    def progress(plan):   # Ctrl-C in this process once two windows are in
        for k, w in enumerate(plan):
            if k == 2:
                raise KeyboardInterrupt
            yield w

    with pytest.raises(KeyboardInterrupt):
        backtest.run(*_inputs(run), _workers(run.profile, 2), progress=progress)
    assert pools == [2] and psutil.Process().children() == []


def test_one_worker_never_starts_a_pool(long_sleeve, monkeypatch):
    import multiprocessing.context

    class NoPool:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a process pool was started")

    _, run = long_sleeve
    monkeypatch.setattr(multiprocessing.context.ForkContext, "Process", NoPool)
    wf = backtest.run(*_inputs(run), _workers(run.profile, 1, simulators=["reference"]))
    assert len(wf.windows) >= 6
    with pytest.raises(AssertionError, match="a process pool was started"):   # the patch has teeth
        backtest.run(*_inputs(run), _workers(run.profile, 2, simulators=["reference"]))


def test_backtest_workers_is_bounded_and_named_when_wrong():
    assert load_profile("demo_crypto_long").profile.backtest.workers is None   # auto
    for value, why in (("-1", "greater than or equal to 0"), ("65", "less than or equal to 64"),
                       ("two", "valid integer")):
        with pytest.raises(ProfileError, match=rf"FW_BACKTEST__WORKERS='{value}': key 'backtest\.workers': .*{why}"):
            load_profile("demo_crypto_long", env={"FW_BACKTEST__WORKERS": value})


def test_the_windows_go_to_ray_only_when_the_profile_asks_and_the_sleeve_runs_on_a_cluster(monkeypatch):
    from quantlib.core.profiles import load_profile

    off = load_profile("demo_crypto_long").profile
    on = load_profile("demo_crypto_long", env={"FW_BACKTEST__WINDOWS_ON_RAY": "true"}).profile
    monkeypatch.delenv(parallel.RAY_ADDRESS_ENV, raising=False)
    assert backtest.ray_address(on) is None and backtest.ray_address(off) is None
    monkeypatch.setenv(parallel.RAY_ADDRESS_ENV, "10.0.0.1:6379")
    assert backtest.ray_address(on) == "10.0.0.1:6379" and backtest.ray_address(off) is None
