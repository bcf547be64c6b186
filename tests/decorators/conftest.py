"""The decorator's end-to-end tests reuse the e2e fixtures: ``dags/`` as DAGs folder, a migrated DB, ``run_dag``."""

from __future__ import annotations

from e2e.conftest import airflow_db, run_dag

__all__ = ["airflow_db", "run_dag"]
