"""The ``imagegen`` Airflow plugin: an *Images* tab on every task instance, served by the API server.

Registered through the ``airflow.plugins`` entry point (Airflow 3.3 loads provider-info plugins
only with ``[core] lazy_discover_providers = False``; registering both would load it twice). This
module is imported by every Airflow process that loads plugins, so it imports nothing heavy: the
FastAPI app (:mod:`airflow_provider_imagegen.plugins._app`) is built on its first request.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.gallery import URL_PREFIX
from airflow_provider_imagegen.version_compat import AirflowPlugin

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping


class _LazyASGIApp:
    """An ASGI app that builds the real one on its first call (plugins are loaded by every process)."""

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def _build(self) -> Any:
        with self._lock:
            if self._app is None:
                from airflow_provider_imagegen.plugins._app import create_app

                self._app = create_app()
        return self._app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        app = self._app or self._build()
        await app(scope, receive, send)


class ImageGenPlugin(AirflowPlugin):
    """The Images tab (``external_views``, destination ``task_instance``) and the app serving it (Airflow ≥ 3.1)."""

    name = "imagegen"
    fastapi_apps = [{"app": _LazyASGIApp(), "url_prefix": URL_PREFIX, "name": "Image generation"}]
    external_views = [
        {
            "name": "Images",
            "href": URL_PREFIX + "/task-instances/{DAG_ID}/{RUN_ID}/{TASK_ID}/{MAP_INDEX}",
            "destination": "task_instance",
            "url_route": "imagegen_images",
        }
    ]
