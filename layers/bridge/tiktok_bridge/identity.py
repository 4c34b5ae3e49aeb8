"""Server-side Identify (docs/identity.md): per-user profiles of match keys, linking, enrichment and consent.

The pure part reads one request: consent, the identities each event names, what they teach a profile and
which forwarded events a profile enriches. `ProfileStore` is the DynamoDB edge: one batched read and one
batched write per request.

A profile item is `{pk, profile, expires_at}`, `profile` being the JSON text of `{fields: {name: {v, t}},
links: [pk...]}` (one string attribute: nested DynamoDB types cost boto3 ten times more CPU to write). `pk` is
`user#<sha256(userId)>` or `anon#<sha256(anonymousId)>`, so the table holds no raw id; values are exactly what
TikTok receives (hashes, normalised city/state/country, ttclid/ttp); `t` is when the value was last seen.
Identities linked by an event naming both, or by an `alias`, each hold the same merged profile under their own
key, and `links` lists them.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tiktok_bridge import normalize
from tiktok_bridge.config import IDENTITY_FIELDS, BridgeConfig
from tiktok_bridge.mapping import map_event
from tiktok_bridge.model import MappedEvent, Outcome, chunked
from tiktok_bridge.segment import EventError, SegmentEvent, message_id_of, parse_event

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

T = TypeVar("T")
DAY_S = 86_400
NO_CONSENT = "no consent for the required categories"
CLICK_IDS = frozenset({"ttclid", "ttp"})
COVERAGE_KEYS = ("email", "phone", "external_id", "ttclid")
MAX_LINKS = 100  # an identity shared by many (a family tablet) links at most this many others
IDENTIFY_EVENT = "Identify"  # the internal trigger that maps identify traits; never sent
# Where identify traits are read (then the config's own sources): Segment's identify spec names.
IDENTIFY_SOURCES: dict[str, list[str]] = {
    "user.external_id": ["userId"],
    "user.email": ["traits.email", "context.traits.email"],
    "user.phone": ["traits.phone", "context.traits.phone"],
    "user.first_name": ["traits.first_name", "traits.firstName", "context.traits.first_name"],
    "user.last_name": ["traits.last_name", "traits.lastName", "context.traits.last_name"],
    "user.city": ["traits.address.city", "context.traits.address.city"],
    "user.state": ["traits.address.state", "context.traits.address.state"],
    "user.country": ["traits.address.country", "context.traits.address.country"],
    "user.zip_code": [
        "traits.address.postal_code",
        "traits.address.zip_code",
        "traits.address.postalCode",
        "context.traits.address.postal_code",
    ],
}
# Fail fast: ingest answers Segment within 5 s and forwards events un-enriched when DynamoDB is down. Requests
# are built here, not by a user: botocore's client-side validation costs more CPU than the rest of ingest.
CLIENT_CONFIG = Config(
    connect_timeout=1,
    read_timeout=2,
    retries={"max_attempts": 2, "mode": "standard"},
    parameter_validation=False,
)
MAX_ATTEMPTS, BACKOFF_S, MAX_WORKERS = 3, 0.05, 8
READ_CHUNK, WRITE_CHUNK = 100, 25  # DynamoDB's BatchGetItem / BatchWriteItem limits


@dataclass(frozen=True)
class Seen:
    value: Any  # a string, or a list of hashes (email / phone)
    at: int  # Unix seconds, last seen


Profile = dict[str, Seen]


@dataclass(frozen=True)
class Stored:
    """A profile as one identity's item holds it."""

    profile: Profile
    links: tuple[str, ...] = ()


def merge(*profiles: Mapping[str, Seen]) -> Profile:
    """Field by field, the value seen last wins."""
    merged: Profile = {}
    for profile in profiles:
        for name, seen in profile.items():
            if name not in merged or seen.at >= merged[name].at:
                merged[name] = seen
    return merged


def profile_key(kind: str, identifier: object) -> str | None:
    """`kind#sha256(id)` for a usable id (string or number), else None."""
    text = normalize.text(identifier)
    return f"{kind}#{normalize.sha256_hex(text)}" if text else None


# --- consent ---


