"""Segment -> TikTok mapping (SPEC §3): presets, field fallbacks, contents, value, offline, privacy."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tiktok_bridge.config import BridgeConfig, load_config
from tiktok_bridge.mapping import OFFLINE_NEEDS_ID, EventMapping, map_event, map_events
from tiktok_bridge.model import Route, request_bodies
from tiktok_bridge.segment import parse_body

EVENTS_DIR = Path(__file__).resolve().parents[2] / "events" / "segment"
NOW = 1_714_600_000.0
BOTH = BridgeConfig(offline={"enabled": True})
OFFLINE = BridgeConfig(web={"enabled": False}, offline={"enabled": True})
# Distinctive PII: none of these strings may appear in any output except where the spec sends it in clear.
PII = {
    "email": "Zelda.Quixote.9931@PII-Example.org",
    "phone": "+1 415 555 0199",
    "first_name": "Zeldabeth",
    "last_name": "Quixotesque",
    "street": "77 Wisteria Lane Unit 9931",
    "postal_code": "99310-4242",
    "user_id": "customer-zq-9931",
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return loaded


def track(event: str = "Order Completed", **fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "messageId": "msg-1",
        "timestamp": "2024-05-01T12:00:00Z",
        **fields,
    }


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        raw = raw.setdefault(key, {})
    raw[last] = value


def output(data: dict[str, Any], field: str) -> Any:
    group, _, name = field.partition(".")
    return data.get(group, {}).get(name) if name else data.get(group)


def only(mapping: EventMapping) -> dict[str, Any]:
    assert len(mapping.forwarded) == 1, mapping
    return mapping.forwarded[0].data


# --- presets ----------------------------------------------------------------------------------------------

PRESET_ROWS = [  # SPEC §3.1, written out independently of config.PRESET_TRIGGERS
    ("page", "Home", "Pageview"),
    ("track", "Product Viewed", "ViewContent"),
    ("track", "Product Clicked", "ClickButton"),
    ("track", "Products Searched", "Search"),
    ("track", "Product Added to Wishlist", "AddToWishlist"),
    ("track", "Product Added", "AddToCart"),
    ("track", "Checkout Started", "InitiateCheckout"),
    ("track", "Payment Info Entered", "AddPaymentInfo"),
    ("track", "Order Placed", "PlaceAnOrder"),
    ("track", "Order Completed", "Purchase"),
    ("track", "Form Submitted", "Lead"),
    ("track", "Signed Up", "CompleteRegistration"),
    ("track", "Account Created", "CompleteRegistration"),
    ("track", "Callback Started", "Contact"),
    ("track", "Subscription Created", "Subscribe"),
    ("track", "Download Link Clicked", "Download"),
]


def preset_event(event_type: str, name: str) -> dict[str, Any]:
    raw = track(name, userId="u-1", properties={"email": "a@example.com"})
    if event_type == "page":
        raw.update(type="page", name=name)
        del raw["event"]
    return raw


@pytest.mark.parametrize(("event_type", "name", "expected"), PRESET_ROWS)
def test_every_preset_maps_for_web_and_offline(event_type: str, name: str, expected: str) -> None:
    mapping = map_event(preset_event(event_type, name), BOTH, now=NOW)
    assert [(m.route, m.data["event"]) for m in mapping.forwarded] == [
        (Route("web"), expected),
        (Route("offline"), expected),
    ]
    assert not mapping.rejected and mapping.skipped is None


@pytest.mark.parametrize(
    ("name", "legacy"), [("Order Completed", "CompletePayment"), ("Form Submitted", "SubmitForm")]
)
def test_legacy_event_names(name: str, legacy: str) -> None:
    config = load_config("legacy_event_names: true")
    assert only(map_event(track(name), config, now=NOW))["event"] == legacy


# --- field sources and fallbacks --------------------------------------------------------------------------


def url_with(value: str) -> str:
    return f"https://shop.example.com/p?utm_source=tiktok&ttclid={value}"


# field -> (default source paths, SPEC §3.2 order; the value to put at path number i; the expected output)
FIELD_CASES: dict[str, tuple[list[str], Callable[[int], Any], Callable[[Any], Any]]] = {
    "event_time": (
        ["timestamp", "originalTimestamp", "receivedAt"],
        lambda i: f"2024-05-01T12:00:0{i}.250Z",
        lambda v: 1714564800 + int(v[18]),
    ),
    "user.external_id": (["userId", "anonymousId"], lambda i: f" Id-{i} ", lambda v: sha(v.strip())),
    "user.email": (
        ["properties.email", "context.traits.email", "traits.email"],
        lambda i: f" User{i}@Example.com",
        lambda v: sha(v.strip().lower()),
    ),
    "user.phone": (
        ["properties.phone", "context.traits.phone", "traits.phone"],
        lambda i: f"(415) 555-010{i}",
        lambda v: sha("+1415555010" + v[-1]),
    ),
    "user.first_name": (
        ["properties.first_name", "context.traits.first_name"],
        lambda i: f"Mary-Ann {i}",
        lambda v: sha("maryann" + v[-1]),
    ),
    "user.last_name": (
        ["properties.last_name", "context.traits.last_name"],
        lambda i: f"O'Brien{i}",
        lambda v: sha("obrien" + v[-1]),
    ),
    "user.city": (
        ["properties.address.city", "context.traits.address.city"],
        lambda i: f"San Francisco {i}",
        lambda v: "sanfrancisco" + v[-1],
    ),
    "user.state": (
        ["properties.address.state", "context.traits.address.state"],
        lambda i: f"C.A.{i}",
        lambda v: "ca" + v[-1],
    ),
    "user.country": (
        ["properties.address.country", "context.traits.address.country"],
        lambda i: f"U.S.{i}",
        lambda v: "us" + v[-1],
    ),
    "user.zip_code": (
        [
            "properties.address.postal_code",
            "properties.address.zip_code",
            "context.traits.address.postal_code",
            "context.traits.address.zip_code",
        ],
        lambda i: f"94107-00{i}",
        lambda v: sha(v.replace("-", "")),
    ),
    "user.ip": (["context.ip"], lambda i: f"203.0.113.{i}", lambda v: v),
    "user.user_agent": (["context.userAgent"], lambda i: f"Agent/{i}", lambda v: v),
    "user.locale": (["context.locale"], lambda i: f"en-US-{i}", lambda v: v),
    "user.ttclid": (
        [
            "properties.ttclid",
            "integrations.TikTok Conversions.ttclid",
            "integrations.Tiktok Conversions.ttclid",
            "integrations.TikTok Offline Conversions.ttclid",
            "properties.url?ttclid",
            "context.page.url?ttclid",
        ],
        lambda i: f"E.C.P.click{i}",
        lambda v: v,
    ),
    "user.ttp": (
        [
            "properties.ttp",
            "integrations.TikTok Conversions.ttp",
            "integrations.Tiktok Conversions.ttp",
            "integrations.TikTok Offline Conversions.ttp",
        ],
        lambda i: f"ttp-cookie-{i}",
        lambda v: v,
    ),
    "page.url": (
        ["properties.url", "context.page.url"],
        lambda i: f"https://shop.example.com/{i}",
        lambda v: v,
    ),
    "page.referrer": (
        ["properties.referrer", "context.page.referrer"],
        lambda i: f"https://ref.example.com/{i}",
        lambda v: v,
    ),
    "properties.currency": (["properties.currency"], lambda i: "eur", lambda v: "EUR"),
    "properties.value": (["properties.value", "properties.revenue"], lambda i: i + 0.5, lambda v: v),
    "properties.query": (["properties.query", "properties.search_term"], lambda i: f"socks {i}", lambda v: v),
    "properties.order_id": (["properties.order_id"], lambda i: 1000 + i, lambda v: str(v)),
    "properties.shop_id": (["properties.shop_id"], lambda i: f"shop-{i}", lambda v: v),
    "properties.description": (["properties.description"], lambda i: f"Order {i}", lambda v: v),
    "limited_data_use": (["properties.limited_data_use", "limited_data_use"], lambda i: i == 0, lambda v: v),
}
FALLBACKS = [(field, index) for field, (paths, _, _) in FIELD_CASES.items() for index in range(len(paths))]


@pytest.mark.parametrize(("field", "index"), FALLBACKS)
def test_every_field_takes_the_first_present_source(field: str, index: int) -> None:
    paths, value_at, expected = FIELD_CASES[field]
    raw: dict[str, Any] = {"type": "track", "event": "Order Completed", "messageId": "msg-1"}
    for later in range(index, len(paths)):  # the chosen source and every source after it
        location, _, query = paths[later].partition("?")
        set_path(raw, location, url_with(value_at(later)) if query else value_at(later))
    mapping = map_event(raw, BridgeConfig(), now=NOW)
    assert output(only(mapping), field) == expected(value_at(index))
    assert mapping.sources[field] == paths[index]


@pytest.mark.parametrize(
    "field", [field for field in FIELD_CASES if field not in {"event_time", "limited_data_use"}]
)
def test_a_field_without_source_is_omitted(field: str) -> None:
    data = only(
        map_event({"type": "track", "event": "Order Completed", "messageId": "m"}, BridgeConfig(), now=NOW)
    )
    assert output(data, field) is None


def test_event_time_falls_back_to_now_and_accepts_unix_times() -> None:
    bare = {"type": "track", "event": "Order Completed", "messageId": "m"}
    mapping = map_event(bare, BridgeConfig(), now=NOW + 0.9)
    assert only(mapping)["event_time"] == int(NOW)
    assert mapping.sources["event_time"] == "now"
    assert (
        only(map_event({**bare, "timestamp": "2024-05-01T12:00:00"}, BridgeConfig()))["event_time"]
        == 1714564800
    )
    config = load_config("fields: {event_time: [properties.ts]}")
    for unix in (1714564800, 1714564800123, "2024-05-01T14:00:00+02:00"):
        assert only(map_event({**bare, "properties": {"ts": unix}}, config))["event_time"] == 1714564800


def test_event_id_is_the_message_id_and_can_be_overridden() -> None:
    assert only(map_event(track(), BridgeConfig(), now=NOW))["event_id"] == "msg-1"
    config = load_config("fields: {event_id: [properties.order_id, messageId]}")
    assert only(map_event(track(properties={"order_id": 42}), config))["event_id"] == "42"
    assert only(map_event(track(), config))["event_id"] == "msg-1"


def test_limited_data_use_defaults_to_the_setting() -> None:
    assert only(map_event(track(), BridgeConfig(), now=NOW))["limited_data_use"] is False
    assert (
        only(map_event(track(), load_config("limited_data_use: true"), now=NOW))["limited_data_use"] is True
    )
    event = track(
        limited_data_use=False, properties={"limited_data_use": "maybe"}
    )  # not a boolean: next source
    assert only(map_event(event, load_config("limited_data_use: true"), now=NOW))["limited_data_use"] is False


@pytest.mark.parametrize("key", ["TikTok Conversions", "Tiktok Conversions", "TikTok Offline Conversions"])
def test_ttclid_and_ttp_from_every_integrations_key(key: str) -> None:
    data = only(map_event(track(integrations={key: {"ttclid": "E.C.P.i", "ttp": "ttp-i"}}), BridgeConfig()))
    assert (data["user"]["ttclid"], data["user"]["ttp"]) == ("E.C.P.i", "ttp-i")


def test_ttclid_from_the_page_url() -> None:
    data = only(map_event(sample("order-completed.json"), BridgeConfig()))
    assert data["user"]["ttclid"] == "E.C.P.Ct0BAbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
    page = {"type": "page", "messageId": "p", "properties": {"url": url_with("E.C.P.page")}}
    assert only(map_event(page, BridgeConfig()))["user"]["ttclid"] == "E.C.P.page"


# --- user data --------------------------------------------------------------------------------------------


def test_already_hashed_values_pass_through_lower_cased() -> None:
    digest = sha("someone@example.com")
    event = track(
        userId=digest.upper(), properties={"email": digest.upper(), "phone": digest, "first_name": digest}
    )
    user = only(map_event(event, BridgeConfig()))["user"]
    assert user["email"] == user["phone"] == user["first_name"] == user["external_id"] == digest


@pytest.mark.parametrize("email", ["", "   ", "not-an-email", "a@b@c", ["", "nope"], 42, {"x": 1}])
@pytest.mark.parametrize("phone", ["", "n/a", "12", "+1 555", [], True])
def test_invalid_email_and_phone_are_omitted(email: Any, phone: Any) -> None:
    data = only(map_event(track(properties={"email": email, "phone": phone}), BridgeConfig()))
    assert "email" not in data["user"]
    assert "phone" not in data["user"]


def test_invalid_first_source_falls_through_to_a_valid_one() -> None:
    event = track(properties={"email": "not-an-email"}, context={"traits": {"email": "ok@example.com"}})
    mapping = map_event(event, BridgeConfig())
    assert only(mapping)["user"]["email"] == sha("ok@example.com")
    assert mapping.sources["user.email"] == "context.traits.email"


def test_email_and_phone_arrays_become_arrays_of_hashes() -> None:
    event = track(properties={"email": ["A@example.com", "bad", "a@example.com"], "phone": ["+14155550100"]})
    user = only(map_event(event, BridgeConfig()))["user"]
    assert user["email"] == [sha("a@example.com")]
    assert user["phone"] == [sha("+14155550100")]


def test_phone_default_region_is_configurable() -> None:
    event = track(properties={"phone": "020 7946 0018"})
    assert only(map_event(event, load_config("phone_default_region: GB")))["user"]["phone"] == sha(
        "+442079460018"
    )
    assert "phone" not in only(map_event(event, load_config("phone_default_region: null")))["user"]


def test_external_id_case_is_kept_unless_configured() -> None:
    assert only(map_event(track(userId="User-7"), BridgeConfig()))["user"]["external_id"] == sha("User-7")
    config = load_config("lowercase_external_id: true")
    assert only(map_event(track(userId="User-7"), config))["user"]["external_id"] == sha("user-7")


# --- contents and value -----------------------------------------------------------------------------------


def test_multi_product_contents_and_value_from_revenue() -> None:
    properties = only(map_event(sample("order-completed.json"), BridgeConfig()))["properties"]
    assert properties["contents"] == [
        {
            "content_id": "SKU-RED-SHOE-42",
            "content_name": "Red Running Shoe",
            "content_category": "Shoes",
            "price": 59.99,
            "quantity": 1,
            "brand": "Acme",
        },
        {
            "content_id": "50314",
            "content_name": "Sport Socks (3 pack)",
            "content_category": "Accessories",
            "price": 19.99,
            "quantity": 3,
            "brand": "Acme",
        },
    ]
    assert properties["content_type"] == "product"
    assert properties["value"] == 119.97
    assert properties["currency"] == "USD"
    assert properties["order_id"] == "ORD-100234"


def test_single_product_contents_with_a_numeric_product_id() -> None:
    data = only(map_event(sample("product-viewed.json"), BridgeConfig()))
    assert data["properties"]["contents"] == [
        {
            "content_id": "50314",
            "content_name": "Sport Socks (3 pack)",
            "content_category": "Accessories",
            "price": 19.99,
            "quantity": 1,
            "brand": "Acme",
        }
    ]
    assert isinstance(data["properties"]["contents"][0]["content_id"], str)


@pytest.mark.parametrize(
    ("product", "content_id"),
    [({"product_id": 7, "sku": "S", "id": "I"}, "7"), ({"sku": "S", "id": "I"}, "S"), ({"id": 9.5}, "9.5")],
)
def test_content_id_falls_back_to_sku_then_id(product: dict[str, Any], content_id: str) -> None:
    mapping = map_event(track("Product Added", properties=product), BridgeConfig())
    assert only(mapping)["properties"]["contents"] == [{"content_id": content_id}]


def test_value_zero_is_kept() -> None:
    event = track(properties={"value": 0, "revenue": 25, "products": [{"price": 10, "quantity": 2}]})
    assert only(map_event(event, BridgeConfig()))["properties"]["value"] == 0


def test_value_is_the_sum_of_price_times_quantity_when_absent() -> None:
    products = [
        {"product_id": "a", "price": "10", "quantity": 2},
        {"product_id": "b", "price": 2.5},
        {"sku": "c"},
    ]
    mapping = map_event(track(properties={"products": products}), BridgeConfig())
    assert only(mapping)["properties"]["value"] == 22.5
    assert mapping.sources["properties.value"] == "sum of contents price x quantity"
    no_prices = track(properties={"products": [{"product_id": "a"}]})
    assert "value" not in only(map_event(no_prices, BridgeConfig()))["properties"]


def test_content_type_and_empty_products() -> None:
    event = track(properties={"content_type": "product_group", "products": [{"product_id": 1}, {}, "junk"]})
    properties = only(map_event(event, BridgeConfig()))["properties"]
    assert properties == {"contents": [{"content_id": "1"}], "content_type": "product_group"}
    odd_type = track(properties={"content_type": "video", "products": [{"product_id": 1}]})
    assert only(map_event(odd_type, BridgeConfig()))["properties"]["content_type"] == "product"
    assert "properties" not in only(map_event(track(properties={"products": "none"}), BridgeConfig()))


def test_events_without_contents_carry_none() -> None:
    data = only(map_event(track("Signed Up", properties={"product_id": 1, "price": 3}), BridgeConfig()))
    assert "properties" not in data


# --- destinations, offline, test event code ---------------------------------------------------------------


def test_offline_events_have_no_page_and_carry_lead_id() -> None:
    event = track(userId="u", properties={"lead_id": "lead-7", "url": "https://shop.example.com/x"})
    web, offline = map_event(event, BOTH).forwarded
    assert web.data["page"] == {"url": "https://shop.example.com/x"}
    assert "lead_id" not in web.data["user"]
    assert offline.route == Route("offline")
    assert "page" not in offline.data
    assert offline.data["user"]["lead_id"] == "lead-7"


@pytest.mark.parametrize(
    "identifier",
    [{"userId": "u"}, {"properties": {"email": "a@b.co"}}, {"traits": {"phone": "+14155550100"}}],
)
def test_offline_needs_one_identifier(identifier: dict[str, Any]) -> None:
    assert len(map_event(track(**identifier), OFFLINE).forwarded) == 1


def test_offline_without_identifier_is_rejected_and_web_still_sent() -> None:
    event = track(
        anonymousId="   ",
        properties={"email": "not-an-email", "phone": "12", "first_name": PII["first_name"]},
        context={"ip": "203.0.113.1"},
    )
    mapping = map_event(event, BOTH)
    assert [m.route for m in mapping.forwarded] == [Route("web")]
    assert mapping.rejected == [OFFLINE_NEEDS_ID]
    result = map_events([event], OFFLINE)
    assert (result.forwarded, [(o.message_id, o.reason) for o in result.rejected]) == (
        [],
        [("msg-1", OFFLINE_NEEDS_ID)],
    )


def test_test_event_code_goes_in_the_route_never_in_data() -> None:
    config = load_config("web: {enabled: true, test_event_code: TEST42}")
    mapped = map_event(track(), config).forwarded[0]
    assert mapped.route == Route("web", "TEST42")
    assert "TEST42" not in json.dumps(mapped.data)
    assert request_bodies([mapped], {"pixel_code": "PX"})[0]["test_event_code"] == "TEST42"


def test_trigger_destinations_and_disabled_destinations() -> None:
    config = load_config("offline: {enabled: true}\ntriggers: {order_completed: {destinations: [offline]}}")
    assert [m.route for m in map_event(track(userId="u"), config).forwarded] == [Route("offline")]
    nothing = load_config("web: {enabled: false}")
    assert map_event(track(), nothing).skipped == "no destination is enabled"


# --- triggers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["identify", "alias", "group"])
def test_identify_alias_group_are_skipped(event_type: str) -> None:
    mapping = map_event({"type": event_type, "messageId": "m", "traits": {"email": PII["email"]}}, BOTH)
    assert (mapping.forwarded, mapping.rejected) == ([], [])
    assert mapping.skipped == f"{event_type} events are not forwarded"


def test_unmapped_events_are_skipped_without_echoing_the_name() -> None:
    mapping = map_event(track(PII["email"]), BridgeConfig())
    assert mapping.skipped == "no trigger matches this track event"
    screen = {"type": "screen", "name": "Home", "messageId": "s"}
    assert (
        map_event(screen, load_config("forward_unmapped: true")).skipped
        == "no trigger matches this screen event"
    )


def test_unmapped_track_events_can_be_forwarded_as_custom_events() -> None:
    config = load_config("forward_unmapped: true")
    mapping = map_event(track("Coupon Applied!", properties={"product_id": 5, "price": 2}), config)
    data = only(mapping)
    assert data["event"] == "Coupon_Applied"
    assert data["properties"]["contents"] == [{"content_id": "5", "price": 2.0}]
    assert mapping.sources["event"] == "triggers.custom"
    assert (
        only(map_event(track("Purchase"), load_config("forward_unmapped: true\ninclude_presets: false")))[
            "event"
        ]
        == "Custom_Purchase"
    )
    assert map_event(track("42 !!"), config).skipped == (
        "unmapped event name has no letter to build a custom event name from"
    )


def test_conditions_select_triggers_and_every_match_fires() -> None:
    config = load_config(
        """
