"""Server-side Identify on moto DynamoDB (the template's table): stitching, enrichment, click ids, consent,
forget, and that the table never holds a raw value."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from tiktok_bridge import identity, ingest
from tiktok_bridge.config import BridgeConfig, ConfigError, load_config
from tiktok_bridge.mapping import map_events
from tiktok_bridge_cli import cli
from tiktok_bridge_cli.stack import Stack, delete_stack

from tests.unit.test_ingest import post, queued

NOW = time.time()
DAY = identity.DAY_S
USER, ANON = "jane.user@example.com", "anon-7f3a-distinctive"  # a userId may well be an e-mail address
EMAIL, PHONE = "Jane.Raw@Example.com", "+1 415 555 0187"
RAW = [USER, ANON, EMAIL, EMAIL.lower(), PHONE, "+14155550187", "Janeraw", "Doeraw", "94107-1234"]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def at(offset_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW + offset_s))


def identify(n: int, offset_s: float = -3600, **ids: str) -> dict[str, Any]:
    traits = {
        "email": EMAIL,
        "phone": PHONE,
        "firstName": "Janeraw",
        "last_name": "Doeraw",
        "address": {"city": "San Francisco", "postal_code": "94107-1234"},
    }
    return {"type": "identify", "messageId": f"id-{n}", "timestamp": at(offset_s), **ids, "traits": traits}


def purchase(n: int, offset_s: float = 0, **fields: Any) -> dict[str, Any]:
    properties = {"currency": "USD", "value": 25, **fields.pop("properties", {})}
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"buy-{n}",
        "timestamp": at(offset_s),
        "properties": properties,
        **fields,
    }


def page(n: int, offset_s: float = -7200, ttclid: str = "E.C.P.click-1", **ids: str) -> dict[str, Any]:
    url = f"https://shop.example.com/landing?utm_source=tiktok&ttclid={ttclid}"
    return {
        "type": "page",
        "messageId": f"page-{n}",
        "timestamp": at(offset_s),
        "context": {"page": {"url": url}},
        **ids,
    }


def table_of(stack: Stack) -> str:
    return stack.resources["ProfilesTable"]["TableName"]


def items(stack: Stack) -> list[dict[str, Any]]:
    return list(boto3.client("dynamodb").scan(TableName=table_of(stack))["Items"])


def send(stack: Stack, *events: dict[str, Any]) -> list[dict[str, Any]]:
    """POST the events as one request; the TikTok events it enqueued (`data` of each)."""
    status, body = post(json.dumps(list(events)))
    assert status == 200, body
    return [mapped.data for mapped in queued(stack)]


def test_identify_then_a_later_track_is_enriched(bridge: Stack) -> None:
    assert send(bridge, identify(1, userId=USER)) == []  # identify is never forwarded
    [event] = send(bridge, purchase(1, userId=USER))
    assert event["user"] == {
        "external_id": sha256(USER),
        "email": sha256(EMAIL.lower()),
        "phone": sha256("+14155550187"),
        "first_name": sha256("janeraw"),
        "last_name": sha256("doeraw"),
        "zip_code": sha256("941071234"),
        "city": "sanfrancisco",
    }


def test_anonymous_visit_then_identify_links_click_id_and_pii_to_both_ids(bridge: Stack) -> None:
    [visit] = send(bridge, page(1, anonymousId=ANON))
    assert visit["user"]["ttclid"] == "E.C.P.click-1"
    send(bridge, identify(1, userId=USER, anonymousId=ANON))
    [offline_style] = send(bridge, purchase(1, userId=USER))  # a server-side purchase: only the userId
    assert offline_style["user"]["ttclid"] == "E.C.P.click-1"
    assert offline_style["user"]["email"] == sha256(EMAIL.lower())
    [anonymous] = send(bridge, purchase(2, anonymousId=ANON))
    assert anonymous["user"]["email"] == sha256(EMAIL.lower())
    assert anonymous["user"]["external_id"] == sha256(ANON)  # the event's own value wins
    keys = {item["pk"]["S"] for item in items(bridge)}
    assert keys == {f"user#{sha256(USER)}", f"anon#{sha256(ANON)}"}


def test_an_anonymous_external_id_is_not_taken_for_the_user(bridge: Stack) -> None:
    # the anonymous page comes after the identify: its external_id (the anonymousId's hash) is newer
    send(bridge, identify(1, userId=USER, anonymousId=ANON), page(1, anonymousId=ANON, offset_s=-60))
    for item in items(bridge):
        assert json.loads(item["profile"]["S"])["fields"]["external_id"]["v"] == sha256(USER)


def test_alias_links_the_previous_id(bridge: Stack) -> None:
    send(bridge, purchase(1, anonymousId=ANON, properties={"email": EMAIL}))
    alias = {"type": "alias", "messageId": "alias-1", "previousId": ANON, "userId": USER}
    assert send(bridge, alias) == []
    [event] = send(bridge, purchase(2, userId=USER))
    assert event["user"]["email"] == sha256(EMAIL.lower())
    # previousId may name a userId or an anonymousId: only the identity that exists is written
    assert {item["pk"]["S"] for item in items(bridge)} == {f"user#{sha256(USER)}", f"anon#{sha256(ANON)}"}


def test_event_values_win_and_become_the_profile(bridge: Stack) -> None:
    send(bridge, identify(1, userId=USER))
    [event] = send(bridge, purchase(1, userId=USER, properties={"email": "New@Example.com"}))
    assert event["user"]["email"] == sha256("new@example.com")
    assert event["user"]["phone"] == sha256(
        "+14155550187"
    )  # what the event lacks still comes from the profile
    [later] = send(bridge, purchase(2, userId=USER))
    assert later["user"]["email"] == sha256("new@example.com")  # the value seen last


def test_only_configured_fields_are_enriched(bridge: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_CONFIG", json.dumps({"identity": {"enrich": ["phone"]}}))
    send(bridge, identify(1, userId=USER))
    [event] = send(bridge, purchase(1, userId=USER))
    assert set(event["user"]) == {"external_id", "phone"}


def test_identify_and_purchase_in_one_request(bridge: Stack) -> None:
    [event] = send(bridge, purchase(1, userId=USER), identify(1, userId=USER))
    assert event["user"]["email"] == sha256(EMAIL.lower())


def stitched(store: identity.ProfileStore, events: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    config = BridgeConfig()
    forwarded = map_events(events, config, now=now).forwarded
    report = identity.identify(events, forwarded, config, store, now=now)
    assert report.error is None
    return [mapped.data for mapped in report.forwarded]


@pytest.mark.parametrize(("days", "attached"), [(6.9, True), (7.1, False)])
def test_click_ids_expire_after_7_days(stack: Stack, days: float, attached: bool) -> None:
    store = identity.ProfileStore(boto3.client("dynamodb"), table_of(stack))
    visit = page(1, anonymousId=ANON, offset_s=0)
    visit["integrations"] = {"TikTok Conversions": {"ttp": "ttp-cookie-1"}}
    stitched(store, [visit, identify(1, userId=USER, anonymousId=ANON, offset_s=60)], now=NOW + 60)
    later = NOW + days * DAY
    [event] = stitched(store, [purchase(1, offset_s=days * DAY, userId=USER)], now=later)
    assert ("ttclid" in event["user"], "ttp" in event["user"]) == (attached, attached)
    assert event["user"]["email"] == sha256(EMAIL.lower())  # PII does not expire with the click id


def test_a_click_after_the_purchase_is_not_attached(stack: Stack) -> None:
    store = identity.ProfileStore(boto3.client("dynamodb"), table_of(stack))
    stitched(store, [page(1, userId=USER, offset_s=0)], now=NOW)
    [event] = stitched(store, [purchase(1, offset_s=-60, userId=USER)], now=NOW + 10)
    assert "ttclid" not in event["user"]


def test_a_future_timestamp_cannot_pin_a_value(stack: Stack) -> None:
    store = identity.ProfileStore(boto3.client("dynamodb"), table_of(stack))
    forged = purchase(1, offset_s=365 * DAY, userId=USER, properties={"email": "forged@example.com"})
    stitched(store, [forged], now=NOW)
    stitched(store, [purchase(2, offset_s=60, userId=USER, properties={"email": EMAIL})], now=NOW + 60)
    [event] = stitched(store, [purchase(3, offset_s=120, userId=USER)], now=NOW + 120)
    assert event["user"]["email"] == sha256(EMAIL.lower())


CONSENT = {"identity": {"enabled": True}, "consent": {"required_categories": ["Advertising"]}}


def consent(granted: Any) -> dict[str, Any]:
    return {"consent": {"categoryPreferences": granted}}


@pytest.mark.parametrize(
    "context",
    [
        {},
        consent({"Advertising": False, "Analytics": True}),
        consent({"Advertising": "true"}),  # a string is not consent
        consent("Advertising"),
        {"consent": None},
    ],
)
def test_without_consent_nothing_is_stored_or_sent(
    bridge: Stack, monkeypatch: pytest.MonkeyPatch, context: dict[str, Any]
) -> None:
    monkeypatch.setenv("BRIDGE_CONFIG", json.dumps(CONSENT))
    events = [identify(1, userId=USER), purchase(1, userId=USER), page(1, anonymousId=ANON)]
    status, body = post(
        json.dumps([{**event, "context": {**event.get("context", {}), **context}} for event in events])
    )
    assert (status, body) == (200, {"accepted": 0, "rejected": [], "skipped": 3})
    assert queued(bridge) == []
    assert items(bridge) == []


def test_with_consent_events_flow_and_malformed_ones_are_still_rejected(
    bridge: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_CONFIG", json.dumps(CONSENT))
    granted = {"context": consent({"Advertising": True})}
    status, body = post(
        json.dumps([{**identify(1, userId=USER), **granted}, {**purchase(1, userId=USER), **granted}, "junk"])
    )
    assert status == 200 and body["accepted"] == 1 and len(body["rejected"]) == 1
    [event] = [m.data for m in queued(bridge)]
    assert event["user"]["email"] == sha256(EMAIL.lower())


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"consent": {"required_categories": [" "]}}, "consent.required_categories"),
        ({"identity": {"enrich": ["email", "ip"]}}, "identity.enrich.1"),
        ({"identity": {"click_id_ttl_days": 0}}, "identity.click_id_ttl_days"),
        ({"identity": {"profile_days": 3}}, "identity.profile_days"),
    ],
)
def test_bad_identity_config_names_the_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(json.dumps(config))


def test_the_table_never_holds_a_raw_value(bridge: Stack) -> None:
    visit = page(1, anonymousId=ANON)
    visit["context"]["traits"] = {"email": EMAIL, "first_name": "Janeraw"}
    alias = {"type": "alias", "messageId": "alias-1", "previousId": ANON, "userId": USER}
    send(bridge, visit, identify(1, userId=USER, anonymousId=ANON), alias)
    send(bridge, purchase(1, userId=USER, properties={"phone": PHONE, "address": {"zip_code": "94107-1234"}}))
    stored = json.dumps(items(bridge))
    assert len(items(bridge)) == 2
    assert not [raw for raw in RAW if raw.lower() in stored.lower()]
    assert sha256(EMAIL.lower()) in stored and "sanfrancisco" in stored  # city/state/country are plain


@pytest.fixture
def dynamodb_calls(bridge: Stack) -> Counter[str]:
    """DynamoDB API calls the ingest runtime's real client makes (a botocore event hook)."""
    calls: Counter[str] = Counter()
    store = ingest.runtime().profiles
    assert store is not None
    store.dynamodb.meta.events.register("before-call.dynamodb", lambda model, **_: calls.update([model.name]))
    return calls


