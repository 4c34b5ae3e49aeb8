"""Fixtures of the ingest handler's tests (test_ingest, test_identity)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from tiktok_bridge import ingest
from tiktok_bridge_cli.stack import Stack

from events.make_apigw_events import DEMO_WEBHOOK_SECRET, DEMO_WEBHOOK_TOKEN


@pytest.fixture(autouse=True)
def fresh_runtime() -> Iterator[None]:
    """A new ingest runtime (settings, config, clients) for every test."""
    ingest.runtime.cache_clear()
    yield
    ingest.runtime.cache_clear()


@pytest.fixture
def bridge(stack: Stack, bridge_secret: dict[str, str]) -> Stack:
    """The stack with the demo webhook secret and token (those of the fixtures and samples), as deployed."""
    stack.put_secret(
        {**bridge_secret, "webhook_secret": DEMO_WEBHOOK_SECRET, "webhook_token": DEMO_WEBHOOK_TOKEN}
    )
    return stack


@pytest.fixture
def ingest_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What the ingest logger writes, at DEBUG and with the operator switch that logs incoming events."""
    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")
    handler = ingest.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    previous_level, stream = ingest.logger.log_level, io.StringIO()
    previous_stream = handler.setStream(stream)
    ingest.logger.setLevel("DEBUG")
    yield stream
    ingest.logger.setLevel(previous_level)
    handler.setStream(previous_stream)
