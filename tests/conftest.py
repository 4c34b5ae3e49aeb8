"""Shared fixtures: moto AWS, the template's resources in moto, and a running TikTok emulator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from aws_lambda_powertools.utilities import parameters
from moto import mock_aws
from tiktok_bridge_cli.local import LambdaContext
from tiktok_bridge_cli.stack import Stack, create_stack

if TYPE_CHECKING:
    from tiktok_bridge_cli.emulator import Emulator

REGION = "us-east-1"
TEST_SECRET: dict[str, str] = {
    "access_token": "test-token",
    "pixel_code": "PIXEL123",
    "event_set_id": "EVENTSET123",
    "webhook_secret": "test-webhook-secret",
    "webhook_token": "",
}
# Where the sender posts unless a test starts the emulator: refused at once, never the real TikTok.
UNREACHABLE_TIKTOK = "http://127.0.0.1:9"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's `mock_aws` in us-east-1 with fake credentials and empty Powertools parameter caches."""
    for name in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    with mock_aws():
        yield
    parameters.clear_caches()  # type: ignore[no-untyped-call]


@pytest.fixture
def bridge_secret() -> dict[str, str]:
    """The values the `stack` fixture puts in the secret (a copy; changing it changes nothing)."""
    return dict(TEST_SECRET)


@pytest.fixture
def stack(aws: None, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """template.yaml's queue, DLQ and secret in moto, the secret filled with TEST_SECRET, and the
    functions' environment (TIKTOK_SECRET_ID, WEBHOOK_SECRET_ID, QUEUE_URL, DLQ_URL, POWERTOOLS_*...) set as
    the handlers see it."""
    created = create_stack(region=REGION)
    created.put_secret(TEST_SECRET)
    for name, value in created.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TIKTOK_BASE_URL", UNREACHABLE_TIKTOK)
    return created


@pytest.fixture
def emulator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """A running TikTok emulator knowing TEST_SECRET's token and source ids; TIKTOK_BASE_URL points at it."""
    from tiktok_bridge_cli.emulator import Emulator

    if "stack" in request.fixturenames:
        request.getfixturevalue("stack")  # set up first, so TIKTOK_BASE_URL below wins
    source_ids = [TEST_SECRET["pixel_code"], TEST_SECRET["event_set_id"]]
    with Emulator(access_token=TEST_SECRET["access_token"], source_ids=source_ids) as running:
        monkeypatch.setenv("TIKTOK_BASE_URL", running.url)
        yield running


def lambda_context(function_name: str) -> LambdaContext:
    """The `context` Lambda passes a handler, as the local stack makes it (60 s left)."""
    return LambdaContext(
        function_name=function_name,
        memory_limit_in_mb=512,
        invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}",
        aws_request_id="test-request",
        deadline=time.monotonic() + 60,
    )
