"""Starting a task in the triggerer (Airflow 3.3+): which tasks can, and what the trigger does first.

A deferrable ``ImageGenToS3Operator`` is deferred by the scheduler itself (``start_from_trigger``):
no worker starts before the images exist. :class:`~airflow_provider_imagegen.triggers.imagegen.ImageGenStartTrigger`
renders the task's templated fields with the task's context, builds the same plan a worker would
(``plan.build_plan``), skips the prompts an earlier try already stored or paid for, generates,
records the URLs in S3 (``_pending.json``) and only then hands the worker the copy
(``execute_complete``). Two parts decide where a task starts:

* at parse time, :func:`refusal` / :func:`mapped_refusal` say why a task cannot start in the
  triggerer (an older Airflow, values from an upstream task's XCom, the decorator's function);
  such tasks defer from a worker as before, and say why in their log;
* at run time, the trigger hands the task back to a worker (:class:`CannotStart`) when it cannot
  render a value (a macro or template file the triggerer lacks) or read the task's mapped values.

This module is read when DAG files are parsed: its imports stay light; the trigger's heavy parts
are imported inside the functions that run in the triggerer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.plan import PLAN_ARGUMENTS, TEMPLATED_ARGUMENTS
from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_3_PLUS, AIRFLOW_VERSION

if TYPE_CHECKING:
    from airflow.triggers.base import StartTriggerArgs

TRIGGER_CLS = "airflow_provider_imagegen.triggers.imagegen.ImageGenStartTrigger"
NEXT_METHOD = "execute_complete"
TRIGGER_ARGUMENTS: tuple[str, ...] = (
    *PLAN_ARGUMENTS,
    *("imagegen_conn_id", "aws_conn_id", "max_concurrency", "max_image_bytes", "upload_concurrency", "fail_fast"),
)
"""What the trigger is given of the operator (its kwargs, stored in the trigger table): the values as
written in the DAG file, before rendering; connection ids, never a connection's secret."""


class CannotStart(Exception):
    """The triggerer cannot start this task; the worker defers it the classic way instead."""


def _version() -> str:
    return ".".join(str(part) for part in AIRFLOW_VERSION)


def _holds_xcom(value: Any) -> bool:
    """Whether ``value`` is (or holds) a value from an upstream task, resolved only on a worker."""
    from airflow.sdk import XComArg

    if isinstance(value, XComArg):
        return True
    if isinstance(value, Mapping):
        return any(_holds_xcom(item) for item in value.values())
    if isinstance(value, (list, tuple, set)):
        return any(_holds_xcom(item) for item in value)
    return False


def _dag_refusal(dag: Any) -> str | None:
    """Why the DAG's templating cannot be repeated in the triggerer, which renders from the serialised DAG."""
    if getattr(dag, "jinja_environment_kwargs", None):
        return "the DAG sets jinja_environment_kwargs, which the triggerer does not have (they are not serialised)"
    return None


def refusal(operator: Any) -> str | None:
    """Why ``operator`` (a task as written in its DAG file) cannot start in the triggerer; None if it can.

    :param operator: an ``ImageGenToS3Operator`` (or subclass) whose ``__init__`` has set its values.
    """
    if not AIRFLOW_V_3_3_PLUS:
        return f"Airflow {_version()} starts tasks on workers only (3.3 can start them in the triggerer)"
    if not getattr(type(operator), "can_start_from_trigger", False):
        return f"{type(operator).__name__} computes its prompt on a worker"
    for name in TEMPLATED_ARGUMENTS:
        if _holds_xcom(getattr(operator, name, None)):
            return f"`{name}` comes from an upstream task's XCom, which only a worker resolves"
    return _dag_refusal(operator.dag if operator.has_dag() else None)


def mapped_refusal(operator_class: type, partial_kwargs: Mapping[str, Any], expand_input: Any) -> str | None:
    """Why a mapped task cannot start in the triggerer; None if it can.

    It can when it is mapped over one argument with a literal list (``.expand(prompt=[...])``) or
    over a literal list of dicts (``.expand_kwargs([...])``): the trigger then reads its own value.

    :param operator_class: the mapped operator's class.
    :param partial_kwargs: the ``.partial()`` arguments.
    :param expand_input: the SDK's expand input (``.value``: a dict of lists, or a list of dicts).
    """
    if not AIRFLOW_V_3_3_PLUS:
        return f"Airflow {_version()} starts tasks on workers only (3.3 can start them in the triggerer)"
    if not getattr(operator_class, "can_start_from_trigger", False):
        return f"{operator_class.__name__} computes its prompt on a worker"
    for name in TEMPLATED_ARGUMENTS:
        if _holds_xcom(partial_kwargs.get(name)):
            return f"`{name}` comes from an upstream task's XCom, which only a worker resolves"
    dag = _dag_refusal(partial_kwargs.get("dag"))
    if dag is not None:
        return dag
    value = getattr(expand_input, "value", None)
    if isinstance(value, Mapping):
        if len(value) != 1:
            return "the task is mapped over more than one argument"
        mapped = next(iter(value.values()))
        if not isinstance(mapped, (list, tuple)) or _holds_xcom(mapped):
            return "the task is mapped over an upstream task's XCom, which only a worker resolves"
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(item, Mapping) for item in value):
        return (
            "the task is mapped over an upstream task's XCom, which only a worker resolves"
            if _holds_xcom(value)
            else None
        )
    return "the task is mapped over an upstream task's XCom, which only a worker resolves"