def split_by_consent(
    events: Sequence[object], required: Collection[str]
) -> tuple[list[object], list[Outcome]]:
    """Events that may be used, and an outcome for each refused one. An event is refused unless every
    `required` category is `true` in `context.consent.categoryPreferences` (a missing object refuses)."""
    if not required:
        return list(events), []
    kept: list[object] = []
    refused: list[Outcome] = []
    for raw in events:
        context = raw.get("context") if isinstance(raw, dict) else None
        consent = context.get("consent") if isinstance(context, dict) else None
        granted = consent.get("categoryPreferences") if isinstance(consent, dict) else None
        if isinstance(raw, dict) and not (
            isinstance(granted, dict) and all(granted.get(c) is True for c in required)
        ):
            refused.append(Outcome(message_id_of(raw), NO_CONSENT))
        else:
            kept.append(raw)  # non-objects go on to mapping, which rejects them with a reason
    return kept, refused


# --- what a request teaches ---


@dataclass(frozen=True)
class Sighting:
    """One event's identities and the match keys it carries (as TikTok receives them)."""

    message_id: str
    own: tuple[str, ...]  # its userId / anonymousId keys (always written)
    previous: tuple[str, ...]  # an alias's previousId, as either kind (written only where it exists)
    learned: Profile


@functools.lru_cache(maxsize=8)
def identify_config(phone_region: str | None, lowercase_external_id: bool) -> BridgeConfig:
    """The mapping config that reads an identify call's traits with the mapping's own normalisers."""
    return BridgeConfig.model_validate(
        {
            "include_presets": False,
            "triggers": {"identify": {"event": IDENTIFY_EVENT, "tiktok_event": IDENTIFY_EVENT}},
            "phone_default_region": phone_region,
            "lowercase_external_id": lowercase_external_id,
            "fields": IDENTIFY_SOURCES,
        }
    )


def _identify_data(raw: Mapping[str, Any], config: BridgeConfig, now: float) -> dict[str, Any]:
    traits_config = identify_config(config.phone_default_region, config.lowercase_external_id)
    mapped = map_event({**raw, "type": "track", "event": IDENTIFY_EVENT}, traits_config, now=now)
    return mapped.forwarded[0].data if mapped.forwarded else {}


def _sighting(
    raw: object, data_by_id: Mapping[str, dict[str, Any]], config: BridgeConfig, now: float
) -> Sighting | None:
    try:
        event: SegmentEvent = parse_event(raw)
    except EventError:
        return None  # mapping rejects it
    raw = cast(dict[str, Any], raw)  # parse_event accepts JSON objects only
    user_key, anon_key = profile_key("user", event.userId), profile_key("anon", event.anonymousId)
    own = tuple(key for key in (user_key, anon_key) if key)
    previous: tuple[str, ...] = ()
    if event.type == "alias":
        previous = tuple(k for kind in ("user", "anon") if (k := profile_key(kind, raw.get("previousId"))))
    if not own:
        return None
    if event.type == "identify":
        data = _identify_data(raw, config, now)
    else:
        data = data_by_id.get(event.messageId, {})
    at = min(int(data.get("event_time", now)), int(now))  # a future timestamp must not win every merge
    user = data.get("user") or {}
    learned: Profile = {name: Seen(user[name], at) for name in IDENTITY_FIELDS if user.get(name)}
    if user_key is None:
        learned.pop("external_id", None)  # it is the anonymousId's hash: not this person's external_id
    return Sighting(event.messageId, own, previous, learned)


def sightings(
    events: Iterable[object], forwarded: Iterable[MappedEvent], config: BridgeConfig, now: float
) -> list[Sighting]:
    """What each usable event (forwarded, identify, alias, or just naming ids) says about its identities."""
    data_by_id: dict[str, dict[str, Any]] = {}
    for mapped in forwarded:
        data_by_id.setdefault(mapped.event_id, mapped.data)
    return [s for raw in events if (s := _sighting(raw, data_by_id, config, now))]


def _groups(found: Sequence[Sighting]) -> dict[str, str]:
    """Key -> its group's representative key (union-find over the keys each event names together)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for sighting in found:
        first, *others = (*sighting.own, *sighting.previous)
        root(first)
        for other in others:
            parent[root(other)] = root(first)
    return {key: root(key) for key in parent}


# --- enrichment and coverage ---


def enrich(
    data: dict[str, Any], profile: Mapping[str, Seen], fields: Collection[str], click_ttl_s: int
) -> dict[str, Any]:
    """A copy of `data` (a TikTok event) with the profile's values for the `fields` its user lacks, or `data`
    itself when nothing is added. A click id is attached only when seen at most `click_ttl_s` before the
    event (never after it)."""
    user = data.get("user") or {}
    at = int(data.get("event_time", 0))
    additions = {
        name: seen.value
        for name, seen in profile.items()
        if name in fields
        and not user.get(name)
        and (name not in CLICK_IDS or 0 <= at - seen.at <= click_ttl_s)
    }
    return {**data, "user": {**user, **additions}} if additions else data


def match_key_counts(events: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """How many TikTok events (`data[]` elements) carry each of COVERAGE_KEYS, and `events` in all."""
    counts: Counter[str] = Counter()
    for data in events:
        counts["events"] += 1
        user = data.get("user") or {}
        counts.update(key for key in COVERAGE_KEYS if user.get(key))
    return counts


def coverage(events: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The share (0..1) of TikTok events carrying each of COVERAGE_KEYS (0 for no events)."""
    counts = match_key_counts(events)
    return {key: counts[key] / counts["events"] if counts["events"] else 0.0 for key in COVERAGE_KEYS}


