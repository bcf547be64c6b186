"""The cost summary of a try (one log line) and the per-prompt figures in the manifest, against the emulator."""

from __future__ import annotations

import re

import pytest

from airflow_provider_imagegen.records import Manifest
from tests.support import PREFIX, read_json

SUMMARY = re.compile(
    r"Cost of this try: (\d+) paid generation call\(s\)(?: and (\d+) failed)? for (\d+) prompt\(s\); "
    r"images requested (\d+), received (\d+), stored (\d+), reused from an earlier try (\d+); "
    r"(\d+) bytes stored; API time ([\d.]+) s"
)


def _summaries(text: str) -> list[tuple[str, ...]]:
    return [match.groups() for match in SUMMARY.finditer(text)]


def test_summary_and_manifest_figures_match_the_emulator(make_op, context, emulator, s3, s3_bucket, task_logs):
    emulator.configure(max_images=2)
    xcom = make_op(n=3, min_images=1).execute(context)
    calls = emulator.state.generation_calls()
    assert len(calls) == 1
    received = len(xcom)
    assert received == 2  # the emulator returned one fewer than asked
    size = sum(item["size_bytes"] for item in xcom)
    [line] = _summaries(task_logs())
    calls_, failed, prompts, requested, got, stored, reused, stored_bytes, _ = line
    assert (calls_, failed, prompts, requested, got, stored, reused) == ("1", None, "1", "3", "2", "2", "0")
    assert int(stored_bytes) == size
    manifest = read_json(s3, s3_bucket, f"{PREFIX}/manifest.json")
    assert manifest["cost"] == {
        "generation_calls": len(calls),
        "images_requested": 3,
        "images_received": received,
        "images_stored": received,
        "bytes_stored": size,
        "api_seconds": manifest["generation_seconds"],
    }

    # a new try reuses: no call, every image counted as reused
    make_op(n=3, min_images=1).execute(context)
    assert len(emulator.state.generation_calls()) == 1
    assert _summaries(task_logs())[-1][:8] == ("0", None, "1", "0", "0", "0", "2", "0")


def test_failed_calls_are_counted(make_op, context, emulator, s3_bucket, task_logs):
    with pytest.raises(Exception, match="ImageGenContentPolicyError"):
        make_op(prompt="a forbidden picture").execute(context)
    assert len(emulator.state.generation_calls()) == 1
    [line] = _summaries(task_logs())
    assert line[:8] == ("0", "1", "1", "0", "0", "0", "0", "0")


def test_old_manifest_without_cost_still_parses():
    manifest = Manifest.from_json({"images": [], "status": "complete", "schema_version": 1})
    assert manifest.cost is None
    assert "cost" not in manifest.to_json()
