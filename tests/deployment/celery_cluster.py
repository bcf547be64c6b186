"""Pieces of a Celery deployment on loopback: a Redis broker and Celery workers as Airflow components.

:class:`RedisServer` runs Debian's ``redis-server`` on 127.0.0.1 on a free port (no persistence, its
own directory) and polls ``PING`` until it answers. :func:`celery_env` is what every Airflow process
of a Celery deployment needs; :func:`start_celery_worker` starts one ``airflow celery worker`` with
its own Celery hostname, pid file, log file and the hostname Airflow records on its task instances
(``[core] hostname_callable``: workers on one machine would otherwise all report the same one).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .components import LOOPBACK, STOP_TIMEOUT, free_port, wait_until

if TYPE_CHECKING:
    from types import TracebackType

    from .components import AirflowDeployment, Component

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_READY_TIMEOUT = 30.0
WORKER_READY_TIMEOUT = 120.0
HOSTNAME_MODULE = "imagegen_test_worker_hostname"
_HOSTNAME_SOURCE = '''"""The hostname this test worker reports on its task instances ([core] hostname_callable)."""

from __future__ import annotations

import os


def hostname() -> str:
    """The worker's name from its environment."""
    return os.environ["IMAGEGEN_TEST_WORKER_HOSTNAME"]
'''


class RedisServer:
    """``redis-server`` on 127.0.0.1 and a free port, in ``directory``; stopped (by pid) on exit.

    :param directory: where Redis runs and logs (``redis.log``); nothing is persisted.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "redis.log"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT``."""
        return f"redis://{LOOPBACK}:{self.port}"

    def ping(self) -> bool:
        """Whether the server answers ``PING`` with ``PONG``."""
        with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    def start(self) -> RedisServer:
        """Start the server and wait until it answers."""
        if shutil.which(REDIS_SERVER) is None:
            raise RuntimeError(
                f"{REDIS_SERVER} is missing: install Debian's redis-server (apt-get install redis-server)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            REDIS_SERVER,
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log_path),
        ]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        wait_until(self.ping, timeout=REDIS_READY_TIMEOUT, what=f"redis-server on {self.url}", alive=self._check_alive)
        return self

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"redis-server exited with code {self.process.returncode}:\n{log[-2000:]}")

    def stop(self) -> None:
        """Terminate the server (kill it if it does not stop in time)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def celery_env(redis: RedisServer, *, concurrency: int = 2) -> dict[str, str]:
    """Settings every process of a Celery deployment shares: executor, broker, result backend."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"{redis.url}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"{redis.url}/1",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
        # the scheduler sends tasks to the broker; on a loaded 2-core machine 1 s can be too short
        "AIRFLOW__CELERY__OPERATION_TIMEOUT": "10",
    }


def check_celery_provider() -> None:
    """Fail at once, with the fix, if the installed celery provider cannot import with the installed Celery.

    apache-airflow-providers-celery 3.26.0 imports ``celery.backends.database.retry``, which Celery 5.7
    removed: every ``airflow celery`` command and the scheduler's executor then fail to start.
    """
    try:
        import airflow.providers.celery.executors.celery_executor_utils  # noqa: F401
    except ImportError as error:
        from importlib.metadata import version

        raise RuntimeError(
            f"apache-airflow-providers-celery {version('apache-airflow-providers-celery')} does not import with "
            f"celery {version('celery')} ({error}); pin celery<5.7 until a provider release supports it"
        ) from error


def start_celery_worker(deployment: AirflowDeployment, name: str, *, concurrency: int = 2) -> Component:
    """Start ``airflow celery worker`` named ``name`` (Celery hostname ``name@127.0.0.1``).

    Task instances it runs record ``name`` as their ``hostname``. No log server (it would listen on
    every interface): the deployment's components share one ``AIRFLOW_HOME`` and read logs from disk.
    """
    pylib = deployment.home / "pylib"
    pylib.mkdir(exist_ok=True)
    (pylib / f"{HOSTNAME_MODULE}.py").write_text(_HOSTNAME_SOURCE)
    env = {
        "IMAGEGEN_TEST_WORKER_HOSTNAME": name,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{HOSTNAME_MODULE}.hostname",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(pylib), os.environ.get("PYTHONPATH")])),
    }
    return deployment.start(
        "celery",
        "worker",
        "--celery-hostname",
        f"{name}@{LOOPBACK}",
        "--concurrency",
        str(concurrency),
        "--pid",
        str(deployment.home / f"{name}.pid"),
        "--skip-serve-logs",
        "--without-mingle",
        "--without-gossip",
        env=env,
        label=f"celery-{name}",
    )


def wait_worker_ready(deployment: AirflowDeployment, worker: Component, timeout: float = WORKER_READY_TIMEOUT) -> None:
    """Poll the worker's log until Celery says it is ready to take tasks."""
    started = time.monotonic()
    wait_until(
        lambda: " ready." in worker.log_text(),
        timeout=timeout,
        what=f"{worker.name} to be ready",
        alive=deployment.check_alive,
    )
    deployment.timings[f"{worker.name} ready"] = time.monotonic() - started
