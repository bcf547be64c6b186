"""Run an operator's start trigger in process, as the triggerer builds it, and the worker's part after it.

The DAG is serialised and read back as the scheduler and the triggerer do; the trigger is built from
the task's ``start_trigger_args`` through the trigger table's encryption and decoding, given the task
instance and a context, and run to its one event; the worker's part is ``execute_complete``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pendulum

from tests.support import make_context

START_CLASSPATH = "airflow_provider_imagegen.triggers.imagegen.ImageGenStartTrigger"


def in_a_dag(**kwargs: Any) -> Any:
    from airflow.sdk import DAG

    return DAG("imagegen_test", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), **kwargs)


def deserialised(task: Any) -> Any:
    """The task as the scheduler and the triggerer see it (the DAG serialised and read back)."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(task.dag)).get_task(task.task_id)


def trigger_of(serialised_task: Any) -> Any:
    """The trigger the triggerer builds: the row's kwargs encrypted, decrypted and decoded."""
    from airflow.models.trigger import Trigger
    from airflow.serialization.decoders import smart_decode_trigger_kwargs

    from airflow_provider_imagegen.triggers.imagegen import ImageGenStartTrigger

    args = serialised_task.start_trigger_args
    assert serialised_task.start_from_trigger is True
    assert args.trigger_cls == START_CLASSPATH
    assert args.next_method == "execute_complete"
    row = Trigger(classpath=args.trigger_cls, kwargs=args.trigger_kwargs)
    kwargs = {k: smart_decode_trigger_kwargs(v) for k, v in Trigger._decrypt_kwargs(row.encrypted_kwargs).items()}
    return ImageGenStartTrigger(**kwargs)


def trigger_context(task: Any, *, map_index: int = -1, try_number: int = 1, **extra: Any) -> dict[str, Any]:
    context = make_context(map_index=map_index, try_number=try_number)
    context["ti"].task = task
    context.update({"ds": "2026-12-05", "params": {}, "macros": None}, **extra)
    return context


def start(task: Any, *, map_index: int = -1, try_number: int = 1, **context: Any) -> dict[str, Any]:
    """Run the start trigger of ``task`` as the triggerer would; the one event's payload."""
    serialised = deserialised(task)
    trigger = trigger_of(serialised)
    ctx = trigger_context(serialised, map_index=map_index, try_number=try_number, **context)
    trigger.task_instance = ctx["ti"]
    trigger.render_template_fields(context=ctx)

    async def collect() -> list[Any]:
        return [event async for event in trigger.run()]

    events = asyncio.run(collect())
    assert len(events) == 1
    payload = events[0].payload
    json.dumps(payload)  # plain JSON, as the trigger table stores it
    return payload


def copy(op: Any, event: dict[str, Any], *, map_index: int = -1, try_number: int = 1) -> list[dict[str, Any]]:
    """The worker's part: ``execute_complete`` with the trigger's event."""
    return op.execute_complete(make_context(map_index=map_index, try_number=try_number), event)
