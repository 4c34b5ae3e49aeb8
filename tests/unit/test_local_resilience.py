"""The local stack keeps going when things go wrong: dead function instances, failed polls, oversized or
stalled HTTP requests. Real processes, killed with os.kill; real sockets on 127.0.0.1."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tiktok_bridge_cli.local import (
    API_GATEWAY_MAX_BODY_BYTES,
    Invocation,
    LambdaWorker,
    SqsEventSource,
    ingest_server,
    register,
    serving,
    url_of,
)
from tiktok_bridge_cli.stack import FunctionSpec, Stack


def wait_for(condition: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def dead(pid: int) -> bool:
    """Gone or a zombie (killed, not yet reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(") ", 1)[1][0] in "ZX"


def kill(pid: int | None) -> None:
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: dead(pid), what=f"process {pid} to die")


# --- Lambda workers -----------------------------------------------------------------------------------------

HANDLER = """
import json, os, time
time.sleep(float(os.environ.get("IMPORT_S", "0")))  # a slow cold start
def lambda_handler(event, context):
    with open(os.environ["DELIVERED"], "a") as out:
        for record in event.get("Records", []):
            out.write(record["body"] + "\\n")
    return {"pid": os.getpid(), "batchItemFailures": []}
"""


def spec(tmp_path: Path) -> FunctionSpec:
    handler = tmp_path / "app.py"
    handler.write_text(HANDLER, encoding="utf-8")
    return FunctionSpec("SenderFunction", handler, "lambda_handler", 3, 128, {})


def worker(tmp_path: Path, logs: list[str], import_s: float = 0.0) -> LambdaWorker:
    env = {"PATH": "/usr/bin:/bin", "DELIVERED": str(tmp_path / "delivered"), "IMPORT_S": str(import_s)}
    return LambdaWorker(spec(tmp_path), env, logs.append)


def delivered(tmp_path: Path) -> list[Any]:
    out = tmp_path / "delivered"
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def test_an_instance_that_died_while_idle_is_replaced_and_the_event_still_runs(tmp_path: Path) -> None:
    logs: list[str] = []
    with worker(tmp_path, logs) as sender:
        sender.wait_ready()
        first = sender.invoke({}).result["pid"]
        kill(sender.pid)
        again = sender.invoke({"Records": [{"body": '{"n": 1}'}]})
        assert again.error is None and again.result["pid"] != first  # a new instance ran this very event
    assert delivered(tmp_path) == [{"n": 1}]
    assert any("exited while idle" in line for line in logs)


def test_an_instance_killed_during_its_cold_start_fails_that_invocation_only(tmp_path: Path) -> None:
    logs: list[str] = []
    sender = worker(tmp_path, logs, import_s=0.5)  # not started: the first invocation starts it cold
    answers: list[Invocation] = []
    first = threading.Thread(target=lambda: answers.append(sender.invoke({})))
    first.start()
    wait_for(lambda: sender.pid is not None, what="the cold start")
    kill(sender.pid)
    first.join(timeout=10)
    try:
        [answer] = answers
        assert (answer.error or "").startswith("Runtime.ExitError: the process exited during its cold start")
        assert sender.invoke({}).result["pid"] > 0  # the next invocation starts a new instance
    finally:
        sender.stop()


# --- the SQS event source keeps polling -------------------------------------------------------------------


def send(stack: Stack, n: int) -> None:
    stack.client("sqs").send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps({"n": n}))


@pytest.fixture
def polling(stack: Stack) -> Iterator[Callable[[Callable[[dict[str, Any]], Invocation]], threading.Thread]]:
    """Start `SqsEventSource.run` in a thread on the stack's queue (visibility timeout 0: failures return at
    once); stop and join it on the way out."""
    stack.client("sqs").set_queue_attributes(QueueUrl=stack.queue_url, Attributes={"VisibilityTimeout": "0"})
    stop, threads = threading.Event(), []

    def start(invoke: Callable[[dict[str, Any]], Invocation]) -> threading.Thread:
        source = SqsEventSource(stack, invoke, batch_size=10, batching_window_s=0)
        thread = threading.Thread(target=source.run, args=(stop,), daemon=True)
        thread.start()
        threads.append(thread)
        return thread

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)


def test_event_source_survives_a_sender_that_died_while_idle(
    tmp_path: Path, stack: Stack, polling: Any
) -> None:
    logs: list[str] = []
    with worker(tmp_path, logs) as sender:
        sender.wait_ready()
        poller = polling(sender.invoke)
        send(stack, 1)
        wait_for(lambda: delivered(tmp_path) == [{"n": 1}], what="the first event")
        kill(sender.pid)
        send(stack, 2)
        wait_for(lambda: len(delivered(tmp_path)) == 2 or not poller.is_alive(), what="the second event")
        assert poller.is_alive()
    assert delivered(tmp_path) == [{"n": 1}, {"n": 2}]


def test_event_source_survives_a_sender_killed_during_its_cold_start(
    tmp_path: Path, stack: Stack, polling: Any
) -> None:
    logs: list[str] = []
    sender = worker(tmp_path, logs, import_s=0.5)  # not started: the first batch starts it cold
    try:
        poller = polling(sender.invoke)
        send(stack, 1)
        wait_for(lambda: sender.pid is not None, what="the cold start")
        kill(sender.pid)
        wait_for(lambda: delivered(tmp_path) or not poller.is_alive(), timeout=10, what="the event")
        assert poller.is_alive()
        assert delivered(tmp_path) == [{"n": 1}]  # retried on a new instance once visible again
        assert any("cold start" in line for line in logs)
    finally:
        sender.stop()


