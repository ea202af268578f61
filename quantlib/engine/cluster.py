"""The workbook's own Ray cluster: `run_book.py cluster start|status|stop`.

A meta run on a fresh local Ray instance pays Ray's start-up (10-40 s here) every time. `cluster start`
starts one head node that outlives the command (`ray start --head --block`, detached), and every later
meta in the same runs root joins it instead (`running`), saying so. The head is as safe as a meta's own
instance (`fanout.local_ray_files`): token authentication with its own 256-bit token in a private 0700
folder under the system temp dir (never the home directory), every server on 127.0.0.1 unless `--host`
exposes it deliberately. Its record, `<runs root>/_cluster/cluster.json`, names the address, the token
file and the pid of the blocking `ray start`; `stop` signals that process, which takes down exactly this
cluster's processes (never `ray stop`, which would kill every Ray instance on the machine, another
meta's included).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from quantlib.core import storage
from quantlib.core.errors import WorkbookError
from quantlib.core.runs import process_alive, process_start
from quantlib.core.workspace import Workspace

CLUSTER_DIR = "_cluster"  # in the runs root, beside `_static/`: not a run
RECORD = "cluster.json"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 180.0  # Ray's head takes 10-40 s on a loaded 2-core machine
STOP_TIMEOUT_S = 30.0
#: Ray gives a starting raylet a fixed 30 s to register ("The current node timed out during startup"), which a
#: loaded 2-core machine can miss: one more try before giving up
START_ATTEMPTS = 2


class ClusterError(WorkbookError):
    """A cluster command that cannot do what was asked (one line, exit 2)."""


@dataclass(frozen=True)
class Cluster:
    """A workbook cluster as recorded when it started."""

    address: str       # host:port of its GCS, what `ray.init(address=...)` takes
    host: str          # the interface its servers listen on
    pid: int           # the blocking `ray start --head` process; its end takes the cluster down
    hostname: str      # the machine it runs on (a record copied to another machine is not running there)
    started: str       # ISO time, UTC
    private_dir: str   # 0700 folder: `auth_token` (0600) and Ray's temp dir `ray/` (logs)
    num_cpus: int
    ray_version: str
    workspace: str     # the checkout whose code and profiles its workers run: only its metas join it
    pid_started: str | None = None  # the pid's start time (`core.runs.process_start`): a reused pid is not it

    @property
    def token_path(self) -> Path:
        return Path(self.private_dir) / "auth_token"

    @property
    def log_path(self) -> Path:
        return Path(self.private_dir) / "ray-start.log"

    def alive(self) -> bool:
        """Its `ray start` process still runs (on this machine; a zombie or a reused pid is not it)."""
        return self.hostname == socket.gethostname() and process_alive(self.pid, self.pid_started)

    def env(self) -> dict[str, str]:
        """Ray's settings a client of this cluster needs (token auth with its token file)."""
        return ray_env(Path(self.private_dir), loopback=self.host == LOOPBACK)


def ray_env(private: Path, *, loopback: bool) -> dict[str, str]:
    """Environment of a Ray process of a workbook-owned instance: token auth from `private/auth_token`, no usage
    stats, and on loopback Ray's single-machine mode, which keeps 127.0.0.1 as the node address."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(private / "auth_token"),
           "RAY_USAGE_STATS_ENABLED": "0"}
    if loopback:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def record_path(runs_root: Path) -> Path:
    return Path(runs_root) / CLUSTER_DIR / RECORD


def read(runs_root: Path) -> Cluster | None:
    """The recorded cluster of this runs root, alive or not; None when none was started."""
    path = record_path(runs_root)
    if not path.exists():
        return None
    try:
        return Cluster(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"cluster: {path} is not a workbook cluster record ({exc}); "
                           f"stop the cluster by hand and delete the file") from None


def running(runs_root: Path, workspace: Path | None = None) -> Cluster | None:
    """The workbook cluster a meta in this runs root (of checkout `workspace`, when given) should join: recorded,
    alive and serving that checkout (its workers run the code and profiles of the checkout it was started
    from), else None."""
    cluster = read(runs_root)
    if cluster is None or not cluster.alive():
        return None
    if workspace is not None and Path(cluster.workspace) != Path(workspace).resolve():
        return None
    return cluster


def start(runs_root: Path, *, host: str = LOOPBACK, port: int = 0, num_cpus: int | None = None,
          timeout_s: float = START_TIMEOUT_S) -> Cluster:
    """Start the head node of this runs root's cluster and record it; refused when one already runs."""
    import secrets
    import shutil
    import tempfile
    from importlib.metadata import version

    runs_root = Path(runs_root)
    with _start_lock(runs_root):
        existing = read(runs_root)
        if existing is not None and existing.alive():
            raise ClusterError(f"cluster: already running at {existing.address} (pid {existing.pid}, started "
                               f"{existing.started}); `run_book.py cluster stop` first")
        private = Path(tempfile.mkdtemp(prefix="fw-cluster-", dir="/tmp" if os.path.isdir("/tmp") else None))
        try:
            fd = os.open(private / "auth_token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
            cpus = num_cpus or os.cpu_count() or 2
            argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address",
                    host, "--port", str(port), "--num-cpus", str(cpus), "--temp-dir", str(private / "ray"),
                    "--include-dashboard", "false", "--disable-usage-stats"]
            env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
            env.update(ray_env(private, loopback=host == LOOPBACK))
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    pid, address = _launch(argv, env, private, timeout_s)
                    break
                except ClusterError as exc:
                    if attempt == START_ATTEMPTS or "timed out during startup" not in str(exc):
                        raise
            cluster = Cluster(address=address, host=host, pid=pid, hostname=socket.gethostname(),
                              started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), private_dir=str(private),
                              num_cpus=cpus, ray_version=version("ray"), workspace=str(Workspace.current().root),
                              pid_started=process_start(pid))
            storage.write_json(record_path(runs_root), asdict(cluster))
        except BaseException:  # a failed start, Popen's OSError, Ctrl-C: nothing of it is left behind
            shutil.rmtree(private, ignore_errors=True)
            raise
    return cluster