triggers:
  pro:
    event: Order Completed
    tiktok_event: Subscribe
    where: [{path: properties.plan, in: [pro, team]}, {path: properties.coupon, exists: false}]
  again:
    event: Order Completed
    tiktok_event: Purchase
    where: [{path: properties.plan, equals: pro}]
"""
    )
    events = [m.data["event"] for m in map_event(track(properties={"plan": "pro"}), config).forwarded]
    assert events == ["Purchase", "Subscribe"]  # the duplicate Purchase is sent once
    with_coupon = track(properties={"plan": "team", "coupon": "X"})
    assert [m.data["event"] for m in map_event(with_coupon, config).forwarded] == ["Purchase"]


def test_page_triggers_match_by_name() -> None:
    config = load_config("triggers: {pricing: {type: page, event: Pricing, tiktok_event: ViewContent}}")
    pricing = {"type": "page", "name": "Pricing", "messageId": "p"}
    assert [m.data["event"] for m in map_event(pricing, config).forwarded] == ["ViewContent", "Pageview"]


# --- rejection and privacy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message_id", "reason"),
    [
        ("not an event", "", "invalid event: event is not a JSON object"),
        ({"type": "track", "event": "Order Completed"}, "", "invalid event: messageId: Field required"),
        (
            track(timestamp=PII["email"]),
            "msg-1",
            "invalid event: timestamp: Input should be a valid datetime",
        ),
        (
            track(properties=[PII["email"]]),
            "msg-1",
            "invalid event: properties: Input should be a valid dictionary",
        ),
        ({**track(), "type": PII["email"]}, "msg-1", "invalid event: type: Input should be 'track'"),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(raw: object, message_id: str, reason: str) -> None:
    result = map_events([raw, track()], BridgeConfig())
    assert len(result.forwarded) == 1  # the other event is not lost
    [outcome] = result.rejected
    assert outcome.message_id == message_id
    assert outcome.reason.startswith(reason)
    assert PII["email"] not in outcome.reason


def pii_event() -> dict[str, Any]:
    return track(
        userId=PII["user_id"],
        properties={
            "email": PII["email"],
            "phone": PII["phone"],
            "first_name": PII["first_name"],
            "last_name": PII["last_name"],
            "address": {"street": PII["street"], "postal_code": PII["postal_code"]},
        },
        context={"traits": {"email": PII["email"].upper(), "phone": "not a phone " + PII["phone"]}},
    )


def test_raw_pii_never_appears_in_mapped_events_or_provenance() -> None:
    mapping = map_event(pii_event(), BOTH)
    assert len(mapping.forwarded) == 2
    text = json.dumps([m.data for m in mapping.forwarded]) + json.dumps(mapping.sources)
    for value in (*PII.values(), PII["email"].lower(), "4155550199", "zeldabeth"):
        assert value not in text
    user = mapping.forwarded[0].data["user"]
    assert user["email"] == sha(PII["email"].lower())
    assert user["phone"] == sha("+14155550199")
    assert user["zip_code"] == sha("993104242")
    assert user["external_id"] == sha(PII["user_id"])


def test_events_are_not_modified() -> None:
    raw = sample("order-completed.json")
    before = copy.deepcopy(raw)
    map_events([raw], BOTH)
    assert raw == before


# --- batches and samples ----------------------------------------------------------------------------------


def test_the_sample_batch_maps_to_one_request_per_destination() -> None:
    events = parse_body((EVENTS_DIR / "batch.json").read_bytes())
    result = map_events(events, BOTH, now=NOW)
    assert not result.rejected
    assert sorted(o.reason for o in result.skipped) == [
        "alias events are not forwarded",
        "identify events are not forwarded",
        "no trigger matches this track event",
    ]
    bodies = request_bodies(result.forwarded, {"pixel_code": "PX1", "event_set_id": "ES1"})
    assert [(b["event_source"], b["event_source_id"]) for b in bodies] == [("offline", "ES1"), ("web", "PX1")]
    web_events = [d["event"] for d in bodies[1]["data"]]
    assert web_events == ["Pageview", "ViewContent", "Search", "CompleteRegistration", "Purchase"]
    assert all(isinstance(d["event_time"], int) and isinstance(d["event_id"], str) for d in bodies[1]["data"])
