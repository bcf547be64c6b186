"""Command line: ``python -m airflow_provider_imagegen.emulator --port 8765 --api-key KEY [knobs...]``.

Prints the listening URL (the real port, also with ``--port 0``), the API key and the endpoint,
then serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.emulator.config import ERROR_FORMATS, RESPONSE_MODES, EmulatorConfig

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

    from airflow_provider_imagegen.emulator.server import Emulator

_DEFAULTS = EmulatorConfig()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: address options plus one flag per EmulatorConfig knob."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_imagegen.emulator",
        description="Serve a local emulator of the GPT Image 2 text-to-image API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default: %(default)s)")
    _add_knob_arguments(parser)
    return parser


def _add_knob_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per EmulatorConfig field."""
    knobs = parser.add_argument_group("behaviour knobs")
    knobs.add_argument("--api-key", default=_DEFAULTS.api_key, help="accepted Bearer key (default: %(default)s)")
    knobs.add_argument("--latency", type=float, default=0.0, help="seconds added to each generation call")
    knobs.add_argument("--download-latency", type=float, default=0.0, help="seconds before each download")
    knobs.add_argument("--rate-limit-burst", type=int, default=0, help="the next N generation calls answer 429")
    knobs.add_argument("--retry-after", type=float, default=None, help="Retry-After seconds sent with 429s")
    knobs.add_argument("--server-errors", type=int, default=0, help="the next N generation calls fail")
    knobs.add_argument("--server-error-status", type=int, default=500, help="status of injected failures")
    knobs.add_argument("--max-images", type=int, default=None, help="return at most N URLs per call")
    knobs.add_argument(
        "--blocked-words",
        default=",".join(_DEFAULTS.blocked_words),
        help="comma-separated words that trigger content_policy_violation (default: %(default)s)",
    )
    knobs.add_argument("--url-ttl", type=float, default=_DEFAULTS.url_ttl, help="seconds an image URL lives")
    knobs.add_argument("--slow-body-seconds", type=float, default=0.0, help="spread image bodies over S s")
    knobs.add_argument("--truncate-bodies", action="store_true", help="send only half of each image body")
    knobs.add_argument("--error-format", choices=ERROR_FORMATS, default="json", help="error body style")
    knobs.add_argument("--response-mode", choices=RESPONSE_MODES, default="ok", help="shape of 200 answers")
    knobs.add_argument("--image-content-type", default=None, help="override Content-Type of downloads")
    knobs.add_argument("--wrong-format", action="store_true", help="serve JPEG for PNG and vice versa")
    knobs.add_argument("--wrong-dimensions", action="store_true", help="render half the asked size")
    knobs.add_argument("--noise", action="store_true", help="incompressible noise images (large PNGs)")


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Turn parsed arguments into an EmulatorConfig."""
    options: dict[str, Any] = {name: value for name, value in vars(args).items() if name not in ("host", "port")}
    options["blocked_words"] = tuple(word.strip() for word in args.blocked_words.split(",") if word.strip())
    return EmulatorConfig(**options)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the emulator, print where it listens, serve until interrupted."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from airflow_provider_imagegen.emulator.server import (  # heavy imports only when serving
        Emulator,
        exposed_default_key_warning,
    )

    exposed = exposed_default_key_warning(args.host, config.api_key)
    if exposed:
        print(f"WARNING: {exposed}", file=sys.stderr, flush=True)
    emulator = Emulator(config, host=args.host, port=args.port)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already printed above
            emulator.start()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Emulator listening on {emulator.base_url}", flush=True)
    print(f"API key: {emulator.api_key}", flush=True)
    print(f"Endpoint: {emulator.endpoint_url}", flush=True)
    _serve_until_signalled(emulator)
    emulator.stop()
    return 0


def _serve_until_signalled(emulator: Emulator) -> None:
    """Block the main thread until Ctrl-C, SIGTERM or the server thread ending."""
    stop = threading.Event()

    def _handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
    while emulator.running and not stop.wait(0.5):
        pass


if __name__ == "__main__":
    sys.exit(main())
