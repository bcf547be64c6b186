"""Real Airflow components as subprocesses on loopback, for the deployment and browser tests.

Each component (``airflow api-server``, ``scheduler``, ``dag-processor``, ``triggerer``) runs in its
own session (process group) with its output in a log file, against a fresh ``AIRFLOW_HOME`` with
SQLite. The environment is built from scratch for Airflow: nothing ``AIRFLOW__*``/``AIRFLOW_CONN_*``
of the test process leaks in (``tests/conftest.py`` sets unit-test settings there), proxies are
dropped, and every address is ``127.0.0.1``. :meth:`AirflowDeployment.stop` ends every process it
started (their process groups, by id, and any descendant that outlived its group), also when a test
fails.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import IO

LOOPBACK = "127.0.0.1"
AIRFLOW = [sys.executable, "-m", "airflow"]
MIGRATE_TIMEOUT = 180.0
API_READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
CLI_TIMEOUT = 120.0
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
"""``[core] auth_manager`` of the FAB auth manager (``apache-airflow-providers-fab``): pass it in ``extra_env``
as ``AIRFLOW__CORE__AUTH_MANAGER``, then :meth:`AirflowDeployment.run_migrate` (FAB's tables too)."""
_DROPPED_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")
_DROPPED_NAMES = {
    "AIRFLOW_HOME",
    "AIRFLOW_CONFIG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    alive: Callable[[], None] | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy; return it. ``alive`` raises if a process died.

    Raises :class:`TimeoutError` naming ``what`` (and the last exception ``check`` raised) at ``timeout``.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if alive is not None:
            alive()
        try:
            result = check()
        except (httpx.HTTPError, OSError, ValueError, KeyError) as error:
            result, last_error = None, error
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise TimeoutError(f"Timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass
class Component:
    """One Airflow process, in its own process group, logging to ``log_path``."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    _descendants: list[Any] = field(default_factory=list, repr=False)

    def start(self, env: Mapping[str, str], cwd: Path) -> None:
        """Start the process (``start_new_session``: a process group of its own)."""
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The process id (only once started)."""
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def check_alive(self) -> None:
        """Raise with the tail of the log if the process has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"airflow {self.name} exited with code {self.process.returncode}; its log ends with:\n{self.log_tail()}"
            )

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def terminate(self) -> None:
        """SIGTERM the process group, remembering its descendants (to kill any that outlive it)."""
        if self.process is None or self.process.poll() is not None:
            return
        self._descendants = _descendants(self.process.pid)
        _signal_group(self.process.pid, signal.SIGTERM)

    def kill_tree(self) -> list[int]:
        """SIGKILL the process and every descendant at once, as if its machine were lost; return their pids.

        Descendants in process groups of their own (the task SDK puts each task in one) die too.
        """
        if self.process is None or self.process.poll() is not None:
            return []
        import psutil

        tree = [psutil.Process(self.process.pid), *_descendants(self.process.pid)]
        for process in tree:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(tree, timeout=STOP_TIMEOUT)
        self.process.wait(timeout=STOP_TIMEOUT)
        return [process.pid for process in tree]

    def wait_or_kill(self, deadline: float) -> None:
        """Wait for the process until ``deadline`` (monotonic), then SIGKILL its group; then kill stray descendants."""
        if self.process is not None:
            try:
                self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT)
        _kill_survivors(self._descendants)
        self._descendants = []
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _connections(process: Any) -> list[Any]:
    """A process's inet sockets (``net_connections`` since psutil 6, ``connections`` before)."""
    method = getattr(process, "net_connections", None) or process.connections
    return list(method(kind="inet"))


def _kill_survivors(processes: list[Any]) -> None:
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=5)


@dataclass
class AirflowDeployment:
    """A fresh ``AIRFLOW_HOME`` (SQLite, simple auth manager, everyone admin) and its components.

    ``extra_env`` is added to every component's environment (connections, feature flags).
    """

    home: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    api_port: int = field(default_factory=free_port)
    components: list[Component] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the API server."""
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment every Airflow process of this deployment gets."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(_DROPPED_PREFIXES) and name not in _DROPPED_NAMES
        }
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API__HOST": LOOPBACK,
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt"),
                "AIRFLOW__API__SECRET_KEY": self._secret("api"),
                "AIRFLOW__CORE__FERNET_KEY": self._fernet_key(),
                "NO_PROXY": f"{LOOPBACK},localhost",
                "no_proxy": f"{LOOPBACK},localhost",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _secret(self, name: str) -> str:
        path = self.home / f".{name}-secret"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text()

    def _fernet_key(self) -> str:
        path = self.home / ".fernet-key"
        if not path.exists():
            from cryptography.fernet import Fernet

            path.write_text(Fernet.generate_key().decode())
        return path.read_text()

    def migrate(self) -> None:
        """A migrated SQLite DB under the home: ``airflow db migrate`` once per test process, then copies.

        A fresh DB holds no secrets (no connections or variables), so the copy is as good as a migration
        here, and saves ~10 s per deployment after the first.
        """
        started = time.monotonic()
        shutil.copyfile(_migrated_template(), self.home / "airflow.db")
        self.timings["db migrate"] = time.monotonic() - started

    def run_migrate(self) -> None:
        """``airflow db migrate`` (SQLite under the home)."""
        log = self.home / "db-migrate.log"
        with log.open("wb") as out:
            result = subprocess.run(
                [*AIRFLOW, "db", "migrate"],
                env=self.env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=MIGRATE_TIMEOUT,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed ({result.returncode}):\n{log.read_text()[-4000:]}")

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run ``airflow <args>`` (e.g. ``users create ...``) in this deployment's environment; return its output.

        :raises RuntimeError: the command failed (with its output).
        """
        result = subprocess.run(
            [*AIRFLOW, *args],
            env=self.env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args[:2])} failed ({result.returncode}):\n{output[-4000:]}")
        return output

    def password_token(self, username: str, password: str) -> str:
        """A JWT for ``username`` from ``POST /auth/token`` (the simple and the FAB auth manager both have it)."""
        with self.client() as client:
            response = client.post("/auth/token", json={"username": username, "password": password})
        if response.status_code not in (200, 201):
            raise RuntimeError(f"POST /auth/token as {username}: {response.status_code} {response.text}")
        return str(response.json()["access_token"])

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None, label: str | None = None) -> Component:
        """Start ``airflow <name> <args>`` as a component.

        :param env: added to this component's environment only (e.g. one Celery worker's settings).
        :param label: the component's name and log file stem when several run the same command
            (``celery-worker-a`` → ``celery-worker-a.log``); defaults to ``name``.
        """
        label = label or name
        component = Component(label, [*AIRFLOW, name, *args], self.home / f"{label}.log")
        self.components.append(component)
        component.start({**self.env, **(env or {})}, self.home)
        return component

    def start_api_server(self) -> Component:
        """``airflow api-server`` on 127.0.0.1 and this deployment's port."""
        return self.start("api-server", "--host", LOOPBACK, "--port", str(self.api_port))

    def start_all(self) -> None:
        """Migrate, then start the api-server, scheduler, triggerer and dag-processor; return once the API answers.

        The scheduler and the triggerer run without their log servers (they would listen on every interface).
        """
        self.migrate()
        self.start_api_server()
        self.start("scheduler", "--skip-serve-logs")
        self.start("triggerer", "--skip-serve-logs")
        self.start("dag-processor")
        self.wait_api_ready()

    def check_alive(self) -> None:
        """Raise if any component has exited."""
        for component in self.components:
            component.check_alive()

    def client(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        """An HTTP client for the API server (no proxies, loopback only)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, trust_env=False)

    def wait_api_ready(self, timeout: float = API_READY_TIMEOUT) -> None:
        """Poll the health endpoint until the API server answers 200."""
        started = time.monotonic()
        with self.client(timeout=5.0) as client:
            wait_until(
                lambda: client.get("/api/v2/monitor/health").status_code == 200,
                timeout=timeout,
                what=f"the API server at {self.base_url}",
                alive=self.check_alive,
            )
        self.timings["api-server ready"] = time.monotonic() - started

    def token(self) -> str:
        """A JWT for the REST API (``[core] simple_auth_manager_all_admins``: no credentials needed)."""
        with self.client() as client:
            response = client.get("/auth/token")
            response.raise_for_status()
            return str(response.json()["access_token"])

    def listening_addresses(self) -> set[tuple[str, int]]:
        """The (ip, port) of every TCP socket listening in any process of this deployment."""
        import psutil

        found = set()
        for component in self.components:
            if component.process is None or component.process.poll() is not None:
                continue
            for process in [psutil.Process(component.pid), *_descendants(component.pid)]:
                with contextlib.suppress(psutil.Error):
                    for conn in _connections(process):
                        if conn.status == psutil.CONN_LISTEN:
                            found.add((conn.laddr.ip, conn.laddr.port))
        return found

    def processes_report(self) -> str:
        """Every live process of the deployment with its command and open TCP connections (for hangs)."""
        import psutil

        lines = []
        for component in self.components:
            if component.process is None or component.process.poll() is not None:
                continue
            for process in [psutil.Process(component.pid), *_descendants(component.pid)]:
                with contextlib.suppress(psutil.Error):
                    command = " ".join(process.cmdline())[:120]
                    peers = sorted(
                        f"{conn.laddr.port}->{conn.raddr.ip}:{conn.raddr.port} {conn.status}"
                        for conn in _connections(process)
                        if conn.raddr
                    )
                    lines.append(f"{process.pid} [{component.name}] {command}: {', '.join(peers) or '-'}")
        return "\n".join(lines)

    def logs(self) -> str:
        """Every component's log tail, for failure messages."""
        timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.timings.items())
        return f"timings: {timings}\n" + "\n".join(
            f"===== airflow {component.name} (pid {component.process.pid if component.process else '-'}) "
            f"=====\n{component.log_tail(150)}"
            for component in self.components
        )

    def stop(self) -> None:
        """Stop every component, whatever state it is in: SIGTERM all at once, SIGKILL what is left."""
        errors = []
        for component in self.components:
            try:
                component.terminate()
            except Exception as error:  # keep stopping the others
                errors.append(f"{component.name}: {error!r}")
        deadline = time.monotonic() + STOP_TIMEOUT
        for component in self.components:
            try:
                component.wait_or_kill(deadline)
            except Exception as error:
                errors.append(f"{component.name}: {error!r}")
        if errors:
            raise RuntimeError("Could not stop every Airflow component: " + "; ".join(errors))


