"""Attacks on the hook's download room and on the key, each over loopback with a hostile server.

Memory bounds are measured, not assumed: the bomb is downloaded in a subprocess whose peak RSS
(``resource.getrusage(...).ru_maxrss``) is compared before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

BOMB_SCRIPT = textwrap.dedent(
    r"""
    import gzip, json, os, resource, threading, zlib
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    MEMBER = gzip.compress(b"\0" * (16 << 20), 9)  # 16 MiB of zeros in ~16 KB
    IMAGE_MEMBERS, ANSWER_MEMBERS = 64, 16          # 1 GiB image, 256 MiB JSON answer

    class Hostile(BaseHTTPRequestHandler):
        def _bomb(self, members, encoding="gzip"):
            self.send_response(200)
            self.send_header("Content-Type", "image/png" if self.command == "GET" else "application/json")
            self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(MEMBER) * members))
            self.end_headers()
            for _ in range(members):
                self.wfile.write(MEMBER)

        def do_GET(self):
            self._bomb(IMAGE_MEMBERS)

        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self._bomb(ANSWER_MEMBERS)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    os.environ["AIRFLOW_CONN_IMAGEGEN_DEFAULT"] = json.dumps(
        {"conn_type": "imagegen", "host": base, "password": "sk-bomb-test", "extra": {"max_retries": 0}}
    )
    from airflow_provider_imagegen.exceptions import ImageGenError
    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

    hook = ImageGenHook(max_image_bytes=32 << 20)
    hook.settings
    hook.client
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    outcome = {"baseline": peak()}
    try:
        with hook.open_image(base + "/images/bomb.png") as image:
            for chunk in image.iter_bytes():
                outcome["biggest_chunk"] = max(outcome.get("biggest_chunk", 0), len(chunk))
        outcome["image"] = "read to the end"
    except ImageGenError as error:
        outcome["image"] = f"{type(error).__name__}: {error}"
        outcome["image_bytes"] = image.bytes_read
    outcome["after_image"] = peak()
    try:
        hook.generate_images("p")
        outcome["answer"] = "accepted"
    except ImageGenError as error:
        outcome["answer"] = f"{type(error).__name__}: {error}"
    outcome["after_answer"] = peak()
    print(json.dumps(outcome))
    """
)

#: what decoding may add to the peak RSS; httpx's own decoders would inflate one network chunk of
#: this bomb into ~64 MiB at once, and a full read into 1 GiB
MEMORY_BOUND = 40 * 1024 * 1024


def test_gzip_bomb_download_and_answer_keep_memory_bounded():
    result = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["image"].startswith("ImageGenDownloadError")
    assert "exceeds the cap" in outcome["image"]
    assert outcome["image_bytes"] <= 32 * 1024 * 1024 + 64 * 1024  # stopped at the cap, not at 1 GiB
    assert outcome["biggest_chunk"] <= 64 * 1024
    assert outcome["answer"].startswith("ImageGenBadResponseError")
    assert "above" in outcome["answer"]
    grown = outcome["after_answer"] - outcome["baseline"]
    assert grown < MEMORY_BOUND, f"peak RSS grew by {grown / 2**20:.1f} MiB: {outcome}"
    print(f"bomb: peak RSS grew by {grown / 2**20:.1f} MiB (baseline {outcome['baseline'] / 2**20:.0f} MiB)")
