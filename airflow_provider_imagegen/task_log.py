"""The logger the engine writes to: the task's own (``self.log``) or any ``logging.Logger``."""

from __future__ import annotations

from typing import Any, Protocol


class TaskLog(Protocol):
    """What the record store, the runner, the tally and the pipeline need of a logger."""

    def info(self, message: Any, /, *args: Any) -> Any: ...

    def warning(self, message: Any, /, *args: Any) -> Any: ...

    def error(self, message: Any, /, *args: Any) -> Any: ...
