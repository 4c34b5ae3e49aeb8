"""`make bench` cannot rot: its quick mode runs the whole script and writes every required figure."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pytest

from tools import bench

REQUIRED = {
    "mapping": ("events_per_s", "floor_events_per_s", "floor_ratio"),
    "delivery": ("events_per_request",),
    "e2e": ("events_per_s", "accepted", "delivered", "lost"),
    "cold_start": ("boto3_ms", "ingest_ms", "sender_ms"),
    "cost": ("usd_per_million_batched", "usd_per_million_unbatched"),
    "identity": ("dynamodb_batch_get_per_webhook", "dynamodb_batch_write_per_webhook"),
    "ingest": (
        "memory_mb",
        "safe_max_events",
        "safe_max_events_full_vcpu",
        "deployed_ms_at_1_event",
        "deployed_ms_per_event",
        "full_vcpu_ms_per_event",
    ),
}
# Every row of `ingest.by_size`, one per webhook size.
SIZE_FIGURES = (
    "wall_ms",
    "cpu_ms",
    *(f"{stage}_cpu_ms" for stage in bench.STAGES),
    "other_cpu_ms",
    "deployed_ms",
    "full_vcpu_ms",
)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def missing_figures(results: Mapping[str, object]) -> list[str]:
    """The required keys that are absent or not a finite number."""
    missing = []
    for section, names in REQUIRED.items():
        values = results.get(section)
        for name in names:
            if not _finite(values.get(name) if isinstance(values, dict) else None):
                missing.append(f"{section}.{name}")
    return missing


def missing_size_figures(results: Mapping[str, object], sizes: tuple[int, ...]) -> list[str]:
    """The `ingest.by_size` figures that are absent or not a finite number, for webhooks of `sizes`."""
    ingest = results.get("ingest")
    rows = ingest.get("by_size") if isinstance(ingest, dict) else None
    missing = []
    for size in sizes:
        row = rows.get(f"{size}_events") if isinstance(rows, dict) else None
        for name in SIZE_FIGURES:
            if not _finite(row.get(name) if isinstance(row, dict) else None):
                missing.append(f"ingest.by_size.{size}_events.{name}")
    return missing


@pytest.mark.e2e  # the local stack, for ~10 s
def test_quick_bench_writes_every_required_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert missing_figures(results) == []
    assert missing_size_figures(results, bench.QUICK_INGEST_SIZES) == []
    assert results["e2e"]["accepted"] > 0
    assert results["e2e"]["lost"] == 0  # the quick run loses nothing either
    assert results["ingest"]["safe_max_events"] % 100 == 0
    printed = capsys.readouterr().out
    assert "mapping / floor" in printed
    assert "safe_max_events" in printed


def test_the_key_check_fails_on_a_missing_or_non_numeric_figure() -> None:
    complete = {section: dict.fromkeys(names, 1.0) for section, names in REQUIRED.items()}
    assert missing_figures(complete) == []
    broken = {**complete, "e2e": {**complete["e2e"], "lost": None}, "cost": {}}
    assert missing_figures(broken) == [
        "e2e.lost",
        "cost.usd_per_million_batched",
        "cost.usd_per_million_unbatched",
    ]
    assert missing_figures({**complete, "mapping": {**complete["mapping"], "floor_ratio": math.nan}}) == [
        "mapping.floor_ratio"
    ]
    row = dict.fromkeys(SIZE_FIGURES, 1.0)
    sized = {"ingest": {"by_size": {"1_events": row, "10_events": {**row, "map_cpu_ms": math.inf}}}}
    assert missing_size_figures(sized, (1, 10, 40)) == [
        "ingest.by_size.10_events.map_cpu_ms",
        *(f"ingest.by_size.40_events.{name}" for name in SIZE_FIGURES),
    ]


def test_safe_max_events_follows_the_line_through_the_one_event_point() -> None:
    # 0.1 s + 1 ms per further event: 2.5 s holds 2,401 events, rounded down to 2,400.
    points = {1: 0.1, 100: 0.199, 1_000: 1.099, 4_000: 4.099}
    assert bench.per_event_s(points) == pytest.approx(0.001)
    assert bench.largest_within(points, 2.5) == 2_400
    assert bench.largest_within({1: 3.0, 100: 4.0}, 2.5) == 0
    assert bench.largest_within({1: 0.1, 100: 0.05}, 2.5) == bench.MAX_EVENTS_LIMIT


def test_deployed_estimate_stretches_cpu_but_not_io_wait() -> None:
    assert bench.deployed_s(cpu_s=1.0, wall_s=1.5, memory_mb=512) == pytest.approx(1769 / 512 + 0.5)
    assert bench.deployed_s(cpu_s=1.0, wall_s=1.5, memory_mb=3008) == pytest.approx(1.5)
    assert bench.deployed_s(cpu_s=1.2, wall_s=1.0, memory_mb=1769) == pytest.approx(1.2)  # threads