def test_event_source_logs_a_failed_poll_and_keeps_polling(
    stack: Stack, polling: Any, caplog: pytest.LogCaptureFixture
) -> None:
    batches: list[list[str]] = []

    def flaky(event: dict[str, Any]) -> Invocation:
        batches.append([record["body"] for record in event["Records"]])
        if len(batches) == 1:
            raise RuntimeError("the integration blew up")
        return Invocation({"batchItemFailures": []})

    caplog.set_level(logging.WARNING)
    poller = polling(flaky)
    send(stack, 1)
    wait_for(lambda: len(batches) >= 2 or not poller.is_alive(), what="a second poll")
    assert poller.is_alive()
    assert batches[:2] == [['{"n": 1}'], ['{"n": 1}']]  # the failed batch was not deleted: it came back
    assert "RuntimeError: the integration blew up" in caplog.text


# --- the HTTP API in front of ingest ------------------------------------------------------------------------


class Ingest:
    """A stand-in ingest function: records the body sizes it is invoked with."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, event: dict[str, Any]) -> Invocation:
        self.sizes.append(len(event.get("body", "")))
        return Invocation({"statusCode": 200, "body": json.dumps({"size": self.sizes[-1]})})


@pytest.fixture
def ingest() -> Ingest:
    return Ingest()


@pytest.fixture
def api(ingest: Ingest) -> Iterator[str]:
    """The ingest HTTP API on a free port in front of `ingest`, with a 1 s idle timeout; its URL."""
    server = ingest_server(0, [("POST", "/v1/events")], ingest, idle_timeout_s=1)
    with serving(server):
        yield url_of(server) + "/v1/events"


TOO_LARGE = (413, {"message": "Request Entity Too Large"})


def test_a_body_over_10_mb_gets_api_gateways_413(api: str, ingest: Ingest) -> None:
    limit = API_GATEWAY_MAX_BODY_BYTES
    answer = httpx.post(api, content=b"x" * (limit + 1), timeout=10)
    assert (answer.status_code, answer.json()) == TOO_LARGE
    assert answer.headers["connection"] == "close"
    exactly = httpx.post(api, content=b"x" * limit, headers={"content-type": "text/plain"}, timeout=10)
    assert (exactly.status_code, exactly.json()) == (200, {"size": limit})
    assert ingest.sizes == [limit]


def test_a_chunked_body_over_10_mb_gets_api_gateways_413(api: str, ingest: Ingest) -> None:
    chunks = (b"x" * 1024 * 1024 for _ in range(11))  # an iterator: httpx sends it chunked
    answer = httpx.post(api, content=chunks, timeout=10)
    assert (answer.status_code, answer.json()) == TOO_LARGE
    assert ingest.sizes == []


def test_expect_100_continue_over_10_mb_is_refused_before_the_body_is_sent(api: str, ingest: Ingest) -> None:
    host, port = httpx.URL(api).host, httpx.URL(api).port
    assert port is not None
    with socket.create_connection((host, port), timeout=5) as client:
        client.sendall(
            f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Length: {API_GATEWAY_MAX_BODY_BYTES + 1}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")  # no "100 Continue": the client never sends the 10 MB
    assert json.loads(body) == TOO_LARGE[1]
    assert ingest.sizes == []


def test_idle_or_stalled_connections_are_closed_while_other_clients_are_served(
    api: str, ingest: Ingest
) -> None:
    host, port = httpx.URL(api).host, httpx.URL(api).port
    assert port is not None
    stalled = {
        "silent": b"",
        "half a request line": b"POST /v1/eve",
        "headers, no body": b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
        "part of the body": b'POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"type":',
        "idle after a request": b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    }
    clients = {name: socket.create_connection((host, port), timeout=5) for name in stalled}
    try:
        for name, data in stalled.items():
            clients[name].sendall(data)
        started = time.monotonic()
        served = httpx.post(api, content=b"{}", timeout=5)  # meanwhile, another client is served at once
        assert served.status_code == 200 and time.monotonic() - started < 0.9
        closed_after: dict[str, float] = {}
        for name, client in clients.items():
            received = b""
            while chunk := client.recv(65536):  # the server closes the connection: recv returns b""
                received += chunk
            closed_after[name] = time.monotonic() - started
            assert received.startswith(b"HTTP/1.1 200 ") if name == "idle after a request" else not received
        assert max(closed_after.values()) < 3, closed_after
    finally:
        for client in clients.values():
            client.close()
    assert len(ingest.sizes) == 2  # the two complete requests; the stalled bodies never reached the function


def test_an_integration_that_raises_gets_500_and_the_server_keeps_serving() -> None:
    calls: list[int] = []

    def broken(event: dict[str, Any]) -> Invocation:
        calls.append(1)
        if len(calls) == 1:
            raise BrokenPipeError("the function's process is gone")
        return Invocation({"statusCode": 202})

    server = ingest_server(0, [("POST", "/v1/events")], broken, idle_timeout_s=1)
    with serving(server), httpx.Client(timeout=5) as client:
        url = url_of(server) + "/v1/events"
        first = client.post(url, content=b"{}")
        assert (first.status_code, first.json()) == (500, {"message": "Internal Server Error"})
        assert client.post(url, content=b"{}").status_code == 202


# --- `serve --help` -----------------------------------------------------------------------------------------


def test_serve_help_says_stopping_it_loses_what_is_queued() -> None:
    subparsers = argparse.ArgumentParser(prog="tiktok-bridge").add_subparsers()
    register(subparsers)
    text = " ".join(subparsers.choices["serve"].format_help().split())
    assert "in moto's memory" in text
    assert "Stopping `serve` (Ctrl-C, SIGTERM, a crash) loses every event still queued" in text
