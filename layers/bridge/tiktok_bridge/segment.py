"""Segment events as they arrive: body parsing, the validated event envelope, and dotted-path lookups."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import TypedDict

EventType = Literal["track", "page", "screen", "identify", "alias", "group"]
FORWARDABLE_TYPES: frozenset[str] = frozenset({"track", "page", "screen"})
_EVENT_TYPES: frozenset[str] = frozenset(get_args(EventType))


class BodyError(ValueError):
    """A request body that is not JSON or does not hold Segment events; the message never echoes the body."""


class EventError(ValueError):
    """One event that is not a usable Segment event; the message names the fields, never their values."""


def parse_body(raw: bytes) -> list[object]:
    """The events in `raw` (UTF-8 JSON): one event object, a JSON array of them, or `{"batch": [...]}`.

    Array elements are returned as they are; each is validated on its own by `parse_event`, so one bad
    element does not cost the others.
    """
    try:
        body = json.loads(raw.decode("utf-8-sig"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BodyError("body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise BodyError(
            f"body is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    except RecursionError:
        raise BodyError("body nests objects or arrays deeper than the JSON parser allows") from None
    except ValueError:  # Python's limit on integer digits (sys.get_int_max_str_digits)
        raise BodyError("body holds a number with too many digits") from None
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        batch = body.get("batch")
        if batch is None:
            return [body]
        if isinstance(batch, list):
            return batch
        raise BodyError('body field "batch" must be an array of events')
    raise BodyError('body must be a JSON object (one event), an array of events or {"batch": [...]}')


def _reject_constant(name: str) -> None:
    """NaN and Infinity are not JSON (Python's parser accepts them by default)."""
    raise json.JSONDecodeError(f"{name} is not a JSON value", name, 0)


_LENIENT = ConfigDict(extra="ignore", coerce_numbers_to_str=True)


class _Lenient(BaseModel):
    """Unknown fields are ignored; the fields the bridge uses are type-checked."""

    model_config = _LENIENT


# Nested objects are TypedDicts: type-checked like models, validated about twice as fast (no instances).
class PageContext(TypedDict, total=False):
    __pydantic_config__ = _LENIENT  # type: ignore[misc]

    url: str | None
    referrer: str | None


class Context(TypedDict, total=False):
    __pydantic_config__ = _LENIENT  # type: ignore[misc]

    ip: str | None
    userAgent: str | None
    locale: str | None
    page: PageContext | None
    traits: dict[str, Any] | None


class SegmentEvent(_Lenient):
    """The part of a Segment event the bridge reads (https://segment.com/docs/connections/spec/common/)."""

    type: EventType
    messageId: str = Field(min_length=1)
    event: str | None = None
    name: str | None = None
    userId: str | None = None
    anonymousId: str | None = None
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None
    receivedAt: datetime | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: Context | None = None
    integrations: dict[str, Any] | None = None


def describe_errors(error: ValidationError) -> str:
    """`field: problem; ...` for a pydantic error, without the offending input values."""
    parts = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in item["loc"]) or "value"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_event(raw: object) -> SegmentEvent:
    """Validate one raw event (a JSON object); raises `EventError` naming what is wrong."""
    if not isinstance(raw, dict):
        raise EventError("event is not a JSON object")
    try:
        return SegmentEvent.model_validate(raw)
    except ValidationError as error:
        raise EventError(describe_errors(error)) from None


def event_type_of(raw: object) -> str:
    """The event's `type` when it is one the bridge knows, else "unknown" (for a log line)."""
    value = raw.get("type") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and value in _EVENT_TYPES else "unknown"


def message_id_of(raw: object) -> str:
    """The event's `messageId` when it has a usable one, else "" (for reporting a rejected event)."""
    if isinstance(raw, dict):
        value = raw.get("messageId")
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return ""


@dataclass(frozen=True)
class Path:
    """A dotted path into a raw event, e.g. `context.traits.email`, optionally ending in `?param`
    to read a query parameter of the URL found there (`context.page.url?ttclid`)."""

    text: str
    keys: tuple[str, ...]
    query: str | None = None

    @classmethod
    def parse(cls, text: str) -> Path:
        """Raise ValueError for an empty path or an empty segment."""
        location, _, query = text.partition("?")
        keys = tuple(location.split("."))
        if not all(key.strip() for key in keys) or ("?" in text and not query.strip()):
            raise ValueError("a path is dot-separated keys, optionally followed by ?query_parameter")
        return cls(text, keys, query or None)

    def get(self, data: Mapping[str, Any]) -> Any:
        """The value at this path, or None when any step is missing or not an object."""
        value: Any = data
        for key in self.keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        if self.query is None or value is None:
            return value
        return query_parameter(value, self.query)


def query_parameter(url: object, name: str) -> str | None:
    """The first value of query parameter `name` in `url`, or None (also for a malformed URL)."""
    if not isinstance(url, str) or name not in url:
        return None
    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    # `parse_qs(query)[name][0]` without decoding every other parameter: `&`-separated `key=value` pairs with
    # an empty value skipped, `+` as a space, %-escapes decoded, the first match wins.
    for pair in query.split("&"):
        key, equals, value = pair.partition("=")
        if equals and value and unquote(key.replace("+", " ")) == name:
            return unquote(value.replace("+", " "))
    return None
