"""Webhook authentication (SPEC §2): Segment's HMAC-SHA1 `X-Signature` and/or a Bearer or Basic token.

Every credential the secrets configure must be proven (the current value, or the previous one while a rotation
is under way): `webhook_secret` (signature), `webhook_token` (token),
or both (the template generates both). With neither configured every request is refused. A signature that
covers only the first element of a batch (Segment's Actions webhook) proves only that element, so it counts
as `FirstElementSignature` says (settings.py). All comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from enum import Enum

from pydantic import SecretStr

from tiktok_bridge.secret import BridgeSecret
from tiktok_bridge.settings import FirstElementSignature

_JSON_WHITESPACE = b" \t\n\r"
# A JSON string (escapes included) or a bracket: enough to find where an element ends, without recursion.
_STRING_OR_BRACKET = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_SCALAR = re.compile(rb"[^,\]\s]+")


class Proof(Enum):
    """What an authenticated request proves: every event, or only the first (its signature alone)."""

    BODY = "body"
    FIRST_ELEMENT = "first element"


def _element_end(raw: bytes, start: int) -> int | None:
    """The end offset of the JSON value starting at `start`; None if it is unterminated or empty.

    Brackets are counted in a loop (no recursion, so any nesting depth is fine); a malformed value can
    only yield a span no genuine signature covers, and the body parser refuses it afterwards.
    """
    if raw[start : start + 1] not in (b"{", b"[", b'"'):
        scalar = _SCALAR.match(raw, start)
        if scalar is None:
            return None
        try:
            json.loads(scalar.group())
        except ValueError:
            return None
        return scalar.end()
    depth = 0
    for token in _STRING_OR_BRACKET.finditer(raw, start):
        if token.start() == start and token.group()[:1] == b'"':
            return token.end()  # the element is a string
        depth += {b"{": 1, b"[": 1, b"}": -1, b"]": -1}.get(token.group(), 0)
        if depth == 0:
            return token.end()
    return None


def first_element(raw: bytes) -> bytes | None:
    """The raw bytes of the first element of a JSON array body, exactly as sent; None if there is none.

    Segment's Webhooks (Actions) destination signs `JSON.stringify(events[0])`, which is this span of its
    `"[" + JSON.stringify(e0) + "," + ...` body. It is located, never re-serialised.
    """
    start = len(raw) - len(raw.lstrip(_JSON_WHITESPACE))
    if raw[start : start + 1] != b"[":
        return None
    start = len(raw) - len(raw[start + 1 :].lstrip(_JSON_WHITESPACE))
    end = _element_end(raw, start)
    return raw[start:end] if end is not None else None


def signature(secret: str, payload: bytes) -> str:
    """Hex HMAC-SHA1 of `payload`, as Segment computes `X-Signature`."""
    return hmac.new(secret.encode(), payload, hashlib.sha1).hexdigest()


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def signature_proof(raw: bytes, header: str, secret: str) -> Proof | None:
    """What `header` signs: the whole body, only its first array element, or neither (None)."""
    given = header.strip().lower()
    if _same(signature(secret, raw), given):
        return Proof.BODY
    element = first_element(raw)
    if element is not None and _same(signature(secret, element), given):
        return Proof.FIRST_ELEMENT
    return None


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


def _current_and_previous(current: SecretStr, previous: SecretStr) -> list[str]:
    """The values a credential accepts during a rotation; none when the current one is not configured."""
    value = current.get_secret_value()
    return [value, *filter(None, [previous.get_secret_value()])] if value else []


def authenticate(
    raw: bytes, headers: Mapping[str, str], secret: BridgeSecret, *, first_element: FirstElementSignature
) -> Proof | None:
    """What the request proves, or None when it fails a configured credential (or none is configured).

    The token proves the whole request; a first-element signature counts only with the token, or alone
    when `first_element` is "without-token" (then it proves the first event only).
    """
    headers = {name.lower(): value for name, value in headers.items()}
    webhook_secrets = _current_and_previous(secret.webhook_secret, secret.previous_webhook_secret)
    webhook_tokens = _current_and_previous(secret.webhook_token, secret.previous_webhook_token)
    if not webhook_secrets and not webhook_tokens:
        return None
    authorization = headers.get("authorization", "")
    if webhook_tokens and not any(token_matches(authorization, token) for token in webhook_tokens):
        return None
    if not webhook_secrets:
        return Proof.BODY
    given = headers.get("x-signature", "")
    proof = next(filter(None, (signature_proof(raw, given, key) for key in webhook_secrets)), None)
    if proof is Proof.FIRST_ELEMENT:
        if first_element == "refused":
            return None
        if webhook_tokens:
            return Proof.BODY
        return proof if first_element == "without-token" else None
    return proof
