"""``airflow_provider_imagegen.testing`` without moto: the error says which extra to install."""

from __future__ import annotations

import sys

import pytest

from airflow_provider_imagegen import testing


def test_local_s3_names_the_testing_extra_when_moto_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "moto.server", None)  # makes `from moto.server import ...` fail
    extra = r"pip install 'airflow-provider-imagegen\[emulator,testing\]'"
    with pytest.raises(ImportError, match=extra) as error, testing.local_s3():
        pytest.fail("local_s3 started without moto")
    assert isinstance(error.value.__cause__, ImportError)


def test_connection_env_points_both_connections_at_the_local_services() -> None:
    s3 = testing.LocalS3(endpoint_url="http://127.0.0.1:1")
    env = testing.connection_env('{"conn_type": "imagegen"}', s3, imagegen_conn_id="my_api", aws_conn_id="my_aws")
    assert env["AIRFLOW_CONN_MY_API"] == '{"conn_type": "imagegen"}'
    assert '"endpoint_url": "http://127.0.0.1:1"' in env["AIRFLOW_CONN_MY_AWS"]
    assert env["AWS_DEFAULT_REGION"] == testing.LOCAL_REGION
