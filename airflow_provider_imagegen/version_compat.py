"""Everything that differs between the supported Airflow versions (3.1.2 to 3.3), in one place.

In the style of the official providers' ``version_compat.py``: the version flags, and each import
whose path moved or whose public form is missing on some supported version. Every other module
imports these names from here and never branches on the Airflow version itself. What users see
change between versions is listed in :data:`VERSION_DIFFERENCES` (the README's and the docs' table).

=============================  ========================  =========================================
what                           Airflow 3.1               Airflow 3.2+ / 3.3.2+
=============================  ========================  =========================================
``conf``                       ``airflow.configuration`` ``airflow.sdk`` (3.2+)
``AirflowPlugin``              ``airflow.plugins_manager`` ``airflow.sdk.plugins_manager`` (3.2+)
task exceptions (fail, skip,   ``airflow.exceptions``    ``airflow.sdk.exceptions`` (3.2+)
deferral)
connection read in a trigger   sync read in a thread     ``aget_connection`` (3.3.2+)
metrics facade                 ``airflow.stats.Stats``   the task SDK's own (3.2+; private path)
``determine_kwargs``           ``airflow.utils``         ``airflow.sdk.bases.decorator`` (3.2+)
alias event ``extra``          flat values only          as it is (3.2+)
``SET_DURING_EXECUTION``       the task SDK's private    the same (no public name up to 3.3)
                               ``_internal.types``
start in the triggerer         not available             ``start_from_trigger`` (3.3+); the
                                                         task SDK's private ``create_template_env``
=============================  ========================  =========================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow import __version__ as _airflow_version

if TYPE_CHECKING:
    from airflow.sdk import BaseHook, Connection


def _base_version(version: str) -> tuple[int, int, int]:
    from packaging.version import Version

    parsed = Version(version)
    return parsed.major, parsed.minor, parsed.micro


AIRFLOW_VERSION = _base_version(_airflow_version)
AIRFLOW_V_3_2_PLUS: bool = AIRFLOW_VERSION >= (3, 2, 0)
AIRFLOW_V_3_3_PLUS: bool = AIRFLOW_VERSION >= (3, 3, 0)
AIRFLOW_V_3_3_2_PLUS: bool = AIRFLOW_VERSION >= (3, 3, 2)
"""``aget_connection`` and ``Connection.aextra_dejson`` mask secrets without blocking (3.3.2+)."""

if AIRFLOW_V_3_2_PLUS:
    from airflow.sdk import conf
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskDeferred
    from airflow.sdk.plugins_manager import AirflowPlugin
else:  # Airflow 3.1: the task SDK has none of these yet
    from airflow.configuration import conf  # type: ignore[assignment]
    from airflow.exceptions import AirflowFailException, AirflowSkipException, TaskDeferred  # type: ignore[assignment,no-redef,unused-ignore]
    from airflow.plugins_manager import AirflowPlugin  # type: ignore[assignment]


def determine_kwargs(callable_: Any, op_args: Any, context: Any) -> Any:
    """The keyword arguments a decorated task's function takes from the context (moved in 3.2)."""
    if AIRFLOW_V_3_2_PLUS:
        from airflow.sdk.bases.decorator import determine_kwargs as _determine_kwargs
    else:
        from airflow.utils.operator_helpers import determine_kwargs as _determine_kwargs
    return _determine_kwargs(callable_, op_args, context)


def context_merge(context: Any, *args: Any, **kwargs: Any) -> None:
    """Merge values into a task context (``airflow.sdk.definitions.context`` on every supported version)."""
    from airflow.sdk.definitions.context import context_merge as _context_merge

    _context_merge(context, *args, **kwargs)


def alias_event_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """The ``extra`` of an event added through an ``AssetAlias``, in a form this Airflow can store.

    Airflow 3.1 groups alias events by ``frozenset(extra.items())``, so a list or dict value makes
    it drop the event (``TypeError: unhashable type``, logged, the task still succeeds). There the
    lists are left out and ``truncated`` is set: consumers read the manifests under ``prefix``,
    as they do for any truncated event. 3.2+ stores the extra as it is.
    """
    if AIRFLOW_V_3_2_PLUS:
        return extra
    flat = {key: value for key, value in extra.items() if not isinstance(value, (list, dict))}
    if len(flat) < len(extra):
        flat["truncated"] = True
    return flat


async def aread_connection(hook: BaseHook, conn_id: str) -> tuple[Connection, dict[str, Any]]:
    """A connection and its extra, read from a trigger without blocking or deadlocking its event loop.

    Before Airflow 3.3.2, ``aget_connection`` and ``extra_dejson`` register secrets with the
    masker through a synchronous call to the supervisor, which can raise ``DeadlockImminentError``
    in the triggerer's loop (the common-compat provider's ``get_async_connection`` does the same;
    its safe version needs Python 3.11). There the synchronous read runs in a worker thread through
    asgiref's ``sync_to_async``, not ``asyncio.to_thread``: the triggerer's supervisor calls go back
    to the loop's own comms lock only from a ``sync_to_async`` thread (from any other thread they
    race the loop's reads: "Response read out of order", and the trigger runner dies).
    """
    if AIRFLOW_V_3_3_2_PLUS:
        connection = await hook.aget_connection(conn_id)
        return connection, await connection.aextra_dejson()

    from asgiref.sync import sync_to_async

    def read() -> tuple[Connection, dict[str, Any]]:
        connection = hook.get_connection(conn_id)
        return connection, connection.extra_dejson

    return await sync_to_async(read)()


