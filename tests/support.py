"""Helpers shared by the operator and reliability tests: a task context and S3/emulator readers."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections import defaultdict
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

RUN_ID = "manual__2026-01-01T00:00:00+00:00"
PREFIX = "imagegen/imagegen_test/manual__2026-01-01T00-00-00-00-00/generate"
"""Where ``make_context()``'s task stores its images by default."""


class RecordingOutletEvents:
    """Stands in for ``context["outlet_events"]``: records every ``add`` per outlet, and the
    ``extra`` set on an outlet's event (a static ``Asset``'s)."""

    def __init__(self) -> None:
        self.added: list[tuple[Any, Any, dict[str, Any] | None]] = []
        self.extras: list[tuple[Any, dict[str, Any]]] = []  # (outlet, extra) as set; an Asset is unhashable on 3.1

    def __getitem__(self, outlet: Any) -> Any:
        events = self

        class _Accessor:
            def add(self, asset: Any, extra: dict[str, Any] | None = None) -> None:
                events.added.append((outlet, asset, extra))

            @property
            def extra(self) -> dict[str, Any]:
                return next((extra for known, extra in reversed(events.extras) if known == outlet), {})

            @extra.setter
            def extra(self, value: dict[str, Any]) -> None:
                events.extras.append((outlet, value))

        return _Accessor()


class RecordingLog:
    """A task log (``info``, ``warning``, ``error``) that keeps every line, formatted, with its level."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def _add(self, level: str, message: str, *args: Any) -> None:
        self.records.append((level, message % args if args else message))

    def info(self, message: str, *args: Any) -> None:
        self._add("info", message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self._add("warning", message, *args)

    def error(self, message: str, *args: Any) -> None:
        self._add("error", message, *args)

    @property
    def lines(self) -> list[str]:
        """Every line, in order."""
        return [line for _, line in self.records]

    def at(self, level: str) -> list[str]:
        """The lines of one level (``info``, ``warning``, ``error``)."""
        return [line for at, line in self.records if at == level]

    def text(self) -> str:
        """Every line, one per line."""
        return "\n".join(self.lines)


class RecordingStats:
    """Airflow's metrics facade, recorded: ``(kind, name, value, tags)`` for each ``incr`` and ``timing``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, float, dict[str, str] | None]] = []

    def incr(self, name: str, count: int = 1, tags: Any = None) -> None:
        self.sent.append(("incr", name, count, tags))

    def timing(self, name: str, value: float, tags: Any = None) -> None:
        self.sent.append(("timing", name, value, tags))


def make_context(
    *,
    dag_id: str = "imagegen_test",
    task_id: str = "generate",
    run_id: str = RUN_ID,
    map_index: int = -1,
    try_number: int = 1,
    outlet_events: Any = None,
) -> dict[str, Any]:
    """A minimal task context with the attributes of Airflow 3's RuntimeTaskInstance we use."""
    ti = SimpleNamespace(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index, try_number=try_number)
    return {
        "ti": ti,
        "task_instance": ti,
        "run_id": run_id,
        "outlet_events": outlet_events if outlet_events is not None else RecordingOutletEvents(),
    }


def image_bytes(image_format: str, size: tuple[int, int] = (64, 32), *, padding: int = 0) -> bytes:
    """A real one-colour PNG or JPEG of ``size`` pixels (Pillow).

    :param image_format: ``png`` or ``jpeg``.
    :param size: (width, height).
    :param padding: a PNG only: this many more bytes, in a private chunk before ``IEND`` (a big
        image without the time Pillow takes to encode one).
    """
    import io
    import os
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 60)).save(buffer, format=image_format.upper())
    data = buffer.getvalue()
    if not padding:
        return data
    if image_format != "png":
        raise ValueError("only a PNG can be padded")
    payload = os.urandom(padding)
    chunk = struct.pack(">I", len(payload)) + b"prVt" + payload + struct.pack(">I", zlib.crc32(b"prVt" + payload))
    return data[:-12] + chunk + data[-12:]


def chunk_list(data: bytes, size: int) -> list[bytes]:
    """``data`` in pieces of ``size`` bytes (the last one shorter)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def list_keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key in the bucket under ``prefix``, sorted."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


def read_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """A JSON object stored in S3."""
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def object_sha256(s3: Any, bucket: str, key: str) -> str:
    """sha256 of an object's bytes as S3 returns them."""
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def multipart_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    """Multipart uploads started and neither completed nor aborted."""
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def served_sha256s(emulator: Any) -> set[str]:
    """sha256 of every image the emulator served (HTTP 200) since the test started."""
    paths = {call.path for call in emulator.state.download_calls() if call.status == 200}
    return {sha for url, sha in emulator.state.sha256_by_url().items() if urlsplit(url).path in paths}


def recorded_calls(emulator: Any, count: int, kind: str = "generation", timeout: float = 10.0) -> list:
    """The emulator's records, once ``count`` are there (bounded wait, not a sleep for a server).

    The emulator records a call just after handing its last byte to the server, so the client
    can see the whole answer a moment before the record exists.
    """
    import time

    state = emulator.state
    read = state.generation_calls if kind == "generation" else state.download_calls
    deadline = time.monotonic() + timeout
    calls = read()
    while len(calls) < count and time.monotonic() < deadline:
        time.sleep(0.005)
        calls = read()
    return calls


def statuses(emulator: Any, expected: list[int]) -> list[int]:
    """The statuses of the emulator's generation calls, once there are as many as ``expected``."""
    return [call.status for call in recorded_calls(emulator, len(expected))]


def generations(emulator: Any) -> int:
    """Generation calls (POSTs, whatever they were answered) since the test started."""
    return len(emulator.state.generation_calls())


def dagbag_class() -> Any:
    """Airflow's ``DagBag``: in ``airflow.dag_processing`` from 3.2 (the old path warns), ``airflow.models`` on 3.1."""
    from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_2_PLUS

    if AIRFLOW_V_3_2_PLUS:
        from airflow.dag_processing.dagbag import DagBag
    else:
        from airflow.models.dagbag import DagBag
    return DagBag


class StatsdListener:
    """Every StatsD line sent to 127.0.0.1:{port} while it runs."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.lines.extend(data.decode(errors="replace").splitlines())

    def counters(self, prefix: str) -> dict[str, int]:
        """The counters whose names start with ``prefix``, added up."""
        totals: dict[str, int] = defaultdict(int)
        for line in list(self.lines):
            name, _, rest = line.partition(":")
            value, _, kind = rest.partition("|")
            if name.startswith(prefix) and kind.split("|")[0] == "c":
                totals[name] += int(float(value))
        return dict(totals)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
