"""Fixtures of the ingest handler's tests (test_ingest, test_identity)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tiktok_bridge import ingest
from tiktok_bridge.stack import Stack

from events.make_apigw_events import DEMO_WEBHOOK_SECRET


@pytest.fixture(autouse=True)
def fresh_runtime() -> Iterator[None]:
    """A new ingest runtime (settings, config, clients) for every test."""
    ingest.runtime.cache_clear()
    yield
    ingest.runtime.cache_clear()


@pytest.fixture
def bridge(stack: Stack, bridge_secret: dict[str, str]) -> Stack:
    """The stack with the demo webhook secret (the one the fixtures and samples are signed with)."""
    stack.put_secret({**bridge_secret, "webhook_secret": DEMO_WEBHOOK_SECRET})
    return stack
