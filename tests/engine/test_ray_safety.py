"""A meta's Ray is safe by default: a local instance has its own auth token (in a private temp folder, not
the home directory), listens on loopback only and is gone with its files after the stage; joining a
cluster that does not answer ends in one line within meta.ray_connect_timeout_s. One local instance,
started the way the meta starts it, is shared by the module (a Ray start costs 10-25 s here)."""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT
from quantlib.core.profiles import load_profile
from quantlib.core.runs import Run, RunOptions
from quantlib.engine import fanout
from quantlib.stages import meta as meta_stages


AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def old_link_path(run_dir: Path) -> Path:
    """Where the meta used to put its predictable `fw-ray-<hash>` link for `run_dir`."""
    return Path(tempfile.gettempdir()) / f"fw-ray-{hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]}"


@dataclass
class Session:
    """The module's local Ray instance and what the tests need to know about it."""

    run_dir: Path
    private: Path
    token: str
    gcs: str
    home_token_before: bool
    env_before: dict[str, str | None]
    stack: ExitStack = field(repr=False)
    open: bool = True

    def close(self, exc: BaseException | None = None) -> None:
        """End the session as a stage ends: normally, or with `exc` raised inside it (Ctrl-C)."""
        if not self.open:
            return
        self.open = False
        if exc is None:
            self.stack.close()
            return
        with pytest.raises(type(exc)):
            with self.stack:
                raise exc


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    run_dir = tmp_path_factory.mktemp("meta") / "demo_meta-run"
    run_dir.mkdir()
    squatter = old_link_path(run_dir)  # a directory at the old predictable path made the meta fail (IsADirectoryError)
    squatter.mkdir()
    home_token = Path.home() / ".ray" / "auth_token"
    env_before = {key: os.environ.get(key) for key in AUTH_ENV}
    stack = ExitStack()
    stack.callback(shutil.rmtree, squatter, ignore_errors=True)
    try:
        private = stack.enter_context(fanout.local_ray_files(run_dir))
        stack.enter_context(fanout.ray_session(None, private, connect_timeout_s=30))
    except BaseException:
        stack.close()
        raise
    import ray

    gcs = ray._private.worker._global_node.gcs_address
    s = Session(run_dir, private, (private / "auth_token").read_text(), gcs, home_token.exists(), env_before, stack)
    yield s
    s.close()


def test_token_lives_in_a_private_temp_folder_and_auth_is_on(session):
    private, token_file = session.private, session.private / "auth_token"
    assert private.parent == Path(tempfile.gettempdir()) and private.name.startswith("fw-ray-")
    assert stat.S_IMODE(private.stat().st_mode) == 0o700 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}", session.token)
    assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_AUTH_TOKEN_PATH"] == str(token_file)
    assert "RAY_AUTH_TOKEN" not in os.environ
    home_token = Path.home() / ".ray" / "auth_token"
    assert home_token.exists() == session.home_token_before  # nothing written to the home directory
    if home_token.exists():
        assert home_token.read_text().strip() != session.token


def test_ray_temp_dir_is_the_runs_ray_folder_through_a_short_link(session):
    link = session.private / "ray"
    assert link.is_symlink() and link.resolve() == (session.run_dir / "ray").resolve()
    sockets = list(link.glob("session_*/sockets/*"))
    assert sockets and all(len(str(p).encode()) <= fanout.RAY_SOCKET_PATH_MAX for p in sockets)
    assert old_link_path(session.run_dir).is_dir()  # the pre-existing directory at the old path: untouched


def test_tasks_run_on_the_authenticated_instance(session):
    import ray

    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42


PROBE = r"""
import json, os, sys, time
import ray
from ray._raylet import AuthenticationTokenLoader, Config, InnerGcsClient

gcs, out = sys.argv[1], {}

def attempt(name, call):
    start = time.perf_counter()
    try:
        call()
        out[name] = {"refused": False}
    except Exception as exc:
        out[name] = {"refused": True, "error": f"{type(exc).__name__}: {exc}"[:400]}
    out[name]["seconds"] = round(time.perf_counter() - start, 2)

kv = lambda: InnerGcsClient.standalone(gcs, None, 3000).internal_kv_get(b"probe", None)
attempt("gcs_without_token", kv)
attempt("driver_without_token", lambda: ray.init(address=gcs, configure_logging=False, log_to_driver=False))
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
Config.initialize("")
AuthenticationTokenLoader.instance().reset_cache()
attempt("gcs_with_wrong_token", kv)
print(json.dumps(out))
"""


