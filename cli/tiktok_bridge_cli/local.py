"""The local stack behind `tiktok-bridge serve`: the deployed flow on one machine, on 127.0.0.1 only.

moto (SQS, Secrets Manager) serves the template's queue, DLQ and secret; the ingest handler answers HTTP as
API Gateway's HTTP API would (payload format 2.0); an SQS poller feeds the sender handler as Lambda's event
source mapping would (the template's batch size and window, partial batch responses, visibility timeout,
redrive to the DLQ); TikTok is the emulator unless `--tiktok-url` is given. Each function runs in its own
child process, like a warm Lambda instance: the template's environment, one invocation at a time, killed on
timeout.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import secrets
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

import boto3
import yaml
from tiktok_bridge.auth import signature
from tiktok_bridge.config import BridgeConfig, ConfigError, load_config

from tiktok_bridge_cli.emulator import Emulator
from tiktok_bridge_cli.stack import (
    DEFAULT_TEMPLATE,
    FunctionSpec,
    Stack,
    TemplateError,
    create_stack,
    delete_stack,
)

REGION = "us-east-1"
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
# What the emulator accepts; also written to the secret unless real TikTok credentials are given.
EMULATOR_SECRET = {"access_token": "local-token", "pixel_code": "PIXEL123", "event_set_id": "EVENTSET123"}
API_GATEWAY_MAX_BODY_BYTES = 10 * 1024 * 1024  # HTTP API's request limit
API_GATEWAY_IDLE_TIMEOUT_S = 30.0  # HTTP API closes a connection idle this long
LINGER_S = 5.0  # after refusing a request, how long to drain what the client still sends
SQS_RECEIVE_MAX = 10
EVENT_SOURCE_MAX_PAYLOAD_BYTES = 5 * 1024 * 1024  # stop gathering below Lambda's 6 MB invocation limit
POLL_SLICE_S = 1  # long-poll in short slices so that stopping is quick
POLL_ERROR_BACKOFF_S = 0.5  # the event source's first pause after a failed poll
WORKER_START_TIMEOUT_S = 60.0
_TEXT_TYPE = re.compile(r"^(text/|application/([\w.+-]*\+)?(json|xml|javascript|x-www-form-urlencoded)\b)")

S = TypeVar("S", bound=socketserver.BaseServer)


class LocalStackError(RuntimeError):
    """The local stack cannot start: a port is taken, a handler does not import, a credential is missing..."""


# --- loopback servers -------------------------------------------------------------------------------------


def listen(make: Callable[[], S], what: str, port: int) -> S:
    """`make()` a server bound to 127.0.0.1:`port`, turning 'address in use' into a clear error."""
    try:
        return make()
    except OSError as exc:
        raise LocalStackError(
            f"cannot listen on 127.0.0.1:{port} for {what}: {exc.strerror or exc}"
        ) from None


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    """Serve in a background thread until the block ends, then close the socket."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def moto_server(port: int, middleware: Callable[[Any], Any] | None = None) -> socketserver.BaseServer:
    """moto's server app (every service, in this process) bound to 127.0.0.1:`port`.

    `middleware` wraps the WSGI app, e.g. to inject AWS faults (tools/chaos.py).
    """
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log per AWS call
    _fast_sqs_clock()
    app = DomainDispatcherApplication(create_backend_app)
    server: socketserver.BaseServer = make_server(
        "127.0.0.1",
        port,
        middleware(app) if middleware is not None else app,
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    return server


def _fast_sqs_clock() -> None:
    """Give moto's SQS a float clock. moto reads the time for every stored message on every send and receive
    (to count visible and delayed ones) through datetime arithmetic (~4 us a call), so with a few hundred
    messages queued a 100-event ingest request took 0.55 s; with `time.time()` (same values) 0.15 s."""
    import moto.sqs.models
    from moto.core.utils import unix_time

    def unix_time_millis(dt: datetime | None = None) -> float:
        return (time.time() if dt is None else unix_time(dt)) * 1000.0

    moto.sqs.models.unix_time_millis = unix_time_millis  # type: ignore[attr-defined]


def url_of(server: socketserver.BaseServer) -> str:
    host, port = cast(tuple[str, int], server.server_address)[:2]
    return f"http://{host}:{port}"


# --- Lambda functions in child processes --------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """What one invocation returned, or `error` ("Type: message") when it raised, crashed or timed out."""

    result: Any = None
    error: str | None = None


Invoke = Callable[[dict[str, Any]], Invocation]


class LambdaWorker:
    """A warm instance of one function: a child process running its handler, one invocation at a time.

    The child gets the function's environment only; its stdout and stderr (the function's logs) are passed to
    `log` line by line. An invocation that outlives the function's Timeout kills the instance; the next one
    starts cold, as on Lambda. An instance that died while idle is replaced before an event reaches it; one
    that dies during an invocation or its cold start fails that invocation only. `invoke` never raises for
    a lost instance.
    """

    def __init__(
        self, spec: FunctionSpec, environment: Mapping[str, str], log: Callable[[str], None]
    ) -> None:
        self.spec, self._environment, self._log = spec, dict(environment), log
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._log_thread: threading.Thread | None = None

    def __enter__(self) -> LambdaWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The running instance's process id; None before it starts or after it stops."""
        return self._process.pid if self._process else None

    @property
    def busy(self) -> bool:
        """Whether an invocation (or the cold start before it) is in progress."""
        return self._lock.locked()

    def start(self) -> None:
        """Start the child without waiting for its imports (see `wait_ready`)."""
        command = [
            sys.executable,
            "-m",
            "tiktok_bridge_cli.local",
            str(self.spec.handler_file),
            self.spec.handler_name,
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._environment,
        )
        self._log_thread = threading.Thread(
            target=self._forward_logs, args=(self._process.stderr,), daemon=True
        )
        self._log_thread.start()

    def wait_ready(self) -> None:
        """Block until the handler is imported; raise LocalStackError if it cannot be."""
        error = self._await_ready()
        if error is not None:
            raise LocalStackError(f"{self.spec.logical_id} ({self.spec.handler_file}) cannot start: {error}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin:
            with suppress(OSError):  # a write the dead child never read may still be buffered
                process.stdin.close()  # the child's loop ends on EOF
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
        if self._log_thread:
            self._log_thread.join()

    def invoke(self, event: dict[str, Any]) -> Invocation:
        """Run the handler on `event` (JSON round-tripped, as Lambda does) and return its result or error.

        Never raises for the instance's sake: an instance that died while idle is replaced before the event is
        sent (Lambda never hands an event to a dead instance), and one that dies during its cold start fails
        this invocation only; the next one starts a new instance.
        """
        with self._lock:
            if self._process is not None and self._process.poll() is not None:
                self._log(
                    f"{self.spec.logical_id}: the instance exited while idle ({self._process.returncode}); "
                    "starting a new instance"
                )
                self.stop()
            if self._process is None:
                self.start()
                error = self._await_ready()
                if error is not None:
                    self._log(f"{self.spec.logical_id}: {error}; the next invocation starts a new instance")
                    return Invocation(error=error)
            request = {"event": event, "request_id": str(uuid.uuid4()), "timeout_s": self.spec.timeout_s}
            assert self._process is not None and self._process.stdin is not None
            try:
                self._process.stdin.write(json.dumps(request).encode() + b"\n")
                self._process.stdin.flush()
            except OSError:
                return self._restart("Runtime.ExitError: the function's process exited")
            reply = self._read_reply(self.spec.timeout_s + 1.0)
            if reply is None and self._process.poll() is not None:
                return self._restart(
                    f"Runtime.ExitError: the function's process exited ({self._process.returncode})"
                )
            if reply is None:
                return self._restart(f"Sandbox.Timedout: Task timed out after {self.spec.timeout_s} seconds")
            return Invocation(result=reply.get("result"), error=reply.get("error"))

    def _await_ready(self) -> str | None:
        """Wait for the started child's imports; on failure stop it and return the error ("Type: message")."""
        assert self._process is not None
        reply = self._read_reply(WORKER_START_TIMEOUT_S)
        if reply is not None and "ready" in reply:
            return None
        if reply is not None and reply.get("error"):
            error = str(reply["error"])
        elif self._process.poll() is not None:
            error = (
                f"Runtime.ExitError: the process exited during its cold start ({self._process.returncode})"
            )
        else:
            error = f"Sandbox.Timedout: the handler did not import within {WORKER_START_TIMEOUT_S:g} seconds"
        self._process.kill()
        self.stop()
        return error

    def _restart(self, error: str) -> Invocation:
        self._log(f"{self.spec.logical_id}: {error}; the next invocation starts a new instance")
        if self._process:
            self._process.kill()
        self.stop()
        return Invocation(error=error)

    def _read_reply(self, timeout_s: float) -> dict[str, Any] | None:
        """The child's next protocol line, or None when it exits (then it is reaped, so `poll()` tells) or
        does not answer within `timeout_s`."""
        assert self._process is not None and self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = self._process.stdout.readline()
        if not line.endswith(b"\n"):  # end of file: the child is exiting
            with suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1)
            return None
        try:
            reply = json.loads(line)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def _forward_logs(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._log(line.decode("utf-8", "replace").rstrip("\n"))
        stream.close()


@dataclass
class LambdaContext:
    """The handler's `context`: what Powertools and handlers read from Lambda's."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    deadline: float
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def worker_main(handler_file: str, handler_name: str) -> int:
    """Child-process side of `LambdaWorker`: JSON lines in on stdin, JSON lines out on the original stdout."""
    import importlib.util

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # the function's prints and logs go to the log stream, never into the protocol

    def reply(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    try:
        spec = importlib.util.spec_from_file_location(
            f"lambda_{Path(handler_file).parent.name}", handler_file
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"{handler_file} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        handler = getattr(module, handler_name)
    except Exception as exc:
        traceback.print_exc()
        reply({"error": f"Runtime.ImportModuleError: {type(exc).__name__}: {exc}"})
        return 1
    reply({"ready": True})
    name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")
    for line in sys.stdin:
        request = json.loads(line)
        context = LambdaContext(
            function_name=name,
            memory_limit_in_mb=int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")),
            invoked_function_arn=f"arn:aws:lambda:{REGION}:123456789012:function:{name}",
            aws_request_id=request["request_id"],
            deadline=time.monotonic() + request["timeout_s"],
            log_group_name=f"/aws/lambda/{name}",
        )
        try:
            result = handler(request["event"], context)
        except Exception as exc:
            traceback.print_exc()
            reply({"error": f"{type(exc).__name__}: {exc}"})
            continue
        try:
            reply({"result": result})
        except (TypeError, ValueError) as exc:
            reply({"error": f"Runtime.MarshalError: {exc}"})
    return 0


def function_environment(spec: FunctionSpec, moto_url: str, overrides: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: the template's variables on top of a clean base pointing boto3 at moto."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TIKTOK_", "POWERTOOLS_"))}
    return {
        **base,
        **LOCAL_CREDENTIALS,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_LAMBDA_FUNCTION_NAME": spec.logical_id,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        **spec.environment,
        **overrides,
    }


# --- API Gateway HTTP API, payload format 2.0 ---------------------------------------------------------------


def match_route(
    routes: Sequence[tuple[str, str]], method: str, path: str
) -> tuple[str, dict[str, str]] | None:
    """The route key and path parameters of the first route matching `method` and `path`."""
    for route_method, template in routes:
        if route_method not in {"ANY", method}:
            continue
        if template == "$default":
            return "$default", {}
        pattern = re.sub(
            r"\\\{(\w+)(\\\+)?\\\}",
            lambda m: f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)",
            re.escape(template),
        )
        found = re.fullmatch(pattern, path)
        if found:
            return f"{route_method} {template}", found.groupdict()
    return None


def http_api_event(
    *,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    route_key: str,
    path_parameters: Mapping[str, str],
    source_ip: str = "127.0.0.1",
    now: float | None = None,
) -> dict[str, Any]:
    """The event API Gateway's HTTP API passes a Lambda proxy integration (payload format version 2.0)."""
    now = time.time() if now is None else now
    split = urlsplit(target)
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
        else:
            merged[key] = f"{merged[key]},{value}" if key in merged else value
    query: dict[str, str] = {}
    for name, value in parse_qsl(split.query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    host = merged.get("host", "127.0.0.1")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": split.path,
        "rawQueryString": split.query,
        "headers": merged,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": host.split(".")[0],
            "http": {
                "method": method,
                "path": split.path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": merged.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": datetime.fromtimestamp(now, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if body:
        text = _TEXT_TYPE.match(merged.get("content-type", "").lower()) is not None
        try:
            event["body"] = body.decode("utf-8") if text else None
        except UnicodeDecodeError:
            event["body"] = None
        if event["body"] is None:
            event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode("ascii"), True
    return event


def http_api_response(invocation: Invocation) -> tuple[int, list[tuple[str, str]], bytes]:
    """The HTTP response API Gateway makes of a handler's result (payload format 2.0)."""
    internal_error = 500, [("content-type", "application/json")], b'{"message":"Internal Server Error"}'
    result = invocation.result
    if invocation.error is not None:
        return internal_error
    if not isinstance(result, dict) or "statusCode" not in result:
        return 200, [("content-type", "application/json")], json.dumps(result).encode()
    status, body = result["statusCode"], result.get("body") or ""
    if not isinstance(status, int) or not 100 <= status <= 599 or not isinstance(body, str):
        return internal_error
    headers = [(str(k).lower(), str(v)) for k, v in (result.get("headers") or {}).items()]
    headers += [("set-cookie", str(cookie)) for cookie in result.get("cookies") or []]
    try:
        raw = base64.b64decode(body, validate=True) if result.get("isBase64Encoded") else body.encode()
    except ValueError:
        return internal_error
    return status, headers, raw


def ingest_server(
    port: int,
    routes: Sequence[tuple[str, str]],
    invoke: Invoke,
    *,
    idle_timeout_s: float = API_GATEWAY_IDLE_TIMEOUT_S,
) -> ThreadingHTTPServer:
    """API Gateway's HTTP API on 127.0.0.1:`port` in front of `invoke` (the ingest function), not yet serving.

    One thread per connection; a connection on which the client sends nothing for `idle_timeout_s` (between
    requests, or within one) is closed, so idle or stalled clients never hold a thread for long.
    """
    server = ThreadingHTTPServer(
        ("127.0.0.1", port),
        partial(_IngestHandler, routes=routes, invoke=invoke, idle_timeout_s=idle_timeout_s),
    )
    server.daemon_threads = True
    return server


class _BodyTooLarge(ValueError):
    """The request body is over API Gateway's limit."""


class _IngestHandler(BaseHTTPRequestHandler):
    """Turns each HTTP request into an HTTP API event for the ingest function, and its answer back."""

    protocol_version = "HTTP/1.1"
    server_version = "tiktok-bridge-local"

    def __init__(
        self,
        *args: Any,
        routes: Sequence[tuple[str, str]],
        invoke: Invoke,
        idle_timeout_s: float | None,
        **kwargs: Any,
    ) -> None:
        self.routes, self.invoke, self.idle_timeout_s = routes, invoke, idle_timeout_s
        super().__init__(*args, **kwargs)

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.idle_timeout_s)  # on every read and write of this connection

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def handle_expect_100(self) -> bool:
        """Refuse a body declared too large before the client sends it (curl asks first above 1 MB)."""
        if self._declared_length() > API_GATEWAY_MAX_BODY_BYTES:
            self._reject_too_large()
            return False
        return super().handle_expect_100()

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except _BodyTooLarge:
            self._reject_too_large()
            return
        except ValueError as exc:
            self.close_connection = True
            self._send(
                400, [("content-type", "application/json")], json.dumps({"message": str(exc)}).encode()
            )
            return
        if body is None:  # the client closed the connection before sending the whole body
            self.close_connection = True
            return
        matched = match_route(self.routes, self.command, urlsplit(self.path).path)
        if matched is None:
            self._send(404, [("content-type", "application/json")], b'{"message":"Not Found"}')
            return
        event = http_api_event(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=body,
            route_key=matched[0],
            path_parameters=matched[1],
            source_ip=self.client_address[0],
        )
        try:
            invocation = self.invoke(event)
        except Exception as exc:  # the integration failed: API Gateway answers 500, the connection lives on
            invocation = Invocation(error=f"{type(exc).__name__}: {exc}")
        self._send(*http_api_response(invocation))

    def _declared_length(self) -> int:
        length = self.headers.get("content-length", "0").strip()
        return int(length) if length.isdigit() else 0

    def _read_body(self) -> bytes | None:
        """The whole body, or None when the connection ends first; _BodyTooLarge over API Gateway's limit."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks, total = [], 0
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                total += size
                if total > API_GATEWAY_MAX_BODY_BYTES:
                    raise _BodyTooLarge
                chunks.append(self.rfile.read(size))
                if len(chunks[-1]) < size or not self.rfile.readline():
                    return None
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        length_header = self.headers.get("content-length", "0").strip()
        if not length_header.isdigit():
            raise ValueError("Content-Length is not a number")
        length = int(length_header)
        if length > API_GATEWAY_MAX_BODY_BYTES:
            raise _BodyTooLarge
        body = self.rfile.read(length)
        return body if len(body) == length else None

    def _reject_too_large(self) -> None:
        """API Gateway's 413, then a lingering close: read and drop what the client is still sending (for a
        few seconds at most), so that it gets to read the answer instead of a connection reset."""
        self.close_connection = True
        self._send(413, [("content-type", "application/json")], b'{"message":"Request Entity Too Large"}')
        deadline = time.monotonic() + LINGER_S
        with suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.rfile.read1(1 << 16):
                    break

    def _send(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name not in {"content-length", "connection", "transfer-encoding", "date", "server"}:
                self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.send_header("apigw-requestid", uuid.uuid4().hex[:16])
        if self.close_connection:
            self.send_header("connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a request line is not worth the noise, and bodies are never logged."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(timestamp, usegmt=True)


# --- SQS -> Lambda event source mapping ---------------------------------------------------------------------


def _lambda_message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    attribute: dict[str, Any] = {
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": value["DataType"],
    }
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        attribute["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode("ascii")
    return attribute


def sqs_record(message: Mapping[str, Any], queue_arn: str, region: str = REGION) -> dict[str, Any]:
    """One record of the SQS event Lambda passes its function, made from a ReceiveMessage message."""
    record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": {
            name: _lambda_message_attribute(value)
            for name, value in (message.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def failed_message_ids(invocation: Invocation, message_ids: Sequence[str], report_failures: bool) -> set[str]:
    """The records Lambda leaves on the queue after an invocation (all of them when it failed).

    With ReportBatchItemFailures, a response that is not an object, or names an item that is not in the batch,
    fails the whole batch; an empty or missing `batchItemFailures` is complete success.
    """
    everything = set(message_ids)
    if invocation.error is not None:
        return everything
    if not report_failures or invocation.result is None:
        return set()
    if not isinstance(invocation.result, dict):
        return everything
    failures = invocation.result.get("batchItemFailures") or []
    if not isinstance(failures, list):
        return everything
    ids = [item.get("itemIdentifier") if isinstance(item, dict) else None for item in failures]
    if not all(isinstance(i, str) and i in everything for i in ids):
        return everything
    return set(ids)  # type: ignore[arg-type]


class SqsEventSource:
    """Lambda's SQS event source mapping: gather a batch, invoke, delete what succeeded.

    Gathers up to `batch_size` messages, waiting at most `batching_window_s` after the first arrives. Records
    reported as failed (or all, when the invocation fails) are not deleted: they return after the queue's
    visibility timeout, and SQS moves them to the DLQ once received more than maxReceiveCount times.
    `run` never gives up: an error in one poll is passed to `log`, and polling resumes after a pause.
    """

    def __init__(
        self,
        stack: Stack,
        invoke: Invoke,
        *,
        batch_size: int | None = None,
        batching_window_s: float | None = None,
        error_backoff_s: float = POLL_ERROR_BACKOFF_S,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.stack, self.invoke = stack, invoke
        self.error_backoff_s = error_backoff_s
        self._log = log or logging.getLogger(__name__).warning
        self.batch_size = stack.sender_batch_size if batch_size is None else batch_size
        self.batching_window_s = (
            stack.sender_batching_window_s if batching_window_s is None else batching_window_s
        )
        self._sqs = stack.client("sqs")
        self.invocations = 0

    def poll_once(self, wait_s: int = POLL_SLICE_S) -> int:
        """Gather one batch (long-polling up to `wait_s` for its first message) and process it; its size."""
        batch = self._receive(self.batch_size, wait_s)
        if not batch:
            return 0
        deadline = time.monotonic() + self.batching_window_s
        size = sum(len(m["Body"]) for m in batch)
        while len(batch) < self.batch_size and size < EVENT_SOURCE_MAX_PAYLOAD_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            more = self._receive(self.batch_size - len(batch), min(POLL_SLICE_S, int(remaining + 0.999)))
            batch += more
            size += sum(len(m["Body"]) for m in more)
        self._process(batch)
        return len(batch)

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set (within about POLL_SLICE_S), whatever one poll raises.

        A poll that fails (SQS unreachable, an invocation that raised) is logged and the loop waits before the
        next one, doubling the pause while failures last (up to 16 times `error_backoff_s`). What that poll
        had received was not deleted, so it returns after the visibility timeout, as on Lambda.
        """
        pause = self.error_backoff_s
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:
                self._log(
                    f"SQS event source: a poll failed ({type(exc).__name__}: {exc}); "
                    f"polling again in {pause:g} s"
                )
                stop.wait(pause)
                pause = min(pause * 2, self.error_backoff_s * 16)
            else:
                pause = self.error_backoff_s

    def _receive(self, count: int, wait_s: int) -> list[dict[str, Any]]:
        response = self._sqs.receive_message(
            QueueUrl=self.stack.queue_url,
            MaxNumberOfMessages=min(SQS_RECEIVE_MAX, count),
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(response.get("Messages", []))

    def _process(self, batch: Sequence[Mapping[str, Any]]) -> None:
        records = [sqs_record(m, self.stack.queue_arn, self.stack.region) for m in batch]
        self.invocations += 1
        invocation = self.invoke({"Records": records})
        ids = [r["messageId"] for r in records]
        failed = failed_message_ids(invocation, ids, self.stack.sender_report_batch_item_failures)
        done = [r for r in records if r["messageId"] not in failed]
        for start in range(0, len(done), SQS_RECEIVE_MAX):
            entries = [
                {"Id": str(i), "ReceiptHandle": r["receiptHandle"]}
                for i, r in enumerate(done[start : start + SQS_RECEIVE_MAX])
            ]
            self._sqs.delete_message_batch(QueueUrl=self.stack.queue_url, Entries=entries)


# --- the local stack ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """A message in the DLQ: its body and its string message attributes (e.g. `dlq_reason`)."""

    message_id: str
    body: str
    attributes: dict[str, str]
    receive_count: int


@dataclass(frozen=True)
class TikTokTarget:
    """Where the sender posts and with which credentials; `test_event_code` goes into the mapping config."""

    base_url: str | None  # None: the in-process emulator
    access_token: str
    pixel_code: str
    event_set_id: str
    test_event_code: str = ""

    @classmethod
    def emulator(cls) -> TikTokTarget:
        return cls(None, **EMULATOR_SECRET)

    @classmethod
    def real(cls, base_url: str, env: Mapping[str, str]) -> TikTokTarget:
        """The real API at `base_url`; credentials from TIKTOK_ACCESS_TOKEN, _PIXEL_CODE, _EVENT_SET_ID."""
        token = env.get("TIKTOK_ACCESS_TOKEN", "").strip()
        source_ids = env.get("TIKTOK_PIXEL_CODE", "").strip(), env.get("TIKTOK_EVENT_SET_ID", "").strip()
        if not token or not any(source_ids):
            raise LocalStackError(
                "--tiktok-url needs TIKTOK_ACCESS_TOKEN and TIKTOK_PIXEL_CODE or TIKTOK_EVENT_SET_ID"
            )
        return cls(base_url, token, *source_ids, env.get("TIKTOK_TEST_EVENT_CODE", "").strip())


def with_test_event_code(config_text: str, code: str) -> str:
    """The mapping config with `test_event_code` set on web (and on offline where configured)."""
    if not code:
        return config_text
    document = yaml.safe_load(config_text) if config_text.strip() else {}
    if not isinstance(document, dict):
        raise LocalStackError("the mapping config must be an object")
    defaults = BridgeConfig()
    for source, destination in (("web", defaults.web), ("offline", defaults.offline)):
        if source == "web" or isinstance(document.get(source), dict):
            document[source] = {
                "enabled": destination.enabled,
                **(document.get(source) or {}),
                "test_event_code": code,
            }
    return json.dumps(document)


class LocalStack:
    """The whole bridge on 127.0.0.1, as a context manager; `tiktok-bridge serve` is a thin CLI over it.

    `log` receives the functions' log lines (default: kept in `.logs` only). Ports 0 are chosen free.
    `environment` adds or overrides function environment variables (e.g. POWERTOOLS_LOG_LEVEL).
    `moto_middleware` wraps moto's WSGI app (AWS fault injection, see tools/chaos.py).
    `idle_timeout_s`: the ingest API closes a connection on which the client sends nothing for this long.
    Everything is in memory: leaving the block (or stopping `serve`) loses whatever is still queued.
    """

    def __init__(
        self,
        *,
        template: str | Path | Mapping[str, Any] = DEFAULT_TEMPLATE,
        port: int = 0,
        moto_port: int = 0,
        emulator_port: int = 0,
        webhook_secret: str | None = None,
        webhook_token: str | None = None,
        config_text: str = "",
        tiktok: TikTokTarget | None = None,
        batching_window_s: float | None = None,
        environment: Mapping[str, str] | None = None,
        log: Callable[[str], None] | None = None,
        moto_middleware: Callable[[Any], Any] | None = None,
        idle_timeout_s: float = API_GATEWAY_IDLE_TIMEOUT_S,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.template, self.ports = template, {"ingest": port, "moto": moto_port, "emulator": emulator_port}
        self.webhook_secret = webhook_secret or secrets.token_hex(24)
        self.webhook_token = secrets.token_hex(24) if webhook_token is None else webhook_token
        self.tiktok = tiktok or TikTokTarget.emulator()
        self.config_text = with_test_event_code(config_text, self.tiktok.test_event_code)
        self.batching_window_s, self.environment = batching_window_s, dict(environment or {})
        self.moto_middleware = moto_middleware
        self.logs: list[str] = []
        self.workers: dict[str, LambdaWorker] = {}  # "ingest", "sender", once started
        self._echo = log
        self._exit = ExitStack()
        self.emulator: Emulator | None = None
        self.ingest_url = self.moto_url = ""
        self._stack: Stack | None = None
        self.event_source: SqsEventSource | None = None

    @property
    def stack(self) -> Stack:
        if self._stack is None:
            raise RuntimeError("the local stack is not running; use it as a context manager")
        return self._stack

    @property
    def tiktok_url(self) -> str:
        return self.tiktok.base_url or (self.emulator.url if self.emulator else "")

    def webhook_headers(self, covered: bytes) -> dict[str, str]:
        """What Segment sends: `X-Signature` over `covered` (the body, or a batch's first element), and the
        webhook token as `Authorization: Bearer` when one is set."""
        headers = {"content-type": "application/json", "x-signature": signature(self.webhook_secret, covered)}
        if self.webhook_token:
            headers["authorization"] = f"Bearer {self.webhook_token}"
        return headers

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _start(self) -> None:
        try:
            if self.config_text.strip():
                load_config(self.config_text)
        except ConfigError as exc:
            raise LocalStackError(f"mapping config: {exc}") from None
        moto = listen(
            lambda: moto_server(self.ports["moto"], self.moto_middleware),
            "moto (SQS, Secrets Manager)",
            self.ports["moto"],
        )
        self._exit.enter_context(serving(moto))
        self.moto_url = url_of(moto)
        if self.tiktok.base_url is None:
            try:
                self.emulator = self._exit.enter_context(
                    Emulator(
                        access_token=self.tiktok.access_token,
                        source_ids=[self.tiktok.pixel_code, self.tiktok.event_set_id],
                        port=self.ports["emulator"],
                    )
                )
            except OSError as exc:
                raise LocalStackError(f"{exc} (TikTok emulator)") from None
        ingest_routes: list[tuple[str, str]] = []
        http = listen(
            lambda: ingest_server(
                self.ports["ingest"],
                ingest_routes,
                lambda event: ingest.invoke(event),
                idle_timeout_s=self.idle_timeout_s,
            ),
            "the ingest API",
            self.ports["ingest"],
        )
        self._exit.callback(http.server_close)
        self._stack = self._create_resources()
        self._exit.callback(delete_stack, self._stack)
        environment = {**self.environment, "TIKTOK_BASE_URL": self.tiktok_url}
        ingest, sender = (
            LambdaWorker(spec, function_environment(spec, self.moto_url, environment), self._log)
            for spec in (self._stack.ingest, self._stack.sender)
        )
        self.workers = {"ingest": ingest, "sender": sender}
        for worker in (ingest, sender):
            worker.start()
            self._exit.callback(worker.stop)
        for worker in (ingest, sender):
            worker.wait_ready()
        ingest_routes.extend(self._stack.ingest.routes)
        self._exit.enter_context(serving(http))
        self.ingest_url = url_of(http) + _route_path(self._stack.ingest.routes)
        self.event_source = SqsEventSource(
            self._stack, sender.invoke, batching_window_s=self.batching_window_s, log=self._log
        )
        stop = threading.Event()
        poller = threading.Thread(target=self.event_source.run, args=(stop,), daemon=True)
        poller.start()
        self._exit.callback(poller.join)
        self._exit.callback(stop.set)

    def _create_resources(self) -> Stack:
        session = boto3.session.Session(
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=REGION,
        )
        try:
            stack = create_stack(
                self.template,
                region=REGION,
                endpoint_url=self.moto_url,
                session=session,
                parameters={"BridgeConfig": self.config_text, "TikTokBaseUrl": self.tiktok_url},
                stack_name=f"local-{uuid.uuid4().hex[:8]}",  # moto's state is per process; stay apart
            )
        except TemplateError as exc:
            raise LocalStackError(str(exc)) from None
        stack.put_secret(
            {
                "access_token": self.tiktok.access_token,
                "pixel_code": self.tiktok.pixel_code,
                "event_set_id": self.tiktok.event_set_id,
                "webhook_secret": self.webhook_secret,
                "webhook_token": self.webhook_token,
            }
        )
        return stack

    def _log(self, line: str) -> None:
        self.logs.append(line)
        if self._echo:
            self._echo(line)

    def queue_depth(self) -> dict[str, int]:
        """The queue's visible, in-flight and delayed message counts, and the DLQ's message count."""
        sqs = self.stack.client("sqs")
        queue = sqs.get_queue_attributes(QueueUrl=self.stack.queue_url, AttributeNames=["All"])
        dlq = sqs.get_queue_attributes(QueueUrl=self.stack.dlq_url, AttributeNames=["All"])
        counts = {k: int(v) for k, v in queue["Attributes"].items() if k.startswith("ApproximateNumber")}
        return {
            "queued": counts.get("ApproximateNumberOfMessages", 0),
            "in_flight": counts.get("ApproximateNumberOfMessagesNotVisible", 0),
            "delayed": counts.get("ApproximateNumberOfMessagesDelayed", 0),
            "dead_lettered": sum(
                int(v) for k, v in dlq["Attributes"].items() if k.startswith("ApproximateNumberOfMessages")
            ),
        }

    def wait_until_drained(
        self, timeout: float, progress: Callable[[dict[str, int]], None] | None = None
    ) -> None:
        """Wait until the queue is empty and nothing is in flight; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            depth = self.queue_depth()
            if progress:
                progress(depth)
            if depth["queued"] == depth["in_flight"] == depth["delayed"] == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the queue did not drain within {timeout} s: {depth}")
            time.sleep(0.1)

    def dlq_messages(self) -> list[DeadLetter]:
        """Every message in the DLQ, left in place (each is received once, then made visible again)."""
        sqs, url = self.stack.client("sqs"), self.stack.dlq_url
        found: dict[str, dict[str, Any]] = {}
        while messages := sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=30,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        ).get("Messages", []):
            found.update((m["MessageId"], m) for m in messages)
        for message in found.values():
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        return [
            DeadLetter(
                message_id=m["MessageId"],
                body=m["Body"],
                attributes={
                    k: v["StringValue"]
                    for k, v in (m.get("MessageAttributes") or {}).items()
                    if "StringValue" in v
                },
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "0")),
            )
            for m in found.values()
        ]


def _route_path(routes: Sequence[tuple[str, str]]) -> str:
    """The path to show users: the first literal route, else `/`."""
    return next((path for _, path in routes if path.startswith("/") and "{" not in path), "/")


# --- `tiktok-bridge serve` ----------------------------------------------------------------------------------


SERVE_QUEUE_NOTE = """\
The queue, the DLQ and the profiles table live in moto's memory inside the `serve` process: nothing is
written to disk. Stopping `serve` (Ctrl-C, SIGTERM, a crash) loses every event still queued, in flight or
dead-lettered, even though ingest answered 200 for it; the next start begins empty. Let the queue drain
before stopping if those events matter.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the whole bridge locally: HTTP ingest -> moto SQS -> sender -> TikTok emulator",
        description=f"{__doc__}\n{SERVE_QUEUE_NOTE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=3000, help="ingest port on 127.0.0.1 (0 = any free port)")
    parser.add_argument(
        "--emulator-port", type=int, default=0, help="TikTok emulator port (0 = any free port)"
    )
    parser.add_argument(
        "--moto-port", type=int, default=0, help="moto (SQS, Secrets Manager) port (0 = any free)"
    )
    parser.add_argument("--webhook-secret", help="the X-Signature HMAC secret (default: a generated one)")
    parser.add_argument(
        "--webhook-token",
        help='the Bearer token Segment sends (default: a generated one; "" = none, signatures only)',
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="mapping config (JSON or YAML)")
    parser.add_argument(
        "--tiktok-url",
        help="post to this TikTok API base URL instead of the emulator; credentials from "
        "TIKTOK_ACCESS_TOKEN, TIKTOK_PIXEL_CODE, TIKTOK_EVENT_SET_ID (and TIKTOK_TEST_EVENT_CODE)",
    )
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE, help=argparse.SUPPRESS)
    parser.set_defaults(run=serve)


def serve(args: argparse.Namespace) -> int:
    """Run the local stack until Ctrl-C or SIGTERM; print where things are."""
    try:
        config_text = args.config.read_text(encoding="utf-8") if args.config else ""
        tiktok = TikTokTarget.real(args.tiktok_url, os.environ) if args.tiktok_url else None
        local = LocalStack(
            template=args.template,
            port=args.port,
            moto_port=args.moto_port,
            emulator_port=args.emulator_port,
            webhook_secret=args.webhook_secret,
            webhook_token=args.webhook_token,
            config_text=config_text,
            tiktok=tiktok,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        with local:
            print(f"ingest:         POST {local.ingest_url}", flush=True)
            print(
                f"tiktok:         {local.tiktok_url}{'' if args.tiktok_url else '  (emulator)'}", flush=True
            )
            print(f"moto:           {local.moto_url}", flush=True)
            print(f"webhook secret: {local.webhook_secret}", flush=True)
            print(f"webhook token:  {local.webhook_token or '(none)'}", flush=True)
            print("Ctrl-C stops everything.", flush=True)
            with suppress(KeyboardInterrupt):
                stopping.wait()
            print("stopping...", flush=True)
    except (LocalStackError, OSError) as exc:
        print(f"tiktok-bridge serve: {exc}", file=sys.stderr)
        return 2
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":  # the child process of a LambdaWorker
    sys.exit(worker_main(*sys.argv[1:3]))
