"""Behaviour knobs of the GPT Image 2 API emulator.

This module is deliberately light (standard library only) because code outside the emulator
imports :class:`EmulatorConfig` without wanting FastAPI, uvicorn or Pillow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ERROR_FORMATS: tuple[str, ...] = ("json", "text")
"""Accepted values of :attr:`EmulatorConfig.error_format`."""

RESPONSE_MODES: tuple[str, ...] = (
    "ok",
    "malformed_json",
    "no_images_key",
    "empty_images",
    "extra_images",  # twice as many image URLs as asked for
    "repeated_images",  # every image URL twice
    "objects",  # each image as {"url": URL, "revised_prompt": ...}, as the documented example's [{}] allows
    "objects_without_url",  # each image as {"b64_json": ..., "revised_prompt": ...}: no URL to download
)
"""Accepted values of :attr:`EmulatorConfig.response_mode`."""

_NON_NEGATIVE_FLOATS: tuple[str, ...] = ("latency", "policy_latency", "download_latency", "slow_body_seconds")
_NON_NEGATIVE_INTS: tuple[str, ...] = ("rate_limit_burst", "server_errors")


@dataclass
class EmulatorConfig:
    """Mutable knobs that shape how the emulator answers.

    Changing an attribute of the live config (``emulator.config``) changes the behaviour of the
    running emulator immediately, for the next request.
    """

    api_key: str = "emulator-key"
    """The only Bearer key accepted; anything else answers 401."""
    latency: float = 0.0
    """Seconds added to each successful-path generation call (``await asyncio.sleep``)."""
    policy_latency: float = 0.0
    """Seconds before a content-policy rejection (a real API moderates the prompt first; an instant
    rejection makes a deferred task's trigger fire before Airflow has handled the deferral)."""
    download_latency: float = 0.0
    """Seconds before each image download starts to respond."""
    rate_limit_burst: int = 0
    """The next N generation calls answer 429 (decremented per call)."""
    retry_after: float | None = None
    """If set, 429 responses carry ``Retry-After`` (whole seconds, rounded up)."""
    server_errors: int = 0
    """The next N generation calls answer :attr:`server_error_status` (decremented per call)."""
    server_error_status: int = 500
    """HTTP status used for injected server errors."""
    max_images: int | None = None
    """Return at most this many image URLs per call (the API may return fewer than ``n``)."""
    blocked_words: tuple[str, ...] = ("forbidden",)
    """A prompt containing one of these (case-insensitive) gets a 400 ``content_policy_violation``."""
    url_ttl: float = 3600.0
    """Seconds an image URL stays valid; afterwards it answers 404."""
    slow_body_seconds: float = 0.0
    """Image bodies are sent in ~8 chunks spread over this many seconds."""
    truncate_bodies: bool = False
    """Image responses declare the full Content-Length but send only half the bytes, then close."""
    error_format: str = "json"
    """``"json"`` (``{"error": {...}}``) or ``"text"`` (a plain sentence) error bodies."""
    response_mode: str = "ok"
    """Shape of 200 answers: ``"ok"`` (``{"images": [URL, ...]}``), ``"objects"`` (each image an
    object ``{"url": URL, "revised_prompt": ...}``), ``"objects_without_url"`` (objects carrying
    ``b64_json`` and ``revised_prompt`` but no URL), ``"malformed_json"``, ``"no_images_key"``,
    ``"empty_images"``, ``"extra_images"`` or ``"repeated_images"`` (see :data:`RESPONSE_MODES`)."""
    image_content_type: str | None = None
    """Override the Content-Type header of image downloads."""
    wrong_format: bool = False
    """Serve JPEG bytes when PNG was asked and vice versa (with the asked Content-Type)."""
    wrong_dimensions: bool = False
    """Render half the asked width and height."""
    noise: bool = False
    """Fill images with deterministic random noise so that PNG does not compress."""

    def __post_init__(self) -> None:
        """Normalise and validate the initial values."""
        self.blocked_words = _normalise("blocked_words", self.blocked_words)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ValueError` if a knob holds a value the emulator cannot honour."""
        if self.error_format not in ERROR_FORMATS:
            raise ValueError(f"error_format must be one of {ERROR_FORMATS}, got {self.error_format!r}")
        if self.response_mode not in RESPONSE_MODES:
            raise ValueError(f"response_mode must be one of {RESPONSE_MODES}, got {self.response_mode!r}")
        for name in (*_NON_NEGATIVE_FLOATS, *_NON_NEGATIVE_INTS):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_images is not None and self.max_images < 0:
            raise ValueError(f"max_images must be >= 0 or None, got {self.max_images!r}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 or None, got {self.retry_after!r}")
        if not 100 <= self.server_error_status <= 599:
            raise ValueError(f"server_error_status must be an HTTP status, got {self.server_error_status!r}")
        if isinstance(self.blocked_words, str):
            raise ValueError("blocked_words must be a tuple of words, not a single string")

    def update(self, **knobs: Any) -> None:
        """Set several knobs at once, rejecting unknown names and invalid values.

        On a validation error the previous values are restored.
        """
        unknown = sorted(set(knobs) - knob_names())
        if unknown:
            raise TypeError(f"unknown emulator knob(s): {', '.join(unknown)}; known: {sorted(knob_names())}")
        previous = {name: getattr(self, name) for name in knobs}
        for name, value in knobs.items():
            setattr(self, name, _normalise(name, value))
        try:
            self.validate()
        except ValueError:
            for name, value in previous.items():
                setattr(self, name, value)
            raise


def knob_names() -> set[str]:
    """Return the names of every :class:`EmulatorConfig` field."""
    return {field.name for field in dataclasses.fields(EmulatorConfig)}


def _normalise(name: str, value: Any) -> Any:
    """Coerce list-valued ``blocked_words`` into a tuple; pass everything else through."""
    if name == "blocked_words" and isinstance(value, list):
        return tuple(value)
    return value
