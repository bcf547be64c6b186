"""Helpers for testing DAGs that use this provider offline: a local S3 and connection env vars.

Used by this project's tests, ``make demo`` and ``make bench``, and meant for users' own DAG
tests too (together with :class:`airflow_provider_imagegen.emulator.Emulator`). :func:`local_s3`
needs moto's server, which the ``testing`` extra installs::

    pip install 'airflow-provider-imagegen[emulator,testing]'
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.get_provider_info import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from collections.abc import Iterator

LOCAL_REGION = "us-east-1"
MISSING_MOTO = (
    "airflow_provider_imagegen.testing.local_s3 needs moto's S3 server (moto[server,s3] >= 5.0.13): "
    "install the testing extra, pip install 'airflow-provider-imagegen[emulator,testing]'"
)


@dataclass(frozen=True)
class LocalS3:
    """A moto S3 server on loopback."""

    endpoint_url: str
    region_name: str = LOCAL_REGION
    access_key_id: str = "testing"
    secret_access_key: str = "testing"  # noqa: S105 - moto's dummy credentials

    def connection_json(self) -> str:
        """An ``aws`` connection, as an ``AIRFLOW_CONN_*`` JSON value, pointing at this server."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": self.access_key_id,
                "password": self.secret_access_key,
                "extra": {"endpoint_url": self.endpoint_url, "region_name": self.region_name},
            }
        )

    def client(self) -> Any:
        """A boto3 S3 client for this server (for assertions and set-up)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


@contextmanager
def local_s3() -> Iterator[LocalS3]:
    """Run a moto S3 server on 127.0.0.1 on a free port for the duration of the block.

    :raises ImportError: moto's server is not installed (the message names the ``testing`` extra).
    """
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as error:  # moto itself, or the server extra's flask/werkzeug
        raise ImportError(MISSING_MOTO, name=error.name) from error

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield LocalS3(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


def connection_env(
    imagegen_connection_json: str,
    s3: LocalS3,
    *,
    imagegen_conn_id: str = DEFAULT_CONN_ID,
    aws_conn_id: str = "aws_default",
) -> dict[str, str]:
    """Environment variables defining both connections, for ``os.environ.update`` or a subprocess."""
    return {
        f"AIRFLOW_CONN_{imagegen_conn_id.upper()}": imagegen_connection_json,
        f"AIRFLOW_CONN_{aws_conn_id.upper()}": s3.connection_json(),
        "AWS_ACCESS_KEY_ID": s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        "AWS_DEFAULT_REGION": s3.region_name,
    }
