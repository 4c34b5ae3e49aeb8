"""Segment Webhooks (Actions) batches, signed by Node over the first element, through `serve`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import serve

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "segment"


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


TOKEN = "segment-bearer-token"


def post(url: str, fixture: dict[str, Any], token: str = TOKEN) -> httpx.Response:
    """POST a fixture's body exactly as Node serialised it, with Node's signature and the webhook token."""
    headers = {"x-signature": fixture["signature"], "authorization": f"Bearer {token}"}
    return httpx.post(url, content=fixture["body"].encode(), headers=headers)


def delivered_ids(emulator_url: str, expected: int, timeout_s: float = 60) -> list[str]:
    """Event ids the emulator accepted, once `expected` have arrived (or the timeout passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = httpx.get(f"{emulator_url}/_emulator/requests").json()
        ids = [event["event_id"] for request in record["requests"] for event in request["data"]]
        if len(ids) >= expected or time.monotonic() > deadline:
            return ids
        time.sleep(0.2)


def test_an_actions_batch_signed_over_its_first_element_is_delivered_whole_a_tampered_one_refused() -> None:
    good, tampered = fixture("batch-many"), fixture("batch-first-tampered")
    with serve("--webhook-secret", good["secret"], "--webhook-token", TOKEN) as served:
        ingest, emulator = served.urls["ingest"], served.urls["tiktok"]
        refused = post(ingest, tampered)
        assert refused.status_code == 401
        answer = post(ingest, good)
        sent = [event["messageId"] for event in json.loads(good["body"])]
        assert (answer.status_code, answer.json()["accepted"]) == (200, len(sent))
        assert sorted(delivered_ids(emulator, len(sent))) == sorted(sent)
