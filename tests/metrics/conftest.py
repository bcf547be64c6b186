"""The metrics tests run DAGs of ``dags/`` like the end-to-end tests: their DB and DAGs-folder fixtures."""

from __future__ import annotations

from tests.e2e.conftest import airflow_db, run_dag  # noqa: F401  (fixtures)
