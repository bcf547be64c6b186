"""``make demo`` / ``python -m demo``: run the daily content DAG once and keep its images locally.

Nothing here imports Airflow at module level: Airflow reads ``AIRFLOW_HOME`` when first imported,
so :mod:`demo.__main__` sets up the environment before it imports anything from Airflow.
"""

from __future__ import annotations
