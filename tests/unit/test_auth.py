"""Webhook authentication, with bodies and signatures made by Node the way Segment makes them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiktok_bridge.auth import Proof, authenticate, first_element, signature, signature_proof, token_matches
from tiktok_bridge.secret import BridgeSecret
from tiktok_bridge.settings import FirstElementSignature

FIXTURES = {
    p.stem: json.loads(p.read_text())
    for p in sorted(Path(__file__, "../../fixtures/segment").resolve().glob("*.json"))
}
SECRET = "demo-webhook-secret"
TOKEN = "demo-bearer-token"
FIRST_ELEMENT_SIGNED = ["batch-1", "batch-many", "batch-js-numbers", "batch-non-ascii", "batch-whitespace"]


def secret(webhook_secret: str = "", webhook_token: str = "") -> BridgeSecret:
    return BridgeSecret.parse({"webhook_secret": webhook_secret, "webhook_token": webhook_token})


def check(
    fixture: dict[str, Any],
    headers: dict[str, str],
    creds: BridgeSecret,
    *,
    first: FirstElementSignature = "without-token",
) -> bool:
    return authenticate(fixture["body"].encode(), headers, creds, first_element=first) is not None


def bearer(token: str = TOKEN) -> str:
    return f"Bearer {token}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_fixtures_are_all_present() -> None:
    assert len(FIXTURES) == 16
    assert all(f["secret"] == SECRET for f in FIXTURES.values())


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_node_signed_fixtures_verify_as_expected(name: str) -> None:
    fixture = FIXTURES[name]
    assert check(fixture, {"X-Signature": fixture["signature"]}, secret(SECRET)) is fixture["valid"]


@pytest.mark.parametrize(
    ("name", "ascii"), [("batch-js-numbers", False), ("single-js-numbers", False), ("batch-non-ascii", True)]
)
def test_python_reserialisation_would_not_verify(name: str, ascii: bool) -> None:
    """These fixtures catch a verifier that re-serialises: Python writes their JSON differently from Node."""
    raw = FIXTURES[name]["body"].encode()
    signed = first_element(raw) if raw.startswith(b"[") else raw
    assert signed is not None
    reserialised = json.dumps(json.loads(signed), separators=(",", ":"), ensure_ascii=ascii).encode()
    assert reserialised != signed
    assert signature(SECRET, reserialised) != FIXTURES[name]["signature"]


@pytest.mark.parametrize("name", [*FIRST_ELEMENT_SIGNED, "batch-later-tampered"])
def test_first_element_signatures_can_be_turned_off(name: str) -> None:
    fixture = FIXTURES[name]
    headers = {"X-Signature": fixture["signature"], "Authorization": bearer()}
    assert not check(fixture, headers, secret(SECRET, TOKEN), first="refused")


@pytest.mark.parametrize("name", ["single", "single-pretty", "http-batch", "batch-whole-body-signature"])
@pytest.mark.parametrize("first", ["with-token", "without-token", "refused"])
def test_whole_body_signatures_prove_the_body_in_every_mode(name: str, first: FirstElementSignature) -> None:
    fixture = FIXTURES[name]
    raw, headers = fixture["body"].encode(), {"X-Signature": fixture["signature"]}
    assert authenticate(raw, headers, secret(SECRET), first_element=first) is Proof.BODY


@pytest.mark.parametrize("name", FIRST_ELEMENT_SIGNED)
def test_a_first_element_signature_needs_the_token_by_default(name: str) -> None:
    """A captured signature of one event must not carry injected events (issue 11): by default a batch
    signed over its first element is refused unless the webhook token proves the whole request."""
    fixture = FIXTURES[name]
    raw, signed = fixture["body"].encode(), {"X-Signature": fixture["signature"]}
    assert authenticate(raw, signed, secret(SECRET), first_element="with-token") is None
    with_token = {**signed, "Authorization": bearer()}
    assert authenticate(raw, with_token, secret(SECRET, TOKEN), first_element="with-token") is Proof.BODY
    assert authenticate(raw, signed, secret(SECRET, TOKEN), first_element="with-token") is None


@pytest.mark.parametrize("name", FIRST_ELEMENT_SIGNED)
def test_without_token_a_first_element_signature_proves_only_the_first_event(name: str) -> None:
    fixture = FIXTURES[name]
    raw, signed = fixture["body"].encode(), {"X-Signature": fixture["signature"]}
    assert authenticate(raw, signed, secret(SECRET), first_element="without-token") is Proof.FIRST_ELEMENT


def test_later_element_tampering_needs_the_bearer_token_too() -> None:
    fixture = FIXTURES["batch-later-tampered"]
    both = secret(SECRET, TOKEN)
    assert check(fixture, {"X-Signature": fixture["signature"]}, secret(SECRET))
    assert not check(fixture, {"X-Signature": fixture["signature"]}, both)
    assert not check(fixture, {"X-Signature": fixture["signature"], "Authorization": bearer("guess")}, both)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "0" * 40,
        "not hex at all",
        "é" * 40,
        FIXTURES["single"]["signature"][:-1],
        FIXTURES["single"]["signature"] + "00",
        signature("another-secret", FIXTURES["single"]["body"].encode()),
    ],
)
def test_wrong_signatures_are_refused(header: str) -> None:
    assert not check(FIXTURES["single"], {"X-Signature": header}, secret(SECRET))


@pytest.mark.parametrize("name", ["X-Signature", "x-signature", "X-SIGNATURE"])
def test_signature_header_name_and_hex_case_do_not_matter(name: str) -> None:
    fixture = FIXTURES["single"]
    assert check(fixture, {name: f" {fixture['signature'].upper()} "}, secret(SECRET))


def test_missing_signature_is_refused() -> None:
    assert not check(FIXTURES["single"], {"Authorization": bearer()}, secret(SECRET))


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (bearer(), True),
        ("bearer  " + TOKEN + " ", True),
        ("BEARER " + TOKEN, True),
        (basic(TOKEN, ""), True),
        (basic("segment", TOKEN), True),
        (basic(TOKEN, "x:y"), True),
        (bearer("wrong"), False),
        (bearer(TOKEN + "x"), False),
        (bearer(""), False),
        ("Bearer", False),
        (TOKEN, False),
        ("Token " + TOKEN, False),
        (basic("segment", "wrong"), False),
        ("Basic !!!not-base64!!!", False),
        ("Basic " + base64.b64encode(b"\xff\xfe:" + TOKEN.encode()).decode(), False),
        ("Basic é", False),
        ("Bearer é€", False),
        ("", False),
    ],
)
def test_bearer_and_basic_tokens(header: str, ok: bool) -> None:
    assert token_matches(header, TOKEN) is ok
    headers = {"authorization": header}
    proof = authenticate(b"{}", headers, secret(webhook_token=TOKEN), first_element="with-token")
    assert proof is (Proof.BODY if ok else None)


def test_authorization_header_name_case_does_not_matter() -> None:
    assert authenticate(
        b"{}", {"AUTHORIZATION": bearer()}, secret(webhook_token=TOKEN), first_element="refused"
    )


@pytest.mark.parametrize(
    ("with_signature", "with_token", "ok"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_both_configured_both_must_match(with_signature: bool, with_token: bool, ok: bool) -> None:
    fixture = FIXTURES["batch-many"]
    headers = {"X-Signature": fixture["signature"] if with_signature else "0" * 40}
    headers["Authorization"] = bearer() if with_token else bearer("wrong")
    assert check(fixture, headers, secret(SECRET, TOKEN)) is ok


def test_nothing_configured_refuses_everything() -> None:
    fixture = FIXTURES["single"]
    empty_signature = signature("", fixture["body"].encode())
    headers = {"X-Signature": empty_signature, "Authorization": "Bearer "}
    assert not check(fixture, headers, secret())
    assert not check(fixture, {"X-Signature": fixture["signature"], "Authorization": bearer()}, secret())


def test_signature_proof_works_on_bytes_not_text() -> None:
    raw = '[{"name":"Zoë 🍮"},{"x":1}]'.encode()
    assert (
        signature_proof(raw, signature(SECRET, '{"name":"Zoë 🍮"}'.encode()), SECRET) is Proof.FIRST_ELEMENT
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"[1,2]", b"1"),
        (b'  \n[ \t{"a": "\xc3\xa9\xf0\x9f\x8d\xae"} , 2]', b'{"a": "\xc3\xa9\xf0\x9f\x8d\xae"}'),
        (b'["]", "x"]', b'"]"'),
        (b'[{"a":[1,{"b":"}"}]},\xff\xfe]', b'{"a":[1,{"b":"}"}]}'),  # invalid UTF-8 after the first element
        (b"[]", None),
        (b"[ ]", None),
        (b"[", None),
        (b"", None),
        (b'{"batch":[{"a":1}]}', None),
        (b"[\xff]", None),
        (b'[{"a":1', None),
        (b'["a\\"b", 1]', b'"a\\"b"'),
        (b"[" * 100_000 + b"]" * 100_000, b"[" * 99_999 + b"]" * 99_999),  # no recursion, any depth
        (b'[{"a":"\\\\"},1]', b'{"a":"\\\\"}'),
    ],
)
def test_first_element_finds_the_raw_span(raw: bytes, expected: bytes | None) -> None:
    assert first_element(raw) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3),
    max_leaves=10,
)


@given(st.lists(json_values, min_size=1, max_size=4), st.sampled_from(["", " ", "\n  "]))
def test_first_element_is_exactly_the_first_serialised_element(elements: list[Any], gap: str) -> None:
    parts = [json.dumps(e, ensure_ascii=False, indent=1 if gap else None) for e in elements]
    raw = f"{gap}[{gap}{(gap + ',' + gap).join(parts)}{gap}]{gap}".encode()
    assert first_element(raw) == parts[0].encode()


def test_during_a_rotation_the_previous_secret_and_token_still_prove_a_request() -> None:
    fixture = FIXTURES["single"]
    raw, old_signature = fixture["body"].encode(), {"X-Signature": fixture["signature"]}
    rotating = BridgeSecret.parse(
        {
            "webhook_secret": "new-secret",
            "previous_webhook_secret": SECRET,
            "webhook_token": "new-token",
            "previous_webhook_token": TOKEN,
        }
    )
    for token in ("new-token", TOKEN):
        headers = {**old_signature, "Authorization": bearer(token)}
        assert authenticate(raw, headers, rotating, first_element="with-token") is Proof.BODY
    new_signature = {"X-Signature": signature("new-secret", raw), "Authorization": bearer("new-token")}
    assert authenticate(raw, new_signature, rotating, first_element="with-token") is Proof.BODY
    wrong = {**old_signature, "Authorization": bearer("older-token")}
    assert authenticate(raw, wrong, rotating, first_element="with-token") is None


def test_a_previous_value_alone_configures_nothing() -> None:
    """An empty current secret or token turns that credential off; a previous value alone is none."""
    fixture = FIXTURES["single"]
    raw = fixture["body"].encode()
    only_previous = BridgeSecret.parse({"previous_webhook_secret": SECRET, "previous_webhook_token": TOKEN})
    headers = {"X-Signature": fixture["signature"], "Authorization": bearer()}
    assert authenticate(raw, headers, only_previous, first_element="with-token") is None
