"""End-to-end tests: the example DAGs run with dag.test() against the emulator and a moto S3 server."""

from __future__ import annotations
