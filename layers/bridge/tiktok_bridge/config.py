"""The mapping configuration: which Segment events become which TikTok events, sent where, with which fields.

`BridgeConfig()` is the SPEC §3 presets. A config file (YAML or JSON, see docs/configuration.md) changes only
what it names: preset triggers are merged key by key, field source lists replace the default list.
Validation errors name the key and never echo the value.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path as FilePath
from typing import Any, Literal, get_args

import phonenumbers
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tiktok_bridge.model import STANDARD_EVENTS, EventSource, Route
from tiktok_bridge.scrub import DEFAULT_PII_PARAMETERS, Scrubber, parameter_key
from tiktok_bridge.segment import Path, describe_errors

ContentsMode = Literal["single", "multi", "auto", "none"]
TriggerType = Literal["track", "page", "screen"]
Scalar = str | int | float | bool | None

_STANDARD_FOLDED = frozenset(name.lower() for name in STANDARD_EVENTS)
# Renamed by TikTok in May 2025 (old names still converted); `legacy_event_names: true` sends the old names.
LEGACY_NAMES = {"Purchase": "CompletePayment", "Lead": "SubmitForm"}
_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,49}")
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_-]+")
CUSTOM_PREFIX = "Custom_"

# SPEC §3.1, one entry per row. Keys are trigger ids a config file uses to change or disable a row.
PRESET_TRIGGERS: dict[str, dict[str, Any]] = {
    "page": {"type": "page", "tiktok_event": "Pageview", "contents": "multi"},
    "product_viewed": {"event": "Product Viewed", "tiktok_event": "ViewContent", "contents": "single"},
    "product_clicked": {"event": "Product Clicked", "tiktok_event": "ClickButton", "contents": "single"},
    "products_searched": {"event": "Products Searched", "tiktok_event": "Search", "contents": "single"},
    "product_added_to_wishlist": {
        "event": "Product Added to Wishlist",
        "tiktok_event": "AddToWishlist",
        "contents": "single",
    },
    "product_added": {"event": "Product Added", "tiktok_event": "AddToCart", "contents": "single"},
    "checkout_started": {
        "event": "Checkout Started",
        "tiktok_event": "InitiateCheckout",
        "contents": "multi",
    },
    "payment_info_entered": {
        "event": "Payment Info Entered",
        "tiktok_event": "AddPaymentInfo",
        "contents": "multi",
    },
    "order_placed": {"event": "Order Placed", "tiktok_event": "PlaceAnOrder", "contents": "multi"},
    "order_completed": {"event": "Order Completed", "tiktok_event": "Purchase", "contents": "multi"},
    "form_submitted": {"event": "Form Submitted", "tiktok_event": "Lead"},
    "signed_up": {"event": ["Signed Up", "Account Created"], "tiktok_event": "CompleteRegistration"},
    "callback_started": {"event": "Callback Started", "tiktok_event": "Contact"},
    "subscription_created": {"event": "Subscription Created", "tiktok_event": "Subscribe"},
    "download_link_clicked": {"event": "Download Link Clicked", "tiktok_event": "Download"},
}

_TIKTOK_INTEGRATIONS = ("TikTok Conversions", "Tiktok Conversions", "TikTok Offline Conversions")
# SPEC §3.2: TikTok field -> Segment source paths, first usable value wins. `contents.*` paths are relative
# to one product (an element of `properties.products[]`, or `properties` itself for single-product events).
DEFAULT_SOURCES: dict[str, tuple[str, ...]] = {
    "event_id": ("messageId",),
    "event_time": ("timestamp", "originalTimestamp", "receivedAt"),
    "limited_data_use": ("properties.limited_data_use", "limited_data_use"),
    "user.external_id": ("userId", "anonymousId"),
    "user.email": ("properties.email", "context.traits.email", "traits.email"),
    "user.phone": ("properties.phone", "context.traits.phone", "traits.phone"),
    "user.first_name": ("properties.first_name", "context.traits.first_name"),
    "user.last_name": ("properties.last_name", "context.traits.last_name"),
    "user.city": ("properties.address.city", "context.traits.address.city"),
    "user.state": ("properties.address.state", "context.traits.address.state"),
    "user.country": ("properties.address.country", "context.traits.address.country"),
    "user.zip_code": (
        "properties.address.postal_code",
        "properties.address.zip_code",
        "context.traits.address.postal_code",
        "context.traits.address.zip_code",
    ),
    "user.ip": ("context.ip",),
    "user.user_agent": ("context.userAgent",),
    "user.locale": ("context.locale",),
    "user.ttclid": (
        "properties.ttclid",
        *(f"integrations.{key}.ttclid" for key in _TIKTOK_INTEGRATIONS),
        "properties.url?ttclid",
        "context.page.url?ttclid",
    ),
    "user.ttp": ("properties.ttp", *(f"integrations.{key}.ttp" for key in _TIKTOK_INTEGRATIONS)),
    "user.lead_id": ("properties.lead_id",),
    "page.url": ("properties.url", "context.page.url"),
    "page.referrer": ("properties.referrer", "context.page.referrer"),
    "properties.content_type": ("properties.content_type",),
    "properties.currency": ("properties.currency",),
    "properties.value": ("properties.value", "properties.revenue"),
    "properties.query": ("properties.query", "properties.search_term"),
    "properties.order_id": ("properties.order_id",),
    "properties.shop_id": ("properties.shop_id",),
    "properties.description": ("properties.description",),
    "contents.content_id": ("product_id", "sku", "id"),
    "contents.content_name": ("name",),
    "contents.content_category": ("category",),
    "contents.price": ("price",),
    "contents.quantity": ("quantity",),
    "contents.brand": ("brand",),
}


# Match keys a user profile keeps (docs/identity.md): hashed as TikTok takes them; city/state/country and
# click ids plain.
IdentityField = Literal[
    "email",
    "phone",
    "external_id",
    "first_name",
    "last_name",
    "zip_code",
    "city",
    "state",
    "country",
    "ttclid",
    "ttp",
]
IDENTITY_FIELDS: tuple[IdentityField, ...] = get_args(IdentityField)


class ConfigError(ValueError):
    """The mapping configuration is unusable; the message names the key, never its value."""


def custom_event_name(segment_event: str) -> str | None:
    """A valid TikTok custom event name for an unmapped Segment event, or None if nothing is left.

    Accents are dropped (`É` -> `E`); runs of characters other than ASCII letters, digits, `_`, `-`
    become `_`; leading non-letters are dropped; a standard event name gets the `Custom_` prefix; the
    result is cut to 50 characters.
    """
    ascii_name = unicodedata.normalize("NFKD", segment_event).encode("ascii", "ignore").decode()
    name = _NOT_NAME_CHAR.sub("_", ascii_name.strip()).strip("_")
    name = re.sub(r"^[^A-Za-z]+", "", name)
    if not name:
        return None
    if name.lower() in _STANDARD_FOLDED:
        name = CUSTOM_PREFIX + name
    return name[:50]


def _event_name(value: str) -> str:
    if not _EVENT_NAME.fullmatch(value):
        raise ValueError("a TikTok event name is 1-50 letters, digits, _ or -, starting with a letter")
    return value


def _path(value: str) -> str:
    Path.parse(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    """`path` plus exactly one test: `equals` a value, is `in` a list, or `exists` (true/false)."""

    path: str
    equals: Scalar = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    exists: bool | None = None

    _check_path = field_validator("path")(_path)

    @model_validator(mode="before")
    @classmethod
    def _one_test(cls, data: Any) -> Any:
        if isinstance(data, dict) and sum(key in data for key in ("equals", "in", "exists")) != 1:
            raise ValueError("a condition needs exactly one of equals, in, exists")
        return data


class Trigger(_Strict):
    """A Segment event that becomes `tiktok_event` (a SPEC §3.1 row, or a user's own)."""

    enabled: bool = True
    type: TriggerType = "track"
    event: list[str] = []  # track: event names (required); page/screen: page/screen names (empty = all)
    where: list[Condition] = []
    tiktok_event: str
    contents: ContentsMode = "none"
    destinations: list[EventSource] = ["web", "offline"]

    _check_name = field_validator("tiktok_event")(_event_name)

    @field_validator("event", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _track_needs_event(self) -> Trigger:
        if self.type == "track" and not self.event:
            raise ValueError("a track trigger needs `event` (one Segment event name or a list)")
        return self


class Destination(_Strict):
    enabled: bool
    test_event_code: str | None = Field(default=None, min_length=1, max_length=100)


class Scrub(_Strict):
    """Email addresses, phone numbers and PII query parameters out of forwarded free text (scrub.py)."""

    enabled: bool = True
    # Query parameter names removed from page URLs whatever their value (any spelling: `first_name` matches
    # `firstName`); the default list is scrub.DEFAULT_PII_PARAMETERS. Names containing `email` or `phone`
    # are always removed.
    query_parameters: list[str] = sorted(DEFAULT_PII_PARAMETERS)

    @field_validator("query_parameters")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        if not all(parameter_key(name) for name in value):
            raise ValueError("a query parameter name needs a letter or a digit")
        return value


class Identity(_Strict):
    """Server-side Identify: per-user profiles of match keys that enrich later events (docs/identity.md)."""

    enabled: bool = True
    enrich: list[IdentityField] = list(IDENTITY_FIELDS)
    click_id_ttl_days: int = Field(default=7, ge=1, le=90)
    profile_ttl_days: int = Field(default=400, ge=1, le=3650)


class Consent(_Strict):
    """Segment consent (`context.consent.categoryPreferences`): every listed category must be granted.

    Empty (the default) = consent is not required."""

    required_categories: list[str] = []

    @field_validator("required_categories")
    @classmethod
    def _named(cls, value: list[str]) -> list[str]:
        if not all(category.strip() for category in value):
            raise ValueError("a consent category is a non-empty name, e.g. Advertising")
        return value


@dataclass(frozen=True)
class CompiledCondition:
    path: Path
    test: Literal["equals", "in", "exists"]
    operand: Any

    def matches(self, event: Mapping[str, Any]) -> bool:
        value = self.path.get(event)
        if self.test == "exists":
            return (value is not None) is self.operand
        if self.test == "in":
            return value in self.operand
        return bool(value == self.operand)


@dataclass(frozen=True)
class Rule:
    """A compiled trigger: what it sends and where."""

    trigger_id: str
    tiktok_event: str
    contents: ContentsMode
    routes: tuple[Route, ...]
    where: tuple[CompiledCondition, ...]


@dataclass(frozen=True, eq=False)  # hashed by identity: compiled once per config, cached by mapping
class Plan:
    """A `BridgeConfig` compiled for the hot path: rules indexed by (type, name), sources parsed once."""

    rules: Mapping[tuple[str, str | None], tuple[Rule, ...]]
    sources: Mapping[str, tuple[Path, ...]]
    all_routes: tuple[Route, ...]
    forward_unmapped: bool
    limited_data_use: bool
    phone_region: str | None
    lowercase_external_id: bool
    scrubber: Scrubber | None  # None: scrubbing is off

    def rules_for(self, event_type: str, name: str | None) -> tuple[Rule, ...]:
        """Rules for an event's type and name (track: `event`; page/screen: `name`), before conditions."""
        named = self.rules.get((event_type, name), ()) if name is not None else ()
        return named + self.rules.get((event_type, None), ())


class BridgeConfig(_Strict):
    """The whole mapping configuration; see docs/configuration.md."""

    web: Destination = Destination(enabled=True)
    offline: Destination = Destination(enabled=False)
    legacy_event_names: bool = False
    forward_unmapped: bool = False
    limited_data_use: bool = False
    phone_default_region: str | None = "US"
    lowercase_external_id: bool = False
    include_presets: bool = True
    triggers: dict[str, Trigger] = {}
    fields: dict[str, list[str]] = {}
    identity: Identity = Identity()
    consent: Consent = Consent()
    scrub: Scrub = Scrub()

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        """Preset triggers under the user's (key by key), default sources under the user's (list by list)."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        user_triggers = data.get("triggers") or {}
        if isinstance(user_triggers, dict):
            presets = PRESET_TRIGGERS if data.get("include_presets", True) is not False else {}
            triggers: dict[str, Any] = dict(presets)
            for key, value in user_triggers.items():
                base = presets.get(key)
                triggers[key] = {**base, **value} if base is not None and isinstance(value, dict) else value
            merged["triggers"] = triggers
        user_fields = data.get("fields") or {}
        if isinstance(user_fields, dict):
            merged["fields"] = {**{key: list(paths) for key, paths in DEFAULT_SOURCES.items()}, **user_fields}
        return merged

    @field_validator("phone_default_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is None:
            return None
        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                "not a phone region code known to libphonenumber (ISO 3166 alpha-2, e.g. US, GB)"
            )
        return region

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, paths in value.items():
            if key not in DEFAULT_SOURCES:
                raise ValueError(f"unknown field {key!r}; fields are: {', '.join(DEFAULT_SOURCES)}")
            if not paths:
                raise ValueError(f"field {key!r} needs at least one source path")
            for path in paths:
                try:
                    Path.parse(path)
                except ValueError as error:
                    raise ValueError(f"field {key!r}: {error}") from None
        return value

    def route(self, source: EventSource) -> Route | None:
        """The route for `source`, or None when that destination is disabled."""
        destination = self.web if source == "web" else self.offline
        return Route(source, destination.test_event_code) if destination.enabled else None

    def with_destinations(self, sources: Collection[str]) -> BridgeConfig:
        """A copy with exactly `sources` ("web", "offline") enabled, test event codes kept."""
        data = self.model_dump(by_alias=True, exclude_unset=True)
        for source in ("web", "offline"):
            data[source] = {**getattr(self, source).model_dump(), "enabled": source in sources}
        return BridgeConfig.model_validate(data)

    @cached_property
    def plan(self) -> Plan:
        """This config compiled once for `mapping.map_events`."""
        routes = {source: self.route(source) for source in ("web", "offline")}
        index: dict[tuple[str, str | None], list[Rule]] = {}
        for trigger_id, trigger in self.triggers.items():
            trigger_routes = tuple(r for s in trigger.destinations if (r := routes[s]) is not None)
            if not trigger.enabled or not trigger_routes:
                continue
            name = trigger.tiktok_event
            rule = Rule(
                trigger_id=trigger_id,
                tiktok_event=LEGACY_NAMES.get(name, name) if self.legacy_event_names else name,
                contents=trigger.contents,
                routes=trigger_routes,
                where=tuple(CompiledCondition(Path.parse(c.path), *_test_of(c)) for c in trigger.where),
            )
            names: list[str | None] = list(trigger.event) or [None]
            for event_name in names:
                index.setdefault((trigger.type, event_name), []).append(rule)
        return Plan(
            rules={key: tuple(rules) for key, rules in index.items()},
            sources={key: tuple(Path.parse(p) for p in paths) for key, paths in self.fields.items()},
            all_routes=tuple(r for r in routes.values() if r is not None),
            forward_unmapped=self.forward_unmapped,
            limited_data_use=self.limited_data_use,
            phone_region=self.phone_default_region,
            lowercase_external_id=self.lowercase_external_id,
            scrubber=Scrubber(frozenset(self.scrub.query_parameters)) if self.scrub.enabled else None,
        )


def _test_of(condition: Condition) -> tuple[Literal["equals", "in", "exists"], Any]:
    if condition.exists is not None:
        return "exists", condition.exists
    if condition.in_ is not None:
        return "in", tuple(condition.in_)
    return "equals", condition.equals


def load_config(text: str) -> BridgeConfig:
    """Parse and validate a config (YAML or JSON; empty text = the presets). Raises `ConfigError`."""
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"config is not valid JSON ({error.msg} at line {error.lineno})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise ConfigError(f"config is not valid YAML ({problem}{where})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping of settings (see docs/configuration.md)")
    try:
        return BridgeConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"invalid config: {describe_errors(error)}") from None


def load_config_file(path: str | FilePath) -> BridgeConfig:
    """`load_config` of a file's text; a missing or unreadable file is a `ConfigError` too."""
    try:
        text = FilePath(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {type(error).__name__}") from None
    return load_config(text)
