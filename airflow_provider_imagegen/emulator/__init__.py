"""A local emulator of the GPT Image 2 text-to-image HTTP API, for tests, benchmarks and demos.

Importing this package is cheap: FastAPI, uvicorn and Pillow (the ``emulator`` extra) are only
imported when :class:`Emulator` is first accessed. :class:`EmulatorConfig` is standard library only.

    from airflow_provider_imagegen.emulator import Emulator

    with Emulator(rate_limit_burst=2, retry_after=1) as emu:
        ...  # point the client at emu.base_url with emu.api_key
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.emulator.config import EmulatorConfig

if TYPE_CHECKING:
    from airflow_provider_imagegen.emulator.server import Emulator
    from airflow_provider_imagegen.emulator.state import EmulatorState, RecordedCall, StoredImage

__all__ = ["Emulator", "EmulatorConfig", "EmulatorState", "RecordedCall", "StoredImage"]

_LAZY: dict[str, str] = {
    "Emulator": "airflow_provider_imagegen.emulator.server",
    "EmulatorState": "airflow_provider_imagegen.emulator.state",
    "RecordedCall": "airflow_provider_imagegen.emulator.state",
    "StoredImage": "airflow_provider_imagegen.emulator.state",
}


def __getattr__(name: str) -> Any:
    """Import the heavy parts on first access (PEP 562)."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Advertise the lazy names too."""
    return sorted({*globals(), *__all__})