def check_refuses_clients_without_the_token(gcs: str, tmp_path: Path) -> None:
    """A driver and a raw GCS client without the token (clean environment, empty home) cannot reach `gcs`."""
    from ray._raylet import InnerGcsClient

    # control: this process holds the token and the same raw GCS call succeeds
    InnerGcsClient.standalone(gcs, None, 3000).internal_kv_get(b"probe", None)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), RAY_NUM_REDIS_GET_RETRIES="1", RAY_USAGE_STATS_ENABLED="0")
    probe = subprocess.run([sys.executable, "-c", PROBE, gcs], env=env, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    out = json.loads(probe.stdout.strip().splitlines()[-1])
    for name, result in out.items():
        assert result["refused"], f"{name} reached the instance: {result}"
    assert "token" in (out["driver_without_token"]["error"] + probe.stderr).lower()
    assert not (home / ".ray").exists()


def test_a_client_without_the_token_is_refused(session, tmp_path):
    check_refuses_clients_without_the_token(session.gcs, tmp_path)


def ray_pids(root: int | None = None) -> dict[int, str]:
    """Process `root` (default: this one, the driver) and every process it started (GCS, raylet, agents,
    workers): pid -> name."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat_file.parent.name))
    pids, todo = {}, [root or os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            pids[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return pids


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:  # `*` (every interface)
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def check_listens_on_loopback_only(root: int | None = None) -> None:
    """Every listening TCP socket of process `root`'s tree (`ray_pids`) is on loopback; GCS and raylet listen."""
    if shutil.which("ss") is None:
        pytest.skip("`ss` (iproute2) is not installed: cannot list the listening sockets")
    pids = ray_pids(root)
    listing = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=30).stdout
    sockets = []  # (process name, local address)
    for line in listing.splitlines():
        local = line.split()[3]
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+),', line):
            if int(pid) in pids:
                sockets.append((name, local))
    names = {name for name, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, f"Ray's servers not found in ss -ltnp:\n{listing}"
    exposed = [(name, local) for name, local in sockets if not _is_loopback(local.rsplit(":", 1)[0])]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_every_listening_socket_of_the_instance_is_on_loopback(session):
    check_listens_on_loopback_only()


def test_a_cluster_that_does_not_answer_fails_in_one_line_within_the_timeout(tmp_path):
    code = ("import json, time\nfrom quantlib.engine import fanout\nstart = time.perf_counter()\n"
            "try:\n    fanout.execute([{'id': 'x'}], 'ray', '127.0.0.1:9', connect_timeout_s=2)\n"
            "except Exception as exc:\n"
            "    print(json.dumps({'seconds': time.perf_counter() - start, 'type': type(exc).__name__, 'msg': str(exc)}))\n")
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["type"] == "WorkbookError" and "\n" not in out["msg"], out
    assert 1.5 < out["seconds"] < 10, out
    for part in ("cannot start Ray", "--ray-address 127.0.0.1:9", "2 s", "meta.ray_connect_timeout_s",
                 "--executor local", "ray start --head"):
        assert part in out["msg"], (part, out["msg"])


def test_private_folder_ignores_whatever_squats_the_old_predictable_path(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    squatter = old_link_path(run_dir)
    squatter.symlink_to(victim, target_is_directory=True)  # a foreign symlink where the meta used to write
    try:
        with fanout.local_ray_files(run_dir) as private:
            assert private != squatter and (private / "ray").resolve() == (run_dir / "ray").resolve()
        assert not private.exists()
        assert squatter.is_symlink() and squatter.resolve() == victim.resolve() and not any(victim.iterdir())
    finally:
        squatter.unlink()


def test_run_sleeves_removes_the_private_folder_on_ctrl_c_and_passes_the_profile_timeout(tmp_path, monkeypatch):
    resolved = load_profile("demo_meta", env={"FW_META__RAY_CONNECT_TIMEOUT_S": "7"})
    run = Run.create(tmp_path / "runs", resolved, "meta", ROOT, options=RunOptions(executor="ray"))
    seen = {}

    def interrupted(specs, executor, address, private, on_done, *, connect_timeout_s, auth=None, ship=None,
                    warm_workers=False):
        assert auth is None and ship is None and not warm_workers  # no workbook cluster in this runs root: the meta starts its own instance
        seen.update(private=private, timeout=connect_timeout_s, token=(private / "auth_token").exists())
        raise KeyboardInterrupt

    monkeypatch.setattr(fanout, "execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        meta_stages.run_sleeves(SimpleNamespace(run=run, profile=run.profile))
    assert seen["timeout"] == 7.0 and seen["token"]
    assert not seen["private"].exists() and (run.dir / "ray").is_dir()


def test_zz_ctrl_c_shuts_ray_down_and_removes_the_token_and_the_link(session):
    """Last (it ends the module's instance): a KeyboardInterrupt inside the session cleans everything up."""
    import ray

    gcs_pids = [pid for pid, name in ray_pids().items() if name == "gcs_server"]
    session.close(KeyboardInterrupt())
    assert not ray.is_initialized() and not session.private.exists()
    assert {key: os.environ.get(key) for key in AUTH_ENV} == session.env_before  # Ray's settings restored
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in gcs_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/comm").read_text().strip() == "gcs_server"
                   for pid in gcs_pids)
    assert (session.run_dir / "ray").is_dir() and list((session.run_dir / "ray").glob("session_*/logs"))
