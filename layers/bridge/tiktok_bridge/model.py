"""Shapes shared by mapping, queueing and delivery: a TikTok-ready event and where it goes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

EventSource = Literal["web", "offline"]
MAX_EVENTS_PER_REQUEST = 1000
SOURCE_ID_KEYS: dict[EventSource, str] = {"web": "pixel_code", "offline": "event_set_id"}

T = TypeVar("T")

# TikTok's standard events (custom event names must not collide with them, case-insensitively).
STANDARD_EVENTS = frozenset(
    {
        "AddPaymentInfo",
        "AddToCart",
        "AddToWishlist",
        "ApplicationApproval",
        "ClickButton",
        "CompletePayment",
        "CompleteRegistration",
        "Contact",
        "CustomizeProduct",
        "Download",
        "FindLocation",
        "InitiateCheckout",
        "Lead",
        "Pageview",
        "PlaceAnOrder",
        "Purchase",
        "Schedule",
        "Search",
        "StartTrial",
        "SubmitApplication",
        "SubmitForm",
        "Subscribe",
        "ViewContent",
    }
)


@dataclass(frozen=True)
class Route:
    """Where a TikTok event goes: one request carries one source and one test event code."""

    event_source: EventSource
    test_event_code: str | None = None

    @property
    def source_id_key(self) -> str:
        """The secret's key holding this source's id (Pixel Code or Event Set ID)."""
        return SOURCE_ID_KEYS[self.event_source]


@dataclass(frozen=True)
class MappedEvent:
    """One element of a TikTok request's `data[]`, already normalised and hashed, with its route."""

    route: Route
    data: dict[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.data.get("event_id", ""))


@dataclass(frozen=True)
class Outcome:
    """Why an event was rejected or skipped; `reason` never contains raw PII."""

    message_id: str
    reason: str


@dataclass
class MappingResult:
    forwarded: list[MappedEvent] = field(default_factory=list)
    rejected: list[Outcome] = field(default_factory=list)
    skipped: list[Outcome] = field(default_factory=list)


def chunked(items: Sequence[T], size: int = MAX_EVENTS_PER_REQUEST) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def group_by_route(items: Iterable[T], route_of: Any) -> dict[Route, list[T]]:
    """Group items by `route_of(item)`, keeping arrival order inside each group."""
    groups: dict[Route, list[T]] = defaultdict(list)
    for item in items:
        groups[route_of(item)].append(item)
    return dict(groups)


def request_body(route: Route, source_id: str, data: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The exact JSON body POSTed to TikTok's /event/track/ for one route."""
    body: dict[str, Any] = {"event_source": route.event_source, "event_source_id": source_id}
    if route.test_event_code:
        body["test_event_code"] = route.test_event_code
    body["data"] = list(data)
    return body


def request_bodies(events: Iterable[MappedEvent], source_ids: Mapping[str, str]) -> list[dict[str, Any]]:
    """All request bodies for `events`: one per route and ≤ 1,000 events each.

    `source_ids` maps a route's `source_id_key` (`pixel_code` / `event_set_id`) to its id.
    """
    bodies = []
    groups = group_by_route(events, lambda e: e.route)
    for route in sorted(groups, key=lambda r: (r.event_source, r.test_event_code or "")):
        group = groups[route]
        for chunk in chunked(group):
            bodies.append(request_body(route, source_ids[route.source_id_key], [e.data for e in chunk]))
    return bodies