async def amask_secret(secret: str) -> None:
    """Register a secret with the masker from an event loop (the sync call can deadlock there)."""
    if AIRFLOW_V_3_3_PLUS:
        from airflow.sdk.log import amask_secret as _amask_secret

        await _amask_secret(secret)
        return
    from airflow.sdk.log import mask_secret
    from asgiref.sync import sync_to_async

    await sync_to_async(mask_secret)(secret)


def set_during_execution() -> Any:
    """The task SDK's marker for an operator argument that a decorated task's function fills in at run time.

    No public name serves on any supported version: task SDK 1.1 to 1.3 (Airflow 3.1 to 3.3) keep
    it in the private ``airflow.sdk.definitions._internal.types`` (the standard provider's
    ``@task.bash`` imports it from there too; the common-compat provider re-exports it, but is not a
    dependency). ``tests/test_version_compat.py`` fails when the path moves.
    """
    from airflow.sdk.definitions._internal.types import SET_DURING_EXECUTION

    return SET_DURING_EXECUTION


def template_env(searchpath: list[str], *, native: bool = False) -> Any:
    """The Jinja environment a task's values are rendered with, for a trigger that renders them itself.

    As a DAG builds it by default (sandboxed, or native for ``render_template_as_native_obj``;
    ``StrictUndefined``, Airflow's filters, template files from ``searchpath``), without the DAG's
    own macros, filters and Jinja options, which are not serialised. Only
    tasks started in the triggerer use it (Airflow 3.3+), through the task SDK's private
    ``_internal.templater`` (no public name up to 3.3); ``tests/test_version_compat.py`` fails
    when the path moves.
    """
    from airflow.sdk.definitions._internal.templater import create_template_env

    return create_template_env(searchpath=searchpath, native=native)


def stats_facade() -> Any:
    """Airflow's metrics facade as the task SDK sees it, initialised from ``[metrics]`` when needed.

    Workers initialise it before running a task; in-process runs (``dag.test()``) may not have,
    and would then send nothing. No public API serves: task SDK 1.3 (Airflow 3.3) keeps a
    module-level backend under the private ``airflow.sdk._shared``, 1.2 (Airflow 3.2) a ``Stats``
    class whose metaclass builds the logger from a factory, and Airflow 3.1 uses core's
    ``airflow.stats.Stats``. ``tests/test_version_compat.py`` fails when these paths break.
    """
    if not AIRFLOW_V_3_2_PLUS:
        from airflow.stats import Stats

        return Stats
    from airflow.sdk._shared.observability.metrics import stats
    from airflow.sdk.observability.metrics import stats_utils

    if AIRFLOW_V_3_3_PLUS:
        if getattr(stats, "_factory", True) is None:
            stats.initialize(
                factory=stats_utils.get_stats_factory(),
                export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=True),
            )
        return stats
    facade: Any = stats.Stats  # task SDK 1.2
    factory_of: Any = stats_utils.get_stats_factory
    if type.__getattribute__(facade, "factory") is None:
        facade.initialize(factory=factory_of(facade))
    return facade


__all__ = [
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "AirflowFailException",
    "AirflowPlugin",
    "AirflowSkipException",
    "TaskDeferred",
    "alias_event_extra",
    "amask_secret",
    "aread_connection",
    "conf",
    "context_merge",
    "determine_kwargs",
    "set_during_execution",
    "stats_facade",
    "template_env",
]


VERSION_DIFFERENCES: tuple[tuple[str, str, str], ...] = (
    (
        "the connection form",
        "built from the hook's ``get_connection_form_widgets`` / ``get_ui_field_behaviour`` (wtforms, "
        "a dependency); number fields take whole numbers",
        "built from the provider info's ``conn-fields`` / ``ui-field-behaviour``",
    ),
    (
        "*Test* on a saved connection in the Connections list",
        "the UI sends the key masked (``***``): the hook says so and sends nothing; test from the *Add* "
        "form, ``airflow connections test`` or a task",
        "tests the stored key",
    ),
    (
        "the trigger's connection read",
        "the sync read, in asgiref's worker thread",
        "the same before 3.3.2; ``aget_connection`` from 3.3.2",
    ),
    (
        "asset events through an ``AssetAlias``",
        "``extra`` without lists (no ``images`` / ``manifests``, ``truncated: true``): consumers read "
        "the manifests under ``prefix``",
        "the full ``extra``",
    ),
    (
        "the review step (``ImageReviewOperator``)",
        "a deferred HITL task",
        "3.2: a deferred HITL task; 3.3: ``awaiting_input``",
    ),
    (
        "deferrable tasks (``deferrable=True``)",
        "defer from a worker: one worker start before the API call, one after",
        "3.2: the same; 3.3: the scheduler starts them in the triggerer, which generates and copies; one "
        "worker start to finish (the docs' *Deferrable mode* says when a task still defers from a worker)",
    ),
    ("metrics", "core's ``Stats``", "the task SDK's metrics"),
    (
        "the Images tab plugin",
        "registered by the ``airflow.plugins`` entry point",
        "the same (3.3 would load a provider-info plugin only with ``lazy_discover_providers = False``)",
    ),
)
"""What a user sees differ between the supported Airflow versions: (what, on Airflow 3.1, on Airflow
3.2 and 3.3). The README's and the docs' version tables are made from it (``tests/docs`` checks the README's)."""
