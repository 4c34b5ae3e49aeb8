"""The local stack's parts: API Gateway v2 translation, the SQS event source on moto, Lambda workers."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from tiktok_bridge.config import load_config
from tiktok_bridge_cli.local import (
    Invocation,
    LambdaWorker,
    LocalStackError,
    SqsEventSource,
    failed_message_ids,
    http_api_event,
    http_api_response,
    match_route,
    with_test_event_code,
)
from tiktok_bridge_cli.stack import FunctionSpec, Stack

ROUTES = [("POST", "/v1/events"), ("GET", "/items/{id}"), ("ANY", "/files/{path+}")]


def event(body: bytes = b"", content_type: str = "application/json", **kwargs: Any) -> dict[str, Any]:
    headers = [("Content-Type", content_type), ("X-Signature", "abc"), ("Host", "127.0.0.1:3000")]
    defaults: dict[str, Any] = {
        "method": "POST",
        "target": "/v1/events?a=1&a=2&b=",
        "headers": headers + kwargs.pop("extra_headers", []),
        "body": body,
        "route_key": "POST /v1/events",
        "path_parameters": {},
        "now": 1_700_000_000.5,
    }
    return http_api_event(**{**defaults, **kwargs})


# --- API Gateway ---


def test_http_api_event_has_the_payload_2_0_shape() -> None:
    built = event(b'{"type":"track"}', extra_headers=[("x-signature", "def"), ("Cookie", "a=1; b=2")])
    assert built["version"] == "2.0"
    assert built["routeKey"] == built["requestContext"]["routeKey"] == "POST /v1/events"
    assert (built["rawPath"], built["rawQueryString"]) == ("/v1/events", "a=1&a=2&b=")
    assert built["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert built["headers"]["content-type"] == "application/json"
    assert built["headers"]["x-signature"] == "abc,def"  # lower-cased; repeated headers joined with commas
    assert "cookie" not in built["headers"] and built["cookies"] == ["a=1", "b=2"]
    assert built["requestContext"]["http"] == {
        "method": "POST",
        "path": "/v1/events",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "",
    }
    assert built["requestContext"]["timeEpoch"] == 1_700_000_000_500
    assert built["requestContext"]["time"] == "14/Nov/2023:22:13:20 +0000"
    assert (built["body"], built["isBase64Encoded"]) == ('{"type":"track"}', False)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\x00\xff binary", "application/octet-stream"),
        (b"\xff\xfe not utf-8", "application/json"),
        (b"{}", ""),
    ],
)
def test_binary_or_untyped_bodies_are_base64(body: bytes, content_type: str) -> None:
    built = event(body, content_type)
    assert built["isBase64Encoded"] is True
    assert base64.b64decode(built["body"]) == body


def test_empty_body_and_no_query_leave_the_keys_out() -> None:
    built = event(target="/v1/events")
    assert "body" not in built and "queryStringParameters" not in built and "cookies" not in built


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/events", ("POST /v1/events", {})),
        ("GET", "/v1/events", None),
        ("POST", "/v1/events/", None),
        ("GET", "/items/42", ("GET /items/{id}", {"id": "42"})),
        ("GET", "/items/42/more", None),
        ("DELETE", "/files/a/b.txt", ("ANY /files/{path+}", {"path": "a/b.txt"})),
    ],
)
def test_match_route(method: str, path: str, expected: Any) -> None:
    assert match_route(ROUTES, method, path) == expected


def test_default_route_matches_everything() -> None:
    assert match_route([("ANY", "$default")], "PUT", "/anything") == ("$default", {})


def test_structured_response_becomes_http() -> None:
    result = {"statusCode": 413, "headers": {"Content-Type": "application/json"}, "body": '{"error":"big"}'}
    assert http_api_response(Invocation(result)) == (
        413,
        [("content-type", "application/json")],
        b'{"error":"big"}',
    )
    binary = {"statusCode": 200, "body": base64.b64encode(b"\x00\x01").decode(), "isBase64Encoded": True}
    assert http_api_response(Invocation(binary))[2] == b"\x00\x01"
    cookies = {"statusCode": 204, "cookies": ["a=1"]}
    assert http_api_response(Invocation(cookies)) == (204, [("set-cookie", "a=1")], b"")


def test_unstructured_result_is_json_with_200() -> None:
    assert http_api_response(Invocation({"accepted": 1})) == (
        200,
        [("content-type", "application/json")],
        b'{"accepted": 1}',
    )


@pytest.mark.parametrize(
    "invocation",
    [
        Invocation(error="ValueError: boom"),
        Invocation({"statusCode": "200"}),
        Invocation({"statusCode": 99}),
        Invocation({"statusCode": 200, "body": "%%%", "isBase64Encoded": True}),
    ],
)
def test_failed_or_malformed_results_are_500(invocation: Invocation) -> None:
    status, _, body = http_api_response(invocation)
    assert (status, json.loads(body)) == (500, {"message": "Internal Server Error"})


# --- partial batch responses ---

IDS = ["m1", "m2", "m3"]


@pytest.mark.parametrize(
    ("invocation", "failed"),
    [
        (Invocation(None), set()),
        (Invocation({}), set()),
        (Invocation({"batchItemFailures": []}), set()),
        (Invocation({"batchItemFailures": None}), set()),
        (Invocation({"batchItemFailures": [{"itemIdentifier": "m2"}]}), {"m2"}),
        (Invocation(error="Sandbox.Timedout"), set(IDS)),
        (Invocation("not an object"), set(IDS)),
        (Invocation({"batchItemFailures": [{"itemIdentifier": "unknown"}]}), set(IDS)),
        (Invocation({"batchItemFailures": [{"itemIdentifier": ""}]}), set(IDS)),
        (Invocation({"batchItemFailures": [{"wrongKey": "m1"}]}), set(IDS)),
        (Invocation({"batchItemFailures": "m1"}), set(IDS)),
    ],
)
def test_failed_message_ids_follow_lambda_rules(invocation: Invocation, failed: set[str]) -> None:
    assert failed_message_ids(invocation, IDS, report_failures=True) == failed


def test_without_report_batch_item_failures_the_response_is_ignored() -> None:
    reported = Invocation({"batchItemFailures": [{"itemIdentifier": "m2"}]})
    assert failed_message_ids(reported, IDS, report_failures=False) == set()
    assert failed_message_ids(Invocation(error="boom"), IDS, report_failures=False) == set(IDS)


# --- the SQS event source, on moto ---


class Recorder:
    """A sender stand-in: records each batch and fails the records whose body says so."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    def __call__(self, event: dict[str, Any]) -> Invocation:
        records = event["Records"]
        self.batches.append(records)
        failed = [r["messageId"] for r in records if json.loads(r["body"]).get("fail")]
        return Invocation({"batchItemFailures": [{"itemIdentifier": i} for i in failed]})


