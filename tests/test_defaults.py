"""One owner per fact: every default the operator, the hook and ``@task.imagegen`` share is read from
its one owner, so that changing it in one place changes it everywhere (and this file fails if a
copy is made). No server: the hook talks to ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import inspect

import pendulum
import pytest

from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
from airflow_provider_imagegen.models import REQUEST_PARAMETERS, ImageGenerationRequest
from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator
from airflow_provider_imagegen.plan import DEFAULT_MAX_IMAGES, build_plan
from tests.hooks._fakes import FakeAPI, connection_json

REQUEST_DEFAULTS = {name: ImageGenerationRequest.__dataclass_fields__[name].default for name in REQUEST_PARAMETERS}


def _signature_default(function, name: str):
    return inspect.signature(function).parameters[name].default


@pytest.mark.parametrize("name", REQUEST_PARAMETERS)
def test_the_operators_request_defaults_are_the_requests(name):
    assert _signature_default(ImageGenToS3Operator.__init__, name) == REQUEST_DEFAULTS[name]


def test_the_decorators_request_defaults_are_the_requests():
    from airflow.sdk import DAG, task

    with DAG("imagegen_defaults", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):

        @task.imagegen(s3_bucket="b")
        def banner() -> str:
            return "a banner"

        op = banner().operator
    assert {name: getattr(op, name) for name in REQUEST_PARAMETERS} == REQUEST_DEFAULTS
    assert op.max_images == DEFAULT_MAX_IMAGES
    assert op.imagegen_conn_id == ImageGenHook.default_conn_name


@pytest.fixture
def api(monkeypatch) -> FakeAPI:
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", connection_json())
    return FakeAPI()


def test_the_hooks_request_defaults_are_the_requests(api):
    hook = ImageGenHook(transport=api.transport, async_transport=api.transport)
    hook.generate_images("p")
    asyncio.run(hook.agenerate_images("p"))
    expected = ImageGenerationRequest(prompt="p").to_json()
    assert api.bodies() == [expected, expected]
    assert {name: expected.get(name) for name in REQUEST_PARAMETERS} == REQUEST_DEFAULTS


def test_the_operators_request_is_the_hooks_request_when_nothing_is_given():
    from tests.support import make_context

    op = ImageGenToS3Operator(task_id="generate", prompt="p", s3_bucket="bucket-name")
    (job,) = op.build_jobs(make_context())
    assert job.request == ImageGenerationRequest(prompt="p")


def test_one_max_images_default():
    assert _signature_default(ImageGenToS3Operator.__init__, "max_images") == DEFAULT_MAX_IMAGES
    assert _signature_default(build_plan, "max_images") == DEFAULT_MAX_IMAGES


def test_one_default_connection_id():
    assert _signature_default(ImageGenToS3Operator.__init__, "imagegen_conn_id") == ImageGenHook.default_conn_name
    assert _signature_default(ImageGenHook.__init__, "imagegen_conn_id") == ImageGenHook.default_conn_name
