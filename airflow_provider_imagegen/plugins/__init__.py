"""Airflow plugins of the provider: the Images tab (``images.ImageGenPlugin``)."""

from __future__ import annotations