def send(stack: Stack, *bodies: dict[str, Any]) -> None:
    sqs = stack.client("sqs")
    for body in bodies:
        attributes = {"event_source": {"DataType": "String", "StringValue": "web"}}
        sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(body), MessageAttributes=attributes)


def depth(stack: Stack, url: str) -> tuple[int, int]:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = stack.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return int(attributes[names[0]]), int(attributes[names[1]])


def test_event_source_builds_lambda_records_and_deletes_successes(stack: Stack) -> None:
    send(stack, {"n": 1}, {"n": 2, "fail": True}, {"n": 3})
    recorder = Recorder()
    source = SqsEventSource(stack, recorder, batch_size=10, batching_window_s=0)
    assert source.poll_once(wait_s=0) == 3
    [records] = recorder.batches
    record = records[0]
    assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"] == stack.queue_arn
    assert record["awsRegion"] == stack.region and record["md5OfBody"]
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"]["event_source"] == {
        "stringValue": "web",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }
    assert depth(stack, stack.queue_url) == (0, 1)  # only the failed record stays, in flight


def test_event_source_respects_batch_size_across_receives(stack: Stack) -> None:
    send(stack, *({"n": n} for n in range(25)))
    recorder = Recorder()
    source = SqsEventSource(stack, recorder, batch_size=12, batching_window_s=1)
    assert source.poll_once(wait_s=0) == 12  # gathered from several ReceiveMessage calls (10 at most each)
    assert source.poll_once(wait_s=0) == 12
    assert source.poll_once(wait_s=0) == 1
    assert [len(b) for b in recorder.batches] == [12, 12, 1]
    assert depth(stack, stack.queue_url) == (0, 0)


