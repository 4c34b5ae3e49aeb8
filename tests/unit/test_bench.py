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
}


def missing_figures(results: Mapping[str, object]) -> list[str]:
    """The required keys that are absent or not a finite number."""
    missing = []
    for section, names in REQUIRED.items():
        values = results.get(section)
        for name in names:
            value = values.get(name) if isinstance(values, dict) else None
            number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not number:
                missing.append(f"{section}.{name}")
    return missing


@pytest.mark.e2e  # the local stack, for ~10 s
def test_quick_bench_writes_every_required_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert missing_figures(results) == []
    assert results["e2e"]["accepted"] > 0
    assert results["e2e"]["lost"] == 0  # the quick run loses nothing either
    assert "mapping / floor" in capsys.readouterr().out


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