@contextmanager
def _start_lock(runs_root: Path) -> Iterator[None]:
    """One `cluster start` at a time per runs root (`O_EXCL` lock file naming its pid; a dead holder's is taken
    over), so two starts cannot both record a head and orphan one."""
    lock = Path(runs_root) / CLUSTER_DIR / "start.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and process_alive(holder):
                raise ClusterError(f"cluster: another `cluster start` (pid {holder}) is under way for {runs_root}; "
                                   f"wait for it, then `run_book.py cluster status`") from None
            lock.unlink(missing_ok=True)  # its holder died: take it over
    else:
        raise ClusterError(f"cluster: cannot take {lock}; delete it if no `cluster start` runs")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        yield
    finally:
        lock.unlink(missing_ok=True)


def _launch(argv: list[str], env: dict[str, str], private: Path, timeout_s: float) -> tuple[int, str]:
    """Start the blocking `ray start --head` detached and wait for the address it writes: (pid, address).
    A start that fails leaves no process behind (its whole process group is killed)."""
    with open(private / "ray-start.log", "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # outlives this command; Ctrl-C in its shell spares it
    address_file = private / "ray" / "ray_current_cluster"
    deadline = time.monotonic() + timeout_s
    try:
        while not address_file.exists() or not address_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                reason = (f"exited with code {process.returncode}" if process.poll() is not None
                          else f"no address within {timeout_s:g} s")
                tail = (private / "ray-start.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
                raise ClusterError(f"cluster: `ray start --head` {reason} ({tail[0][:200]})")
            time.sleep(0.25)
    except BaseException:  # its error, or Ctrl-C while waiting: the half-started head goes too
        _terminate(process.pid, timeout_s=5.0)
        _kill_group(process.pid)
        address_file.unlink(missing_ok=True)
        raise
    return process.pid, address_file.read_text().strip()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop(runs_root: Path, timeout_s: float = STOP_TIMEOUT_S) -> Cluster | None:
    """Stop this runs root's cluster (its `ray start` process and with it every process it started), remove
    its private folder and record; None when there was nothing to stop."""
    import shutil

    cluster = read(runs_root)
    if cluster is None:
        return None
    if cluster.hostname != socket.gethostname():
        raise ClusterError(f"cluster: {record_path(runs_root)} records a cluster on {cluster.hostname}, not on "
                           f"this machine ({socket.gethostname()}); stop it there")
    if cluster.alive():
        _terminate(cluster.pid, timeout_s)
    shutil.rmtree(cluster.private_dir, ignore_errors=True)
    record_path(runs_root).unlink(missing_ok=True)
    return cluster


def _workers(pid: int) -> list[int]:
    """The processes under `pid` in another process group than its own: Ray's workers (Ray gives each its own
    group), e.g. the warm sleeve workers (`engine.warm`). Linux (/proc); elsewhere none."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            if os.getpgid(child) != pid:
                found.append(child)
        except ProcessLookupError:
            continue
        todo += children.get(child, [])
    return found


def _terminate(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM Ray's workers (a live worker, such as an idle warm one, keeps the raylet 30 s on its way out) and
    the blocking `ray start` (it kills the processes it started), then its whole session (process group) if it
    is still there after `timeout_s`."""
    for worker in _workers(pid):
        try:
            os.kill(worker, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)  # our own child (the start command's failure path)
            if reaped:
                return
        except ChildProcessError:
            pass
        if not process_alive(pid):
            return
        time.sleep(0.2)
    _kill_group(pid)


def status_lines(runs_root: Path) -> tuple[bool, list[str]]:
    """(running?, lines to print) for `cluster status`."""
    cluster = read(runs_root)
    if cluster is None:
        return False, [f"no workbook cluster in {runs_root} (`run_book.py cluster start` starts one)"]
    if not cluster.alive():
        return False, [f"STOPPED  the cluster recorded in {record_path(runs_root)} (pid {cluster.pid} on "
                       f"{cluster.hostname}) is not running; `run_book.py cluster stop` clears the record"]
    exposed = "" if cluster.host == LOOPBACK else f"  (exposed on {cluster.host}: token auth)"
    return True, [f"RUNNING  {cluster.address}{exposed}",
                  f"  started {cluster.started} · pid {cluster.pid} · {cluster.num_cpus} CPUs · Ray {cluster.ray_version}",
                  f"  token {cluster.token_path} · logs {Path(cluster.private_dir) / 'ray'}",
                  "  every `meta` / `demo` / `baseline` run in this runs root joins it"]
