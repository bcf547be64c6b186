"""The operator as DAG authors meet it: template fields, cheap construction and import, secrets, deferral."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime
from urllib.parse import urlsplit

import pytest

from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator
from airflow_provider_imagegen.version_compat import AirflowFailException
from tests.support import PREFIX, list_keys, make_context, read_json

API_PARAMS = ("n", "size", "quality", "background", "moderation", "output_format", "output_compression")


def _downloaded(emulator) -> set[str]:
    return {call.path for call in emulator.state.download_calls()}


def test_template_fields_cover_prompt_destination_and_every_api_parameter():
    fields = set(ImageGenToS3Operator.template_fields)
    assert {"prompt", "prompts", "s3_bucket", "s3_key_prefix", *API_PARAMS} <= fields
    assert set(ImageGenToS3Operator.template_ext) == {".j2", ".jinja2"}
    assert ".txt" not in ImageGenToS3Operator.template_ext
    assert ImageGenToS3Operator.template_fields_renderers["prompt"]


def test_exactly_one_of_prompt_and_prompts():
    with pytest.raises(ValueError, match="exactly one"):
        ImageGenToS3Operator(task_id="t", s3_bucket="b")
    with pytest.raises(ValueError, match="exactly one"):
        ImageGenToS3Operator(task_id="t", s3_bucket="b", prompt="x", prompts=["y"])


def _dag(tmp_path):
    from airflow.sdk import DAG

    return DAG("imagegen_test", schedule=None, start_date=datetime(2026, 1, 1), template_searchpath=[str(tmp_path)])


def test_j2_prompt_file_is_loaded_and_rendered(tmp_path):
    (tmp_path / "hero.j2").write_text("A hero image for {{ ds }} in {{ params.style }} style")
    with _dag(tmp_path):
        op = ImageGenToS3Operator(
            task_id="generate", prompt="hero.j2", s3_bucket="bucket", n="{{ 1 + 2 }}", params={"style": "ink"}
        )
    op.resolve_template_files()
    assert op.prompt.startswith("A hero image for {{ ds }}")
    context = {**make_context(), "ds": "2026-01-01", "params": {"style": "ink"}}
    op.render_template_fields(context)
    assert op.prompt == "A hero image for 2026-01-01 in ink style"
    assert op.n == "3"


def test_prompt_ending_in_txt_is_text_not_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("FILE CONTENT")
    with _dag(tmp_path):
        op = ImageGenToS3Operator(task_id="generate", prompt="draw the cover of notes.txt", s3_bucket="bucket")
    op.resolve_template_files()
    op.render_template_fields(make_context())
    assert op.prompt == "draw the cover of notes.txt"


def test_rendered_string_n_is_used(make_op, context, emulator):
    op = make_op(n="{{ 1 + 2 }}", s3_key_prefix="{{ 'rendered' }}/{{ run_id }}")
    op.render_template_fields(context)
    xcom = op.execute(context)
    assert len(xcom) == 3
    assert emulator.state.generation_calls()[0].body["n"] == 3
    assert xcom[0]["key"].startswith("rendered/manual__2026-01-01T00:00:00+00:00/")


def test_construction_needs_no_connection_and_no_network(monkeypatch):
    import socket

    from airflow.sdk import BaseHook

    def refuse(*args, **kwargs):
        raise AssertionError("no connection lookup or network at construction time")

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(refuse))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    op = ImageGenToS3Operator(
        task_id="generate", prompt="{{ ds }}", s3_bucket="{{ var.value.bucket }}", imagegen_conn_id="nowhere"
    )
    assert op.prompt == "{{ ds }}"
    assert "hook" not in op.__dict__
    assert "s3_hook" not in op.__dict__


def test_importing_the_operator_module_stays_cheap():
    code = textwrap.dedent(
        """
        import sys
        import airflow.sdk
        before = set(sys.modules)
        import airflow_provider_imagegen.operators.imagegen
        new = set(sys.modules) - before
        heavy = ("boto3", "botocore", "s3transfer", "PIL", "httpx", "tenacity", "airflow.providers.amazon",
                 "airflow_provider_imagegen.hooks", "airflow_provider_imagegen.transfer")
        print("HEAVY", sorted(m for m in new if m.startswith(heavy)))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("HEAVY")]
    assert line == "HEAVY []", line