@dataclass
class Stitched:
    """A request's outcome: enriched events, the items to write, and what changed."""

    forwarded: list[MappedEvent]
    changed: dict[str, Stored]
    enriched: int = 0


def stitch(
    found: Sequence[Sighting],
    forwarded: Sequence[MappedEvent],
    loaded: Mapping[str, Stored],
    config: BridgeConfig,
) -> Stitched:
    """Merge each group of linked identities (stored profiles + what the request teaches), enrich the
    forwarded events from their group's profile, and list the items whose content changed."""
    groups = _groups(found)
    members: dict[str, list[str]] = {}
    for key, group in groups.items():
        members.setdefault(group, []).append(key)
    profiles: dict[str, Profile] = {
        group: merge(*(loaded[k].profile for k in keys if k in loaded)) for group, keys in members.items()
    }
    own_keys: set[str] = set()
    for sighting in found:
        group = groups[sighting.own[0]]
        profiles[group] = merge(profiles[group], sighting.learned)
        own_keys.update(sighting.own)

    by_message = {s.message_id: groups[s.own[0]] for s in found}
    settings = config.identity
    ttl = settings.click_id_ttl_days * DAY_S
    result = Stitched([], {})
    for mapped in forwarded:
        profile = profiles.get(by_message.get(mapped.event_id, ""), {})
        data = enrich(mapped.data, profile, settings.enrich, ttl)
        result.enriched += data is not mapped.data
        result.forwarded.append(mapped if data is mapped.data else replace(mapped, data=data))

    for group, keys in members.items():
        if not profiles[group]:
            continue
        linked = [*keys, *(link for k in keys if k in loaded for link in loaded[k].links)]
        links = tuple(dict.fromkeys(linked))[:MAX_LINKS]
        for key in keys:
            stored = Stored(profiles[group], links)
            if (key in own_keys or key in loaded) and loaded.get(key) != stored:
                result.changed[key] = stored
    return result


# --- DynamoDB ---


class StoreError(RuntimeError):
    """DynamoDB could not be read or written; the message is the error type only."""


def to_item(key: str, stored: Stored, expires_at: int) -> dict[str, Any]:
    """The DynamoDB item (attribute values written out, no serializer) of one identity's profile."""
    fields = {name: {"v": seen.value, "t": seen.at} for name, seen in stored.profile.items()}
    profile = json.dumps({"fields": fields, "links": list(stored.links)}, separators=(",", ":"))
    return {"pk": {"S": key}, "profile": {"S": profile}, "expires_at": {"N": str(expires_at)}}


def _value(value: Any) -> str | list[str] | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def from_item(item: Mapping[str, Any]) -> Stored:
    """An item back as a profile; unknown fields and malformed values are dropped."""
    try:
        data = json.loads(item["profile"]["S"])
    except (KeyError, TypeError, ValueError, RecursionError):
        return Stored({})
    if not isinstance(data, dict):
        return Stored({})
    fields = data.get("fields")
    profile: Profile = {}
    for name, entry in fields.items() if isinstance(fields, dict) else ():
        if name in IDENTITY_FIELDS and isinstance(entry, dict):
            value, at = _value(entry.get("v")), entry.get("t")
            if value is not None and isinstance(at, int) and not isinstance(at, bool):
                profile[name] = Seen(value, at)
    links = data.get("links")
    return Stored(profile, tuple(k for k in links if isinstance(k, str)) if isinstance(links, list) else ())


