"""Several tasks at one explicit ``s3_key_prefix``: the documented content-address rule.

A manifest at a prefix is reused by any task whose request (prompt and every parameter) is the
same, whoever wrote it: the images are the answer to that request. Any other request at that
prefix replaces them (the stale manifest goes first, so it never vouches for new bytes).
"""

from __future__ import annotations

from tests.support import generations, list_keys, make_context, read_json

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
