"""Segment body parsing, event validation and dotted paths."""

from __future__ import annotations

import json
from pathlib import Path as FilePath
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiktok_bridge.segment import BodyError, EventError, Path, parse_body, parse_event, query_parameter

EVENTS_DIR = FilePath(__file__).resolve().parents[2] / "events" / "segment"
PII_EMAIL = "zelda.quixote.9931@pii-example.org"
EVENT = {"type": "track", "event": "Product Viewed", "messageId": "m-1"}


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_one_event_an_array_and_a_batch_all_give_the_events() -> None:
    second = {**EVENT, "messageId": "m-2"}
    assert parse_body(dumps(EVENT)) == [EVENT]
    assert parse_body(dumps([EVENT, second])) == [EVENT, second]
    assert parse_body(dumps({"batch": [EVENT, second], "sentAt": "2024-05-01T12:00:00Z"})) == [EVENT, second]
    assert parse_body(b"[]") == []


def test_array_elements_are_returned_for_per_event_validation() -> None:
    assert parse_body(b'[1, "x", {"type": "track"}]') == [1, "x", {"type": "track"}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"value": NaN}', "NaN is not a JSON value"),
        (b"[Infinity]", "not valid JSON"),
        (b"42", "must be a JSON object"),
        (b'"event"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"batch": {"type": "track"}}', '"batch" must be an array'),
    ],
)
def test_unusable_bodies_raise_a_clear_error(body: bytes, message: str) -> None:
    with pytest.raises(BodyError, match=message):
        parse_body(body)


def test_body_errors_do_not_echo_the_body() -> None:
    with pytest.raises(BodyError) as caught:
        parse_body(f'{{"email": "{PII_EMAIL}", }}'.encode())
    assert PII_EMAIL not in str(caught.value)


def test_unknown_fields_are_ignored_and_numbers_become_strings() -> None:
    event = parse_event({**EVENT, "userId": 42, "messageId": 7, "somethingNew": {"x": 1}})
    assert (event.userId, event.messageId) == ("42", "7")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not an object", "not a JSON object"),
        ({"type": "track"}, "messageId: Field required"),
        ({**EVENT, "messageId": ""}, "messageId: String should have at least 1 character"),
        ({**EVENT, "type": "purchase"}, "type: Input should be 'track'"),
        ({**EVENT, "properties": ["a"]}, "properties: Input should be a valid dictionary"),
        ({**EVENT, "timestamp": "yesterday"}, "timestamp: Input should be a valid datetime"),
        ({**EVENT, "context": {"page": "https://x.example"}}, "context.page: Input should be"),
    ],
)
def test_invalid_events_name_the_field(raw: object, message: str) -> None:
    with pytest.raises(EventError, match=message):
        parse_event(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {**EVENT, "properties": PII_EMAIL},
        {**EVENT, "timestamp": PII_EMAIL},
        {**EVENT, "type": PII_EMAIL},
        {**EVENT, "context": {"traits": PII_EMAIL, "ip": [PII_EMAIL]}},
        {**EVENT, "userId": {"email": PII_EMAIL}},
    ],
)
def test_event_errors_never_contain_the_values(raw: dict[str, Any]) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(raw)
    assert PII_EMAIL not in str(caught.value)


def test_every_sample_event_is_valid() -> None:
    samples = sorted(EVENTS_DIR.glob("*.json"))
    assert {"order-completed.json", "product-viewed.json", "batch.json"} <= {path.name for path in samples}
    for sample in samples:
        events = parse_body(sample.read_bytes())
        assert events, sample.name
        for raw in events:
            parse_event(raw)


def test_paths_walk_objects_and_read_url_query_parameters() -> None:
    raw = {
        "context": {"page": {"url": "https://shop.example/p?utm=a&ttclid=E.C.P.x&ttclid=second"}},
        "integrations": {"TikTok Conversions": {"ttclid": "from-integrations"}},
        "properties": "not an object",
    }
    assert Path.parse("context.page.url?ttclid").get(raw) == "E.C.P.x"
    assert Path.parse("integrations.TikTok Conversions.ttclid").get(raw) == "from-integrations"
    assert Path.parse("properties.email").get(raw) is None
    assert Path.parse("context.page.url?missing").get(raw) is None
    assert Path.parse("nowhere?ttclid").get(raw) is None


@pytest.mark.parametrize("text", ["", "a..b", ".a", "a.", "a?", "a? ", " "])
def test_malformed_paths_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="dot-separated"):
        Path.parse(text)


@pytest.mark.parametrize("url", ["http://[::1", 42, None, "https://x.example/?other=1"])
def test_query_parameter_of_malformed_or_missing_urls_is_none(url: object) -> None:
    assert query_parameter(url, "ttclid") is None


def parse_qs_reference(url: str, name: str) -> str | None:
    """What `query_parameter` computes, the slow way: the standard library's full query parser."""
    if name not in url:
        return None
    try:
        values = parse_qs(urlsplit(url).query).get(name)
    except ValueError:
        return None
    return values[0] if values else None


QUERY_PARTS = st.sampled_from(
    [
        "ttclid",
        "ttclid=",
        "=x",
        "ttclid=a",
        "tt%63lid=b",
        "ttclid=%20x+y",
        "&",
        "a=b",
        "ttclid+=c",
        "ttclid=d=e",
        ";ttclid=f",
        "#ttclid=g",
        "?",
        "ttclid=%zz",
        "tt+clid=i",
        "ttclid==j",
        "[",
        "%E2%82%AC",
    ]
)


@given(st.lists(QUERY_PARTS, max_size=6), st.sampled_from(["https://x.example/p?", "https://[x/?", "?", ""]))
def test_query_parameter_matches_parse_qs(parts: list[str], prefix: str) -> None:
    url = prefix + "".join(parts)
    assert query_parameter(url, "ttclid") == parse_qs_reference(url, "ttclid")
