"""Several tasks at one explicit ``s3_key_prefix``: the documented content-address rule.

A manifest at a prefix is reused by any task whose request (prompt and every parameter) is the
same, whoever wrote it: the images are the answer to that request. Any other request at that
prefix replaces them (the stale manifest goes first, so it never vouches for new bytes).
"""

from __future__ import annotations

import json

import pytest

from airflow_provider_imagegen.exceptions import ImageGenWriteConflictError
from tests.support import generations, list_keys, make_context, object_sha256, read_json

SHARED = "banners/shared"


def test_same_request_from_another_dag_reuses_the_images_without_paying(make_op, emulator, s3, s3_bucket):
    first = make_op(n=2, s3_key_prefix=SHARED).execute(make_context(dag_id="team_a"))
    again = make_op(n=2, s3_key_prefix=SHARED).execute(make_context(dag_id="team_b", run_id="scheduled__x"))
    assert again == first
    assert generations(emulator) == 1
    assert read_json(s3, s3_bucket, f"{SHARED}/manifest.json")["task"]["dag_id"] == "team_a"


def test_another_request_at_the_prefix_replaces_the_images(make_op, emulator, s3, s3_bucket):
    first = make_op(n=2, s3_key_prefix=SHARED).execute(make_context(dag_id="team_a"))
    second = make_op(n=2, s3_key_prefix=SHARED, prompt="a harbour at dusk").execute(make_context(dag_id="team_b"))
    assert generations(emulator) == 2
    assert {item["sha256"] for item in second}.isdisjoint(item["sha256"] for item in first)
    manifest = read_json(s3, s3_bucket, f"{SHARED}/manifest.json")
    assert manifest["prompt"] == "a harbour at dusk"
    assert manifest["images"] == second
    assert list_keys(s3, s3_bucket) == [f"{SHARED}/00.png", f"{SHARED}/01.png", f"{SHARED}/manifest.json"]


def test_other_parameters_are_another_request(make_op, emulator, s3_bucket):
    make_op(n=2, s3_key_prefix=SHARED).execute(make_context())
    make_op(n=2, s3_key_prefix=SHARED, quality="high").execute(make_context())
    assert generations(emulator) == 2


def _interleave(monkeypatch, other) -> None:
    """Run ``other()`` (another task on the same prefix) when the task under test is about to commit."""
    from airflow_provider_imagegen.records import RecordStore

    real = RecordStore.commit
    ran = []

    def commit(self, job, manifest, *, shared=False):
        if not ran:
            ran.append(True)
            other()
        return real(self, job, manifest, shared=shared)

    monkeypatch.setattr(RecordStore, "commit", commit)


def test_two_writers_on_one_prefix_fail_loudly_and_the_manifest_tells_the_truth(
    make_op, emulator, s3, s3_bucket, monkeypatch
):
    # B copies other images over A's and commits while A is about to commit
    _interleave(
        monkeypatch,
        lambda: make_op(n=2, s3_key_prefix=SHARED, prompt="a harbour at dusk").execute(make_context(dag_id="team_b")),
    )
    with pytest.raises(ImageGenWriteConflictError, match=r"Another writer changed s3://.*/banners/shared/0\d\.png"):
        make_op(n=2, s3_key_prefix=SHARED).execute(make_context(dag_id="team_a"))
    manifest = read_json(s3, s3_bucket, f"{SHARED}/manifest.json")
    assert manifest["prompt"] == "a harbour at dusk"
    for image in manifest["images"]:  # A left B's objects alone: B's manifest still vouches for real bytes
        assert object_sha256(s3, s3_bucket, image["key"]) == image["sha256"]


def test_a_manifest_committed_first_by_another_writer_is_not_overwritten(make_op, emulator, s3, s3_bucket, monkeypatch):
    planted = {"prompt": "another task's images", "status": "complete", "images": []}
    _interleave(
        monkeypatch,
        lambda: s3.put_object(Bucket=s3_bucket, Key=f"{SHARED}/manifest.json", Body=json.dumps(planted).encode()),
    )
    with pytest.raises(ImageGenWriteConflictError, match=r"committed .*manifest\.json first"):
        make_op(n=2, s3_key_prefix=SHARED).execute(make_context())
    assert read_json(s3, s3_bucket, f"{SHARED}/manifest.json") == planted


def test_the_default_prefix_needs_no_extra_requests(make_op, emulator, s3, s3_bucket):
    """Per-task prefixes are never shared: no re-check before the commit (the request counts stay)."""
    calls = []

    def record(**kwargs):
        calls.append(kwargs)

    s3.meta.events.register("before-call.s3.HeadObject", record)
    try:
        make_op(n=2).execute(make_context())
    finally:
        s3.meta.events.unregister("before-call.s3.HeadObject", record)
    assert calls == []
