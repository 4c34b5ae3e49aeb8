"""TikTok Events API 2.0 client: one POST to /event/track/ and the SPEC §4.1 response table.

TikTok answers HTTP 200 even for errors; the JSON `code` decides. `classify` is the one place that maps a
response to what the sender does with its events; `track` makes the call within a wall-clock deadline and maps
what is not a response (transport failures, a token that cannot be sent) to an action too.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

TRACK_PATH = "/open_api/v1.3/event/track/"
MAX_RESPONSE_BYTES = 1024 * 1024  # TikTok's answers are tiny; a larger body is not TikTok's.
MAX_TEXT_CHARS = 256  # TikTok's message / request_id as logged and dead-lettered.
# Identity: the answer is read as sent, so a compressed "answer" cannot expand beyond MAX_RESPONSE_BYTES.
HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}

PARTIAL_CODE = 20001
BUSY_CODES = frozenset({40100, 40016, 40132, 40133, 61000, 40202})
RETRY_CODES = frozenset({50000, 50002, 60001})
RETRY_CODE_RANGES = (range(51000, 54000),)
AUTH_CODES = frozenset({40104, 40105, 40102, 40001})
INVALID_CODE_RANGE = range(40000, 50000)


class Action(StrEnum):
    """What to do with the events of a request."""

    DELIVERED = "delivered"  # done (0)
    PARTIAL = "partial"  # some not accepted (20001), TikTok does not say which: isolate and dead-letter them
    BUSY = "busy"  # TikTok's load (throttled, write conflict, 429): leave them on the queue as they are
    RETRY = "retry"  # failed, maybe because of one of them (5xx, transport): leave them on the queue
    AUTH = "auth"  # credentials: refresh the secret once, then leave them on the queue
    INVALID = "invalid"  # TikTok rejected the batch: isolate the bad events and dead-letter them


@dataclass(frozen=True)
class Verdict:
    """A classified response; `code` is TikTok's code or a transport fault (`http_503`, `timeout`, ...)."""

    action: Action
    code: str
    message: str = ""
    request_id: str = ""


def action_for(code: int) -> Action:
    """SPEC §4.1 for a TikTok `code`; unknown codes outside 4xxxx are retried (kept, never dropped)."""
    if code == 0:
        return Action.DELIVERED
    if code == PARTIAL_CODE:
        return Action.PARTIAL
    if code in BUSY_CODES:
        return Action.BUSY
    if code in RETRY_CODES or any(code in codes for codes in RETRY_CODE_RANGES):
        return Action.RETRY
    if code in AUTH_CODES:
        return Action.AUTH
    if code in INVALID_CODE_RANGE:
        return Action.INVALID
    return Action.RETRY


def _text(value: object) -> str:
    """A bounded, printable copy of a text field (SQS attributes and log lines take no control characters)."""
    return "".join(ch for ch in value[:MAX_TEXT_CHARS] if ch.isprintable()) if isinstance(value, str) else ""


def classify(status: int, body: bytes | str) -> Verdict:
    """The verdict for an HTTP status and response body (any bytes, possibly hostile)."""
    if status == 429:
        return Verdict(Action.BUSY, "http_429")
    if status >= 500:
        return Verdict(Action.RETRY, f"http_{status}")
    ok_status = 200 <= status < 300
    try:
        parsed: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    code = parsed.get("code") if isinstance(parsed, dict) else None
    if not isinstance(code, int) or isinstance(code, bool):
        return Verdict(Action.RETRY, "bad_response" if ok_status else f"http_{status}")
    action = action_for(code)
    if action is Action.DELIVERED and not ok_status:
        action = Action.RETRY  # a success code on an error status is not a success
    return Verdict(action, str(code), _text(parsed.get("message")), _text(parsed.get("request_id")))


_client: httpx.Client | None = None


def client() -> httpx.Client:
    """The process-wide HTTP client, created on first use and reused across Lambda invocations."""
    global _client
    if _client is None:
        _client = httpx.Client()
    return _client


def track(base_url: str, access_token: str, body: dict[str, Any], timeout_s: float) -> Verdict:
    """POST one request body to TikTok and classify the answer, all within `timeout_s` of wall-clock time.

    httpx's timeouts bound each read, so an answer dripped a byte at a time would outlast them: the exchange
    runs in a thread that `track` stops waiting for at the deadline (the thread stops reading soon after).
    Transport failures and the deadline are `RETRY`; a token that cannot be sent as a header is `AUTH`.
    """
    if not (access_token.isascii() and access_token.isprintable()):
        return Verdict(Action.AUTH, "invalid_token", "The access token is not printable ASCII.")
    headers = {**HEADERS, "Access-Token": access_token}
    content = json.dumps(body, separators=(",", ":")).encode()
    url = base_url.rstrip("/") + TRACK_PATH
    deadline = time.monotonic() + timeout_s
    answer: Future[Verdict] = Future()

    def exchange() -> None:
        try:
            answer.set_result(_exchange(url, content, headers, deadline))
        except BaseException as exc:  # a bug: raised in the caller's thread
            answer.set_exception(exc)

    threading.Thread(target=exchange, name="tiktok-track", daemon=True).start()
    try:
        return answer.result(timeout=timeout_s)
    except TimeoutError:
        return Verdict(Action.RETRY, "timeout")


def _exchange(url: str, content: bytes, headers: dict[str, str], deadline: float) -> Verdict:
    """The HTTP exchange, reading at most MAX_RESPONSE_BYTES and stopping at `deadline`."""
    try:
        timeout = max(0.0, deadline - time.monotonic())
        with client().stream("POST", url, content=content, headers=headers, timeout=timeout) as response:
            received = bytearray()
            for chunk in response.iter_raw():
                received += chunk
                if len(received) > MAX_RESPONSE_BYTES:
                    return Verdict(Action.RETRY, "response_too_large")
                if time.monotonic() > deadline:
                    return Verdict(Action.RETRY, "timeout")
            return classify(response.status_code, bytes(received))
    except httpx.TimeoutException:
        return Verdict(Action.RETRY, "timeout")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # connection refused/reset, protocol errors, bad URL
        return Verdict(Action.RETRY, type(exc).__name__)
