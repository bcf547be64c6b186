"""In-memory state of a running emulator: recorded calls, stored images and concurrency gauges.

Everything here is standard library only and thread-safe: the ASGI app mutates the state from the
uvicorn event-loop thread while tests read it from theirs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_imagegen.emulator.config import EmulatorConfig

GENERATION_PATH = "/v3/gpt-image-2-text-to-image"
"""Path of the emulated text-to-image endpoint."""

IMAGES_PREFIX = "/images/"
"""Path prefix under which generated images are served."""


@dataclass(frozen=True)
class RecordedCall:
    """One HTTP request the emulator answered.

    ``headers`` has lower-case names and never contains ``authorization`` (nor
    ``proxy-authorization``); ``has_authorization`` says whether the request carried one.
    ``started_at``/``finished_at`` are :func:`time.monotonic` values; ``finished_at`` is taken when
    the last byte of the response was handed to the server (or the response was abandoned).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int
    started_at: float
    finished_at: float
    has_authorization: bool = False

    @property
    def duration(self) -> float:
        """Seconds between the start and the end of the call."""
        return self.finished_at - self.started_at


@dataclass(frozen=True)
class StoredImage:
    """A rendered image held in memory and served under :attr:`url` until :attr:`expires_at`.

    ``token`` is the last path segment of the URL, extension included (e.g. ``"k3J...Q.png"``).
    ``content_type`` is the asked format's type (what downloads declare unless overridden);
    ``width``/``height`` are the pixel sizes actually rendered.
    """

    token: str
    url: str
    data: bytes = field(repr=False)
    sha256: str
    content_type: str
    width: int
    height: int
    prompt: str = field(repr=False)
    index: int
    expires_at: float

    @property
    def size_bytes(self) -> int:
        """Length of the image body in bytes."""
        return len(self.data)

    def expired(self, now: float | None = None) -> bool:
        """Whether the URL no longer answers (``now`` defaults to :func:`time.monotonic`)."""
        return (time.monotonic() if now is None else now) >= self.expires_at


class EmulatorState:
    """Thread-safe record of everything a running emulator did, plus its live config."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        """Create an empty state around ``config`` (a default config if omitted)."""
        self.config: EmulatorConfig = config if config is not None else EmulatorConfig()
        self.base_url: str | None = None
        self._lock = threading.Lock()
        self._calls: list[RecordedCall] = []
        self._images: dict[str, StoredImage] = {}
        self.in_flight_generations = 0
        self.in_flight_downloads = 0
        self.max_in_flight_generations = 0
        self.max_in_flight_downloads = 0

    # ----------------------------------------------------------------- recorded calls
    def record(self, call: RecordedCall) -> None:
        """Append a finished call."""
        with self._lock:
            self._calls.append(call)

    @property
    def calls(self) -> list[RecordedCall]:
        """A snapshot of every recorded call, oldest first."""
        with self._lock:
            return list(self._calls)

    def generation_calls(self) -> list[RecordedCall]:
        """Recorded POST requests (generation calls, whatever they were answered)."""
        return [call for call in self.calls if call.method == "POST"]

    def download_calls(self) -> list[RecordedCall]:
        """Recorded GET requests for image URLs."""
        return [call for call in self.calls if call.method == "GET" and call.path.startswith(IMAGES_PREFIX)]

    # ----------------------------------------------------------------- gauges
    def enter(self, kind: str) -> None:
        """Count one more request of ``kind`` (``"generation"`` or ``"download"``) in flight."""
        with self._lock:
            current = getattr(self, f"in_flight_{kind}s") + 1
            setattr(self, f"in_flight_{kind}s", current)
            if current > getattr(self, f"max_in_flight_{kind}s"):
                setattr(self, f"max_in_flight_{kind}s", current)

    def leave(self, kind: str) -> None:
        """Count one request of ``kind`` as finished."""
        with self._lock:
            setattr(self, f"in_flight_{kind}s", getattr(self, f"in_flight_{kind}s") - 1)

    # ----------------------------------------------------------------- stored images
    def store_image(self, image: StoredImage) -> None:
        """Keep ``image`` so that its URL can be downloaded; images already expired are dropped.

        Memory stays bounded in long sessions (a demo, a benchmark, a test suite): only the images
        whose URL still answers are held. The oldest are checked first and the scan stops at the
        first live one, so each call costs O(1) amortised.
        """
        with self._lock:
            self._drop_expired_locked(time.monotonic())
            self._images[image.token] = image

    def drop_expired(self) -> int:
        """Forget every image whose URL has expired (it then answers 404); returns how many."""
        with self._lock:
            now = time.monotonic()
            expired = [token for token, image in self._images.items() if image.expired(now)]
            for token in expired:
                del self._images[token]
            return len(expired)

    def _drop_expired_locked(self, now: float) -> None:
        # Images are stored in issue order; with one TTL at a time the oldest expire first.
        while self._images:
            token, oldest = next(iter(self._images.items()))
            if not oldest.expired(now):
                return
            del self._images[token]

    def image_for_token(self, token: str) -> StoredImage | None:
        """The stored image behind a URL token (expired or not), or ``None``."""
        with self._lock:
            return self._images.get(token)

    def image_for_url(self, url: str) -> StoredImage | None:
        """The stored image behind ``url`` (expired or not), or ``None`` if it was never issued."""
        path = urlsplit(url).path
        if not path.startswith(IMAGES_PREFIX):
            return None
        return self.image_for_token(path[len(IMAGES_PREFIX) :])

    @property
    def images(self) -> list[StoredImage]:
        """A snapshot of every stored image, in issue order."""
        with self._lock:
            return list(self._images.values())

    def sha256_by_url(self) -> dict[str, str]:
        """Map every issued image URL to the sha256 hex digest of its bytes."""
        return {image.url: image.sha256 for image in self.images}

    def clear_images(self) -> None:
        """Forget every stored image (their URLs then answer 404)."""
        with self._lock:
            self._images.clear()

    # ----------------------------------------------------------------- reset
    def reset(self, *, clear_images: bool = False) -> None:
        """Clear recorded calls and gauges; keep the config (and, by default, the stored images)."""
        with self._lock:
            self._calls.clear()
            self.max_in_flight_generations = self.in_flight_generations
            self.max_in_flight_downloads = self.in_flight_downloads
            if clear_images:
                self._images.clear()
