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
from functools import lru_cache
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError

from tiktok_bridge import normalize
from tiktok_bridge.config import BridgeConfig, Plan, Rule, custom_event_name
from tiktok_bridge.model import MappedEvent, MappingResult, Outcome, Route
from tiktok_bridge.segment import FORWARDABLE_TYPES, EventError, Path, message_id_of, parse_event

Converter = Callable[[Any], Any]  # source value -> TikTok value, or None (omitted: try the next source)
Scrub = Callable[[str], tuple[str, tuple[str, ...]]]  # free text -> (scrubbed, notes), see scrub.py
# Forwarded free text (SPEC §4.2): URLs, and text in which a customer or a site may write an email or phone.
SCRUBBED_URLS = frozenset({"page.url", "page.referrer"})
SCRUBBED_TEXT = frozenset(
    {
        "user.user_agent",
        "properties.query",
        "properties.description",
        "properties.order_id",
        "properties.shop_id",
        "contents.content_name",
        "contents.content_category",
        "contents.brand",
    }
)
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


def _event_time(value: Any) -> int | None:
    """Unix seconds from an ISO-8601 string or a Unix time in seconds or milliseconds (pydantic's rules)."""
    if isinstance(value, bool):
        return None
    try:
        moment = _DATETIME.validate_python(value)
    except ValidationError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _location(value: Any) -> str | None:
    raw = normalize.text(value)
    return normalize.letters_digits(raw) if raw else None


def _quantity(value: Any) -> int | float | None:
    quantity = normalize.number(value)
    return int(quantity) if quantity is not None and quantity == int(quantity) else quantity


def _content_type(value: Any) -> str | None:
    return value if value in CONTENT_TYPES else None


def _converters(plan: Plan) -> dict[str, Converter]:
    """TikTok field -> converter; the two that depend on settings are bound to `plan` here."""
    region = plan.phone_region

    def phone_hash_input(raw: str) -> str | None:
        e164 = normalize.phone(raw, region)
        return normalize.phone_hash_input(e164) if e164 else None

    def external_id(raw: str) -> str | None:
        return normalize.external_id(raw, lowercase=plan.lowercase_external_id)

    text = normalize.text
    return {
        "event_id": text,
        "event_time": _event_time,
        "limited_data_use": normalize.flag,
        "user.external_id": lambda value: normalize.hashed(value, external_id),
        "user.email": lambda value: normalize.hashed_many(value, normalize.email),
        "user.phone": lambda value: normalize.hashed_many(value, phone_hash_input),
        "user.first_name": lambda value: normalize.hashed(value, normalize.letters_digits),
        "user.last_name": lambda value: normalize.hashed(value, normalize.letters_digits),
        "user.city": _location,
        "user.state": _location,
        "user.country": _location,
        "user.zip_code": lambda value: normalize.hashed(value, normalize.zip_code),
        "user.ip": text,
        "user.user_agent": text,
        "user.locale": text,
        "user.ttclid": text,
        "user.ttp": text,
        "user.lead_id": text,
        "page.url": text,
        "page.referrer": text,
        "properties.content_type": _content_type,
        "properties.currency": normalize.currency,
        "properties.value": normalize.number,
        "properties.query": text,
        "properties.order_id": text,
        "properties.shop_id": text,
        "properties.description": text,
        "contents.content_id": text,
        "contents.content_name": text,
        "contents.content_category": text,
        "contents.price": normalize.number,
        "contents.quantity": _quantity,
        "contents.brand": text,
    }


@dataclass(frozen=True)
class _Field:
    """One TikTok field, compiled: where it goes, where it comes from, how it is converted."""

    key: str  # e.g. "user.email"
    name: str  # its name inside its group, e.g. "email"
    paths: tuple[Path, ...]
    convert: Converter
    scrub: Scrub | None = None

    def first(self, data: Mapping[str, Any], sources: dict[str, str], prefix: str = "") -> Any:
        """The converted (and scrubbed) value of the first source path holding a usable value; notes that
        path, and what scrubbing removed (never a value)."""
        for path in self.paths:
            value = path.get(data)
            if value is not None:
                value = self.convert(value)
                if value is not None:
                    notes: tuple[str, ...] = ()
                    if self.scrub is not None:
                        value, notes = self.scrub(value)
                    if notes:
                        sources[self.key] = f"{prefix}{path.text} (scrubbed: {', '.join(notes)})"
                    elif self.key not in sources:
                        sources[self.key] = prefix + path.text
                    return value
        return None


