"""TaskFlow decorators of the provider (``@task.imagegen``), registered through provider info."""

from __future__ import annotations
