"""A local stand-in for TikTok's Events API 2.0 `POST /open_api/v1.3/event/track/` (SPEC §5).

It validates like TikTok, answers TikTok's envelope `{code, message, request_id, data}` with HTTP 200, keeps
a record of accepted events and dedup keys, and injects faults on demand. Error messages never echo values.
Over HTTP: `GET /_emulator/requests` returns the accepted request bodies, `POST /_emulator/faults` sets fault
switches (JSON, the flags' names with `_`), `POST /_emulator/reset` clears both.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import re
import secrets
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TRACK_PATH = "/open_api/v1.3/event/track/"
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_EVENTS = 1000
EVENT_SOURCES = ("web", "offline", "app", "crm")
HASHED_FIELDS = ("email", "phone", "external_id", "first_name", "last_name", "zip_code")
OFFLINE_IDENTIFIERS = ("email", "phone", "external_id")
EARLIEST_EVENT_TIME = 1_000_000_000  # 2001-09-09: anything earlier is not a real Unix-seconds event time
MAX_FUTURE_S = 86_400
MAX_DEPTH = 32  # JSON nesting; TikTok's deepest field (data[].properties.contents[].price) is 6 levels down
MAX_INT = 2**63  # integers beyond 64 bits are out of range (a 400-digit one is no number TikTok can take)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

OK, PARTIAL, INVALID_REQUEST, INVALID_PARAM, THROTTLED = 0, 20001, 40000, 40002, 40100
NO_PERMISSION, TOKEN_MISSING, TOKEN_INVALID = 40001, 40104, 40105


class Faults(BaseModel):
    """Fault switches. Counters apply to the next N track requests, in order: drop, HTTP error, throttle
    (and drip, to the answers of the next N requests that are not dropped or HTTP errors)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    drop: int = Field(0, ge=0, description="close the next N connections without answering")
    drop_after_s: float = Field(0.0, ge=0, le=600, description="hold a dropped connection this long first")
    http_errors: int = Field(0, ge=0, description="answer the next N requests with HTTP `http_status`")
    http_status: int = Field(500, ge=400, le=599, description="HTTP status used by `http_errors`")
    throttle: int = Field(0, ge=0, description="answer the next N requests with code 40100")
    delay_s: float = Field(0.0, ge=0, le=600, description="wait this long before answering every request")
    drip: int = Field(0, ge=0, description="send the next N answers a byte at a time, `drip_s` apart")
    drip_s: float = Field(0.1, ge=0, le=60, description="seconds between the bytes of a dripped answer")
    poison_marker: str = Field(
        "",
        description="reject (40002) a batch with an event whose event_id or properties.description has this",
    )
    partial_marker: str = Field(
        "",
        description="refuse the events with this (as poison_marker), accept the rest and answer 20001",
    )
    crash_marker: str = Field("", description="answer HTTP 500 to a batch with an event with this")


class _Reject(Exception):
    """A TikTok error answer: `code` and `message` go into the envelope."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class _Reply:
    """How to answer one track request; `drop` closes the connection without an answer."""

    status: int = 200
    payload: bytes = b""
    content_type: str = "application/json"
    delay_s: float = 0.0
    drip_s: float = 0.0
    drop: bool = False


def _envelope(code: int, message: str) -> dict[str, Any]:
    request_id = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(8).upper()
    return {"code": code, "message": message, "request_id": request_id, "data": {}}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_hashable(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _invalid(field: str, problem: str, index: int | None = None) -> _Reject:
    """TikTok's 40002 message, naming the event when the problem is inside `data[]`."""
    where = "" if index is None else f" (data[{index}])"
    return _Reject(INVALID_PARAM, f"Invalid value for {field}: {problem}.{where}")


