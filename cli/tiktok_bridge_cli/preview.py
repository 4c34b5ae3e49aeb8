"""`tiktok-bridge preview`: show the TikTok requests that Segment events become, without sending anything."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO, get_args

from tiktok_bridge.config import BridgeConfig, ConfigError, load_config_file
from tiktok_bridge.mapping import EventMapping, map_event, merge
from tiktok_bridge.model import EventSource, request_bodies
from tiktok_bridge.segment import BodyError, parse_body

EXIT_OK, EXIT_REJECTED, EXIT_UNUSABLE = 0, 1, 2
PLACEHOLDERS = {"pixel_code": "PIXEL_CODE", "event_set_id": "EVENT_SET_ID"}

DESCRIPTION = """\
Map Segment events (one event, a JSON array, or {"batch": [...]}) and print on stdout a JSON array of the
request bodies exactly as they would be POSTed to TikTok's /event/track/. Nothing is sent.

Rejected and skipped events are listed on stderr as `rejected|skipped <messageId>: <reason>`.
Exit status: 0 nothing rejected, 1 some event rejected, 2 unusable input or config."""

EXPLAIN_HELP = (
    "also print on stderr, per event, one JSON line {messageId, forwarded:[{destination, event}], "
    "sources:{tiktok_field: segment_source_path}}: where each field came from, never its value"
)


class UsageError(Exception):
    """Input or config the preview cannot use; exit status 2."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "preview",
        help="print the TikTok request bodies for Segment events",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="Segment events (default -: stdin)"
    )
    parser.add_argument(
        "--config", metavar="FILE", help="mapping config, YAML or JSON (default: the presets)"
    )
    parser.add_argument(
        "--destination",
        choices=("web", "offline", "all"),
        help="send to these destinations instead of those the config enables",
    )
    parser.add_argument("--pixel-code", default=PLACEHOLDERS["pixel_code"], help="web event_source_id")
    parser.add_argument(
        "--event-set-id", default=PLACEHOLDERS["event_set_id"], help="offline event_source_id"
    )
    parser.add_argument("--explain", action="store_true", help=EXPLAIN_HELP)
    parser.set_defaults(run=run)


def _config(path: str | None, destination: str | None) -> BridgeConfig:
    config = load_config_file(path) if path else BridgeConfig()
    if destination is None:
        return config
    return config.with_destinations(get_args(EventSource) if destination == "all" else (destination,))


def _read(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(file).read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {file}: {error.strerror or type(error).__name__}") from None


def _explanation(mapping: EventMapping) -> dict[str, Any]:
    forwarded = [{"destination": m.route.event_source, "event": m.data["event"]} for m in mapping.forwarded]
    return {"messageId": mapping.message_id, "forwarded": forwarded, "sources": mapping.sources}


def preview(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Run the preview; raises `UsageError`, `ConfigError` or `BodyError` for unusable input."""
    config = _config(args.config, args.destination)
    events = parse_body(_read(args.file))
    now = time.time()
    mappings = [map_event(raw, config, now=now) for raw in events]
    result = merge(mappings)
    source_ids = {"pixel_code": args.pixel_code, "event_set_id": args.event_set_id}
    json.dump(request_bodies(result.forwarded, source_ids), stdout, indent=2, ensure_ascii=False)
    stdout.write("\n")
    for kind, outcomes in (("rejected", result.rejected), ("skipped", result.skipped)):
        for outcome in outcomes:
            print(f"{kind} {outcome.message_id or '(no messageId)'}: {outcome.reason}", file=stderr)
    if args.explain:
        for mapping in mappings:
            print(json.dumps(_explanation(mapping), ensure_ascii=False), file=stderr)
    return EXIT_REJECTED if result.rejected else EXIT_OK


def run(args: argparse.Namespace) -> int:
    try:
        return preview(args, sys.stdout, sys.stderr)
    except (UsageError, ConfigError, BodyError) as error:
        print(f"tiktok-bridge preview: error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
