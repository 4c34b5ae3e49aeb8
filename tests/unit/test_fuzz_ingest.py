"""Fuzz the ingest handler: arbitrary bytes, JSON and Segment-shaped events, hostile headers (names, values,
case, duplicates, non-ASCII) and encodings (API Gateway's choice, forced base64, text, bad base64).

Whatever arrives, the handler answers JSON, never raises, never answers 5xx unless events could not be
enqueued, and a 200 means every accepted event is on the queue. `FUZZ_EXAMPLES` (or `make fuzz`) runs more.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tiktok_bridge import ingest
from tiktok_bridge.auth import signature
from tiktok_bridge_cli.local import http_api_event
from tiktok_bridge_cli.stack import Stack

from tests.conftest import lambda_context
from tests.unit.test_queue import drain

# A pytest run of both fuzz files stays within ~30 s; `FUZZ_EXAMPLES=5000 make fuzz` searches harder.
fuzz_settings = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SECRET = "fuzz-webhook-secret"
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30), st.just("a" * 70_000)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# Forwarded as they are, but with hostile values where the mapping looks.
mappable_events = st.fixed_dictionaries(
    {
        "type": st.just("track"),
        "event": st.sampled_from(["Order Completed", "Product Viewed", "Signed Up"]),
        "messageId": st.text(min_size=1, max_size=20),
        "properties": st.dictionaries(
            st.sampled_from(["email", "phone", "products", "value", "currency", "price", "address"]),
            json_values,
        ),
    },
    optional={"context": json_values, "userId": scalars, "timestamp": scalars},
)
segment_events = mappable_events | st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "page", "screen", "identify", "alias", "group"]) | scalars},
    optional={
        "event": st.sampled_from(["Order Completed", "Product Viewed", "Signed Up"]) | scalars,
        "messageId": st.text(max_size=20) | scalars,
        "timestamp": st.sampled_from(["2026-01-01T00:00:00Z", "1767225600", "not a date"]) | scalars,
        "userId": scalars,
        "anonymousId": scalars,
        "properties": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                name: json_values
                for name in ("email", "phone", "products", "value", "currency", "first_name", "address")
            },
        ),
        "context": json_values,
        "traits": json_values,
        "integrations": json_values,
    },
)
# Parser breakers (issue 11): nesting at any depth, numbers of any length and exponent, in a real event.
nested = st.integers(1, 120_000).map(lambda depth: b"[" * depth + b"{}" + b"]" * depth)
nested_in_event = st.tuples(mappable_events, st.integers(1, 5_000)).map(
    lambda pair: json.dumps(pair[0]).encode()[:-1] + b',"traits":' + b"[" * pair[1] + b"]" * pair[1] + b"}"
)
number_literals = st.builds(
    lambda sign, digits, fraction, exponent: sign + b"9" * digits + fraction + exponent,
    st.sampled_from([b"", b"-"]),
    st.integers(1, 6_000),
    st.sampled_from([b"", b".5"]),
    st.sampled_from([b"", b"e308", b"e400", b"e-400", b"E+9999"]),
)
long_numbers = st.tuples(
    mappable_events, number_literals, st.sampled_from(["price", "quantity", "value"])
).map(
    lambda t: (
        json.dumps(t[0]).encode()[:-1]
        + b',"properties":{"currency":"USD","products":[{"price":%s,"quantity":%s}],"%s":%s}}'
        % (t[1], t[1], t[2].encode(), t[1])
    )
)
bodies = st.one_of(
    st.binary(max_size=300),
    nested,
    nested_in_event,
    long_numbers,
    json_values.map(json.dumps),
    segment_events.map(json.dumps),
    st.lists(segment_events, max_size=6).map(json.dumps),
    st.lists(segment_events, max_size=6).map(lambda events: json.dumps({"batch": events})),
).map(lambda body: body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"))
header_names = st.sampled_from(
    [
        "X-Signature",
        "x-signature",
        "X-SIGNATURE",
        "Authorization",
        "Content-Type",
        "Cookie",
        "Host",
        "Ünïcode",
    ]
) | st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=16)
headers = st.lists(st.tuples(header_names, st.text(max_size=40)), max_size=6)
encodings = st.sampled_from(["api-gateway", "base64", "text", "bad-base64"])


def api_event(body: bytes, pairs: list[tuple[str, str]], encoding: str) -> dict[str, Any]:
    """The HTTP API event for a POST of `body`, as the local stack's API Gateway makes it, then re-encoded."""
    event = http_api_event(
        method="POST",
        target=ingest.ROUTE,
        headers=pairs,
        body=body,
        route_key=f"POST {ingest.ROUTE}",
        path_parameters={},
    )
    if encoding == "base64":
        event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
    elif encoding == "text":
        event["body"], event["isBase64Encoded"] = body.decode("utf-8", "replace"), False
    elif encoding == "bad-base64":
        event["body"], event["isBase64Encoded"] = "%%not base64%%" + body.hex()[:20], True
    return event


@pytest.fixture
def healthy(stack: Stack, bridge_secret: dict[str, str]) -> Stack:
    stack.put_secret({**bridge_secret, "webhook_secret": SECRET})
    ingest.runtime.cache_clear()
    return stack


@pytest.fixture(params=["queue up", "queue gone"])
def bridge(
    request: pytest.FixtureRequest, healthy: Stack, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    if request.param == "queue gone":
        monkeypatch.setenv("QUEUE_URL", healthy.queue_url + "-gone")
    yield healthy
    ingest.runtime.cache_clear()


@fuzz_settings
@given(
    body=bodies, pairs=headers, encoding=encodings, sign=st.sampled_from(["yes", "yes", "yes", "no", "twice"])
)
def test_any_request_gets_a_json_answer_and_loses_nothing(
    bridge: Stack, body: bytes, pairs: list[tuple[str, str]], encoding: str, sign: str
) -> None:
    signed = body.decode("utf-8", "replace").encode() if encoding == "text" else body
    if sign != "no":
        pairs = [*pairs, ("X-Signature", signature(SECRET, signed))]
    if sign == "twice":  # a repeated header reaches the handler comma-joined, and so fails authentication
        pairs = [*pairs, ("x-signature", signature(SECRET, signed))]
    response = ingest.lambda_handler(api_event(body, pairs, encoding), lambda_context("IngestFunction"))

    status = response["statusCode"]
    content_type = {k.lower(): v for k, v in response["headers"].items()}["content-type"]
    answer = json.loads(response["body"])
    event(f"status {status}, accepted {min(answer.get('accepted', 0), 1)}")
    queued = drain(boto3.client("sqs"), bridge.queue_url)
    enqueued, queued_data = {mapped.event_id for mapped in queued}, [mapped.data for mapped in queued]
    assert content_type == "application/json" and isinstance(answer, dict)
    if status == 200:
        assert isinstance(answer["rejected"], list) and answer["skipped"] >= 0
        assert len(enqueued) == answer["accepted"]
        for data in queued_data:  # strict JSON: TikTok refuses NaN and Infinity (40000)
            json.dumps(data, allow_nan=False)
    elif status == 503:  # only when events could not be enqueued, and they are named
        assert answer["not_enqueued"] and not enqueued & set(answer["not_enqueued"])
    else:
        assert status in {400, 401, 413} and answer["error"], answer
        assert not enqueued
    if sign != "yes" or encoding == "bad-base64":
        assert status in {400, 401}