Check = tuple[Callable[[object], bool], str]
_STRING: Check = (lambda v: isinstance(v, str), "not a valid string")
_NUMBER: Check = (_is_number, "not a valid number")
_OBJECT: Check = (lambda v: isinstance(v, dict), "not a valid object")
_LIST: Check = (lambda v: isinstance(v, list), "not a valid list")
_BOOL: Check = (lambda v: isinstance(v, bool), "not a valid boolean")
_HASHABLE: Check = (_is_hashable, "not a valid string or list of strings")
_EVENT_FIELDS = {
    "event_id": _STRING,
    "user": _OBJECT,
    "page": _OBJECT,
    "properties": _OBJECT,
    "limited_data_use": _BOOL,
}
_USER_FIELDS = {
    **dict.fromkeys(HASHED_FIELDS, _HASHABLE),
    **dict.fromkeys(
        ("ip", "user_agent", "locale", "ttclid", "ttp", "lead_id", "city", "state", "country"), _STRING
    ),
}
_PAGE_FIELDS = {"url": _STRING, "referrer": _STRING}
_PROPERTY_FIELDS = {
    "contents": _LIST,
    "value": _NUMBER,
    **dict.fromkeys(("currency", "content_type", "query", "order_id", "shop_id", "description"), _STRING),
}
_CONTENT_FIELDS = {
    "price": _NUMBER,
    "quantity": _NUMBER,
    **dict.fromkeys(("content_id", "content_name", "content_category", "brand"), _STRING),
}


def _check_fields(obj: Mapping[str, object], checks: Mapping[str, Check], prefix: str, index: int) -> None:
    for name, (ok, problem) in checks.items():
        if name in obj and not ok(obj[name]):
            raise _invalid(prefix + name, problem, index)


def _check_event(event: object, index: int, source: str, strict: bool, now: float) -> None:
    """Validate one element of `data[]` (SPEC §3.2/§4); strict mode adds the hashing and offline rules."""
    if not isinstance(event, dict):
        raise _invalid("data", "not a valid object", index)
    name, event_time = event.get("event"), event.get("event_time")
    if not isinstance(name, str) or not name.strip():
        raise _invalid("event", "not a valid non-empty string", index)
    if not isinstance(event_time, int) or isinstance(event_time, bool):
        raise _invalid("event_time", "not a valid integer (Unix seconds)", index)
    if event_time > now + MAX_FUTURE_S or event_time < EARLIEST_EVENT_TIME:
        raise _invalid("event_time", "out of range, expected Unix seconds (not milliseconds)", index)
    if "test_event_code" in event:
        raise _invalid("test_event_code", "belongs at the top level of the request, not in data[]", index)
    _check_fields(event, _EVENT_FIELDS, "", index)
    user, props = event.get("user", {}), event.get("properties", {})
    _check_fields(user, _USER_FIELDS, "user.", index)
    _check_fields(event.get("page", {}), _PAGE_FIELDS, "page.", index)
    _check_fields(props, _PROPERTY_FIELDS, "properties.", index)
    for n, item in enumerate(props.get("contents", [])):
        if not isinstance(item, dict):
            raise _invalid(f"properties.contents[{n}]", "not a valid object", index)
        _check_fields(item, _CONTENT_FIELDS, f"properties.contents[{n}].", index)
    if not strict:
        return
    for field in HASHED_FIELDS:
        values = user.get(field, [])
        if any(not _SHA256_HEX.fullmatch(v) for v in ([values] if isinstance(values, str) else values)):
            raise _invalid(f"user.{field}", "not a SHA-256 hash (64 lowercase hex characters)", index)
    if source == "offline" and not any(user.get(f) for f in OFFLINE_IDENTIFIERS):
        raise _invalid("user", "offline events need a hashed email, phone or external_id", index)
    if source == "offline" and "page" in event:
        raise _invalid("page", "not allowed for offline events", index)


def _marked(data: list[dict[str, Any]], marker: str) -> list[int]:
    """Indexes of the events whose event_id or properties.description contains `marker` (none if unset)."""
    if not marker:
        return []
    texts = [(event.get("event_id"), event.get("properties", {}).get("description")) for event in data]
    return [n for n, pair in enumerate(texts) if any(isinstance(t, str) and marker in t for t in pair)]


def _depth(value: Any) -> int:
    """How many levels of arrays and objects nest below `value`, counted level by level (no recursion)."""
    depth, level = 0, [value]
    while level := [
        child
        for node in level
        if isinstance(node, dict | list)
        for child in (node.values() if isinstance(node, dict) else node)
    ]:
        depth += 1
    return depth


