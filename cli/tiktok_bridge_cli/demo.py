"""`tiktok-bridge demo`: every sample in events/segment/ through the local stack, then what TikTok received.

Starts the local stack, POSTs each sample over real HTTP with a valid X-Signature, waits until every accepted
event is delivered or dead-lettered, prints a short report (accepted, skipped, rejected with reasons,
delivered per TikTok event, match-key coverage before and after Identify, TikTok requests, dead letters, one
delivered request body) and exits 0, or 1 when an event was lost or a request failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tiktok_bridge.config import BridgeConfig
from tiktok_bridge.identity import COVERAGE_KEYS, coverage
from tiktok_bridge.mapping import map_events
from tiktok_bridge.segment import parse_body

from tiktok_bridge_cli.local import DeadLetter, LocalStack, LocalStackError
from tiktok_bridge_cli.stack import DEFAULT_TEMPLATE

SAMPLES = DEFAULT_TEMPLATE.parent / "events" / "segment"
DRAIN_TIMEOUT_S = 120.0


@dataclass
class Ingested:
    """What the ingest endpoint answered, summed over every sample."""

    accepted: int = 0
    skipped: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (messageId, reason)
    failures: list[str] = field(default_factory=list)  # samples that did not get a 200

    def add(self, sample: str, response: httpx.Response) -> None:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200 or not isinstance(answer, dict):
            self.failures.append(f"{sample}: HTTP {response.status_code} {response.text[:200]}")
            return
        self.accepted += int(answer.get("accepted", 0))
        self.skipped += int(answer.get("skipped", 0))
        self.rejected += [(str(r.get("messageId")), str(r.get("reason"))) for r in answer.get("rejected", [])]


def send_samples(local: LocalStack, samples: Iterable[Path], out: Any) -> Ingested:
    """POST each sample file's bytes, signed with the stack's webhook secret and with its token."""
    ingested = Ingested()
    with httpx.Client(timeout=30) as client:
        for path in samples:
            body = path.read_bytes()
            response = client.post(local.ingest_url, content=body, headers=local.webhook_headers(body))
            print(f"  {path.name:<28} HTTP {response.status_code}  {response.text[:100]}", file=out)
            ingested.add(path.name, response)
    return ingested


def progress_printer(local: LocalStack, out: Any) -> Any:
    """A `wait_until_drained` progress callback printing one updating line."""
    last: list[str] = []

    def show(depth: dict[str, int]) -> None:
        delivered = sum(len(r["data"]) for r in local.emulator.accepted_requests()) if local.emulator else 0
        line = (
            f"  waiting: {depth['queued']} queued, {depth['in_flight']} in flight, "
            f"{delivered} delivered, {depth['dead_lettered']} dead-lettered"
        )
        if last != [line]:
            last[:] = [line]
            print(f"\r{line:<78}", end="", file=out, flush=True)

    return show


def unenriched(samples: Iterable[Path]) -> list[dict[str, Any]]:
    """The samples' TikTok events as mapping alone makes them, before Identify enrichment."""
    config = BridgeConfig()
    return [m.data for path in samples for m in map_events(parse_body(path.read_bytes()), config).forwarded]


def coverage_line(label: str, events: Iterable[dict[str, Any]]) -> str:
    shares = coverage(events)
    return f"  {label:<18}" + "  ".join(f"{key} {shares[key]:4.0%}" for key in COVERAGE_KEYS)


def report(local: LocalStack, ingested: Ingested, before: list[dict[str, Any]], out: Any) -> int:
    """Print what happened; the exit status (1 when an accepted event was lost or a sample failed)."""
    assert local.emulator is not None
    requests = local.emulator.accepted_requests()
    delivered = [(r["event_source"], event) for r in requests for event in r["data"]]
    dead = local.dlq_messages()
    lost = ingested.accepted - accounted_for(delivered, dead)

    print(
        f"\naccepted {ingested.accepted}, skipped {ingested.skipped}, rejected {len(ingested.rejected)}",
        file=out,
    )
    for message_id, reason in ingested.rejected:
        print(f"  rejected {message_id}: {reason}", file=out)
    print(f"delivered to TikTok: {len(delivered)} events in {len(requests)} accepted requests", file=out)
    for (source, name), count in sorted(Counter((s, e.get("event")) for s, e in delivered).items()):
        print(f"  {source:<8} {name:<24} {count}", file=out)
    print(f"TikTok requests made: {local.emulator.request_count}", file=out)
    print("match-key coverage (share of forwarded events carrying each key):", file=out)
    print(coverage_line("mapping alone", before), file=out)
    print(coverage_line("with Identify", (event for _, event in delivered)), file=out)
    print(f"dead-lettered: {len(dead)}", file=out)
    for letter in dead:
        print(f"  {letter.attributes.get('dlq_reason', '(no reason)')} {letter.attributes}", file=out)
    if requests:
        first = requests[0]
        sample = {**first, "data": first["data"][:1]}
        print("one delivered request body (first event; PII arrives hashed):", file=out)
        print(json.dumps(sample, indent=2), file=out)
    for failure in ingested.failures:
        print(f"FAILED {failure}", file=out)
    if lost > 0:
        print(f"LOST {lost} accepted event(s): neither delivered nor dead-lettered", file=out)
    return 1 if lost > 0 or ingested.failures else 0


def accounted_for(delivered: Iterable[tuple[str, dict[str, Any]]], dead: Iterable[DeadLetter]) -> int:
    """How many accepted events arrived somewhere (TikTok or the DLQ).

    Ingest counts an event once per request even when it goes to both web and offline, and samples may repeat
    a messageId, so an event id counts as often as it arrived on its busiest route.
    """
    arrivals = Counter((str(event.get("event_id")), source) for source, event in delivered)
    for letter in dead:
        try:
            event_id = str(json.loads(letter.body).get("event_id"))
        except (ValueError, AttributeError):
            continue
        arrivals[(event_id, letter.attributes.get("event_source", ""))] += 1
    busiest: dict[str, int] = {}
    for (event_id, _), count in arrivals.items():
        busiest[event_id] = max(busiest.get(event_id, 0), count)
    return sum(busiest.values())


def run_demo(samples_dir: Path = SAMPLES, out: Any = sys.stdout) -> int:
    samples = sorted(samples_dir.glob("*.json"))
    if not samples:
        print(f"no samples in {samples_dir}", file=out)
        return 1
    print("starting the local stack (moto, TikTok emulator, ingest and sender functions)...", file=out)
    with LocalStack() as local:
        print(f"ingest {local.ingest_url}, TikTok emulator {local.tiktok_url}", file=out)
        print(f"sending {len(samples)} samples from {samples_dir}:", file=out)
        ingested = send_samples(local, samples, out)
        local.wait_until_drained(DRAIN_TIMEOUT_S, progress_printer(local, out))
        return report(local, ingested, unenriched(samples), out)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="send the sample events through the local stack and report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="folder of Segment payloads (*.json)")
    parser.set_defaults(run=lambda args: _main(args))


def _main(args: argparse.Namespace) -> int:
    try:
        return run_demo(args.samples)
    except (LocalStackError, TimeoutError, OSError) as exc:
        print(f"\ntiktok-bridge demo: {exc}", file=sys.stderr)
        return 1
