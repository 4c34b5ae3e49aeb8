"""Webhook authentication (SPEC §2): Segment's HMAC-SHA1 `X-Signature` and/or a Bearer or Basic token.

Whatever the secret configures must match: `webhook_secret` (signature), `webhook_token` (token), or both.
With neither configured every request is refused. All comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping

from tiktok_bridge.secret import BridgeSecret

_JSON_WHITESPACE = b" \t\n\r"


def first_element(raw: bytes) -> bytes | None:
    """The raw bytes of the first element of a JSON array body, exactly as sent; None if there is none.

    Segment's Webhooks (Actions) destination signs `JSON.stringify(events[0])`, which is this span of its
    `"[" + JSON.stringify(e0) + "," + ...` body. It is located by the decoder, never re-serialised.
    """
    start = len(raw) - len(raw.lstrip(_JSON_WHITESPACE))
    if raw[start : start + 1] != b"[":
        return None
    start = len(raw) - len(raw[start + 1 :].lstrip(_JSON_WHITESPACE))
    tail = raw[start:].decode("utf-8", "surrogateescape")  # invalid bytes elsewhere keep their offsets
    try:
        _, end = json.JSONDecoder().raw_decode(tail)
    except ValueError:  # not an element, e.g. an empty array
        return None
    return raw[start : start + len(tail[:end].encode("utf-8", "surrogateescape"))]


def signature(secret: str, payload: bytes) -> str:
    """Hex HMAC-SHA1 of `payload`, as Segment computes `X-Signature`."""
    return hmac.new(secret.encode(), payload, hashlib.sha1).hexdigest()


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def signature_matches(raw: bytes, header: str, secret: str, *, accept_first_element: bool) -> bool:
    """Whether `header` signs the whole body or, if accepted, the body's first array element."""
    given = header.strip().lower()
    if _same(signature(secret, raw), given):
        return True
    element = first_element(raw) if accept_first_element else None
    return element is not None and _same(signature(secret, element), given)


def token_matches(header: str, token: str) -> bool:
    """Whether `Authorization` carries `token` as `Bearer <token>` or as the Basic user or password."""
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return _same(token, credentials)
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, ValueError):  # not base64, not UTF-8, or non-ASCII characters
        return False
    return _same(token, user) | _same(token, password)  # both compared: no timing hint which one matched


def authenticate(
    raw: bytes, headers: Mapping[str, str], secret: BridgeSecret, *, accept_first_element: bool
) -> bool:
    """Whether the request proves every configured credential (False when none is configured)."""
    headers = {name.lower(): value for name, value in headers.items()}
    webhook_secret = secret.webhook_secret.get_secret_value()
    webhook_token = secret.webhook_token.get_secret_value()
    if not webhook_secret and not webhook_token:
        return False
    signed = not webhook_secret or signature_matches(
        raw, headers.get("x-signature", ""), webhook_secret, accept_first_element=accept_first_element
    )
    tokened = not webhook_token or token_matches(headers.get("authorization", ""), webhook_token)
    return signed and tokened
