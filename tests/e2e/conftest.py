"""Helpers for end-to-end tests that run `tiktok-bridge serve` as a user would: a subprocess on 127.0.0.1."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CLI = [str(Path(sys.executable).parent / "tiktok-bridge")]


@dataclass
class Served:
    process: subprocess.Popen[str]
    urls: dict[str, str]


@contextmanager
def serve(*args: str) -> Iterator[Served]:
    """Start `tiktok-bridge serve --port 0 ARGS`, parse the URLs it prints, kill it on the way out."""
    process = subprocess.Popen(
        [*CLI, "serve", "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        lines = "".join(process.stdout.readline() for _ in range(5))
        urls = dict(re.findall(r"^(\w[\w ]*):\s+(?:POST )?(\S+)", lines, re.MULTILINE))
        yield Served(process, urls)
    finally:
        process.kill()
        process.wait()
