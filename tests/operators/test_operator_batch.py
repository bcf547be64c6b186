"""Batch mode (``prompts=[...]``) and bounded parallel copies."""

from __future__ import annotations

import pytest

from airflow_provider_imagegen.models import prompt_digest
from airflow_provider_imagegen.version_compat import AirflowFailException
from tests.support import PREFIX, list_keys, make_context, object_sha256, read_json, served_sha256s

PROMPTS = [f"product shot {i}: a ceramic mug, studio light" for i in range(5)]


def test_batch_lands_each_prompt_under_its_own_prefix(make_op, context, emulator, s3, s3_bucket):
    emulator.configure(latency=0.2)
    xcom = make_op(prompts=PROMPTS, n=2, max_concurrency=2).execute(context)

    assert len(emulator.state.generation_calls()) == 5
    assert emulator.state.max_in_flight_generations == 2
    assert [(item["prompt_index"], item["index"]) for item in xcom] == [(p, i) for p in range(5) for i in range(2)]
    for item in xcom:
        assert item["key"] == f"{PREFIX}/{item['prompt_index']:03d}/{item['index']:02d}.png"
        assert object_sha256(s3, s3_bucket, item["key"]) == item["sha256"]
    for index, prompt in enumerate(PROMPTS):
        manifest = read_json(s3, s3_bucket, f"{PREFIX}/{index:03d}/manifest.json")
        assert manifest["prompt"] == prompt
        assert manifest["prompt_sha256"] == prompt_digest(prompt)
        assert manifest["task"]["prompt_index"] == index
        assert [image["prompt_index"] for image in manifest["images"]] == [index, index]
    assert {item["sha256"] for item in xcom} == served_sha256s(emulator)


def test_batch_keeps_going_without_fail_fast_and_names_the_failed_prompt(make_op, emulator, s3, s3_bucket):
    prompts = list(PROMPTS)
    prompts[2] = "a forbidden product shot"
    with pytest.raises(AirflowFailException, match=r"1 of 5 prompts failed.*prompt 2: ImageGenContentPolicyError"):
        make_op(prompts=prompts, max_concurrency=2).execute(make_context())
    keys = list_keys(s3, s3_bucket)
    for index in (0, 1, 3, 4):
        assert f"{PREFIX}/{index:03d}/manifest.json" in keys
    assert not any(key.startswith(f"{PREFIX}/002/") for key in keys)
    assert len(emulator.state.generation_calls()) == 5

    # the retry pays only for the prompt that failed
    emulator.configure(blocked_words=())
    xcom = make_op(prompts=prompts, max_concurrency=2).execute(make_context(try_number=2))
    assert len(emulator.state.generation_calls()) == 6
    assert [item["prompt_index"] for item in xcom] == [0, 1, 2, 3, 4]
    assert f"{PREFIX}/002/manifest.json" in list_keys(s3, s3_bucket)


def test_batch_with_transient_failure_is_retryable(make_op, emulator, fast_retries):
    prompts = list(PROMPTS[:3])
    emulator.configure(server_errors=100)
    with pytest.raises(Exception, match="3 of 3 prompts failed") as info:
        make_op(prompts=prompts, max_concurrency=3).execute(make_context())
    assert not isinstance(info.value, AirflowFailException)


def test_fail_fast_stops_early(make_op, emulator, s3, s3_bucket):
    prompts = ["a forbidden first prompt", *PROMPTS[1:]]
    emulator.configure(latency=0.2)
    with pytest.raises(AirflowFailException, match=r"not started: fail_fast") as info:
        make_op(prompts=prompts, max_concurrency=1, fail_fast=True).execute(make_context())
    assert "prompt 0" in str(info.value)
    assert "4 not started" in str(info.value)
    assert len(emulator.state.generation_calls()) == 1  # the failure stops the prompt waiting for the slot


def test_prompts_rendered_as_text_are_parsed(make_op, context, emulator):
    xcom = make_op(prompts='["one", "two"]').execute(context)
    assert [item["prompt_index"] for item in xcom] == [0, 1]


@pytest.mark.parametrize("prompts", [[], "not a list", [1, 2]])
def test_bad_prompt_lists_fail_before_any_call(make_op, context, emulator, prompts):
    with pytest.raises(AirflowFailException, match="Invalid prompt"):
        make_op(prompts=prompts).execute(context)
    assert emulator.calls == []


def test_copies_run_in_parallel_within_the_bound_and_keep_order(make_op, context, emulator, s3, s3_bucket):
    emulator.configure(download_latency=0.3)
    xcom = make_op(n=6, upload_concurrency=3).execute(context)
    assert emulator.state.max_in_flight_downloads == 3
    assert [item["index"] for item in xcom] == list(range(6))
    assert [item["key"] for item in xcom] == [f"{PREFIX}/{i:02d}.png" for i in range(6)]
    for item in xcom:
        assert object_sha256(s3, s3_bucket, item["key"]) == item["sha256"]


def test_sequential_copies_with_concurrency_one(make_op, context, emulator):
    emulator.configure(download_latency=0.05)
    make_op(n=3, upload_concurrency=1).execute(context)
    assert emulator.state.max_in_flight_downloads == 1