def test_api_key_and_urls_never_leak(make_op, context, emulator, s3, s3_bucket, task_logs):
    op = make_op(n=2)
    op.render_template_fields(context)
    xcom = op.execute(context)
    key = emulator.api_key
    urls = [url for url in emulator.state.sha256_by_url() if urlsplit(url).path in _downloaded(emulator)]
    assert len(urls) == 2
    logs = task_logs()
    assert "2/2 uploaded" in logs  # the operator's own logs were captured
    for secret in (key, *urls):
        assert secret not in logs
        assert secret not in json.dumps(xcom)
    assert key not in json.dumps(read_json(s3, s3_bucket, f"{PREFIX}/manifest.json"))
    for item in xcom:
        head = s3.head_object(Bucket=s3_bucket, Key=item["key"])
        assert key not in json.dumps(head["Metadata"])
    for field in op.template_fields:
        assert key not in repr(getattr(op, field))
    assert key not in repr(op.hook)


def test_secrets_stay_out_of_failure_logs_and_errors(make_op, context, emulator, task_logs, monkeypatch):
    conn = json.loads(emulator.connection_json())
    conn["password"] = "sk-wrong-secret-key-123"
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    with pytest.raises(AirflowFailException) as info:
        make_op().execute(context)
    assert "sk-wrong-secret-key-123" not in str(info.value)
    assert "sk-wrong-secret-key-123" not in repr(info.value.__cause__)
    assert "sk-wrong-secret-key-123" not in task_logs()


def test_logs_tell_the_story(make_op, context, emulator, task_logs):
    make_op(n=2).execute(context)
    text = task_logs()
    assert "generating 2 1024x1024 png image(s)" in text
    assert "2/2 uploaded s3://" in text
    assert "manifest.json" in text


def test_deferrable_defers_with_only_the_connection_id_then_lands(make_op, context, emulator, s3, s3_bucket):
    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
    from airflow_provider_imagegen.version_compat import TaskDeferred

    op = make_op(n=2, deferrable=True)
    with pytest.raises(TaskDeferred) as info:
        op.execute(context)
    classpath, kwargs = info.value.trigger.serialize()
    assert classpath.endswith("ImageGenTrigger")
    assert kwargs["imagegen_conn_id"] == "imagegen_default"
    assert emulator.api_key not in json.dumps(kwargs)
    assert emulator.state.generation_calls() == []

    # what the trigger would report, generated here on the sync path
    result = ImageGenHook("imagegen_default").send(op.build_jobs(context)[0].request)
    event = {"results": {"0": {"status": "success", "image_urls": result.image_urls, "elapsed": 0.1}}}
    xcom = make_op(n=2, deferrable=True).execute_complete(context, event)
    assert len(xcom) == 2
    assert f"{PREFIX}/manifest.json" in list_keys(s3, s3_bucket)

    # a later try finds the manifest and neither defers nor calls the API
    assert make_op(n=2, deferrable=True).execute(make_context(try_number=2)) == xcom
    assert len(emulator.state.generation_calls()) == 1


def test_deferrable_permanent_error_from_trigger_is_not_retried(make_op, context, emulator):
    event = {
        "results": {
            "0": {
                "status": "error",
                "error_class": "ImageGenContentPolicyError",
                "message": "refused",
                "permanent": True,
            }
        }
    }
    with pytest.raises(AirflowFailException, match="refused"):
        make_op(deferrable=True).execute_complete(context, event)