@functools.cache
def _migrated_template() -> Path:
    """The SQLite file of one ``airflow db migrate`` in a temporary home (removed at exit)."""
    home = Path(tempfile.mkdtemp(prefix="imagegen-airflow-template-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    AirflowDeployment(home).run_migrate()
    return home / "airflow.db"


def call_failed(request: Any) -> bool:
    """Whether the test of a fixture ``request`` failed or never ran its body.

    Needs a conftest hook that keeps the call phase's report as ``item.rep_call``.
    """
    report = getattr(request.node, "rep_call", None)
    return report is None or bool(report.failed)


def api(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Any:
    """One REST API call that must succeed; its JSON."""
    response = client.request(method, url, **kwargs)
    assert response.is_success, f"{method} {url} answered {response.status_code}: {response.text}"
    return response.json()


def new_bucket(s3: Any, prefix: str) -> str:
    """A fresh bucket ``{prefix}-{random}`` on the local S3 server."""
    bucket = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    return bucket


def trigger_run(client: httpx.Client, dag_id: str, conf: dict[str, Any], *, run_prefix: str) -> str:
    """Trigger a run of ``dag_id`` with a logical date (now) through the REST API; its run id."""
    run_id = f"{run_prefix}_{uuid.uuid4().hex[:8]}"
    api(
        client,
        "POST",
        f"/api/v2/dags/{dag_id}/dagRuns",
        json={"dag_run_id": run_id, "logical_date": datetime.now(timezone.utc).isoformat(), "conf": conf},
    )
    return run_id


def task_instances(client: httpx.Client, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The task instances of one run (mapped ones included), as the REST API lists them."""
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    return list(api(client, "GET", url, params={"limit": 100})["task_instances"])
