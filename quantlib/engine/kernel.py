"""The stage kernel: one IPython kernel per run, started ahead of time where the caller can.

`SharedKernel` runs all the stages of one run (heavy imports paid once, not per stage). Its boot and the
phase's imports (`WARM_IMPORTS`, ~1 s) used to begin at the run's first stage, after the driver's own
imports and the run's creation. `prestart` starts the kernel of the next run as early as the caller
knows the phase -- the CLI before it imports the executor, a warm Ray worker as soon as its previous
sleeve is done -- and `for_run` hands it to that run when it was made for the same phase, progress view,
environment and working directory (else it is shut down and the run starts its own, as before). A
prestarted kernel has run nothing but the warm imports; one never claimed is shut down at exit.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from pathlib import Path

from quantlib.core import lean
from quantlib.core.live import ENV_VAR
from quantlib.engine.progress import LiveProgress

CLIENT_CLASS = "quantlib.engine.kernel_client.ReadyClient"  # by name: jupyter_client is imported only to start one

#: modules a phase's stages import, loaded by the shared kernel as soon as it starts (in parallel with
#: the orchestrator's own work); vectorbt is deliberately absent (only the validation stage needs it)
WARM_IMPORTS = {
    "data": "import pandas, plotly.express, quantlib.stages.data, quantlib.core.figures, quantlib.engine.context",
    "sleeve": "import pandas, scipy.cluster.hierarchy, plotly.express, plotly.subplots, "
              "quantlib.stages.sleeve, quantlib.sleeve.selection, quantlib.sleeve.analysis, quantlib.portfolio.optimize, quantlib.sleeve.tearsheet, "
              "quantlib.core.figures, quantlib.engine.context",
    "meta": "import pandas, plotly.express, quantlib.stages.meta, quantlib.portfolio.optimize, quantlib.sleeve.tearsheet, "
            "quantlib.core.figures, quantlib.engine.context",
}


class SharedKernel:
    """One IPython kernel for all the stages of one run: heavy imports are paid once, not per stage.

    Each stage notebook runs with a namespace-reset cell inserted before its parameters cell
    (`executor.with_namespace_reset`), so a stage never sees another stage's variables; imported modules
    stay cached. A failed stage closes the kernel (a timed-out or crashed kernel is never reused).
    """

    def __init__(self, warm: str = "", env: dict[str, str] | None = None) -> None:
        self.warm = lean.KERNEL_SOURCE + warm  # runs right after the kernel starts (while this process goes on)
        self.env = env  # the kernel's environment (None: this process's)
        self.km = None
        self.kc = None

    def manager(self):
        """The running kernel's manager, started now if it is not running."""
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        if self.km is None:
            # nbclient needs an async manager: with a blocking one, cell timeouts are not enforced
            self.km = AsyncKernelManager(kernel_name="python3", client_class=CLIENT_CLASS)
            run_sync(self.km.start_kernel)(extra_arguments=["--IPKernelApp.log_level=ERROR"],
                                           **({"env": self.env} if self.env is not None else {}))
            if self.warm:  # queued in the kernel; the first stage's cells run after it
                from jupyter_client import BlockingKernelClient

                # a blocking client (its own threads, no event loop) so nbclient's async client is untouched
                self.kc = BlockingKernelClient()
                self.kc.load_connection_info(self.km.get_connection_info())
                self.kc.start_channels(iopub=False, stdin=False, hb=False, control=False)  # shell is enough
                self.kc.execute(self.warm, silent=True, store_history=False)
        return self.km

    def alive(self) -> bool:
        """Started, and its process still running."""
        from jupyter_core.utils import run_sync

        return self.km is not None and self.km.has_kernel and bool(run_sync(self.km.is_alive)())

    def interrupt(self) -> None:
        """SIGINT to the kernel (what Jupyter's interrupt does): the running cell gets a KeyboardInterrupt."""
        from jupyter_core.utils import run_sync

        if self.km is not None and self.km.has_kernel:
            run_sync(self.km.interrupt_kernel)()

    def close(self) -> None:
        """Shut the kernel down (after the run, or after a failed stage)."""
        from jupyter_core.utils import run_sync

        if self.kc is not None:
            self.kc.stop_channels()
        if self.km is not None and self.km.has_kernel:
            run_sync(self.km.shutdown_kernel)(now=True)
        self.km = self.kc = None


def kernel_env(env: dict[str, str]) -> dict[str, str]:
    """A stage kernel's environment: `env` with this process's `quantlib` first on PYTHONPATH, so the kernel runs
    the code the driver runs (and the stage cache hashes), not another checkout's editable install."""
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != package_root]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def _key(phase: str, progress: bool) -> tuple:
    """What a prestarted kernel must match to serve a run: phase, progress view, environment (without the
    progress file, private to each view), working directory."""
    env = kernel_env({k: v for k, v in os.environ.items() if k != ENV_VAR})
    return phase, progress, os.getcwd(), tuple(sorted(env.items()))


@dataclass
class _Prestarted:
    key: tuple  # `_key` when it was started
    kernel: SharedKernel
    live: LiveProgress


_ready: _Prestarted | None = None  # at most one prestarted kernel


def _new(phase: str, progress: bool) -> tuple[SharedKernel, LiveProgress]:
    """A kernel for a run of `phase` (not started) and its progress view, whose file the kernel's env names."""
    live = LiveProgress(enabled=progress)
    return SharedKernel(WARM_IMPORTS.get(phase, ""), kernel_env(live.kernel_env())), live


def _take() -> _Prestarted | None:
    global _ready
    ready, _ready = _ready, None
    return ready


def prestart(phase: str, progress: bool) -> None:
    """Start the kernel (and, with `progress`, the terminal's progress view) of the next run of `phase` now,
    so its boot and imports overlap the caller's other work. Replaces an earlier unclaimed one."""
    global _ready
    discard()
    kernel, live = _new(phase, progress)
    _ready = _Prestarted(_key(phase, progress), kernel, live)
    try:
        kernel.manager()
    except BaseException:
        discard()
        raise


def for_run(phase: str, progress: bool) -> tuple[SharedKernel, LiveProgress]:
    """A run's kernel and progress view: the prestarted pair when it was made for this phase, progress view,
    environment and directory; else new ones (the kernel starts at the run's first stage)."""
    ready = _take()
    if ready is not None and ready.key == _key(phase, progress) and ready.kernel.alive():
        return ready.kernel, ready.live
    _close(ready)
    return _new(phase, progress)


def discard() -> None:
    """Shut down the prestarted kernel nobody claimed (and its progress view)."""
    _close(_take())


def _close(ready: _Prestarted | None) -> None:
    if ready is not None:
        ready.kernel.close()
        ready.live.close()


atexit.register(discard)