class ProfileStore:
    """Profile items in one DynamoDB table, read and written in parallel batched calls."""

    def __init__(self, dynamodb: DynamoDBClient, table: str, *, backoff_s: float = BACKOFF_S) -> None:
        self.dynamodb, self.table, self.backoff_s = dynamodb, table, backoff_s

    def _retrying(self, call: Callable[[list[T]], list[T]], pending: list[T], size: int) -> None:
        """`call` over chunks of `pending` in parallel; what it hands back (unprocessed) is retried."""
        try:
            with ThreadPoolExecutor(MAX_WORKERS) as pool:
                for attempt in range(MAX_ATTEMPTS):
                    if not pending:
                        return
                    if attempt:
                        time.sleep(self.backoff_s * 2 ** (attempt - 1))
                    pending = [x for left in pool.map(call, map(list, chunked(pending, size))) for x in left]
        except (BotoCoreError, ClientError) as error:
            raise StoreError(type(error).__name__) from None
        if pending:
            raise StoreError(f"{len(pending)} items unprocessed after {MAX_ATTEMPTS} attempts")

    def load(self, keys: Collection[str], now: float) -> dict[str, Stored]:
        """The unexpired items of `keys` (missing ones absent); BatchGetItem, 100 keys a call."""
        items: list[dict[str, Any]] = []

        def get(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
            response: Mapping[str, Any] = self.dynamodb.batch_get_item(
                RequestItems={self.table: {"Keys": chunk}}
            )
            items.extend(response.get("Responses", {}).get(self.table, []))
            return list(response.get("UnprocessedKeys", {}).get(self.table, {}).get("Keys", []))

        self._retrying(get, [{"pk": {"S": key}} for key in keys], READ_CHUNK)
        return {
            item["pk"]["S"]: from_item(item)
            for item in items
            if int(item.get("expires_at", {}).get("N", "0")) > now  # TTL deletion may lag by days
        }

    def _write(self, requests: list[dict[str, Any]]) -> None:
        def write(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
            response: Mapping[str, Any] = self.dynamodb.batch_write_item(RequestItems={self.table: chunk})  # type: ignore[dict-item]
            return list(response.get("UnprocessedItems", {}).get(self.table, []))

        self._retrying(write, requests, WRITE_CHUNK)

    def save(self, changed: Mapping[str, Stored], expires_at: int) -> None:
        """Put the items; BatchWriteItem, 25 a call."""
        self._write([{"PutRequest": {"Item": to_item(k, s, expires_at)}} for k, s in changed.items()])

    def forget(self, keys: Collection[str]) -> list[str]:
        """Delete the items of `keys` and of every identity they link; the deleted keys that existed."""
        found = self.load(keys, now=0)
        doomed = list(dict.fromkeys([*keys, *(link for stored in found.values() for link in stored.links)]))
        existing = [*found, *self.load(set(doomed) - set(found), now=0)]
        self._write([{"DeleteRequest": {"Key": {"pk": {"S": key}}}} for key in doomed])
        return existing


def client(**kwargs: Any) -> DynamoDBClient:
    """A DynamoDB client that fails fast (see CLIENT_CONFIG)."""
    return boto3.client("dynamodb", config=CLIENT_CONFIG, **kwargs)


# --- one request ---


@dataclass
class Report:
    """What Identify did for one request, for the response metrics."""

    forwarded: list[MappedEvent]
    before: Counter[str] = field(default_factory=Counter)
    after: Counter[str] = field(default_factory=Counter)
    enriched: int = 0
    written: int = 0
    error: str | None = None  # the DynamoDB error type when profiles could not be read or written


def identify(
    events: Sequence[object],
    forwarded: list[MappedEvent],
    config: BridgeConfig,
    store: ProfileStore | None,
    *,
    now: float | None = None,
) -> Report:
    """Read the request's profiles (one batched read), enrich its forwarded events, write the changed
    profiles (one batched write). DynamoDB failing loses nothing: events go on un-enriched by stored profiles
    (what the request itself teaches still applies) and nothing is written over profiles not read."""
    now = time.time() if now is None else now
    report = Report(forwarded, before=match_key_counts(m.data for m in forwarded))
    if store is None or not config.identity.enabled:
        report.after = report.before
        return report
    found = sightings(events, forwarded, config, now)
    keys = {key for s in found for key in (*s.own, *s.previous)}
    try:
        loaded = store.load(keys, now) if keys else {}
    except StoreError as error:
        report.error, loaded = str(error), {}
    stitched = stitch(found, forwarded, loaded, config)
    report.forwarded, report.enriched = stitched.forwarded, stitched.enriched
    report.after = match_key_counts(m.data for m in stitched.forwarded)
    if report.error is None and stitched.changed:
        try:
            store.save(stitched.changed, int(now) + config.identity.profile_ttl_days * DAY_S)
            report.written = len(stitched.changed)
        except StoreError as error:
            report.error = str(error)
    return report
