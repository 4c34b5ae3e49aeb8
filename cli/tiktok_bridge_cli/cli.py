"""`tiktok-bridge`: preview mappings, run the TikTok emulator and the local stack."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

# Each module defines `register(subparsers)`, adding its sub-command with `set_defaults(run=...)`.
COMMAND_MODULES = (
    "tiktok_bridge_cli.preview",
    "tiktok_bridge_cli.emulator",
    "tiktok_bridge_cli.local",
    "tiktok_bridge_cli.demo",
    "tiktok_bridge_cli.forget",
    "tiktok_bridge_cli.dlq",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiktok-bridge",
        description=(
            "Segment -> TikTok Events API 2.0 bridge: preview mappings, run the TikTok emulator, "
            "the local stack (serve), or the whole pipeline on the samples (demo)."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))
