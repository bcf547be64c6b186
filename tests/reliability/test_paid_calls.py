"""Paid generation calls per failed task instance: at most one, whatever ``retries`` is set to.

Every failing row of the fault matrix runs as Airflow would run a task instance with
``retries=3``: up to four tries, the fault staying in place, stopping at the first
``AirflowFailException`` (Airflow does not retry those). A generation call is paid when the API
answered it with 200 (also after the client gave up waiting: a read timeout's call is counted).
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_imagegen.version_compat import AirflowFailException
from tests.reliability.test_fault_matrix import FAULTS, MAX_RETRIES, _id, _prepare_operator, _settle, _special_setup
from tests.support import make_context

TRIES = 4  # retries=3
FAILING = [row for row in FAULTS if (row.values[0] if hasattr(row, "values") else row).error not in (None, SystemExit)]


def _paid(emulator: Any) -> int:
    return sum(1 for call in emulator.state.generation_calls() if call.status == 200)


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("row", FAILING, ids=[_id(row) for row in FAILING])
def test_a_failing_task_instance_pays_at_most_once(
    row, make_op, set_imagegen_conn, emulator, s3, s3_bucket, monkeypatch, request
):
    set_imagegen_conn(
        extra={"max_retries": MAX_RETRIES, **row.conn.get("extra", {})},
        **{k: v for k, v in row.conn.items() if k != "extra"},
    )
    kwargs: dict[str, Any] = {"n": 2, **row.op}
    never_undone = pytest.MonkeyPatch()  # the fault stays for every try
    request.addfinalizer(never_undone.undo)
    kwargs.update(
        _special_setup(
            row, monkeypatch=monkeypatch, until_retry=never_undone, set_imagegen_conn=set_imagegen_conn, request=request
        )
    )
    emulator.configure(**row.knobs)

    outcomes = []
    for try_number in range(1, TRIES + 1):
        op = make_op(**kwargs)
        _prepare_operator(row, op)
        try:
            op.execute(make_context(try_number=try_number))
        except AirflowFailException:
            outcomes.append("failed, not retried")
            break
        except Exception as error:
            outcomes.append(type(error).__name__)
            continue
        outcomes.append("success")
        break
    _settle(emulator)
    assert _paid(emulator) <= 1, outcomes
