"""Segment events -> TikTok Events API 2.0 `data[]` elements (SPEC §3): pure functions, no I/O.

`map_event` maps one event and records, per TikTok field, the source path it came from (never the value);
`map_events` is the same over a batch. Rejected and skipped events carry their `messageId` and a reason
that names fields, never their values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tiktok_bridge import normalize
from tiktok_bridge.config import BridgeConfig, Plan, Rule, custom_event_name
from tiktok_bridge.model import MappedEvent, MappingResult, Outcome, Route
from tiktok_bridge.segment import FORWARDABLE_TYPES, EventError, message_id_of, parse_event

Converter = Callable[[Any, Plan], Any]
CONTENT_TYPES = frozenset({"product", "product_group"})
OFFLINE_IDENTIFIERS = ("email", "phone", "external_id")
OFFLINE_NEEDS_ID = "offline event needs a valid email, phone or external_id"
_DATETIME = TypeAdapter(datetime)


@dataclass
class EventMapping:
    """What became of one Segment event: its TikTok events, or why it was rejected or skipped.

    An event sent to web and offline may be forwarded to one and rejected by the other.
    """

    message_id: str
    forwarded: list[MappedEvent] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    skipped: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  # TikTok field -> source path (never the value)


def _event_time(value: Any, plan: Plan) -> int | None:
    """Unix seconds from an ISO-8601 string or a Unix time in seconds or milliseconds (pydantic's rules)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        moment = _DATETIME.validate_python(value)
    except ValidationError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _flag(value: Any, plan: Plan) -> bool | None:
    return value if isinstance(value, bool) else None


def _text(value: Any, plan: Plan) -> str | None:
    return normalize.text(value)


def _external_id(value: Any, plan: Plan) -> str | None:
    lowercase = plan.lowercase_external_id
    return normalize.hashed(value, lambda raw: normalize.external_id(raw, lowercase=lowercase))


def _email(value: Any, plan: Plan) -> str | list[str] | None:
    return normalize.hashed_many(value, normalize.email)


def _phone(value: Any, plan: Plan) -> str | list[str] | None:
    def hash_input(raw: str) -> str | None:
        e164 = normalize.phone(raw, plan.phone_region)
        return normalize.phone_hash_input(e164) if e164 else None

    return normalize.hashed_many(value, hash_input)


def _name(value: Any, plan: Plan) -> str | None:
    return normalize.hashed(value, normalize.letters_digits)


def _zip(value: Any, plan: Plan) -> str | None:
    return normalize.hashed(value, normalize.zip_code)


def _location(value: Any, plan: Plan) -> str | None:
    raw = normalize.text(value)
    return normalize.letters_digits(raw) if raw else None


def _currency(value: Any, plan: Plan) -> str | None:
    return normalize.currency(value)


def _number(value: Any, plan: Plan) -> int | float | None:
    return normalize.number(value)


def _quantity(value: Any, plan: Plan) -> int | float | None:
    quantity = normalize.number(value)
    return int(quantity) if quantity is not None and quantity == int(quantity) else quantity


def _content_type(value: Any, plan: Plan) -> str | None:
    return value if value in CONTENT_TYPES else None


# TikTok field -> how its source value is converted (None = omitted, try the next source).
USER_FIELDS: dict[str, Converter] = {
    "external_id": _external_id,
    "email": _email,
    "phone": _phone,
    "first_name": _name,
    "last_name": _name,
    "city": _location,
    "state": _location,
    "country": _location,
    "zip_code": _zip,
    "ip": _text,
    "user_agent": _text,
    "locale": _text,
    "ttclid": _text,
    "ttp": _text,
}
OFFLINE_USER_FIELDS: dict[str, Converter] = {"lead_id": _text}
PAGE_FIELDS: dict[str, Converter] = {"url": _text, "referrer": _text}
PROPERTY_FIELDS: dict[str, Converter] = {
    "currency": _currency,
    "value": _number,
    "query": _text,
    "order_id": _text,
    "shop_id": _text,
    "description": _text,
}
CONTENT_FIELDS: dict[str, Converter] = {
    "content_id": _text,
    "content_name": _text,
    "content_category": _text,
    "price": _number,
    "quantity": _quantity,
    "brand": _text,
}


class _Resolver:
    """Reads TikTok fields from one raw event through the plan's source paths, noting each field's source."""

    def __init__(self, plan: Plan, sources: dict[str, str]) -> None:
        self.plan = plan
        self.sources = sources

    def first(self, key: str, convert: Converter, data: Mapping[str, Any], prefix: str = "") -> Any:
        for path in self.plan.sources[key]:
            value = convert(path.get(data), self.plan)
            if value is not None:
                self.sources.setdefault(key, prefix + path.text)
                return value
        return None

    def group(self, group: str, fields: Mapping[str, Converter], data: Mapping[str, Any]) -> dict[str, Any]:
        found = {}
        for name, convert in fields.items():
            value = self.first(f"{group}.{name}", convert, data)
            if value is not None:
                found[name] = value
        return found


def _products(raw: Mapping[str, Any], mode: str) -> tuple[list[Any], str]:
    """The product objects of an event for a contents mode, with the path they were read from."""
    properties = raw.get("properties")
    if not isinstance(properties, dict) or mode == "none":
        return [], ""
    products = properties.get("products")
    if mode == "multi" or (mode == "auto" and isinstance(products, list)):
        return (products, "properties.products[].") if isinstance(products, list) else ([], "")
    return [properties], "properties."


def _contents(resolver: _Resolver, raw: Mapping[str, Any], mode: str) -> list[dict[str, Any]]:
    products, prefix = _products(raw, mode)
    contents = []
    for product in products:
        if isinstance(product, dict):
            item = {
                name: value
                for name, convert in CONTENT_FIELDS.items()
                if (value := resolver.first(f"contents.{name}", convert, product, prefix)) is not None
            }
            if item:
                contents.append(item)
    return contents


def _properties(resolver: _Resolver, raw: Mapping[str, Any], mode: str) -> dict[str, Any]:
    properties = resolver.group("properties", PROPERTY_FIELDS, raw)
    contents = _contents(resolver, raw, mode)
    if contents:
        properties["contents"] = contents
        content_type = resolver.first("properties.content_type", _content_type, raw)
        if content_type is None:
            resolver.sources["properties.content_type"] = "default"
        properties["content_type"] = content_type or "product"
        if "value" not in properties and any("price" in item for item in contents):
            total = sum(item.get("price", 0) * item.get("quantity", 1) for item in contents)
            properties["value"] = round(total, 6)
            resolver.sources["properties.value"] = "sum of contents price x quantity"
    return properties


def _rules(plan: Plan, event_type: str, name: str | None, raw: Mapping[str, Any]) -> tuple[Rule, ...] | str:
    """The rules this event triggers, or why it is skipped."""
    if not plan.all_routes:
        return "no destination is enabled"
    rules = tuple(
        rule for rule in plan.rules_for(event_type, name) if all(c.matches(raw) for c in rule.where)
    )
    if rules:
        return rules
    if not (plan.forward_unmapped and event_type == "track" and name):
        return f"no trigger matches this {event_type} event"
    custom = custom_event_name(name)
    if custom is None:
        return "unmapped event name has no letter to build a custom event name from"
    return (Rule("custom", custom, "auto", plan.all_routes, ()),)


def map_event(raw: object, config: BridgeConfig, *, now: float | None = None) -> EventMapping:
    """Map one raw Segment event; `now` (Unix seconds) is the event time when the event has none."""
    try:
        event = parse_event(raw)
    except EventError as error:
        return EventMapping(message_id_of(raw), rejected=[f"invalid event: {error}"])
    assert isinstance(raw, dict)  # parse_event accepts objects only
    result = EventMapping(event.messageId)
    if event.type not in FORWARDABLE_TYPES:
        result.skipped = f"{event.type} events are not forwarded"
        return result
    plan = config.plan
    rules = _rules(plan, event.type, event.event if event.type == "track" else event.name, raw)
    if isinstance(rules, str):
        result.skipped = rules
        return result

    resolver = _Resolver(plan, result.sources)
    event_id = resolver.first("event_id", _text, raw)
    if event_id is None:
        result.rejected.append("event_id: no source path holds a value")
        return result
    event_time = resolver.first("event_time", _event_time, raw)
    if event_time is None:
        event_time = int(time.time() if now is None else now)
        result.sources["event_time"] = "now"
    limited = resolver.first("limited_data_use", _flag, raw)
    if limited is None:
        limited = plan.limited_data_use
        result.sources["limited_data_use"] = "setting limited_data_use"
    user = resolver.group("user", USER_FIELDS, raw)
    event_sources = {route.event_source for rule in rules for route in rule.routes}
    page = resolver.group("page", PAGE_FIELDS, raw) if "web" in event_sources else {}
    offline_user = (
        {**user, **resolver.group("user", OFFLINE_USER_FIELDS, raw)} if "offline" in event_sources else {}
    )

    sent: set[tuple[str, Route]] = set()
    for rule in rules:
        result.sources.setdefault("event", f"triggers.{rule.trigger_id}")
        properties = _properties(resolver, raw, rule.contents)
        for route in rule.routes:
            if (rule.tiktok_event, route) in sent:
                continue
            sent.add((rule.tiktok_event, route))
            data: dict[str, Any] = {
                "event": rule.tiktok_event,
                "event_time": event_time,
                "event_id": event_id,
            }
            if route.event_source == "offline":
                if not any(key in offline_user for key in OFFLINE_IDENTIFIERS):
                    result.rejected.append(OFFLINE_NEEDS_ID)
                    continue
                data["user"] = dict(offline_user)
            else:
                data["user"] = dict(user)
                if page:
                    data["page"] = dict(page)
            if properties:
                data["properties"] = dict(properties)
            data["limited_data_use"] = limited
            result.forwarded.append(MappedEvent(route, data))
    return result


def merge(mappings: Iterable[EventMapping]) -> MappingResult:
    """The batch result of per-event mappings."""
    result = MappingResult()
    for mapped in mappings:
        result.forwarded.extend(mapped.forwarded)
        result.rejected.extend(Outcome(mapped.message_id, reason) for reason in mapped.rejected)
        if mapped.skipped is not None:
            result.skipped.append(Outcome(mapped.message_id, mapped.skipped))
    return result


def map_events(events: Sequence[object], config: BridgeConfig, *, now: float | None = None) -> MappingResult:
    """Map a batch of raw Segment events (as `segment.parse_body` returns them)."""
    now = time.time() if now is None else now
    return merge(map_event(raw, config, now=now) for raw in events)