def test_one_batched_read_and_one_batched_write_per_request(
    bridge: Stack, dynamodb_calls: Counter[str]
) -> None:
    users = [f"user-{n}" for n in range(12)]
    events = [
        e
        for n, user in enumerate(users)
        for e in (identify(n, userId=user, anonymousId=f"a-{n}"), purchase(n, userId=user))
    ]
    assert len(send(bridge, *events)) == 12
    assert dynamodb_calls == {"BatchGetItem": 1, "BatchWriteItem": 1}  # 24 items: one call
    dynamodb_calls.clear()
    send(bridge, *[purchase(n, userId=user) for n, user in enumerate(users)])
    assert dynamodb_calls == {"BatchGetItem": 1}  # nothing new to write


def test_a_large_request_reads_100_and_writes_25_keys_a_call(
    bridge: Stack, dynamodb_calls: Counter[str]
) -> None:
    events = [identify(n, userId=f"user-{n}", anonymousId=f"a-{n}") for n in range(150)]
    send(bridge, *events)
    assert dynamodb_calls == {"BatchGetItem": 3, "BatchWriteItem": 12}  # 300 keys; 300 items
    assert len(items(bridge)) == 300


def last_metrics(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The last EMF blob Powertools printed."""
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    return dict(blobs[-1])


def test_dynamodb_unavailable_events_are_still_enqueued(
    bridge: Stack, ingest_logs: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest.runtime()  # made while the table exists
    boto3.client("dynamodb").delete_table(TableName=table_of(bridge))
    [event] = send(bridge, identify(1, userId=USER), purchase(1, userId=USER, properties={"phone": PHONE}))
    assert event["user"]["email"] == sha256(EMAIL.lower())  # what the request itself teaches still applies
    logs = ingest_logs.getvalue()
    assert "profiles unavailable; events go on without them" in logs and "ResourceNotFoundException" in logs
    assert last_metrics(capsys)["ProfileStoreErrors"] == [1.0]
    assert not [raw for raw in RAW if raw.lower() in logs.lower()]


def test_an_unreachable_dynamodb_fails_fast_and_loses_nothing(
    bridge: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")
    started = time.monotonic()
    assert len(send(bridge, purchase(1, userId=USER))) == 1
    assert time.monotonic() - started < 5


def flaky_writes(store: identity.ProfileStore, times: int) -> Counter[str]:
    """The first `times` BatchWriteItem calls process nothing: DynamoDB hands every item back."""
    calls: Counter[str] = Counter()
    requested: list[Any] = []

    def remember(params: dict[str, Any], **_: Any) -> None:
        requested[:] = params["RequestItems"][store.table]

    def unprocessed(**_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        calls["BatchWriteItem"] += 1
        if calls["BatchWriteItem"] > times:
            return None  # the real call
        return AWSResponse("", 200, HTTPHeaders(), None), {"UnprocessedItems": {store.table: list(requested)}}

    store.dynamodb.meta.events.register("provide-client-params.dynamodb.BatchWriteItem", remember)
    store.dynamodb.meta.events.register("before-call.dynamodb.BatchWriteItem", unprocessed)  # type: ignore[arg-type]
    return calls


CHANGED = {f"user#{n}": identity.Stored({"email": identity.Seen("a" * 64, 1)}) for n in range(3)}


def test_unprocessed_items_are_retried(stack: Stack) -> None:
    store = identity.ProfileStore(boto3.client("dynamodb"), table_of(stack), backoff_s=0)
    calls = flaky_writes(store, times=2)
    store.save(CHANGED, expires_at=int(NOW) + DAY)
    assert calls["BatchWriteItem"] == 3
    assert set(store.load(CHANGED, NOW)) == set(CHANGED)


def test_items_left_unprocessed_fail_the_save_clearly(stack: Stack) -> None:
    store = identity.ProfileStore(boto3.client("dynamodb"), table_of(stack), backoff_s=0)
    flaky_writes(store, times=100)
    with pytest.raises(identity.StoreError, match="3 items unprocessed after 3 attempts"):
        store.save(CHANGED, expires_at=int(NOW) + DAY)


def test_forget_erases_the_user_and_linked_identities(
    bridge: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    send(
        bridge,
        page(1, anonymousId=ANON),
        identify(1, userId=USER, anonymousId=ANON),
        identify(2, userId="someone-else"),
    )
    assert len(items(bridge)) == 3
    assert cli.main(["forget", "--user-id", USER, "--table", table_of(bridge)]) == 0
    out = capsys.readouterr().out
    assert "deleted 2 profile item(s)" in out and USER not in out and ANON not in out
    assert [item["pk"]["S"] for item in items(bridge)] == [f"user#{sha256('someone-else')}"]
    assert cli.main(["forget", "--anonymous-id", ANON, "--table", table_of(bridge)]) == 0
    assert "deleted 0 profile item(s)" in capsys.readouterr().out


def test_forget_reports_bad_arguments_and_aws_errors(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["forget", "--table", table_of(stack)]) == 2
    assert cli.main(["forget", "--user-id", USER, "--table", "no-such-table"]) == 1
    err = capsys.readouterr().err
    assert "ResourceNotFoundException" in err and USER not in err


def test_hostile_items_in_the_table_are_ignored_not_fatal(bridge: Stack) -> None:
    key = f"user#{sha256(USER)}"
    profiles = [
        {"fields": {"email": {"v": 1, "t": 1}, "ip": {"v": "x", "t": 1}, "phone": "x"}, "links": "no list"},
        {"fields": {"email": {"v": "a" * 64, "t": "yesterday"}, "phone": {"v": ["b"], "t": True}}},
        {"fields": []},
        [],
    ]
    texts = [*map(json.dumps, profiles), "not json", "[" * 10_000]
    expires = {"N": str(int(NOW) + DAY)}
    for text in texts:
        item = {"pk": {"S": key}, "profile": {"S": text}, "expires_at": expires}
        boto3.client("dynamodb").put_item(TableName=table_of(bridge), Item=item)
        [event] = send(bridge, purchase(1, userId=USER))
        assert set(event["user"]) == {"external_id"}, text
    for item in ({"pk": {"S": key}, "expires_at": expires}, {"pk": {"S": key}, "profile": {"N": "1"}}):
        boto3.client("dynamodb").put_item(TableName=table_of(bridge), Item=item)
        [event] = send(bridge, purchase(1, userId=USER))
        assert set(event["user"]) == {"external_id"}


def test_an_expired_item_is_not_used(bridge: Stack) -> None:
    store = identity.ProfileStore(boto3.client("dynamodb"), table_of(bridge))
    store.save(
        {f"user#{sha256(USER)}": identity.Stored({"email": identity.Seen("a" * 64, 1)})},
        expires_at=int(NOW) - 1,
    )
    [event] = send(bridge, purchase(1, userId=USER))
    assert "email" not in event["user"]


def test_coverage_before_and_after() -> None:
    events: list[dict[str, Any]] = [
        {"user": {"email": "e", "ttclid": "t"}},
        {"user": {"external_id": "x", "email": ["a", "b"]}},
        {},
        {"user": {"phone": ""}},
    ]
    assert identity.coverage(events) == {"email": 0.5, "phone": 0.0, "external_id": 0.25, "ttclid": 0.25}
    assert identity.coverage([]) == {"email": 0.0, "phone": 0.0, "external_id": 0.0, "ttclid": 0.0}


def test_ingest_reports_coverage_metrics(
    bridge: Stack, ingest_logs: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    send(bridge, identify(1, userId=USER))
    send(bridge, purchase(1, userId=USER), purchase(2, anonymousId="stranger"))
    metrics = last_metrics(capsys)
    assert (metrics["MatchKeyEmailBefore"], metrics["MatchKeyEmailAfter"]) == ([0.0], [1.0])
    assert (metrics["EventsForwarded"], metrics["EventsEnriched"]) == ([2.0], [1.0])


def test_the_template_table_is_created_and_deleted(stack: Stack) -> None:
    dynamodb = boto3.client("dynamodb")
    table = dynamodb.describe_table(TableName=table_of(stack))["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    ttl = dynamodb.describe_time_to_live(TableName=table_of(stack))["TimeToLiveDescription"]
    assert (ttl["AttributeName"], ttl["TimeToLiveStatus"]) == ("expires_at", "ENABLED")
    assert stack.ingest.environment["PROFILES_TABLE"] == table_of(stack)
    delete_stack(stack)
    assert dynamodb.list_tables()["TableNames"] == []
