"""`tiktok-bridge preview`, run as a real subprocess of the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiktok_bridge.config import BridgeConfig
from tiktok_bridge.mapping import map_events
from tiktok_bridge.model import request_bodies
from tiktok_bridge.segment import parse_body

ROOT = Path(__file__).resolve().parents[2]
EVENTS_DIR = ROOT / "events" / "segment"
CLI = Path(sys.executable).with_name("tiktok-bridge")
PII_EMAIL = "Zelda.Quixote.9931@PII-Example.org"
PII_NAME = "Zeldabeth"


def preview(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "preview", *map(str, args)],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, name: str, content: Any) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def without_times(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bodies without event_time, which is "now" for events that carry no timestamp."""
    for body in bodies:
        for data in body["data"]:
            data.pop("event_time")
    return bodies


@pytest.mark.parametrize("sample", ["batch.json", "order-completed.json", "identify.json"])
def test_every_sample_previews_exactly_the_request_bodies(sample: str) -> None:
    completed = preview("--destination", "all", EVENTS_DIR / sample)
    assert completed.returncode == 0, completed.stderr
    result = map_events(
        parse_body((EVENTS_DIR / sample).read_bytes()), BridgeConfig().with_destinations(("web", "offline"))
    )
    expected = request_bodies(result.forwarded, {"pixel_code": "PIXEL_CODE", "event_set_id": "EVENT_SET_ID"})
    assert without_times(json.loads(completed.stdout)) == without_times(expected)
    assert completed.stderr.count("skipped ") == len(result.skipped)


def test_stdin_source_ids_and_skipped_events_on_stderr() -> None:
    batch = (EVENTS_DIR / "batch.json").read_bytes()
    completed = preview("--pixel-code", "PX123", "-", stdin=batch)
    assert completed.returncode == 0, completed.stderr
    bodies = json.loads(completed.stdout)
    assert [(b["event_source"], b["event_source_id"]) for b in bodies] == [("web", "PX123")]
    assert "skipped api-alias-7c1e9a: alias events are not forwarded" in completed.stderr.splitlines()


def test_config_file_changes_the_mapping(tmp_path: Path) -> None:
    config = write(
        tmp_path, "mapping.yaml", "legacy_event_names: true\nweb: {enabled: true, test_event_code: T1}\n"
    )
    completed = preview("--config", config, EVENTS_DIR / "order-completed.json")
    assert completed.returncode == 0, completed.stderr
    [body] = json.loads(completed.stdout)
    assert body["test_event_code"] == "T1"
    assert body["data"][0]["event"] == "CompletePayment"


def test_rejected_events_exit_1(tmp_path: Path) -> None:
    anonymous = {"type": "track", "event": "Order Completed", "messageId": "anon-1", "properties": {"x": 1}}
    events = write(tmp_path, "events.json", [anonymous, {"type": "track", "event": "Order Completed"}])
    completed = preview("--destination", "offline", "--event-set-id", "ES9", events)
    assert completed.returncode == 1
    assert json.loads(completed.stdout) == []
    assert completed.stderr.splitlines() == [
        "rejected anon-1: offline event needs a valid email, phone or external_id",
        "rejected (no messageId): invalid event: messageId: Field required",
    ]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda tmp: ["-"], "body is not valid JSON"),
        (lambda tmp: [tmp / "missing.json"], "cannot read"),
        (lambda tmp: [write(tmp, "scalar.json", "42")], "body must be a JSON object"),
        (
            lambda tmp: ["--config", write(tmp, "c.yaml", "triggers: {page: {tiktok_event: 'a b'}}"), "-"],
            "triggers.page.tiktok_event",
        ),
        (
            lambda tmp: ["--config", write(tmp, "c.yaml", f"unknown: {PII_EMAIL}"), "-"],
            "unknown: Extra inputs",
        ),
        (lambda tmp: ["--config", tmp / "missing.yaml", "-"], "cannot read config file"),
    ],
)
def test_unusable_input_or_config_exits_2_with_one_line(tmp_path: Path, setup: Any, message: str) -> None:
    completed = preview(*setup(tmp_path), stdin=f'{{"email": "{PII_EMAIL}"'.encode())
    assert completed.returncode == 2
    assert completed.stdout == ""
    [line] = completed.stderr.splitlines()
    assert line.startswith("tiktok-bridge preview: error: ")
    assert message in line
    assert PII_EMAIL not in line


def test_bad_arguments_exit_2() -> None:
    assert preview("--destination", "tv", "-", stdin=b"[]").returncode == 2


def test_explain_names_sources_never_values(tmp_path: Path) -> None:
    event = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-explain",
        "userId": "customer-zq-9931",
        "properties": {"email": PII_EMAIL, "first_name": PII_NAME, "revenue": 10},
        "context": {"traits": {"phone": "+1 415 555 0199"}},
    }
    completed = preview("--explain", "--destination", "all", write(tmp_path, "e.json", event))
    assert completed.returncode == 0, completed.stderr
    [line] = completed.stderr.splitlines()
    explanation = json.loads(line)
    assert explanation["messageId"] == "m-explain"
    assert explanation["forwarded"] == [
        {"destination": "web", "event": "Purchase"},
        {"destination": "offline", "event": "Purchase"},
    ]
    assert explanation["sources"]["user.email"] == "properties.email"
    assert explanation["sources"]["user.phone"] == "context.traits.phone"
    assert explanation["sources"]["properties.value"] == "properties.revenue"
    assert explanation["sources"]["event_time"] == "now"
    for value in (PII_EMAIL, PII_EMAIL.lower(), PII_NAME, "customer-zq-9931", "4155550199"):
        assert value not in completed.stderr
        assert value not in completed.stdout


def test_help_documents_exit_codes_and_explain() -> None:
    completed = subprocess.run([str(CLI), "preview", "--help"], capture_output=True, text=True, check=True)
    assert "0 nothing rejected, 1 some event rejected, 2 unusable input or config" in completed.stdout
    assert "--explain" in completed.stdout


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 5_000 + b"]" * 5_000, "deeper than the JSON parser allows"),
        (b'{"type":"track","messageId":"m","properties":{"value":' + b"9" * 5_000 + b"}}", "too many digits"),
    ],
)
def test_hostile_bodies_exit_2_with_a_message_not_a_traceback(body: bytes, message: str) -> None:
    completed = preview(stdin=body)
    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr


def test_overflowing_sums_are_previewed_as_strict_json() -> None:
    event = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-1",
        "properties": {
            "products": [{"product_id": "a", "price": 1e300, "quantity": 1e300}],
            "currency": "USD",
        },
    }
    completed = preview(stdin=json.dumps(event).encode())
    assert completed.returncode == 0, completed.stderr
    json.loads(completed.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the preview"))
