"""The chaos run, small: events through the local stack under TikTok, SQS and process faults; nothing lost.

`make chaos` is the same run with 50,000 events. A deliberately lossy sender shows that the tally catches a
dropped record.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from tiktok_bridge import normalize

from tools.chaos import PII, Plan, Tally, run_chaos, segment_event

pytestmark = pytest.mark.e2e

# Timeouts scaled down further than `make chaos` so that retries come round within the test's minute.
QUICK = Plan(
    events=1_500,
    events_per_request=50,
    poison_rate=0.005,
    visibility_timeout_s=4,
    sender_timeout_s=4,
    tiktok_timeout_s=1,
    slow_s=0.2,
    drip_s=0.02,
    fault_every_requests=6,
    kill_every_requests=40,
    sqs_call_failure_rate=0.03,
    sqs_outage_every_s=5.0,
    sqs_outage_s=1.0,
    drain_timeout_s=60,
)
CALM = replace(
    QUICK,
    events=200,
    poison_rate=0.0,
    fault_every_requests=10**9,
    kill_every_requests=10**9,
    sqs_call_failure_rate=0.0,
    sqs_entry_failure_rate=0.0,
    sqs_outage_s=0.0,
)


def test_nothing_is_lost_under_chaos() -> None:
    tally = run_chaos(QUICK)
    report = "\n".join(tally.lines())
    assert tally.ok, report
    assert (tally.lost, tally.poison_delivered, tally.pii_leaks, tally.miscounted) == ([], [], 0, 0), report
    assert len(tally.accepted) == tally.delivered + sum(tally.dead_letters.values()), report
    assert tally.delivered > 0.8 * len(tally.accepted), report  # not a run where everything failed
    assert "" not in tally.dead_letters, report  # every dead letter says why
    reasons = " | ".join(tally.dead_letters)
    for code in ("40002", "20001", "http_500"):  # the poison, refused and crash events dead-lettered
        assert code in reasons, report
    # every kind of fault happened while events flowed
    faults = {name.rsplit("_", 1)[0] if name.startswith("tiktok_http") else name for name in tally.faults}
    assert faults >= {
        "tiktok_http",
        "tiktok_40100_burst",
        "tiktok_slow",
        "tiktok_drip",
        "tiktok_timeout",
        "sqs_calls_failed",
        "sqs_entries_failed",
        "sender_killed_mid_batch",
    }, report
    assert tally.statuses["503"] > 0, report  # SQS outages made ingest refuse, and the driver retried


def test_the_tally_catches_a_sender_that_drops_records() -> None:
    lossy = replace(CALM, sender_code=Path(__file__).parent / "lossy_sender")
    tally = run_chaos(lossy)
    dropped = sorted(event_id for _, _, event_id in tally.accepted if event_id.endswith("7"))
    assert dropped and sorted(tally.lost) == dropped
    assert not tally.ok
    assert f"LOST {len(dropped)} accepted event(s)" in "\n".join(tally.lines())


def test_the_pii_check_sees_every_raw_identifier_the_driver_sends_but_no_hash() -> None:
    person = segment_event(2, "chaos-", timestamp="2026-01-01T00:00:00.000Z")["properties"]
    raw = [person[field] for field in ("email", "phone", "first_name", "last_name")]
    normalised = [
        normalize.email(person["email"]),
        normalize.phone(person["phone"], "US"),
        "zebediah",
        "quackenbush",
    ]
    assert all(PII.search(f"log line with {value} inside") for value in raw + normalised)
    hashes = [hashlib.sha256(str(value).encode()).hexdigest() for value in raw + normalised]
    assert not [h for h in hashes if PII.search(h)]


@pytest.mark.parametrize(
    "broken",
    [
        {"lost": ["chaos-1"]},
        {"poison_delivered": ["poison-3"]},
        {"pii_leaks": 1},
        {"miscounted": 1},
        {"dead_letters": {"": 1}},
    ],
)
def test_any_failed_check_fails_the_tally(broken: dict[str, object]) -> None:
    assert Tally().ok
    assert not replace(Tally(), **broken).ok  # type: ignore[arg-type]
