"""Fuzz the sender with whatever TikTok might answer: any HTTP status, TikTok envelopes with any code and
wrongly typed fields, arbitrary JSON, garbage bytes, oversized bodies, hung-up and truncated answers, served
over real HTTP on 127.0.0.1 in the order hypothesis picks (the last answer repeats).

No record is ever lost: each one is reported as a batch item failure (so SQS keeps it), was in a request that
TikTok answered with success, or is in the DLQ with a reason, and never both retried and dead-lettered.
Records come with any receive count: one on its last try is never left to SQS's redrive (which gives no
reason).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiktok_bridge import sender, tiktok
from tiktok_bridge.model import Route
from tiktok_bridge.settings import Settings
from tiktok_bridge_cli.stack import Stack

from tests.conftest import lambda_context
from tests.unit.test_fuzz_ingest import fuzz_settings, json_values
from tests.unit.test_sender import clean_metrics, mapped, sqs_event  # noqa: F401 (clean_metrics: autouse)


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b'{"code":0,"message":"OK"}'
    hang_up: bool = False  # close the connection without answering
    truncated: bool = False  # promise more bytes than are sent
    huge: bool = False  # a success, padded beyond what a TikTok answer can be

    def payload(self) -> bytes:
        return b'{"code":0,"message":"%s"}' % (b"x" * tiktok.MAX_RESPONSE_BYTES) if self.huge else self.body

    def delivers(self) -> bool:
        """TikTok's success (SPEC §4.1): a 2xx whose JSON `code` is 0, received whole (20001 is not: some
        events were not taken)."""
        if self.hang_up or self.truncated or self.huge or not 200 <= self.status < 300:
            return False
        try:
            code = json.loads(self.body).get("code")
        except (ValueError, AttributeError):
            return False
        return type(code) is int and code == 0


class ScriptedTikTok(ThreadingHTTPServer):
    """Answers the n-th request with `script[n]` (the last one repeats); keeps what each request carried."""

    script: list[Answer]
    seen: list[tuple[list[str], Answer]]

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.daemon_threads = True
        self.start([Answer()])

    def start(self, script: list[Answer]) -> None:
        self.script, self.seen, self._lock = list(script), [], threading.Lock()

    def next_answer(self, body: bytes) -> Answer:
        with self._lock:
            answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            self.seen.append(([event["event_id"] for event in json.loads(body)["data"]], answer))
            return answer


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedTikTok
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        answer = self.server.next_answer(self.rfile.read(int(self.headers["Content-Length"])))
        if answer.hang_up:
            self.close_connection = True
            return
        self.send_response(answer.status)
        payload = answer.payload()
        self.send_header("Content-Length", str(len(payload) + (100 if answer.truncated else 0)))
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = answer.truncated

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


codes = st.sampled_from([0, 20001, 40100, 40001, 40002, 40104, 40105, 40202, 41000, 50000, 51234, 60001]) | (
    st.integers() | st.none() | st.booleans() | st.floats() | st.text(max_size=8) | st.just("0")
)
envelopes = st.fixed_dictionaries(
    {"code": codes},
    optional={"message": json_values, "request_id": json_values, "data": json_values},
).map(lambda envelope: json.dumps(envelope).encode())
answers = st.builds(
    Answer,
    status=st.sampled_from([200, 200, 200, 204, 302, 400, 401, 404, 429, 500, 502, 503])
    | st.integers(200, 599),
    body=st.one_of(
        envelopes,
        json_values.map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=64),
    ),
    hang_up=st.sampled_from([False, False, False, False, True]),
    truncated=st.sampled_from([False, False, False, False, True]),
    huge=st.sampled_from([False, False, False, False, True]),
)


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedTikTok]:
    server = ScriptedTikTok()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def bridge(stack: Stack, scripted: ScriptedTikTok, monkeypatch: pytest.MonkeyPatch) -> Stack:
    host, port = scripted.server_address[:2]
    monkeypatch.setenv("TIKTOK_BASE_URL", f"http://{host!s}:{port}")
    monkeypatch.setenv("TIKTOK_TIMEOUT_S", "1")
    return stack


def take_dead_letters(stack: Stack) -> dict[str, str]:
    """The DLQ's messages (body: `dlq_reason`), leaving it empty."""
    sqs, letters = boto3.client("sqs"), {}
    while messages := sqs.receive_message(
        QueueUrl=stack.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["dlq_reason"]
    ).get("Messages"):
        for message in messages:
            reason = message.get("MessageAttributes", {}).get("dlq_reason")
            letters[message["Body"]] = reason.get("StringValue", "") if reason else ""
            sqs.delete_message(QueueUrl=stack.dlq_url, ReceiptHandle=message["ReceiptHandle"])
    return letters


def deliver(
    stack: Stack,
    scripted: ScriptedTikTok,
    script: list[Answer],
    routes: list[Route],
    corrupt: int,
    receives: list[int] | None = None,
) -> None:
    """Run the sender on one record per route (the `corrupt`-th body broken), received as often as `receives`
    says in turn, and check that none is lost."""
    counts = receives or [1]
    event = sqs_event(
        [mapped(n, route) for n, route in enumerate(routes)],
        [counts[n % len(counts)] for n in range(len(routes))],
    )
    if corrupt < len(routes):
        event["Records"][corrupt]["body"] = "not json"
    scripted.start(script)
    response = sender.lambda_handler(event, lambda_context("SenderFunction"))  # never raises: failures listed
    retried = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
    delivered = {
        event_id for event_ids, answer in scripted.seen if answer.delivers() for event_id in event_ids
    }
    dead = take_dead_letters(stack)
    last_try = sender.Delivery(Settings.from_env()).last_try
    for record in event["Records"]:
        body = record["body"]
        event_id = json.loads(body)["event_id"] if body != "not json" else None
        in_dlq = body in dead
        assert not (in_dlq and record["messageId"] in retried), "both retried and dead-lettered"
        assert in_dlq or record["messageId"] in retried or event_id in delivered, (record, scripted.seen)
        assert not in_dlq or dead[body], "a dead letter without a reason"
        if int(record["attributes"]["ApproximateReceiveCount"]) >= last_try:
            assert record["messageId"] not in retried, "left to SQS's reasonless redrive on its last try"


@fuzz_settings
@given(
    script=st.lists(answers, min_size=1, max_size=6),
    routes=st.lists(st.sampled_from([Route("web"), Route("offline")]), min_size=1, max_size=6),
    corrupt=st.integers(0, 10),
    receives=st.lists(st.integers(1, 5), min_size=1, max_size=3),
)
def test_no_record_is_lost_whatever_tiktok_answers(
    bridge: Stack,
    scripted: ScriptedTikTok,
    script: list[Answer],
    routes: list[Route],
    corrupt: int,
    receives: list[int],
) -> None:
    deliver(bridge, scripted, script, routes, corrupt, receives)


def test_the_check_catches_a_sender_that_takes_an_error_for_a_success(
    bridge: Stack, scripted: ScriptedTikTok, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiktok, "action_for", lambda code: tiktok.Action.DELIVERED)
    with pytest.raises(AssertionError):
        deliver(bridge, scripted, [Answer(200, b'{"code":50000,"message":"busy"}')], [Route("web")], 99)
