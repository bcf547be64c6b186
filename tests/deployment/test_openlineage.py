"""OpenLineage: ``ImageGenToS3Operator`` reports the S3 objects it wrote; without OpenLineage it reports None.

The openlineage provider is optional (not a dependency). When it is installed, its own classes are
used; when it is not, stand-ins with the same shape (``OperatorLineage(outputs=[...])`` and
``Dataset(namespace, name)``) are installed in ``sys.modules``, so that the reporting branch runs in
every environment. The other branch makes the import fail on purpose.
"""

from __future__ import annotations

import builtins
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator
from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_3_PLUS

OPENLINEAGE_INSTALLED = importlib.util.find_spec("airflow.providers.openlineage") is not None
N_IMAGES = 2


@dataclass
class _StandInDataset:
    namespace: str
    name: str
    facets: dict[str, Any] = field(default_factory=dict)


@dataclass
class _StandInOperatorLineage:
    inputs: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    run_facets: dict[str, Any] = field(default_factory=dict)
    job_facets: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def openlineage(monkeypatch: pytest.MonkeyPatch) -> str:
    """The openlineage provider if installed; otherwise stand-ins of the two classes the operator imports."""
    if OPENLINEAGE_INSTALLED:
        return "installed"
    package = types.ModuleType("airflow.providers.openlineage")
    package.__path__ = []
    extractors = types.ModuleType("airflow.providers.openlineage.extractors")
    extractors.OperatorLineage = _StandInOperatorLineage  # type: ignore[attr-defined]
    facet = types.ModuleType("airflow.providers.common.compat.openlineage.facet")
    facet.Dataset = _StandInDataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "airflow.providers.openlineage", package)
    monkeypatch.setitem(sys.modules, "airflow.providers.openlineage.extractors", extractors)
    monkeypatch.setitem(sys.modules, "airflow.providers.common.compat.openlineage.facet", facet)
    return "stand-in"


@pytest.fixture
def without_openlineage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every import of the openlineage provider fails, whether it is installed or not."""
    for name in list(sys.modules):
        if name.startswith(("airflow.providers.openlineage", "airflow.providers.common.compat.openlineage")):
            monkeypatch.delitem(sys.modules, name)
    real_import = builtins.__import__

    def failing_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith(("airflow.providers.openlineage", "airflow.providers.common.compat.openlineage")):
            raise ImportError(f"No module named {name!r} (test: OpenLineage not installed)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)


def _context() -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="lineage_test", task_id="generate", run_id="manual_lineage", map_index=-1, try_number=1)
    return {"ti": ti, "task_instance": ti, "run_id": "manual_lineage", "outlet_events": {}}


@pytest.fixture
def stored(imagegen_conn: str, aws_conn: str, s3_bucket: str) -> tuple[ImageGenToS3Operator, list[dict[str, Any]]]:
    """An operator that ran (emulator → moto S3) and what it returned to XCom."""
    operator = ImageGenToS3Operator(
        task_id="generate",
        prompt="a lighthouse at dawn",
        s3_bucket=s3_bucket,
        n=N_IMAGES,
        quality="low",
        imagegen_conn_id=imagegen_conn,
        aws_conn_id=aws_conn,
    )
    images = operator.execute(_context())
    assert len(images) == N_IMAGES
    return operator, images


def test_lineage_reports_the_s3_objects(
    openlineage: str, stored: tuple[ImageGenToS3Operator, list[dict[str, Any]]], s3_bucket: str
) -> None:
    operator, images = stored
    lineage = operator.get_openlineage_facets_on_complete(task_instance=None)
    assert lineage is not None, f"no lineage with OpenLineage {openlineage}"
    assert lineage.inputs == []
    assert [(output.namespace, output.name) for output in lineage.outputs] == [
        (f"s3://{s3_bucket}", image["key"]) for image in images
    ]
    assert all(not output.name.startswith(("/", "s3://")) for output in lineage.outputs)


def test_lineage_before_any_image_is_empty(openlineage: str, s3_bucket: str) -> None:
    operator = ImageGenToS3Operator(task_id="generate", prompt="p", s3_bucket=s3_bucket)
    lineage = operator.get_openlineage_facets_on_complete(task_instance=None)
    assert lineage is not None
    assert lineage.outputs == []


def test_lineage_is_none_without_openlineage(
    without_openlineage: None, stored: tuple[ImageGenToS3Operator, list[dict[str, Any]]]
) -> None:
    operator, images = stored
    assert images, "the operator stored images: only the missing provider can explain a None"
    assert operator.get_openlineage_facets_on_complete(task_instance=None) is None


@pytest.mark.skipif(
    not AIRFLOW_V_3_3_PLUS, reason="tasks start in the triggerer from Airflow 3.3 (3.1: the path above)"
)
def test_lineage_after_a_start_in_the_triggerer(openlineage: str, make_op: Any, s3_bucket: str) -> None:
    """The worker that finishes after the start trigger (which stored the images) reports them, as on a worker."""
    from tests.triggers.starting import copy, in_a_dag, start

    with in_a_dag():
        operator = make_op(n=N_IMAGES, quality="low", deferrable=True)
    assert operator.start_from_trigger

    images = copy(operator, start(operator))

    lineage = operator.get_openlineage_facets_on_complete(task_instance=None)
    assert [(output.namespace, output.name) for output in lineage.outputs] == [
        (f"s3://{s3_bucket}", image["key"]) for image in images
    ]