def test_failed_invocation_keeps_the_whole_batch_and_redrive_moves_it_to_the_dlq(stack: Stack) -> None:
    sqs = stack.client("sqs")
    sqs.set_queue_attributes(QueueUrl=stack.queue_url, Attributes={"VisibilityTimeout": "0"})
    send(stack, {"n": 1}, {"n": 2})
    calls: list[int] = []

    def crash(event: dict[str, Any]) -> Invocation:
        calls.append(len(event["Records"]))
        return Invocation(error="RuntimeError: boom")

    source = SqsEventSource(stack, crash, batch_size=10, batching_window_s=0)
    while source.poll_once(wait_s=0):
        pass
    assert len(calls) == stack.max_receive_count  # received maxReceiveCount times, then moved on receive
    assert depth(stack, stack.queue_url) == (0, 0)
    assert depth(stack, stack.dlq_url) == (2, 0)


def test_empty_queue_invokes_nothing(stack: Stack) -> None:
    recorder = Recorder()
    assert SqsEventSource(stack, recorder, batching_window_s=0).poll_once(wait_s=0) == 0
    assert recorder.batches == []


# --- Lambda workers ---


def worker_spec(tmp_path: Path, code: str, timeout_s: int = 3) -> FunctionSpec:
    handler = tmp_path / "app.py"
    handler.write_text(code, encoding="utf-8")
    return FunctionSpec("TestFunction", handler, "lambda_handler", timeout_s, 128, {"GREETING": "hi"})


HANDLER = """
import os, sys, time
def lambda_handler(event, context):
    print("log line", event.get("n"))
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("raise"):
        raise ValueError("bad event")
    if event.get("unserialisable"):
        return {1, 2}
    return {"greeting": os.environ["GREETING"], "function": context.function_name,
            "remaining_ok": 0 < context.get_remaining_time_in_millis() <= 3000, "pid": os.getpid()}
"""


def test_worker_runs_the_handler_in_its_own_process_with_its_environment(tmp_path: Path) -> None:
    logs: list[str] = []
    env = {"PATH": "/usr/bin:/bin", "GREETING": "ignored", "AWS_LAMBDA_FUNCTION_NAME": "TestFunction"}
    with LambdaWorker(worker_spec(tmp_path, HANDLER), env, logs.append) as worker:
        worker.wait_ready()
        first = worker.invoke({"n": 1})
        second = worker.invoke({"n": 2})
    assert first.error is None and first.result["greeting"] == "ignored"  # the given environment, verbatim
    assert first.result["function"] == "TestFunction" and first.result["remaining_ok"]
    assert first.result["pid"] == second.result["pid"]  # warm: the same instance
    assert "log line 1" in logs and "log line 2" in logs  # prints go to the log, not the protocol


def test_worker_reports_errors_and_survives_them(tmp_path: Path) -> None:
    logs: list[str] = []
    with LambdaWorker(worker_spec(tmp_path, HANDLER), {"GREETING": "x"}, logs.append) as worker:
        worker.wait_ready()
        assert worker.invoke({"raise": True}).error == "ValueError: bad event"
        assert (worker.invoke({"unserialisable": True}).error or "").startswith("Runtime.MarshalError")
        assert worker.invoke({"n": 3}).result["greeting"] == "x"
    assert any("Traceback" in line for line in logs)


def test_worker_timeout_kills_the_instance_and_the_next_call_starts_cold(tmp_path: Path) -> None:
    with LambdaWorker(worker_spec(tmp_path, HANDLER, timeout_s=1), {"GREETING": "x"}, print) as worker:
        worker.wait_ready()
        before = worker.invoke({}).result["pid"]
        assert worker.invoke({"sleep": 30}).error == "Sandbox.Timedout: Task timed out after 1 seconds"
        after = worker.invoke({}).result["pid"]
    assert before != after


def test_worker_that_cannot_import_fails_clearly(tmp_path: Path) -> None:
    spec = worker_spec(tmp_path, "import not_a_module_anywhere\n")
    worker = LambdaWorker(spec, {}, lambda line: None)
    worker.start()
    with pytest.raises(LocalStackError, match=r"TestFunction .* cannot start: .*not_a_module_anywhere"):
        worker.wait_ready()


# --- config for a real TikTok test code ---


def test_test_event_code_goes_into_the_mapping_config() -> None:
    assert with_test_event_code("", "") == ""
    config = load_config(with_test_event_code("", "TEST42"))
    assert config.web.test_event_code == "TEST42" and config.offline.test_event_code is None
    both = load_config(with_test_event_code("offline:\n  enabled: true\nlegacy_event_names: true\n", "T1"))
    assert (both.web.test_event_code, both.offline.test_event_code, both.offline.enabled) == (
        "T1",
        "T1",
        True,
    )
    assert both.legacy_event_names
    with pytest.raises(LocalStackError, match="must be an object"):
        with_test_event_code("[1]", "T1")
