"""`make bench` cannot rot: its quick mode runs the whole script and writes every required figure."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tools import bench

REQUIRED = {
    "mapping": ("events_per_s", "floor_events_per_s", "floor_ratio"),
    "delivery": ("events_per_request",),
    "e2e": ("events_per_s", "accepted", "delivered", "lost"),
    "cold_start": ("boto3_ms", "ingest_ms", "sender_ms"),
    "cost": (
        "usd_per_million_batched",
        "usd_per_million_unbatched",
        *(f"usd_per_million_at_{size}" for size in bench.COST_SIZES),
        "monthly_fixed_usd_total",
    ),
    "identity": ("dynamodb_batch_get_per_webhook", "dynamodb_batch_write_per_webhook"),
    "logs": (
        "ingest_bytes_per_unbatched_invocation",
        "ingest_bytes_per_batched_invocation",
        "sender_bytes_per_invocation",
        "platform_bytes_per_invocation",
        "api_gateway_access_log_bytes_per_request",
    ),
    "metrics": ("series", "usd_per_month"),
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
    "body_bytes",
    "dynamodb_keys_read",
    "dynamodb_items_written",
    "dynamodb_rru",
    "dynamodb_wru",
)
# Every service line of `cost.by_service`, for each of COST_SIZES.
SERVICES = bench.COST_ROWS


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


def missing_cost_figures(results: Mapping[str, object]) -> list[str]:
    """The `cost.by_service` lines that are absent or not a finite number, for each of COST_SIZES."""
    cost = results.get("cost")
    by_service = cost.get("by_service") if isinstance(cost, dict) else None
    missing = []
    for size in bench.COST_SIZES:
        parts = by_service.get(f"{size}_per_webhook") if isinstance(by_service, dict) else None
        for service in SERVICES:
            if not _finite(parts.get(service) if isinstance(parts, dict) else None):
                missing.append(f"cost.by_service.{size}_per_webhook.{service}")
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
    assert missing_cost_figures(results) == []
    assert results["e2e"]["accepted"] > 0
    # Both functions log every invocation, Identify reads and writes, and the handlers emit metric series.
    assert results["logs"]["ingest_bytes_per_batched_invocation"] > 0
    assert results["logs"]["sender_bytes_per_invocation"] > 0
    assert results["metrics"]["series"] > 0
    assert results["ingest"]["by_size"]["10_events"]["dynamodb_wru"] > 0
    for parts in results["cost"]["by_service"].values():
        assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    assert results["e2e"]["lost"] == 0  # the quick run loses nothing either
    assert results["ingest"]["safe_max_events"] % 100 == 0
    printed = capsys.readouterr().out
    assert "mapping / floor" in printed
    assert "safe_max_events" in printed
    assert "USD per million events, by service" in printed


def test_the_key_check_fails_on_a_missing_or_non_numeric_figure() -> None:
    complete = {section: dict.fromkeys(names, 1.0) for section, names in REQUIRED.items()}
    assert missing_figures(complete) == []
    broken = {**complete, "e2e": {**complete["e2e"], "lost": None}, "cost": {}}
    assert missing_figures(broken) == ["e2e.lost", *(f"cost.{name}" for name in REQUIRED["cost"])]
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


def test_the_cost_check_fails_on_a_missing_service_or_size() -> None:
    parts = dict.fromkeys(SERVICES, 0.5)
    complete = {"cost": {"by_service": {f"{size}_per_webhook": parts for size in bench.COST_SIZES}}}
    assert missing_cost_figures(complete) == []
    broken = {"cost": {"by_service": {"1_per_webhook": {**parts, "cloudwatch_logs": math.nan}}}}
    missing = missing_cost_figures(broken)
    assert missing[0] == "cost.by_service.1_per_webhook.cloudwatch_logs"
    assert "cost.by_service.4000_per_webhook.dynamodb" in missing


def test_emf_series_are_one_per_name_and_dimension_set() -> None:
    blob = {
        "_aws": {
            "CloudWatchMetrics": [
                {
                    "Namespace": "TikTokBridge",
                    "Dimensions": [["service"], ["function_name", "service"]],
                    "Metrics": [{"Name": "EventsReceived"}, {"Name": "ColdStart"}],
                }
            ]
        },
        "service": "tiktok-bridge",
        "function_name": "IngestFunction",
    }
    series = bench.emf_series(blob)
    assert len(series) == 4
    assert (
        "TikTokBridge",
        "ColdStart",
        (("function_name", "IngestFunction"), ("service", "tiktok-bridge")),
    ) in series
    assert bench.emf_series({"message": "not a metric"}) == set()
    meter = bench.LogMeter()
    meter.count("ingest", json.dumps(blob))
    meter.count("sender", json.dumps(blob))  # the same series from the other function: not a new one
    meter.count("sender", '{"level":"INFO","message":"batch processed"}')
    assert len(meter.series) == 4
    assert meter.lines["sender"] == 2
    assert meter.bytes["ingest"] == len(json.dumps(blob)) + 1


def test_dynamodb_units_follow_item_sizes() -> None:
    item = {"pk": {"S": "user#" + "a" * 64}, "profile": {"S": "x" * 1000}, "expires_at": {"N": "1800000000"}}
    assert bench.dynamodb_item_bytes(item) == 2 + 69 + 7 + 1000 + 10 + 2
    meter = bench.DynamoDbMeter()
    meter.keys_read, meter.items = 4, [item, {"pk": {"S": "anon#1"}}]
    figures = meter.figures()
    assert figures["dynamodb_wru"] == 2 + 1  # 1,090 bytes take two write units, a small item one
    assert figures["dynamodb_rru"] == 2.0  # eventually consistent reads of <= 4 KB: 0.5 each


def test_cost_per_million_adds_logs_dynamodb_and_transfer() -> None:
    inputs = {
        "cpu": {
            "forwarded_per_event": 1.0,
            "sender_events_per_invocation": 1000,
            "ingest_memory_mb": 1769,
            "sender_memory_mb": 1769,
            "sender_ms_per_event": 0.0,
            "ingest_secrets_read": 2,
            "sender_secrets_read": 1,
            "ingest_ms_per_unbatched_webhook": 10.0,
            "ingest_ms_per_batched_webhook": 109.0,
            "events_per_batched_webhook": 100,
        },
        "logs": {
            "ingest_bytes_per_unbatched_invocation": 1_700.0,
            "ingest_bytes_per_batched_invocation": 1_700.0,
            "sender_bytes_per_invocation": 0.0,
        },
        "by_size": {"1_events": {"cpu_ms": 0.0, "body_bytes": 1_000, "dynamodb_rru": 1.0, "dynamodb_wru": 2}},
        "tiktok_bytes_per_event": 0.0,
        "access_log_bytes_per_request": 0,
    }
    one = bench.cost_per_million(inputs, 1)
    # A million invocations of 1,700 + 300 bytes each, plus a thousand sender invocations of 300.
    assert one["cloudwatch_logs"] == pytest.approx((1e6 * 2_000 + 1e3 * 300) / 2**30 * 0.50)
    assert one["dynamodb"] == pytest.approx(1.0 * 0.125 + 2 * 0.625)
    assert one["api_gateway"] == pytest.approx(1.0)
    assert one["total"] == pytest.approx(sum(v for k, v in one.items() if k != "total"))
    # 100 events per webhook, not measured: CPU on the pipeline's line, units and body scaled per event.
    hundred = bench.per_webhook(inputs, 100)
    assert hundred["source"] == "extrapolated"
    assert hundred["ingest_cpu_ms"] == pytest.approx(109.0)
    assert hundred["dynamodb_wru"] == pytest.approx(200)
    assert bench.cost_per_million(inputs, 100)["dynamodb"] == pytest.approx(one["dynamodb"])


def test_fixed_monthly_costs_and_access_logs_come_from_the_template() -> None:
    api: dict[str, Any] = {"Type": "AWS::Serverless::HttpApi", "Properties": {}}
    template: dict[str, Any] = {
        "Resources": {
            "A": {"Type": "AWS::CloudWatch::Alarm"},
            "B": {"Type": "AWS::CloudWatch::Alarm"},
            "S": {"Type": "AWS::SecretsManager::Secret"},
            "Api": api,
        }
    }
    assert bench.monthly_fixed(template, 10) == pytest.approx(
        {"custom_metrics": 3.0, "alarms": 0.2, "secrets": 0.4, "total": 3.6}
    )
    assert bench.access_log_format(template) is None
    api["Properties"] = {
        "AccessLogSettings": {"DestinationArn": "arn", "Format": "$context.requestId $context.status"}
    }
    form = bench.access_log_format(template)
    assert form == "$context.requestId $context.status"
    assert bench.access_log_bytes(form) == len("JKJaXmPLvHcESHA= 200") + 1
