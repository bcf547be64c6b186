"""End-to-end fixtures: the repository's ``dags/`` as DAGs folder, a migrated SQLite DB, DAG runs.

``tests/conftest.py`` already points ``AIRFLOW_HOME`` and the SQLite URL at a temporary folder
before Airflow is imported. Here the DAGs folder is set the same way (environment, at import), and
again on the live configuration in :func:`airflow_db`, because another test module may have
imported Airflow (which reads ``[core] dags_folder`` once) before this file was loaded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .support import DAGS_FOLDER, LOGICAL_DATE, load_dag

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_FOLDER)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"


@pytest.fixture(scope="session")
def airflow_db(airflow_home: Path) -> Path:
    """Point Airflow at ``dags/`` (checked) and migrate the session's SQLite DB once."""
    from airflow import settings
    from airflow.configuration import conf
    from airflow.utils.db import upgradedb

    conf.set("core", "dags_folder", str(DAGS_FOLDER))
    settings.DAGS_FOLDER = str(DAGS_FOLDER)
    assert Path(conf.get("core", "dags_folder")) == DAGS_FOLDER
    assert str(airflow_home) in conf.get("database", "sql_alchemy_conn")
    upgradedb()
    return DAGS_FOLDER


@pytest.fixture
def run_dag(airflow_db: Path) -> Callable[..., Any]:
    """Run a DAG of ``dags/`` with ``dag.test()``; same date → same run id (a re-run of the same tasks)."""

    def run(dag_id: str, conf: dict[str, Any] | None = None, when: datetime = LOGICAL_DATE, dag: Any = None) -> Any:
        dag = dag or load_dag(dag_id)
        started = time.monotonic()
        dag_run = dag.test(logical_date=when, run_after=when, run_conf=conf)
        print(f"dag.test({dag_id}) → {dag_run.state} in {time.monotonic() - started:.1f} s")
        return dag_run

    return run
