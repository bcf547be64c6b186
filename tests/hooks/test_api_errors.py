"""What each error answer of the API becomes (its class, status and permanence), against the API
emulator over loopback.

The mapping itself is unit-tested in ``test_client.py``; whether each is retried in ``test_retries.py``.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from airflow_provider_imagegen.exceptions import (
    ImageGenAuthenticationError,
    ImageGenBadRequestError,
    ImageGenBadResponseError,
    ImageGenContentPolicyError,
    ImageGenNoImagesError,
)
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
from tests.support import recorded_calls, statuses

from ._fakes import FAST

# -- error answers ---------------------------------------------------------------------------------


def test_wrong_key_is_an_authentication_error(emulator, monkeypatch):
    conn = json.loads(emulator.connection_json())
    conn["password"] = "sk-wrong-key"
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    with pytest.raises(ImageGenAuthenticationError) as caught:
        ImageGenHook(retry_policy=FAST).generate_images("p")
    assert caught.value.status_code == 401
    assert "sk-wrong-key" not in str(caught.value)
    assert statuses(emulator, [401]) == [401]


def test_content_policy_rejection(emulator, hook):
    with pytest.raises(ImageGenContentPolicyError) as caught:
        hook.generate_images("something forbidden here")
    assert isinstance(caught.value, ImageGenBadRequestError)
    assert caught.value.permanent
    assert statuses(emulator, [400]) == [400]


def test_empty_images(emulator, hook):
    emulator.configure(response_mode="empty_images")
    with pytest.raises(ImageGenNoImagesError, match=r"(?i)no images returned"):
        hook.generate_images("p")
    assert len(recorded_calls(emulator, 1)) == 1


def test_malformed_json(emulator, hook):
    emulator.configure(response_mode="malformed_json")
    with pytest.raises(ImageGenBadResponseError, match="not JSON") as caught:
        hook.generate_images("p")
    assert not isinstance(caught.value, ImageGenNoImagesError)
    assert len(recorded_calls(emulator, 1)) == 1


def test_no_images_key(emulator, hook):
    emulator.configure(response_mode="no_images_key")
    with pytest.raises(ImageGenBadResponseError, match="'images'") as caught:
        hook.generate_images("p")
    assert not isinstance(caught.value, ImageGenNoImagesError)


def test_text_error_bodies(emulator, hook, monkeypatch):
    emulator.configure(error_format="text", server_errors=1)
    assert hook.generate_images("p").attempts == 2
    assert statuses(emulator, [500, 200]) == [500, 200]

    with pytest.raises(ImageGenContentPolicyError):
        hook.generate_images("forbidden words")

    conn = json.loads(emulator.connection_json())
    conn["password"] = "sk-wrong-key"
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    with pytest.raises(ImageGenAuthenticationError):
        ImageGenHook(retry_policy=FAST).generate_images("p")


def test_async_permanent_errors(emulator, imagegen_conn):
    with pytest.raises(ImageGenContentPolicyError):
        asyncio.run(ImageGenHook(imagegen_conn, retry_policy=FAST).agenerate_images("forbidden"))
    assert statuses(emulator, [400]) == [400]