def _parse_json(raw: bytes) -> Any:
    """The request body; numbers and nesting TikTok cannot take are 40002, never a crash later."""

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    def bounded_int(digits: str) -> int:
        if len(digits) > 20 or not -MAX_INT <= (value := int(digits)) < MAX_INT:
            raise _invalid("request body", "a number is out of range")
        return value

    try:
        body = json.loads(raw, parse_constant=no_constants, parse_int=bounded_int)
    except (ValueError, RecursionError):
        raise _Reject(INVALID_REQUEST, "Request body is not valid JSON.") from None
    if _depth(body) > MAX_DEPTH:
        raise _invalid("request body", f"nested deeper than {MAX_DEPTH} levels")
    return body


class Emulator:
    """The emulator; `with Emulator() as emu:` serves on `emu.url` (127.0.0.1) in a background thread."""

    _faults: Faults
    _accepted: list[dict[str, Any]]
    _keys: set[tuple[str, str, str]]
    _window: deque[float]
    _request_count: int
    _event_count: int
    _duplicate_count: int

    def __init__(
        self,
        access_token: str = "test-token",
        source_ids: tuple[str, ...] | list[str] = ("PIXEL123", "EVENTSET123"),
        strict: bool = False,
        port: int = 0,
        rate_limit_per_s: int = 1000,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.access_token, self.source_ids, self.strict = access_token, tuple(source_ids), strict
        self.port, self.rate_limit_per_s, self._clock = port, rate_limit_per_s, clock
        self._initial_faults = faults or Faults()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    def __enter__(self) -> Emulator:
        try:
            self._server = _Server(("127.0.0.1", self.port), partial(_Handler, emulator=self))
        except OSError as e:
            raise OSError(e.errno, f"cannot listen on 127.0.0.1:{self.port}: {e.strerror}") from e
        self._closed.clear()
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()  # releases held and delayed requests
        if self._server and self._thread:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
        self._server = self._thread = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def request_count(self) -> int:
        """All track requests received, including rejected and faulted ones."""
        return self._request_count

    def accepted_requests(self) -> list[dict[str, Any]]:
        """Bodies of the requests answered with code 0 or 20001 (with their accepted events), oldest first."""
        with self._lock:
            return copy.deepcopy(self._accepted)

    def delivered_keys(self) -> set[tuple[str, str, str]]:
        """Dedup keys (event_source_id, event, event_id) of every delivered event that had an event_id."""
        with self._lock:
            return set(self._keys)

    def snapshot(self) -> dict[str, Any]:
        """What `GET /_emulator/requests` returns."""
        with self._lock:
            return {
                "requests": copy.deepcopy(self._accepted),
                "request_count": self._request_count,
                "accepted_count": len(self._accepted),
                "event_count": self._event_count,
                "duplicate_count": self._duplicate_count,
                "delivered_keys": sorted(self._keys),
                "faults": self._faults.model_dump(),
            }

    def set_faults(self, **switches: Any) -> Faults:
        """Change some switches (see `Faults`); raises `pydantic.ValidationError` on unknown or bad ones."""
        with self._lock:
            self._faults = Faults.model_validate({**self._faults.model_dump(), **switches})
            return self._faults.model_copy()

    def reset(self) -> None:
        """Forget every request and dedup key, and restore the fault switches given at start."""
        with self._lock:
            self._faults = self._initial_faults.model_copy()
            self._accepted = []
            self._keys = set()
            self._request_count = self._event_count = self._duplicate_count = 0
            self._window = deque()

    def wait(self, seconds: float) -> None:
        """Sleep, but wake at once when the emulator stops."""
        self._closed.wait(seconds)

    def track(self, token: str | None, raw: bytes | _Reject) -> _Reply:
        """Answer one `POST /event/track/`: faults, rate limit, token, body validation, then record."""
        with self._lock:
            self._request_count += 1
            faults = self._faults
            if faults.drop:
                faults.drop -= 1
                return _Reply(drop=True, delay_s=max(faults.delay_s, faults.drop_after_s))
            if faults.http_errors:
                faults.http_errors -= 1
                text = f"HTTP {faults.http_status} injected by the TikTok emulator".encode()
                return _Reply(faults.http_status, text, "text/plain; charset=utf-8", faults.delay_s)
            throttled = faults.throttle > 0 or not self._admit()
            faults.throttle = max(0, faults.throttle - 1)
            drip_s = faults.drip_s if faults.drip else 0.0
            faults.drip = max(0, faults.drip - 1)
            faults = faults.model_copy()
        reply = partial(_Reply, delay_s=faults.delay_s, drip_s=drip_s)
        try:
            if throttled:
                raise _Reject(THROTTLED, "App reaches the QPS limit.")
            if not token:
                raise _Reject(TOKEN_MISSING, "Access token is null. Set the Access-Token header.")
            if not secrets.compare_digest(token.encode(), self.access_token.encode()):
                raise _Reject(TOKEN_INVALID, "Access token is incorrect or has been revoked.")
            if isinstance(raw, _Reject):
                raise raw
            body = self._validate(_parse_json(raw))
            data = body["data"]
            if poisoned := _marked(data, faults.poison_marker):
                index = poisoned[0]
                event_id = data[index].get("event_id")
                raise _Reject(INVALID_PARAM, f"Event data[{index}] (event_id {event_id!r}) is poisoned.")
            if _marked(data, faults.crash_marker):
                return reply(500, b"HTTP 500: the TikTok emulator crashed", "text/plain; charset=utf-8")
            refused = set(_marked(data, faults.partial_marker))
            if accepted := [event for n, event in enumerate(data) if n not in refused]:
                self._accept({**body, "data": accepted})
            # TikTok's 20001 names no event (SPEC §4.1): neither does the emulator's.
            answer = _envelope(PARTIAL, "Partial success.") if refused else _envelope(OK, "OK")
        except _Reject as reject:
            answer = _envelope(reject.code, reject.message)
        return reply(200, json.dumps(answer).encode())

    def _admit(self) -> bool:
        """Sliding one-second window rate limiter (caller holds the lock)."""
        now = self._clock()
        while self._window and self._window[0] <= now - 1.0:
            self._window.popleft()
        if len(self._window) >= self.rate_limit_per_s:
            return False
        self._window.append(now)
        return True

    def _validate(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _invalid("request body", "not a valid JSON object")
        source, source_id, data = body.get("event_source"), body.get("event_source_id"), body.get("data")
        if source not in EVENT_SOURCES:
            raise _invalid("event_source", f"must be one of {', '.join(EVENT_SOURCES)}")
        if not isinstance(source_id, str) or not source_id:
            raise _invalid("event_source_id", "not a valid string")
        if not isinstance(body.get("test_event_code", ""), str):
            raise _invalid("test_event_code", "not a valid string")
        if source_id not in self.source_ids:
            kind = "pixel code" if source == "web" else "event source"
            raise _Reject(
                NO_PERMISSION,
                f"No permission to operate {kind}: {source_id}. You must be an admin or operator.",
            )
        if not isinstance(data, list) or not 1 <= len(data) <= MAX_EVENTS:
            raise _invalid("data", f"must be a list of 1 to {MAX_EVENTS} events")
        now = time.time()
        for index, event in enumerate(data):
            _check_event(event, index, source, self.strict, now)
        return body

    def _accept(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._accepted.append(body)
            for event in body["data"]:
                self._event_count += 1
                if "event_id" in event:
                    key = (body["event_source_id"], event["event"], event["event_id"])
                    self._duplicate_count += key in self._keys
                    self._keys.add(key)


class _Dripping(io.BufferedIOBase):
    """Writes to `out` a byte at a time, `interval_s` apart: every read of the client's is quick, the answer
    is slow."""

    def __init__(self, out: io.BufferedIOBase, interval_s: float, wait: Callable[[float], None]) -> None:
        super().__init__()
        self._out, self._interval_s, self._wait = out, interval_s, wait

    def write(self, data: Any, /) -> int:
        for byte in bytes(data):
            self._out.write(bytes((byte,)))
            self._wait(self._interval_s)
        return len(data)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (it timed out, or its process was killed) is no error of the emulator's."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_version = "TikTokEmulator/1.0"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a connection may stall mid-request before it is closed
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def __init__(self, *args: Any, emulator: Emulator, **kwargs: Any) -> None:
        self.emulator = emulator
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/_emulator/requests":
            self._send(200, json.dumps(self.emulator.snapshot()).encode())
        else:
            self._send(404, b"404 page not found", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        raw = self._read_body()
        path = urlsplit(self.path).path
        if path == TRACK_PATH:
            reply = self.emulator.track(self.headers.get("Access-Token"), raw)
            self.emulator.wait(reply.delay_s)
            if reply.drip_s:  # for the rest of the connection, which ends with this answer
                self.wfile = _Dripping(self.wfile, reply.drip_s, self.emulator.wait)
            if reply.drop or reply.drip_s:
                self.close_connection = True
            if not reply.drop:
                self._send(reply.status, reply.payload, reply.content_type)
        elif path == "/_emulator/faults":
            self._set_faults(raw)
        elif path == "/_emulator/reset":
            self.emulator.reset()
            self._send(200, b'{"reset": true}')
        else:
            self._send(404, b"404 page not found", "text/plain; charset=utf-8")

    def _set_faults(self, raw: bytes | _Reject) -> None:
        try:
            switches = json.loads(raw) if isinstance(raw, bytes) else None
            if not isinstance(switches, dict):
                raise ValueError("the body must be a JSON object of fault switches")
            faults = self.emulator.set_faults(**switches)
        except (ValueError, RecursionError) as e:  # pydantic's ValidationError is a ValueError
            self._send(400, json.dumps({"error": str(e)}).encode())
        else:
            self._send(200, faults.model_dump_json().encode())

    def _read_body(self) -> bytes | _Reject:
        """The body, or a rejection for a bad Content-Length or an oversized body (drained, not kept)."""
        header = self.headers.get("Content-Length", "0")
        if not header.isdigit():
            self.close_connection = True
            return _Reject(INVALID_REQUEST, "Invalid Content-Length header.")
        length = int(header)
        if length <= MAX_BODY_BYTES:
            return self.rfile.read(length)
        remaining = length
        while remaining > 0 and (chunk := self.rfile.read(min(remaining, 1 << 16))):
            remaining -= len(chunk)
        return _Reject(
            INVALID_REQUEST, f"Request body is too large: {length} bytes (limit {MAX_BODY_BYTES})."
        )

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the record is available at `GET /_emulator/requests`."""


def register(subparsers: Any) -> None:
    """Add `tiktok-bridge emulator`; every `Faults` switch is also a flag."""
    parser = subparsers.add_parser(
        "emulator",
        help="run the local TikTok Events API emulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8787, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--strict", action="store_true", help="require hashed PII and offline identifiers")
    parser.add_argument("--access-token", default="test-token")
    parser.add_argument(
        "--source-id", action="append", dest="source_ids", help="authorised source id (repeatable)"
    )
    parser.add_argument("--rate-limit", type=int, default=1000, help="requests per second before 40100")
    for name, info in Faults.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag,
            type=cast(Callable[[str], Any], info.annotation),
            default=info.default,
            help=info.description,
        )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve in the foreground until SIGINT or SIGTERM."""
    try:
        faults = Faults.model_validate({name: getattr(args, name) for name in Faults.model_fields})
    except ValidationError as e:
        print(f"error: invalid fault switch: {e}", file=sys.stderr)
        return 2
    source_ids = tuple(args.source_ids or ("PIXEL123", "EVENTSET123"))
    emulator = Emulator(args.access_token, source_ids, args.strict, args.port, args.rate_limit, faults)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with emulator:
            print(f"TikTok emulator listening on {emulator.url}", flush=True)
            print(f"  POST {emulator.url}{TRACK_PATH}  Access-Token: {args.access_token}", flush=True)
            print(f"  source ids: {', '.join(source_ids)}; strict: {args.strict}; Ctrl-C stops", flush=True)
            stop.wait()
    except OSError as e:
        print(f"error: {e.strerror or e}", file=sys.stderr)
        return 1
    print("TikTok emulator stopped", flush=True)
    return 0
