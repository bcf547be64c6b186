"""ImageReviewOperator's decisions, without a deployment: options per image, the chosen entries, reject-all."""

from __future__ import annotations

from datetime import datetime, timezone

import pendulum
import pytest

from airflow_provider_imagegen.operators.review import REJECT_ALL, ImageReviewOperator


def _image(i: int, prompt_index: int = 0) -> dict:
    key = f"imagegen/d/r/generate/{i:02d}.png"
    return {
        "bucket": "b",
        "key": key,
        "s3_uri": f"s3://b/{key}",
        "sha256": f"{i:064x}",
        "index": i,
        "prompt_index": prompt_index,
        "content_type": "image/png",
        "size_bytes": 10,
        "width": 8,
        "height": 8,
    }


def _review(images) -> ImageReviewOperator:
    from airflow.sdk import DAG

    with DAG("imagegen_review_unit", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):
        return ImageReviewOperator(task_id="review", images=images)


def _event(*chosen: str) -> dict:
    return {
        "chosen_options": list(chosen),
        "params_input": {},
        "responded_at": datetime.now(timezone.utc),
        "responded_by_user": {"id": "1", "name": "reviewer"},
    }


def test_returns_exactly_the_chosen_images_in_order():
    images = [_image(i) for i in range(3)]
    op = _review(images)
    assert op.execute_complete({}, _event("Image 3", "Image 1")) == [images[0], images[2]]
    assert op.options == ["Image 1", "Image 2", "Image 3", REJECT_ALL]
    assert op.multiple is True


def test_mapped_upstream_lists_are_flattened():
    images = [[_image(0)], [_image(1, prompt_index=1)]]
    assert _review(images).execute_complete({}, _event("Image 2")) == [images[1][0]]


@pytest.mark.parametrize("chosen", [(REJECT_ALL,), (REJECT_ALL, "Image 1"), ()])
def test_reject_all_or_nothing_chosen_skips(chosen):
    from airflow_provider_imagegen.version_compat import AirflowSkipException

    with pytest.raises(AirflowSkipException, match="rejected all 2"):
        _review([_image(0), _image(1)]).execute_complete({}, _event(*chosen))


def test_an_option_that_was_not_offered_is_refused():
    with pytest.raises(ValueError, match="not in"):
        _review([_image(0)]).execute_complete({}, _event("Image 2"))


def test_options_and_multiple_are_the_operators_own():
    with pytest.raises(ValueError, match="sets `options` itself"):
        ImageReviewOperator(task_id="r", images=[], options=["a"])


def test_body_escapes_the_prompt_and_links_through_the_plugin(monkeypatch):
    from types import SimpleNamespace

    from airflow_provider_imagegen import gallery

    op = _review([_image(0)])
    op.image_base_url = "https://airflow.example.com/"
    monkeypatch.setattr(op, "_s3_client", lambda: None)
    monkeypatch.setattr(gallery, "read_manifest", lambda client, bucket, prefix: {"prompt": "a *bold* [link](x)"})
    body = op.review_body({"ti": SimpleNamespace(dag_id="d", run_id="r")}, [_image(0)])
    assert (
        "https://airflow.example.com/imagegen/images/d/r?key=imagegen%2Fd%2Fr%2Fgenerate%2F00.png&thumbnail=true"
        in body
    )
    assert r"a \*bold\* \[link\]\(x\)" in body
    assert _image(0)["sha256"] in body
    assert "X-Amz" not in body  # no presigned URL
    assert "Signature" not in body