def start_args(arguments: Mapping[str, Any]) -> StartTriggerArgs:
    """What the scheduler needs to defer a task at once: the start trigger and the operator's arguments.

    :param arguments: the operator's :data:`TRIGGER_ARGUMENTS`, as written in the DAG file.
    """
    from airflow.triggers.base import StartTriggerArgs

    return StartTriggerArgs(
        trigger_cls=TRIGGER_CLS,
        next_method=NEXT_METHOD,
        trigger_kwargs={"arguments": {name: arguments[name] for name in TRIGGER_ARGUMENTS if name in arguments}},
        next_kwargs=None,
        timeout=None,
    )


def _defaults(operator_class: Any) -> dict[str, Any]:
    """The operator's own argument defaults (``.partial()`` keeps only the arguments given)."""
    import inspect

    return {
        name: parameter.default
        for name, parameter in inspect.signature(operator_class.__init__).parameters.items()
        if name in TRIGGER_ARGUMENTS and parameter.default is not inspect.Parameter.empty
    }


def starting_partial(made: Any) -> Any:
    """``made`` (an ``OperatorPartial`` of a deferrable task) as one whose ``.expand()`` /
    ``.expand_kwargs()`` start the map indexes in the triggerer when :func:`mapped_refusal` finds no
    reason against it (the scheduler reads ``start_from_trigger`` from the mapped task).

    :param made: what ``BaseOperator.partial`` returned.
    """
    from airflow.sdk.definitions.mappedoperator import OperatorPartial

    class StartingPartial(OperatorPartial):
        def _expand(self, expand_input: Any, *, strict: bool) -> Any:
            mapped = super()._expand(expand_input, strict=strict)
            if mapped_refusal(self.operator_class, self.kwargs, expand_input) is None:
                mapped.start_from_trigger = True
                # as unmapping will: the class's defaults, then the DAG's and task group's default_args
                dag, group = self.kwargs.get("dag"), self.kwargs.get("task_group")
                mapped.start_trigger_args = start_args(
                    {
                        **_defaults(self.operator_class),
                        **(getattr(dag, "default_args", None) or {}),
                        **(getattr(group, "default_args", None) or {}),
                        **self.kwargs,
                    }
                )
            return mapped

    made._expand_called = True  # replaced, not forgotten: no "was never mapped" warning for it
    return StartingPartial(operator_class=made.operator_class, kwargs=made.kwargs, params=made.params)


# -- in the triggerer ------------------------------------------------------------------------------


def task_arguments(arguments: Mapping[str, Any], task: Any, map_index: int | None) -> dict[str, Any]:
    """The task instance's own arguments: the trigger's, plus its mapped value when it is mapped.

    :param arguments: the trigger's kwargs (the ``.partial()`` arguments of a mapped task).
    :param task: the task as the triggerer deserialised it.
    :param map_index: the task instance's map index (-1 or None: not mapped).
    """
    values = dict(arguments)
    if map_index is None or map_index < 0:
        return values
    mapped = getattr(getattr(task, "expand_input", None), "value", None)
    try:
        if isinstance(mapped, Mapping) and len(mapped) == 1:
            name, items = next(iter(mapped.items()))
            if not isinstance(items, Sequence) or isinstance(items, str):
                raise TypeError(type(items).__name__)
            values[name] = items[map_index]
        elif isinstance(mapped, Sequence) and not isinstance(mapped, str):
            values.update(mapped[map_index])
        else:
            raise TypeError(type(mapped).__name__)
    except (IndexError, KeyError, TypeError, ValueError) as error:
        raise CannotStart(
            f"the triggerer cannot read map index {map_index}'s value ({type(error).__name__})"
        ) from error
    return values


def render(
    templater: Any, values: Mapping[str, Any], context: Any, searchpath: Sequence[str], *, native: bool = False
) -> dict[str, Any]:
    """The templated arguments rendered with the task's context, as a worker renders them.

    Undefined names fail (``StrictUndefined``, the DAG default) rather than render as nothing;
    template files are read from the DAG file's folder. What the triggerer cannot render (a
    ``user_defined_macros`` macro, a file it does not have) hands the task back to a worker.

    :param templater: the trigger (a ``Templater``: its ``template_ext`` names template files).
    :param values: the arguments as written in the DAG file.
    :param context: the task instance's template context.
    :param searchpath: where template files are looked up.
    :param native: the DAG renders templates as native Python objects (``render_template_as_native_obj``).
    """
    from airflow_provider_imagegen.version_compat import template_env

    env = template_env(list(searchpath), native=native)
    rendered = {}
    for name in TEMPLATED_ARGUMENTS:
        try:
            rendered[name] = templater.render_template(values.get(name), context, env)
        except Exception as error:
            raise CannotStart(f"the triggerer cannot render `{name}` ({type(error).__name__}: {error})") from error
    return rendered