def _group(fields: Sequence[_Field], data: Mapping[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    found = {}
    for item in fields:
        value = item.first(data, sources)
        if value is not None:
            found[item.name] = value
    return found


@dataclass(frozen=True)
class _Fields:
    """All TikTok fields of a plan, compiled once per plan and grouped as the request nests them."""

    single: Mapping[str, _Field]  # event_id, event_time, limited_data_use, properties.content_type
    user: tuple[_Field, ...]
    offline_user: tuple[_Field, ...]
    page: tuple[_Field, ...]
    properties: tuple[_Field, ...]
    contents: tuple[_Field, ...]


_SINGLE = ("event_id", "event_time", "limited_data_use", "properties.content_type")
_OFFLINE_ONLY = ("user.lead_id",)


@lru_cache(maxsize=16)
def _fields(plan: Plan) -> _Fields:
    converters, scrubber = _converters(plan), plan.scrubber
    scrubs: dict[str, Scrub] = {}
    if scrubber is not None:
        scrubs = {**dict.fromkeys(SCRUBBED_URLS, scrubber.url), **dict.fromkeys(SCRUBBED_TEXT, scrubber.text)}
    compiled = {
        key: _Field(key, key.partition(".")[2], paths, converters[key], scrubs.get(key))
        for key, paths in plan.sources.items()
    }

    def group(prefix: str) -> tuple[_Field, ...]:
        return tuple(
            item
            for key, item in compiled.items()
            if key.startswith(prefix) and key not in _SINGLE and key not in _OFFLINE_ONLY
        )

    return _Fields(
        single={key: compiled[key] for key in _SINGLE},
        user=group("user."),
        offline_user=tuple(compiled[key] for key in _OFFLINE_ONLY),
        page=group("page."),
        properties=group("properties."),
        contents=group("contents."),
    )


def _products(raw: Mapping[str, Any], mode: str) -> tuple[list[Any], str]:
    """The product objects of an event for a contents mode, with the path they were read from."""
    properties = raw.get("properties")
    if not isinstance(properties, dict) or mode == "none":
        return [], ""
    products = properties.get("products")
    if mode == "multi" or (mode == "auto" and isinstance(products, list)):
        return (products, "properties.products[].") if isinstance(products, list) else ([], "")
    return [properties], "properties."


def _contents(
    fields: _Fields, raw: Mapping[str, Any], mode: str, sources: dict[str, str]
) -> list[dict[str, Any]]:
    products, prefix = _products(raw, mode)
    contents = []
    for product in products:
        if isinstance(product, dict):
            item = {}
            for content_field in fields.contents:
                value = content_field.first(product, sources, prefix)
                if value is not None:
                    item[content_field.name] = value
            if item:
                contents.append(item)
    return contents


def _properties(
    fields: _Fields, raw: Mapping[str, Any], mode: str, sources: dict[str, str]
) -> dict[str, Any]:
    properties = _group(fields.properties, raw, sources)
    contents = _contents(fields, raw, mode, sources)
    if contents:
        properties["contents"] = contents
        content_type = fields.single["properties.content_type"].first(raw, sources)
        if content_type is None:
            sources["properties.content_type"] = "default"
        properties["content_type"] = content_type or "product"
        if "value" not in properties and any("price" in item for item in contents):
            total = sum(item.get("price", 0) * item.get("quantity", 1) for item in contents)
            properties["value"] = round(total, 6)
            sources["properties.value"] = "sum of contents price x quantity"
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
    if plan.scrubber is not None:  # the name becomes a TikTok event name: no email or phone in it either
        name = plan.scrubber.text(name)[0]
    custom = custom_event_name(name)
    if custom is None:
        return "unmapped event name has no letter to build a custom event name from"
    return (Rule("custom", custom, "auto", plan.all_routes, ()),)


def map_event(raw: object, config: BridgeConfig, *, now: float | None = None) -> EventMapping:
    """Map one raw Segment event; `now` (Unix seconds) is the event time when the event has none.

    Whatever goes wrong inside rejects this event with a reason (the error's type, never its message,
    which could quote a value) and never the request.
    """
    try:
        return _map_event(raw, config, now)
    except Exception as error:  # a bug or an input no rule foresaw: one event's loss, with a reason
        return EventMapping(message_id_of(raw), rejected=[f"could not be mapped ({type(error).__name__})"])


def _map_event(raw: object, config: BridgeConfig, now: float | None) -> EventMapping:
    try:
        event = parse_event(raw)
    except EventError as error:
        return EventMapping(message_id_of(raw), rejected=[f"invalid event: {error}"])
    raw = cast(dict[str, Any], raw)  # parse_event accepts JSON objects only
    result = EventMapping(event.messageId)
    if event.type not in FORWARDABLE_TYPES:
        result.skipped = f"{event.type} events are not forwarded"
        return result
    plan = config.plan
    rules = _rules(plan, event.type, event.event if event.type == "track" else event.name, raw)
    if isinstance(rules, str):
        result.skipped = rules
        return result

    fields, sources = _fields(plan), result.sources
    event_id = fields.single["event_id"].first(raw, sources)
    if event_id is None:
        result.rejected.append("event_id: no source path holds a value")
        return result
    event_time = fields.single["event_time"].first(raw, sources)
    if event_time is None:
        event_time = int(time.time() if now is None else now)
        sources["event_time"] = "now"
    limited = fields.single["limited_data_use"].first(raw, sources)
    if limited is None:
        limited = plan.limited_data_use
        sources["limited_data_use"] = "setting limited_data_use"
    user = _group(fields.user, raw, sources)
    event_sources = {route.event_source for rule in rules for route in rule.routes}
    page = _group(fields.page, raw, sources) if "web" in event_sources else {}
    offline_user = {**user, **_group(fields.offline_user, raw, sources)} if "offline" in event_sources else {}

    sent: set[tuple[str, Route]] = set()
    for rule in rules:
        sources.setdefault("event", f"triggers.{rule.trigger_id}")
        properties = _properties(fields, raw, rule.contents, sources)
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
                    if OFFLINE_NEEDS_ID not in result.rejected:
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
