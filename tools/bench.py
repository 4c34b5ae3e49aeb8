"""`make bench`: mapping throughput against a floor, TikTok batching and end-to-end throughput through the
local stack, handler cold start, and the AWS bill per million events (every service, CloudWatch Logs and
custom metrics included), all measured in one run.

Prints a table and writes `bench/results.json`. `--quick` is a seconds-long run for the test that keeps this
script from rotting; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stdout, suppress
from importlib import metadata
from pathlib import Path
from typing import Any

import boto3
import httpx
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from tiktok_bridge import auth, identity, ingest, queue, segment
from tiktok_bridge.config import BridgeConfig
from tiktok_bridge.mapping import map_events
from tiktok_bridge_cli.local import LambdaContext, LambdaWorker, LocalStack
from tiktok_bridge_cli.stack import INGEST_ID, create_stack, load_template

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
CATEGORIES = ("Shoes", "Accessories", "Outdoor", "Kitchen")
MAX_ATTEMPTS = 3  # per webhook, as Segment retries a 5xx

# --- the workload -------------------------------------------------------------------------------------------


def _phone(rng: random.Random, index: int) -> str:
    """A distinct phone number per event, in the formats Segment sources send."""
    area, line = 201 + index % 700, index % 10_000
    return rng.choice(
        (
            f"+1{area}555{line:04d}",
            f"({area}) 555-{line:04d}",
            f"+1 {area}-555-{line:04d}",
            f"+44 20 7946 {line:04d}",
        )
    )


def _product(rng: random.Random, index: int) -> dict[str, Any]:
    return {
        "product_id": rng.choice((f"SKU-{index}", index)),
        "sku": f"S{index}",
        "name": f"Product {index}",
        "category": rng.choice(CATEGORIES),
        "brand": "Acme",
        "price": round(rng.uniform(1, 200), 2),
        "quantity": rng.randint(1, 3),
    }


def _event(rng: random.Random, index: int) -> dict[str, Any]:
    """One Segment event of the mix: 30% page, 30% single-product, 25% multi-product, 15% identify.

    Every event has its own user id, email and phone number, so that no cache flatters the figures.
    """
    email = f"User.{index}@Example{index % 13}.com"
    traits = {"email": email, "phone": _phone(rng, index)}
    event: dict[str, Any] = {
        "messageId": f"bench-{index:08d}-{rng.getrandbits(32):08x}",
        "timestamp": "2026-01-15T09:58:00.123Z",
        "anonymousId": f"anon-{rng.getrandbits(48):012x}",
        "userId": f"user-{index}",
        "context": {
            "ip": f"203.0.113.{index % 250}",
            "userAgent": UA,
            "locale": "en-US",
            "page": {"url": f"https://shop.example.com/p/{index}?ttclid=E.C.P.{index}&utm_source=tiktok"},
            "traits": traits,
        },
    }
    kind = rng.random()
    if kind < 0.30:
        event.update(
            type="page", name="Product Detail", properties={"url": f"https://shop.example.com/{index}"}
        )
    elif kind < 0.60:
        event.update(
            type="track",
            event=rng.choice(("Product Viewed", "Product Added")),
            properties={**_product(rng, index), "currency": "usd", "value": 10.5},
        )
    elif kind < 0.85:
        products = [_product(rng, index * 10 + n) for n in range(rng.randint(1, 4))]
        event.update(
            type="track",
            event=rng.choice(("Order Completed", "Checkout Started")),
            properties={
                "order_id": f"ORD-{index}",
                "currency": "USD",
                "revenue": 99.5,
                "email": email.upper(),
                "first_name": "Jane",
                "last_name": f"Doe-{index}",
                "address": {"city": "San Francisco", "state": "CA", "postal_code": "94107", "country": "US"},
                "products": products,
            },
        )
    else:
        event.update(type="identify", traits={**traits, "first_name": "Jane", "last_name": f"Doe {index}"})
    return event


def workload(count: int, seed: int = 5, first: int = 0) -> list[dict[str, Any]]:
    """`count` events of the mix, for the users numbered `first`, `first + 1`..."""
    rng = random.Random(seed)
    return [_event(rng, first + index) for index in range(count)]


def _best(run: Callable[[], object], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


# --- mapping against its floor ------------------------------------------------------------------------------


def _identifiers(event: dict[str, Any]) -> list[str]:
    """The raw strings the mapping hashes for `event`: email, phone, user id, names, zip (first present)."""
    properties, traits = event.get("properties") or {}, event["context"]["traits"]
    address = properties.get("address") or {}
    values = (
        properties.get("email") or traits.get("email"),
        properties.get("phone") or traits.get("phone"),
        event.get("userId") or event.get("anonymousId"),
        properties.get("first_name"),
        properties.get("last_name"),
        address.get("postal_code"),
    )
    return [value for value in values if isinstance(value, str)]


def bench_mapping(count: int, repeats: int) -> dict[str, float]:
    """Events/s of body -> mapped JSON on one core, beside the floor: `json.loads` of the same body, SHA-256
    of the same identifiers and `json.dumps` of the same output, best of `repeats` each."""
    events = workload(count)
    body, config = json.dumps(events).encode(), BridgeConfig()
    outputs = [mapped.data for mapped in map_events(events, config).forwarded]
    identifiers = [
        v for event in events if event["type"] in segment.FORWARDABLE_TYPES for v in _identifiers(event)
    ]

    def mapping() -> list[str]:
        result = map_events(segment.parse_body(body), config)
        return [json.dumps(mapped.data, separators=(",", ":")) for mapped in result.forwarded]

    def floor() -> list[str]:
        json.loads(body)
        for value in identifiers:
            hashlib.sha256(value.encode()).hexdigest()
        return [json.dumps(data, separators=(",", ":")) for data in outputs]

    mapping_s, floor_s = math.inf, math.inf
    for _ in range(repeats):  # interleaved, so that both see the same machine; one thread, so one core
        mapping_s, floor_s = min(mapping_s, _best(mapping, 1)), min(floor_s, _best(floor, 1))
    return {
        "events": count,
        "events_per_s": count / mapping_s,
        "floor_events_per_s": count / floor_s,
        "floor_ratio": floor_s / mapping_s,
        "us_per_event": mapping_s / count * 1e6,
        "floor_us_per_event": floor_s / count * 1e6,
    }


# --- cold start ---------------------------------------------------------------------------------------------

_IMPORT = """\
import importlib.abc, sys, time

class LayerOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {absent!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, LayerOnly())
sys.path.insert(0, {folder!r})
start = time.perf_counter()
import {module}
elapsed_ms = (time.perf_counter() - start) * 1000
peak_kb = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(elapsed_ms, int(peak_kb) / 1024)
"""
_LAMBDA_ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "POWERTOOLS_SERVICE_NAME": "tiktok-bridge",
    "POWERTOOLS_METRICS_NAMESPACE": "TikTokBridge",
}


def not_in_layer() -> set[str]:
    """Top-level modules installed here but absent from the Lambda layer, which holds only the runtime
    dependencies of pyproject.toml and theirs (no extras): e.g. httpx's optional CLI (rich, pygments), which
    httpx imports whenever it is installed."""
    wanted = [
        Requirement(r).name
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    closure: set[str] = set()
    while wanted:
        name = canonicalize_name(wanted.pop())
        if name in closure:
            continue
        closure.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
    return {
        module
        for module, dists in metadata.packages_distributions().items()
        if not any(canonicalize_name(dist) in closure for dist in dists)
    } - {"tiktok_bridge"}


def _import(module: str, folder: str, absent: set[str]) -> tuple[float, float]:
    """(ms to import `module` in a fresh interpreter, its peak RSS in MB), as Lambda imports a handler, with
    the modules in `absent` unavailable."""
    code = _IMPORT.format(folder=str(ROOT / folder), module=module, absent=sorted(absent))
    env = {**os.environ, **_LAMBDA_ENV}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    ms, rss = done.stdout.split()
    return float(ms), float(rss)


def bench_cold_start(repeats: int) -> dict[str, float]:
    """Best of `repeats` fresh interpreters each: bare boto3, the ingest handler, the sender handler."""
    targets = {
        "boto3": ("boto3", ""),
        "ingest": ("app", "functions/ingest"),
        "sender": ("app", "functions/sender"),
    }
    best: dict[str, tuple[float, float]] = {name: (math.inf, math.inf) for name in targets}
    absent = not_in_layer()
    for _ in range(repeats):  # interleaved, so that a busy moment hurts all three alike
        for name, (module, folder) in targets.items():
            ms, rss = _import(module, folder, absent)
            best[name] = (min(best[name][0], ms), min(best[name][1], rss))
    result = {f"{name}_ms": ms for name, (ms, _) in best.items()}
    result |= {f"{name}_import_rss_mb": rss for name, (_, rss) in best.items()}
    for name in ("ingest", "sender"):
        result[f"{name}_over_boto3_ms"] = result[f"{name}_ms"] - result["boto3_ms"]
    return result


# --- moto's SQS at a backlog ------------------------------------------------------------------------------

COUNT_TTL_S = 0.25


@contextmanager
def moto_sqs_speedups() -> Iterator[None]:
    """For the bench only: make moto's SQS bearable with a 1,000-message backlog.

    moto 5 rebuilds every queue attribute, counting all messages twice over with a datetime-based clock, for
    each message it sends and receives (O(queue) per message: ~1 s per ReceiveMessage at 1,000 queued), so
    the local stack cannot hold the backlog that fills a 1,000-event batch. Here the clock is `time.time`
    (same value), the retention check reads the queue's retention period directly, and the three
    approximate message counts are cached for COUNT_TTL_S (they are approximate in SQS too).
    """
    import moto.sqs.models

    models: Any = moto.sqs.models  # patched by name below
    originals = {
        name: getattr(models.Queue, name)
        for name in (
            "approximate_number_of_messages",
            "approximate_number_of_messages_delayed",
            "approximate_number_of_messages_not_visible",
        )
    }
    clock = models.unix_time, models.unix_time_millis
    retention = models.SQSBackend.is_message_valid_based_on_retention_period

    def cached(name: str, count: Any) -> property:
        def get(queue: Any) -> int:
            cache = queue.__dict__.setdefault("_bench_counts", {})
            expires, value = cache.get(name, (0.0, 0))
            if time.monotonic() >= expires:
                value = count.fget(queue)
                cache[name] = (time.monotonic() + COUNT_TTL_S, value)
            return int(value)

        return property(get)

    def still_retained(backend: Any, queue_name: str, message: Any) -> bool:
        period = int(backend.get_queue(queue_name).message_retention_period)
        return bool(message.sent_timestamp / 1000 + period > time.time())

    for name, count in originals.items():
        setattr(models.Queue, name, cached(name, count))
    models.unix_time = lambda dt=None: clock[0](dt) if dt else time.time()
    models.unix_time_millis = lambda dt=None: clock[1](dt) if dt else time.time() * 1000
    models.SQSBackend.is_message_valid_based_on_retention_period = still_retained
    try:
        yield
    finally:
        for name, count in originals.items():
            setattr(models.Queue, name, count)
        models.unix_time, models.unix_time_millis = clock
        models.SQSBackend.is_message_valid_based_on_retention_period = retention


# --- the local stack: batching and end to end ---------------------------------------------------------------


def _workers() -> dict[str, int]:
    """The pids of this process's Lambda worker children, by function ("ingest", "sender")."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == os.getpid() and b"tiktok_bridge_cli.local" in command:
            handler_file = command[command.index(b"tiktok_bridge_cli.local") + 1]
            found[Path(handler_file.decode()).parent.name] = int(entry.name)
    return found


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _post(local: LocalStack, bodies: Sequence[bytes]) -> tuple[list[dict[str, Any]], int]:
    """POST every body, signed and with the token, retrying a 5xx as Segment does; the JSON answers and
    the number of retries. Raises when a body is refused or keeps failing."""
    answers, retries = [], 0
    with httpx.Client(timeout=60) as client:
        for body in bodies:
            headers = local.webhook_headers(body)
            for _ in range(MAX_ATTEMPTS):
                response = client.post(local.ingest_url, content=body, headers=headers)
                if response.status_code < 500:
                    break
                retries += 1
            if response.status_code != 200:
                raise RuntimeError(f"ingest answered HTTP {response.status_code}: {response.text[:200]}")
            answers.append(response.json())
    return answers, retries


def _delivered(local: LocalStack) -> int:
    """Distinct events TikTok (the emulator) accepted, by its dedup keys."""
    assert local.emulator is not None
    return len({event_id for _, _, event_id in local.emulator.delivered_keys()})


def _settle(local: LocalStack, accepted: int, timeout_s: float) -> float:
    """Wait until every accepted event is delivered or dead-lettered; the monotonic time it happened."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _delivered(local) >= accepted:
            return time.monotonic()
        time.sleep(0.05)
    local.wait_until_drained(timeout_s)  # the DLQ holds the rest, or this raises
    return time.monotonic()


class AwsCalls(Counter[str]):
    """A moto WSGI middleware counting AWS API calls by `X-Amz-Target` (DynamoDB's JSON protocol)."""

    def __call__(self, app: Callable[..., Any]) -> Callable[..., Any]:
        def counting(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            self[str(environ.get("HTTP_X_AMZ_TARGET", "")).rpartition(".")[2]] += 1
            return app(environ, start_response)

        return counting


Series = tuple[str, str, tuple[tuple[str, str], ...]]  # (namespace, metric name, sorted dimensions)


def emf_series(blob: Mapping[str, Any]) -> set[Series]:
    """The CloudWatch metric series one Embedded Metric Format blob writes: one per metric name and
    dimension set (`_aws.CloudWatchMetrics[].Dimensions`, values from the blob's top level)."""
    found: set[Series] = set()
    aws = blob.get("_aws")
    directives = (aws.get("CloudWatchMetrics") or []) if isinstance(aws, dict) else []
    for directive in directives:
        for dimensions in directive.get("Dimensions") or [[]]:
            named = tuple(sorted((str(name), str(blob.get(name, ""))) for name in dimensions))
            for metric in directive.get("Metrics") or []:
                found.add((str(directive.get("Namespace", "")), str(metric["Name"]), named))
    return found


class LogMeter:
    """For the bench only: what each function writes to its log stream (its stdout and stderr, which the
    local stack's workers forward line by line), in UTF-8 bytes with the newline and in lines, and the custom
    metric series of the EMF blobs among them."""

    def __init__(self) -> None:
        self.bytes: Counter[str] = Counter()
        self.lines: Counter[str] = Counter()
        self.emf_bytes: Counter[str] = Counter()
        self.series: set[Series] = set()
        self._lock = threading.Lock()

    def install(self, workers: Mapping[str, LambdaWorker]) -> None:
        """Count every line the workers forward from now on (they look `_log` up for each line)."""
        for function, worker in workers.items():
            worker._log = self._counting(function, worker._log)

    def _counting(self, function: str, forward: Callable[[str], None]) -> Callable[[str], None]:
        def counted(line: str) -> None:
            self.count(function, line)
            forward(line)

        return counted

    def count(self, function: str, line: str) -> None:
        size = len(line.encode("utf-8")) + 1
        blob = None
        if line.startswith("{") and '"_aws"' in line:
            with suppress(ValueError):
                blob = json.loads(line)
        with self._lock:
            self.bytes[function] += size
            self.lines[function] += 1
            if isinstance(blob, dict):
                self.emf_bytes[function] += size
                self.series |= emf_series(blob)

    def snapshot(self) -> dict[str, Counter[str]]:
        with self._lock:
            return {
                "bytes": Counter(self.bytes),
                "lines": Counter(self.lines),
                "emf": Counter(self.emf_bytes),
            }


def _quiesce(local: LocalStack, timeout_s: float = 10) -> None:
    """Wait until no function is mid-invocation, then a moment for the last log lines to be forwarded."""
    deadline = time.monotonic() + timeout_s
    while any(worker.busy for worker in local.workers.values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)


def _per_invocation(logs: dict[str, Counter[str]], function: str, invocations: int) -> dict[str, float]:
    """A function's log bytes, EMF bytes and lines per invocation over one phase."""
    n = max(invocations, 1)
    return {
        "bytes": logs["bytes"][function] / n,
        "emf_bytes": logs["emf"][function] / n,
        "lines": logs["lines"][function] / n,
    }


def bench_pipeline(
    count: int, batch: int, unbatched: int, window_s: float | None = None
) -> dict[str, dict[str, Any]]:
    """Unbatched webhooks (1 event each), then `count` events in Segment batches of `batch`, sustained."""
    events = workload(count + unbatched, seed=9)
    calls, meter = AwsCalls(), LogMeter()
    local_stack = LocalStack(batching_window_s=window_s, moto_middleware=calls)
    with moto_sqs_speedups(), local_stack as local:
        assert local.emulator is not None
        meter.install(local.workers)
        pids = _workers()
        cpu = {name: _cpu_s(pid) for name, pid in pids.items()}

        single = [json.dumps(event).encode() for event in events[:unbatched]]
        answers, retries = _post(local, single)
        single_accepted = sum(answer["accepted"] for answer in answers)
        _settle(local, single_accepted, 120)
        _quiesce(local)
        single_cpu = {name: _cpu_s(pid) - cpu[name] for name, pid in pids.items()}
        single_delivered = _delivered(local)
        single_logs, single_ingests = meter.snapshot(), unbatched + retries
        local.emulator.reset()
        assert local.event_source is not None
        invocations = local.event_source.invocations
        cpu = {name: _cpu_s(pid) for name, pid in pids.items()}
        calls.clear()
        rest = events[unbatched:]
        bodies = [json.dumps(rest[n : n + batch]).encode() for n in range(0, len(rest), batch)]
        start = time.monotonic()
        answers, more_retries = _post(local, bodies)
        profile_calls = {name: calls[name] / len(bodies) for name in ("BatchGetItem", "BatchWriteItem")}
        retries += more_retries
        accepted = sum(answer["accepted"] for answer in answers)
        done = _settle(local, accepted, 300)
        _quiesce(local)
        batched_cpu = {name: _cpu_s(pid) - cpu[name] for name, pid in pids.items()}
        batched_logs = {kind: meter.snapshot()[kind] - single_logs[kind] for kind in single_logs}
        delivered, dead = _delivered(local), len(local.dlq_messages())
        requests = local.emulator.request_count
        bodies_posted = local.emulator.accepted_requests()
        posted = sum(len(body["data"]) for body in bodies_posted)
        tiktok_bytes = sum(len(json.dumps(body, separators=(",", ":")).encode()) for body in bodies_posted)
        rss = {name: _peak_rss_mb(pid) for name, pid in pids.items()}
        invocations = local.event_source.invocations - invocations
        stack = local.stack
    ingest_single = _per_invocation(single_logs, "ingest", single_ingests)
    ingest_batched = _per_invocation(batched_logs, "ingest", len(bodies) + more_retries)
    sender_batched = _per_invocation(batched_logs, "sender", invocations)
    return {
        "delivery": {
            "events_per_request": posted / requests,
            "requests_per_1000_events": 1000 * requests / posted,
            "tiktok_requests": requests,
            "tiktok_bytes_per_event": tiktok_bytes / max(posted, 1),
            "batch_size": stack.sender_batch_size,
            "batching_window_s": stack.sender_batching_window_s,
        },
        "e2e": {
            "events_per_s": delivered / (done - start),
            "accepted": accepted,
            "delivered": delivered,
            "dead_lettered": dead,
            "lost": accepted - delivered - dead,
            "events_per_webhook": batch,
            "webhooks": len(bodies),
            "webhook_bytes": sum(map(len, bodies)) / len(bodies),
            "unbatched_accepted": single_accepted,
            "unbatched_lost": single_accepted - single_delivered,
            "webhook_retries": retries,
        },
        "identity": {
            # Identify's DynamoDB calls per batched webhook: one logical read and write, split by DynamoDB's
            # per-call limits (100 keys read, 25 items written) when a webhook holds that many users.
            "dynamodb_batch_get_per_webhook": profile_calls["BatchGetItem"],
            "dynamodb_batch_write_per_webhook": profile_calls["BatchWriteItem"],
        },
        "cpu": {
            "ingest_ms_per_unbatched_webhook": 1000 * single_cpu["ingest"] / unbatched,
            "ingest_ms_per_batched_webhook": 1000 * batched_cpu["ingest"] / len(bodies),
            "events_per_batched_webhook": batch,
            "sender_ms_per_event": 1000 * batched_cpu["sender"] / max(delivered, 1),
            "sender_events_per_invocation": delivered / max(invocations, 1),
            "forwarded_per_event": (single_accepted + accepted) / len(events),
            "ingest_memory_mb": stack.ingest.memory_mb,
            "sender_memory_mb": stack.sender.memory_mb,
            "ingest_peak_rss_mb": rss["ingest"],
            "sender_peak_rss_mb": rss["sender"],
            # Secrets each instance reads (every SECRET_CACHE_S): ingest the webhook secret and the token's.
            "ingest_secrets_read": len({stack.secret_of("webhook_secret"), stack.secret_of("webhook_token")}),
            "sender_secrets_read": 1,
        },
        "logs": {
            # What the handlers write (Powertools JSON lines and EMF blobs), per invocation; Lambda's own
            # START/END/REPORT lines (LAMBDA_PLATFORM_LOG_BYTES) come on top, in the cost model.
            "ingest_bytes_per_unbatched_invocation": ingest_single["bytes"],
            "ingest_bytes_per_batched_invocation": ingest_batched["bytes"],
            "ingest_emf_bytes_per_batched_invocation": ingest_batched["emf_bytes"],
            "ingest_lines_per_batched_invocation": ingest_batched["lines"],
            "sender_bytes_per_invocation": sender_batched["bytes"],
            "sender_emf_bytes_per_invocation": sender_batched["emf_bytes"],
            "sender_lines_per_invocation": sender_batched["lines"],
            "sender_invocations": invocations,
            "platform_bytes_per_invocation": LAMBDA_PLATFORM_LOG_BYTES,
        },
        "metrics": {
            "series": len(meter.series),
            "names": sorted(
                f"{namespace}/{name}" + "".join(f" {key}={value}" for key, value in dimensions)
                for namespace, name, dimensions in meter.series
            ),
        },
    }


# --- cost ---------------------------------------------------------------------------------------------------

# us-east-1 list prices (2025), written out in the output and in docs/benchmarks.md.
PRICES = {
    "api_gateway_http_usd_per_million_requests": 1.00,  # first 300 M/month; metered per 512 KB of request
    "lambda_arm64_usd_per_gb_s": 0.0000133334,
    "lambda_usd_per_million_requests": 0.20,
    "sqs_standard_usd_per_million_requests": 0.40,  # each 64 KB chunk of a payload is one request
    "secrets_manager_usd_per_10k_calls": 0.05,
    "dynamodb_on_demand_usd_per_million_rru": 0.125,  # 0.5 RRU per eventually consistent read of <= 4 KB
    "dynamodb_on_demand_usd_per_million_wru": 0.625,  # 1 WRU per KB written, per item
    "cloudwatch_logs_ingestion_usd_per_gb": 0.50,  # Standard log class
    "data_transfer_out_usd_per_gb": 0.09,  # to the internet (TikTok), first 10 TB/month
    # By the month, whatever the volume:
    "cloudwatch_custom_metric_usd_per_month": 0.30,  # first 10,000 metrics; prorated by the hour
    "cloudwatch_alarm_usd_per_month": 0.10,  # standard resolution
    "secrets_manager_usd_per_secret_month": 0.40,
}
GB = 1024**3
API_GATEWAY_METER_BYTES = 512 * 1024
FULL_VCPU_MB = 1769  # Lambda gives one full vCPU at 1,769 MB; less memory gets a proportional share
SECRET_CACHE_S = 300  # Powertools keeps the secret 5 minutes per instance
ASSUMED_EVENTS_PER_S = 100  # only for the Secrets Manager line: how long a million events take
# Lambda's own lines per invocation in the text log format (the template sets no LoggingConfig): START
# (~70 bytes), END (~52) and REPORT (~150; ~175 with a cold start's Init Duration). Not measured here.
LAMBDA_PLATFORM_LOG_BYTES = 300
DYNAMODB_READ_UNIT_BYTES, DYNAMODB_WRITE_UNIT_BYTES = 4096, 1024
COST_SIZES = (1, 100, 1_000, 4_000)  # events per webhook
BATCHED_SIZE = 100  # `usd_per_million_batched`: the pipeline's webhook size, within the template's MaxEvents
MONTHLY_EVENTS = (10_000_000, 100_000_000)  # for the fixed monthly costs per million events
# Typical values of API Gateway's $context variables, to size an access-log line of a template's format.
ACCESS_LOG_SAMPLES = {
    "requestId": "JKJaXmPLvHcESHA=",
    "extendedRequestId": "JKJaXmPLvHcESHA=",
    "identity.sourceIp": "54.186.12.34",
    "identity.userAgent": "Segment.io/1.0",
    "requestTime": "15/Jan/2026:09:58:00 +0000",
    "requestTimeEpoch": "1768471080",
    "httpMethod": "POST",
    "routeKey": "POST /v1/events",
    "path": "/v1/events",
    "protocol": "HTTP/1.1",
    "status": "200",
    "responseLength": "64",
    "responseLatency": "45",
    "integrationLatency": "42",
    "integrationStatus": "200",
    "integrationErrorMessage": "-",
    "error.message": "-",
    "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
    "stage": "$default",
    "apiId": "a1b2c3d4e5",
}


def _lambda_usd(cpu_s: float, memory_mb: int, invocations: float) -> float:
    """Billed GB-s when the work is CPU-bound at `memory_mb` (its CPU share stretches the duration)."""
    duration_s = cpu_s * max(1.0, FULL_VCPU_MB / memory_mb)
    return (
        duration_s * memory_mb / 1024 * PRICES["lambda_arm64_usd_per_gb_s"]
        + invocations * PRICES["lambda_usd_per_million_requests"] / 1e6
    )


def ingest_ms(cpu: Mapping[str, float], events_per_webhook: int) -> float:
    """Ingest CPU ms for one webhook of `events_per_webhook` events, on the line through the two measured
    points (1-event webhooks, and webhooks of `cpu["events_per_batched_webhook"]`)."""
    one, batched = cpu["ingest_ms_per_unbatched_webhook"], cpu["ingest_ms_per_batched_webhook"]
    per_event = max(0.0, (batched - one) / (cpu["events_per_batched_webhook"] - 1))
    return one + per_event * (events_per_webhook - 1)


def dynamodb_item_bytes(item: Mapping[str, Mapping[str, Any]]) -> int:
    """An item's size as DynamoDB bills it: each attribute's name plus its value (UTF-8 strings, binary
    bytes; a number takes 1 byte per 2 significant digits plus 1)."""
    size = 0
    for name, value in item.items():
        size += len(name.encode())
        if "S" in value:
            size += len(str(value["S"]).encode())
        elif "N" in value:
            digits = str(value["N"]).lstrip("-").replace(".", "").strip("0") or "0"
            size += (len(digits) + 1) // 2 + 1
        elif "B" in value:
            size += len(value["B"])
        else:
            size += len(json.dumps(value))  # types identity.py does not write; roughly
    return size


def access_log_format(template: Mapping[str, Any]) -> str | None:
    """The access-log format of the template's HTTP API (a SAM HttpApi or an ApiGatewayV2 stage), or None
    when it logs no access."""
    for resource in template.get("Resources", {}).values():
        if not isinstance(resource, dict):
            continue
        if resource.get("Type") not in {"AWS::Serverless::HttpApi", "AWS::ApiGatewayV2::Stage"}:
            continue
        settings = (resource.get("Properties") or {}).get("AccessLogSettings")
        form = settings.get("Format") if isinstance(settings, dict) else None
        if isinstance(form, dict) and isinstance(form.get("Fn::Sub"), str):
            form = form["Fn::Sub"]
        if form:
            return form if isinstance(form, str) else json.dumps(form)
    return None


def access_log_bytes(form: str) -> int:
    """One access-log line of `form`, with a newline, each $context variable replaced by a typical value."""
    line = re.sub(
        r"\$context\.([A-Za-z0-9_.]*[A-Za-z0-9_])",
        lambda match: ACCESS_LOG_SAMPLES.get(match.group(1), "x" * 16),
        form,
    )
    return len(line.encode()) + 1


def per_webhook(inputs: Mapping[str, Any], events_per_webhook: int) -> dict[str, Any]:
    """One webhook's figures: ingest CPU, body, DynamoDB units and ingest log bytes.

    From `ingest.by_size` when that size was measured; otherwise the CPU lies on the line through the
    pipeline's two points, and body and DynamoDB units scale per event from the largest size measured.
    Ingest's log bytes are the pipeline's, of 1-event webhooks for 1 event, of batched ones otherwise (its
    lines hold counts, not events).
    """
    logs, by_size = inputs["logs"], inputs["by_size"]
    log_bytes = logs[
        "ingest_bytes_per_unbatched_invocation"
        if events_per_webhook == 1
        else "ingest_bytes_per_batched_invocation"
    ]
    row = by_size.get(f"{events_per_webhook}_events")
    if row is not None:
        measured = {key: row[key] for key in ("body_bytes", "dynamodb_rru", "dynamodb_wru")}
        return {
            "source": "ingest.by_size",
            "ingest_cpu_ms": row["cpu_ms"],
            **measured,
            "log_bytes": log_bytes,
        }
    largest = max(by_size, key=lambda name: int(name.partition("_")[0]))
    scale = events_per_webhook / int(largest.partition("_")[0])
    return {
        "source": "extrapolated",
        "ingest_cpu_ms": ingest_ms(inputs["cpu"], events_per_webhook),
        **{key: by_size[largest][key] * scale for key in ("body_bytes", "dynamodb_rru", "dynamodb_wru")},
        "log_bytes": log_bytes,
    }


def cost_per_million(inputs: Mapping[str, Any], events_per_webhook: int) -> dict[str, float]:
    """USD per million Segment events received, by service, for webhooks of `events_per_webhook` events."""
    cpu, logs, size = inputs["cpu"], inputs["logs"], per_webhook(inputs, events_per_webhook)
    events, forwarded = 1e6, 1e6 * cpu["forwarded_per_event"]
    webhooks = events / events_per_webhook
    senders = forwarded / cpu["sender_events_per_invocation"]
    metered = math.ceil(size["body_bytes"] / API_GATEWAY_METER_BYTES)
    sends = forwarded / min(events_per_webhook, 10)  # SendMessageBatch of ≤ 10 (each ≤ 64 KB)
    # One instance of each function, each reading its secrets once per SECRET_CACHE_S.
    secret_calls = (cpu["ingest_secrets_read"] + cpu["sender_secrets_read"]) * (
        events / ASSUMED_EVENTS_PER_S / SECRET_CACHE_S
    )
    log_bytes = webhooks * (
        size["log_bytes"] + LAMBDA_PLATFORM_LOG_BYTES + inputs["access_log_bytes_per_request"]
    ) + senders * (logs["sender_bytes_per_invocation"] + LAMBDA_PLATFORM_LOG_BYTES)
    parts = {
        "api_gateway": webhooks * metered * PRICES["api_gateway_http_usd_per_million_requests"] / 1e6,
        "lambda_ingest": _lambda_usd(
            webhooks * size["ingest_cpu_ms"] / 1000, int(cpu["ingest_memory_mb"]), webhooks
        ),
        "lambda_sender": _lambda_usd(
            forwarded * cpu["sender_ms_per_event"] / 1000, int(cpu["sender_memory_mb"]), senders
        ),
        "sqs": (sends + 2 * forwarded / 10) * PRICES["sqs_standard_usd_per_million_requests"] / 1e6,
        "secrets_manager": secret_calls * PRICES["secrets_manager_usd_per_10k_calls"] / 1e4,
        "dynamodb": webhooks
        * (
            size["dynamodb_rru"] * PRICES["dynamodb_on_demand_usd_per_million_rru"]
            + size["dynamodb_wru"] * PRICES["dynamodb_on_demand_usd_per_million_wru"]
        )
        / 1e6,
        "cloudwatch_logs": log_bytes / GB * PRICES["cloudwatch_logs_ingestion_usd_per_gb"],
        "data_transfer_out": forwarded
        * inputs["tiktok_bytes_per_event"]
        / GB
        * PRICES["data_transfer_out_usd_per_gb"],
    }
    return {**parts, "total": sum(parts.values())}


def monthly_fixed(template: Mapping[str, Any], metric_series: int) -> dict[str, float]:
    """USD per month whatever the volume: the custom metric series, the template's alarms and secrets."""
    types = Counter(r.get("Type") for r in template.get("Resources", {}).values() if isinstance(r, dict))
    parts = {
        "custom_metrics": metric_series * PRICES["cloudwatch_custom_metric_usd_per_month"],
        "alarms": types["AWS::CloudWatch::Alarm"] * PRICES["cloudwatch_alarm_usd_per_month"],
        "secrets": types["AWS::SecretsManager::Secret"] * PRICES["secrets_manager_usd_per_secret_month"],
    }
    return {**parts, "total": sum(parts.values())}


# --- ingest by webhook size ---------------------------------------------------------------------------------

INGEST_SIZES = (1, 100, 1_000, 4_000)
QUICK_INGEST_SIZES = (1, 10, 40)
SEGMENT_TIMEOUT_S = 5.0
# Half of Segment's timeout: the rest is margin for a cold start and a slower DynamoDB and SQS than moto.
INGEST_BUDGET_S = SEGMENT_TIMEOUT_S / 2
MAX_EVENTS_LIMIT = 100_000  # the MAX_EVENTS setting's upper bound
BENCH_WEBHOOK_SECRET, BENCH_WEBHOOK_TOKEN = "bench-webhook-secret", "bench-webhook-token"
# The handler's stages, as ingest.py reaches them (`map_events` is imported into ingest by name).
STAGES: dict[str, tuple[Any, str]] = {
    "auth": (auth, "authenticate"),
    "parse": (segment, "parse_body"),
    "map": (ingest, "map_events"),
    "identify": (identity, "identify"),
    "enqueue": (queue, "send_all"),
}


def new_users(count: int, first: int) -> list[dict[str, Any]]:
    """The first `count` events of the workload (the same events for a given count, so that repeats are
    alike), but from users `first`.. with nothing in common: anonymous ids, random in the workload, come from
    the user's number, and so do the +44 phone numbers, which repeat every 10,000 users in the workload."""
    events = workload(count, first=first)
    for index, event in enumerate(events, first):
        event["anonymousId"] = f"anon-{index:012x}"
        for traits in (event["context"]["traits"], event.get("traits") or {}):
            if str(traits.get("phone", "")).startswith("+44"):
                traits["phone"] = f"+44 20 7{index % 10_000_000:07d}"
    return events


def actions_batch(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The API Gateway (payload 2.0) event of a Segment Webhooks (Actions) batch: a bare array as JavaScript
    writes it, `X-Signature` over its first element only, and the token as `Authorization: Bearer`."""
    elements = [json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() for event in events]
    body = b"[" + b",".join(elements) + b"]"
    user_agent, route = "Segment.io/1.0", f"POST {ingest.ROUTE}"
    return {
        "version": "2.0",
        "routeKey": route,
        "rawPath": ingest.ROUTE,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "user-agent": user_agent,
            "x-signature": auth.signature(BENCH_WEBHOOK_SECRET, elements[0]),
            "authorization": f"Bearer {BENCH_WEBHOOK_TOKEN}",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "http": {
                "method": "POST",
                "path": ingest.ROUTE,
                "protocol": "HTTP/1.1",
                "sourceIp": "54.186.0.1",
                "userAgent": user_agent,
            },
            "requestId": f"bench-{events[0]['messageId']}",
            "routeKey": route,
            "stage": "$default",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": body.decode(),
        "isBase64Encoded": False,
    }


def serve_moto() -> int:
    """`--serve-moto`: moto's server (with the bench's SQS speedups) on a free port, until killed or until
    stdin closes (the parent is gone); prints its URL first."""

    def exit_with_parent() -> None:
        sys.stdin.read()
        os._exit(0)

    from tiktok_bridge_cli.local import moto_server, url_of

    with moto_sqs_speedups():
        server = moto_server(0)
        print(url_of(server), flush=True)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing more into the parent's pipe
        threading.Thread(target=exit_with_parent, daemon=True).start()
        server.serve_forever()
    return 0


@contextmanager
def moto_process() -> Iterator[str]:
    """The URL of a moto server running in a child process, so that this process's CPU time is the
    handler's alone."""
    env = {**os.environ, "MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR": "false"}
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-moto"]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    ) as child:
        try:
            assert child.stdout is not None
            url = child.stdout.readline().strip()
            if not url.startswith("http://"):
                raise RuntimeError(f"the moto server did not start (exit code {child.poll()})")
            yield url
        finally:
            child.terminate()  # then Popen's exit closes the pipes and waits


@contextmanager
def handler_environment(values: dict[str, str]) -> Iterator[None]:
    """`values` as this process's environment on top of the current one (no AWS profile or endpoint
    overrides), a fresh default boto3 session, ingest runtime and Powertools caches; all restored after."""
    from aws_lambda_powertools.utilities import parameters

    saved, session = dict(os.environ), boto3.DEFAULT_SESSION
    for name in [name for name in os.environ if name == "AWS_PROFILE" or name.startswith("AWS_ENDPOINT_URL")]:
        del os.environ[name]
    os.environ.update(values)
    boto3.DEFAULT_SESSION = None

    def fresh() -> None:
        ingest.runtime.cache_clear()
        parameters.clear_caches()  # type: ignore[no-untyped-call]

    fresh()
    try:
        yield
    finally:
        fresh()
        os.environ.clear()
        os.environ.update(saved)
        boto3.DEFAULT_SESSION = session


@contextmanager
def quiet_handler() -> Iterator[None]:
    """The handler's log lines and metrics (stdout on Lambda) still formatted, but written to /dev/null."""
    handler = ingest.logger.registered_handler
    if not isinstance(handler, logging.StreamHandler):
        raise RuntimeError(f"ingest's logger writes through {type(handler).__name__}, not a stream")
    with open(os.devnull, "w", encoding="utf-8") as devnull, redirect_stdout(devnull):
        original = handler.setStream(devnull) or devnull
        try:
            yield
        finally:
            handler.setStream(original)


class StageTimer:
    """For the bench only: the handler's STAGES wrapped where ingest looks them up, adding up the CPU time
    (`time.process_time`, every thread) and keeping the last return value of each."""

    def __init__(self) -> None:
        self.cpu_s: dict[str, float] = {}
        self.returned: dict[str, Any] = {}

    def _timed(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                self.returned[stage] = function(*args, **kwargs)
                return self.returned[stage]
            finally:
                self.cpu_s[stage] = self.cpu_s.get(stage, 0.0) + time.process_time() - start

        return timed

    @contextmanager
    def installed(self) -> Iterator[StageTimer]:
        originals = {stage: getattr(module, name) for stage, (module, name) in STAGES.items()}
        for stage, (module, name) in STAGES.items():
            setattr(module, name, self._timed(stage, originals[stage]))
        try:
            yield self
        finally:
            for stage, (module, name) in STAGES.items():
                setattr(module, name, originals[stage])

    def reset(self) -> None:
        self.cpu_s.clear()
        self.returned.clear()


class DynamoDbMeter:
    """For the bench only: the profile keys Identify reads (`ProfileStore.load`) and the items it writes
    (`identity.to_item`), kept as they pass and sized after the call, so the handler's time barely changes."""

    def __init__(self) -> None:
        self.keys_read = 0
        self.items: list[dict[str, Any]] = []

    @contextmanager
    def installed(self) -> Iterator[DynamoDbMeter]:
        load, to_item = identity.ProfileStore.load, identity.to_item

        def counted_load(store: identity.ProfileStore, keys: Any, now: float) -> Any:
            self.keys_read += len(keys)
            return load(store, keys, now)

        def kept_item(*args: Any, **kwargs: Any) -> dict[str, Any]:
            item = to_item(*args, **kwargs)
            self.items.append(item)
            return item

        setattr(identity.ProfileStore, "load", counted_load)  # noqa: B010 (mypy: no method assignment)
        setattr(identity, "to_item", kept_item)  # noqa: B010
        try:
            yield self
        finally:
            setattr(identity.ProfileStore, "load", load)  # noqa: B010
            setattr(identity, "to_item", to_item)  # noqa: B010

    def reset(self) -> None:
        self.keys_read = 0
        self.items.clear()

    def figures(self) -> dict[str, float]:
        """Keys read and items written with their request units: BatchGetItem reads eventually consistent,
        0.5 RRU per 4 KB of each item (a missing key costs the same 0.5), rated at the largest item written;
        BatchWriteItem 1 WRU per KB of each item."""
        sizes = [dynamodb_item_bytes(item) for item in self.items]
        largest = max(sizes, default=0)
        return {
            "dynamodb_keys_read": self.keys_read,
            "dynamodb_items_written": len(sizes),
            "dynamodb_largest_item_bytes": largest,
            "dynamodb_rru": self.keys_read * 0.5 * max(1, math.ceil(largest / DYNAMODB_READ_UNIT_BYTES)),
            "dynamodb_wru": sum(max(1, math.ceil(size / DYNAMODB_WRITE_UNIT_BYTES)) for size in sizes),
        }


def deployed_s(cpu_s: float, wall_s: float, memory_mb: int) -> float:
    """The handler's duration on Lambda at `memory_mb`, from its duration here.

    Lambda gives a function one full vCPU at 1,769 MB and a share proportional to its memory below that, so
    the CPU time stretches by 1,769 / MemorySize (this machine's core counted as one vCPU), while the rest
    of the wall time, waiting on DynamoDB and SQS (moto here), does not scale.
    """
    return cpu_s * max(1.0, FULL_VCPU_MB / memory_mb) + max(0.0, wall_s - cpu_s)


def per_event_s(points: dict[int, float]) -> float:
    """Seconds per event: the slope of the line through the 1-event point that best fits (least squares)
    the larger sizes' points."""
    one, larger = points[1], [(events, s) for events, s in points.items() if events > 1]
    return sum((n - 1) * (s - one) for n, s in larger) / sum((n - 1) ** 2 for n, _ in larger)


def largest_within(points: dict[int, float], budget_s: float) -> int:
    """The largest event count whose duration, on that line, stays within `budget_s`; rounded down to a
    hundred, at most MAX_EVENTS_LIMIT."""
    one, slope = points[1], per_event_s(points)
    if one > budget_s:
        return 0
    if slope <= 0:
        return MAX_EVENTS_LIMIT
    return min(MAX_EVENTS_LIMIT, int((1 + (budget_s - one) / slope) // 100 * 100))


def _ingest_once(
    timer: StageTimer, meter: DynamoDbMeter, events: list[dict[str, Any]], memory_mb: int
) -> dict[str, float]:
    """One webhook of `events` through the handler, here; its figures. Raises unless every event is
    accepted, enqueued, and Identify wrote profiles."""
    request = actions_batch(events)
    context = LambdaContext(
        function_name=INGEST_ID,
        memory_limit_in_mb=memory_mb,
        invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{INGEST_ID}",
        aws_request_id=request["requestContext"]["requestId"],
        deadline=time.monotonic() + 60,
    )
    timer.reset()
    meter.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    response = ingest.lambda_handler(request, context)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    answer = json.loads(response["body"])
    report = timer.returned.get("identify")
    if (
        response["statusCode"] != 200
        or answer["rejected"]
        or answer["accepted"] + answer["skipped"] != len(events)
    ):
        raise RuntimeError(f"ingest answered HTTP {response['statusCode']}: {response['body'][:300]}")
    if report is None or report.error is not None or not report.written:
        raise RuntimeError(f"Identify wrote no profiles: {getattr(report, 'error', 'not called')}")
    stages = {f"{stage}_cpu_ms": 1000 * timer.cpu_s.get(stage, 0.0) for stage in STAGES}
    return {
        "wall_ms": 1000 * wall,
        "cpu_ms": 1000 * cpu,
        **stages,
        "other_cpu_ms": 1000 * cpu - sum(stages.values()),
        "deployed_ms": 1000 * deployed_s(cpu, wall, memory_mb),
        "full_vcpu_ms": 1000 * deployed_s(cpu, wall, FULL_VCPU_MB),
        "body_bytes": len(request["body"].encode()),
        "profiles_written": report.written,
        **meter.figures(),
    }


def bench_ingest_sizes(sizes: Sequence[int], repeats: int) -> dict[str, Any]:
    """The ingest handler in this process on Segment Actions batches of each size, every event from a new
    user (Identify on), against the template's resources in a moto server in a child process. Best (least
    deployed duration) of `repeats`, interleaved, after one warm-up call."""
    key_id = secret = "local"
    session = boto3.session.Session(key_id, secret, region_name="us-east-1")
    users = 0

    def fresh(count: int) -> list[dict[str, Any]]:
        nonlocal users
        users += count
        return new_users(count, users - count)

    with moto_process() as url:
        stack = create_stack(endpoint_url=url, session=session)
        stack.put_secret({"webhook_secret": BENCH_WEBHOOK_SECRET, "webhook_token": BENCH_WEBHOOK_TOKEN})
        memory_mb, sqs = stack.ingest.memory_mb, stack.client("sqs")
        env = stack.environment() | {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": stack.region,
            "AWS_DEFAULT_REGION": stack.region,
            "MAX_EVENTS": str(max(int(stack.ingest.environment.get("MAX_EVENTS") or 0), *sizes)),
        }
        if not env.get("PROFILES_TABLE"):
            raise RuntimeError("the template's ingest function has no PROFILES_TABLE: Identify would be off")
        best: dict[int, dict[str, float]] = {}
        with (
            handler_environment(env),
            quiet_handler(),
            StageTimer().installed() as timer,
            DynamoDbMeter().installed() as meter,
        ):
            _ingest_once(timer, meter, fresh(min(100, max(sizes))), memory_mb)  # imports, clients, the secret
            for _ in range(repeats):  # interleaved, so that a busy moment hurts every size alike
                for size in sizes:
                    sqs.purge_queue(QueueUrl=stack.queue_url)  # moto's SQS slows as its queue grows
                    figures = _ingest_once(timer, meter, fresh(size), memory_mb)
                    if size not in best or figures["deployed_ms"] < best[size]["deployed_ms"]:
                        best[size] = figures
    deployed = {size: row["deployed_ms"] / 1000 for size, row in best.items()}
    full_vcpu = {size: row["full_vcpu_ms"] / 1000 for size, row in best.items()}
    return {
        "memory_mb": memory_mb,
        "budget_s": INGEST_BUDGET_S,
        "safe_max_events": largest_within(deployed, INGEST_BUDGET_S),
        "safe_max_events_full_vcpu": largest_within(full_vcpu, INGEST_BUDGET_S),
        "deployed_ms_at_1_event": 1000 * deployed[1],
        "deployed_ms_per_event": 1000 * per_event_s(deployed),
        "full_vcpu_ms_per_event": 1000 * per_event_s(full_vcpu),
        "repeats": repeats,
        "model": (
            f"deployed = CPU x max(1, {FULL_VCPU_MB}/memory_mb) + (wall - CPU), CPU and wall of the handler "
            "here against moto; safe_max_events: the line through the 1-event point with the least-squares "
            "per-event slope of the larger sizes, within budget_s, rounded down to a hundred"
        ),
        "by_size": {f"{size}_events": row for size, row in sorted(best.items())},
    }


# --- the run ------------------------------------------------------------------------------------------------

TARGETS = {
    "mapping.floor_ratio": (">=", 0.5),
    "delivery.events_per_request": (">=", 900),
    "cold_start.ingest_over_boto3_ms": ("<=", 150),
    "cold_start.sender_over_boto3_ms": ("<=", 150),
    "e2e.lost": ("<=", 0),
}


def cost_section(results: Mapping[str, Any], template: Mapping[str, Any]) -> dict[str, Any]:
    """`results["cost"]` from the measured figures in `results`, and the template's fixed resources; also
    completes `results["logs"]` and `results["metrics"]` with the access logs and the metrics' cost."""
    form = access_log_format(template)
    inputs = {
        "cpu": results["cpu"],
        "logs": results["logs"],
        "by_size": results["ingest"]["by_size"],
        "tiktok_bytes_per_event": results["delivery"]["tiktok_bytes_per_event"],
        "access_log_bytes_per_request": access_log_bytes(form) if form else 0,
    }
    results["logs"]["api_gateway_access_logs"] = form is not None
    results["logs"]["api_gateway_access_log_bytes_per_request"] = inputs["access_log_bytes_per_request"]
    costs = {size: cost_per_million(inputs, size) for size in COST_SIZES}
    fixed = monthly_fixed(template, int(results["metrics"]["series"]))
    results["metrics"]["usd_per_month"] = fixed["custom_metrics"]
    fixed_per_million = {volume: fixed["total"] / (volume / 1e6) for volume in MONTHLY_EVENTS}
    return {
        **{f"usd_per_million_at_{size}": costs[size]["total"] for size in COST_SIZES},
        "usd_per_million_unbatched": costs[1]["total"],
        "usd_per_million_batched": costs[BATCHED_SIZE]["total"],
        "events_per_batched_webhook": BATCHED_SIZE,
        "by_service": {f"{size}_per_webhook": parts for size, parts in costs.items()},
        "per_webhook": {f"{size}_per_webhook": per_webhook(inputs, size) for size in COST_SIZES},
        "monthly_fixed_usd": fixed,
        "monthly_fixed_usd_total": fixed["total"],
        "fixed_usd_per_million": {
            f"{volume}_events_per_month": usd for volume, usd in fixed_per_million.items()
        },
        "usd_per_million_all_in": {
            f"{volume}_events_per_month": {
                f"{size}_per_webhook": costs[size]["total"] + usd for size in COST_SIZES
            }
            for volume, usd in fixed_per_million.items()
        },
        "prices": PRICES,
        "assumptions": (
            f"Lambda duration = measured CPU time x {FULL_VCPU_MB}/MemorySize (CPU-bound; I/O waits not "
            "counted); ingest CPU, body size and DynamoDB units per webhook from ingest.by_size where that "
            "size was measured (else the line through the pipeline's 1-event and batched CPU, and body and "
            "units per event of the largest size); DynamoDB: 0.5 RRU per key read (eventually consistent, "
            "items <= 4 KB, a missing key costs the same), 1 WRU per KB of each item written; SQS: 1 send "
            "per 10 events batched (1 per event unbatched), 1 receive and 1 delete per 10; CloudWatch Logs: "
            "the handlers' measured stdout/stderr bytes per invocation (Powertools lines and EMF blobs) plus "
            f"{LAMBDA_PLATFORM_LOG_BYTES} bytes of Lambda START/END/REPORT lines per invocation, plus API "
            "Gateway access-log lines if the template has them; GB = 2^30 bytes; data transfer out: the "
            "TikTok request bodies; Secrets Manager: each function instance reads its secrets once per "
            f"{SECRET_CACHE_S} s at {ASSUMED_EVENTS_PER_S} events/s; by the month: custom metric series "
            "(EMF, distinct namespace/name/dimensions seen in the run), the template's alarms and secrets; "
            "free tiers, log storage, KMS, SQS polling while idle and Segment-retried requests not counted"
        ),
    }


def run(quick: bool) -> dict[str, Any]:
    """Every figure, measured in this one run."""
    results: dict[str, Any] = {"quick": quick}
    results["mapping"] = bench_mapping(300 if quick else 20_000, 2 if quick else 7)
    results["cold_start"] = bench_cold_start(1 if quick else 7)
    results["ingest"] = bench_ingest_sizes(QUICK_INGEST_SIZES if quick else INGEST_SIZES, 1 if quick else 3)
    # Webhooks of 100 events: larger ones outlast ingest's 10 s Timeout against moto's SQS on a busy 2-core
    # machine. --quick shortens the batching window (the template's otherwise) so tails do not wait 5 s.
    batch = 20 if quick else 100
    pipeline = bench_pipeline(200 if quick else 20_000, batch, 20 if quick else 300, 0.2 if quick else None)
    results |= pipeline
    results["cold_start"] |= {
        f"{name}_peak_rss_mb": pipeline["cpu"][f"{name}_peak_rss_mb"] for name in ("ingest", "sender")
    }
    results["cost"] = cost_section(results, load_template())
    results["targets"] = {key: _meets(results, key, op, bound) for key, (op, bound) in TARGETS.items()}
    return results


def _value(results: dict[str, Any], key: str) -> float:
    section, name = key.split(".")
    return float(results[section][name])


def _meets(results: dict[str, Any], key: str, op: str, bound: float) -> bool:
    value = _value(results, key)
    return value >= bound if op == ">=" else value <= bound


ROWS = (
    ("mapping.events_per_s", "mapping, events/s on one core", "{:,.0f}"),
    ("mapping.floor_events_per_s", "floor (loads + sha256 + dumps), events/s", "{:,.0f}"),
    ("mapping.floor_ratio", "mapping / floor (target >= 0.5)", "{:.2f}"),
    ("mapping.us_per_event", "mapping, us/event", "{:.1f}"),
    ("delivery.events_per_request", "events per TikTok request (target >= 900)", "{:,.0f}"),
    ("delivery.requests_per_1000_events", "TikTok requests per 1,000 events", "{:.2f}"),
    ("e2e.events_per_s", "end to end, events/s", "{:,.0f}"),
    ("e2e.accepted", "accepted", "{:,.0f}"),
    ("e2e.delivered", "delivered (emulator dedup keys)", "{:,.0f}"),
    ("e2e.dead_lettered", "dead-lettered", "{:,.0f}"),
    ("e2e.lost", "lost", "{:,.0f}"),
    ("cold_start.boto3_ms", "import boto3, ms", "{:.0f}"),
    ("cold_start.ingest_ms", "import ingest handler, ms", "{:.0f}"),
    ("cold_start.sender_ms", "import sender handler, ms", "{:.0f}"),
    ("cold_start.ingest_over_boto3_ms", "ingest - boto3, ms (target <= 150)", "{:.0f}"),
    ("cold_start.sender_over_boto3_ms", "sender - boto3, ms (target <= 150)", "{:.0f}"),
    ("cold_start.ingest_peak_rss_mb", "ingest process peak RSS, MB", "{:.0f}"),
    ("cold_start.sender_peak_rss_mb", "sender process peak RSS, MB", "{:.0f}"),
    ("ingest.deployed_ms_at_1_event", "ingest, 1-event webhook at MemorySize, ms", "{:.0f}"),
    ("ingest.deployed_ms_per_event", "ingest per event at MemorySize, ms", "{:.2f}"),
    ("ingest.safe_max_events", "safe_max_events (MAX_EVENTS) at MemorySize", "{:,.0f}"),
    ("ingest.full_vcpu_ms_per_event", "ingest per event at 1,769 MB, ms", "{:.2f}"),
    ("ingest.safe_max_events_full_vcpu", "safe_max_events at 1,769 MB", "{:,.0f}"),
    ("identity.dynamodb_batch_get_per_webhook", "Identify BatchGetItem calls per webhook", "{:.2f}"),
    ("identity.dynamodb_batch_write_per_webhook", "Identify BatchWriteItem calls per webhook", "{:.2f}"),
    ("cpu.ingest_ms_per_unbatched_webhook", "ingest CPU per 1-event webhook, ms", "{:.2f}"),
    ("cpu.ingest_ms_per_batched_webhook", "ingest CPU per batched webhook, ms", "{:.1f}"),
    ("cpu.sender_ms_per_event", "sender CPU per event, ms", "{:.3f}"),
    ("logs.ingest_bytes_per_batched_invocation", "ingest log bytes per invocation", "{:,.0f}"),
    ("logs.sender_bytes_per_invocation", "sender log bytes per invocation", "{:,.0f}"),
    ("metrics.series", "custom metric series (EMF)", "{:,.0f}"),
    ("metrics.usd_per_month", "custom metrics, USD per month", "{:.2f}"),
    ("cost.usd_per_million_unbatched", "USD per million events, 1 per webhook", "{:.2f}"),
    ("cost.usd_per_million_batched", "USD per million events, 100 per webhook", "{:.2f}"),
    ("cost.monthly_fixed_usd_total", "USD per month whatever the volume", "{:.2f}"),
)


def table(results: dict[str, Any]) -> str:
    lines = []
    for key, label, style in ROWS:
        mark = (
            {True: "  ok", False: "  MISSED"}.get(results["targets"].get(key), "") if key in TARGETS else ""
        )
        lines.append(f"{label:<46} {style.format(_value(results, key)):>12}{mark}")
    prices = ", ".join(f"{name} ${price}" for name, price in PRICES.items())
    lines.extend(textwrap.wrap("prices: " + prices, 110))
    return "\n".join([*lines, "", *size_table(results["ingest"]), "", *cost_table(results)])


COST_ROWS = (
    "api_gateway",
    "lambda_ingest",
    "lambda_sender",
    "sqs",
    "secrets_manager",
    "dynamodb",
    "cloudwatch_logs",
    "data_transfer_out",
    "total",
)


def cost_table(results: Mapping[str, Any]) -> list[str]:
    """USD per million events by service for each webhook size, what each webhook takes, the log bytes per
    invocation and the monthly costs."""
    cost, logs, metrics = results["cost"], results["logs"], results["metrics"]
    sizes = [int(name.partition("_")[0]) for name in cost["by_service"]]
    head = f"{'events per webhook':<22}" + "".join(f"{size:>12,}" for size in sizes)
    lines = ["USD per million events, by service", head]
    for service in COST_ROWS:
        values = (cost["by_service"][f"{size}_per_webhook"][service] for size in sizes)
        lines.append(f"{service:<22}" + "".join(f"{value:>12.4f}" for value in values))
    per_webhook = [cost["per_webhook"][f"{size}_per_webhook"] for size in sizes]
    lines.append(
        "per webhook ("
        + ", ".join(f"{size:,}: {row['source']}" for size, row in zip(sizes, per_webhook, strict=True))
        + ")"
    )
    for key, label in (
        ("ingest_cpu_ms", "ingest CPU, ms"),
        ("dynamodb_rru", "DynamoDB RRU"),
        ("dynamodb_wru", "DynamoDB WRU"),
        ("body_bytes", "body, bytes"),
        ("log_bytes", "ingest log bytes"),
    ):
        lines.append(f"  {label:<20}" + "".join(f"{row[key]:>12,.0f}" for row in per_webhook))
    prose = []
    access = (
        f"{logs['api_gateway_access_log_bytes_per_request']:,} bytes per request"
        if logs["api_gateway_access_logs"]
        else "none (the template sets no AccessLogSettings)"
    )
    prose.append(
        f"log bytes per invocation, measured: ingest {logs['ingest_bytes_per_unbatched_invocation']:,.0f} "
        f"(1-event webhooks), {logs['ingest_bytes_per_batched_invocation']:,.0f} (batched; EMF "
        f"{logs['ingest_emf_bytes_per_batched_invocation']:,.0f}); sender "
        f"{logs['sender_bytes_per_invocation']:,.0f} (EMF {logs['sender_emf_bytes_per_invocation']:,.0f}); "
        f"+ {logs['platform_bytes_per_invocation']} each for Lambda's START/END/REPORT (assumed); "
        f"API Gateway access logs: {access}"
    )
    fixed = cost["monthly_fixed_usd"]
    prose.append(
        f"USD per month whatever the volume: {metrics['series']} custom metric series "
        f"${fixed['custom_metrics']:.2f}, alarms ${fixed['alarms']:.2f}, secrets ${fixed['secrets']:.2f}: "
        f"${fixed['total']:.2f}; per million events "
        + ", ".join(
            f"at {int(name.partition('_')[0]) / 1e6:,.0f} M/month +${usd:.2f}"
            for name, usd in cost["fixed_usd_per_million"].items()
        )
    )
    return [*lines, *(line for text in prose for line in textwrap.wrap(text, 110, subsequent_indent="  "))]


SIZE_COLUMNS = (
    ("wall_ms", "wall"),
    ("cpu_ms", "CPU"),
    *((f"{stage}_cpu_ms", stage) for stage in STAGES),
    ("other_cpu_ms", "other"),
    ("deployed_ms", "@memory"),
    ("full_vcpu_ms", "@1769MB"),
)


def size_table(figures: dict[str, Any]) -> list[str]:
    """Ingest by webhook size, in ms: wall and CPU here, CPU by stage, and the deployed estimates."""
    memory_mb = figures["memory_mb"]
    lines = [
        f"ingest by webhook size, ms (Identify on, new users; @memory = {memory_mb} MB: "
        f"CPU x {FULL_VCPU_MB}/{memory_mb} + I/O wait)",
        f"{'events':>7}" + "".join(f"{label:>9}" for _, label in SIZE_COLUMNS),
    ]
    for name, row in figures["by_size"].items():
        events = int(name.partition("_")[0])
        lines.append(f"{events:>7,}" + "".join(f"{row[key]:>9.1f}" for key, _ in SIZE_COLUMNS))
    lines.append(
        f"safe_max_events (within {figures['budget_s']} s at {memory_mb} MB): "
        f"{figures['safe_max_events']:,}; at {FULL_VCPU_MB} MB: {figures['safe_max_events_full_vcpu']:,}"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (figures meaningless)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--serve-moto", action="store_true", help=argparse.SUPPRESS)  # bench_ingest_sizes
    args = parser.parse_args(argv)
    if args.serve_moto:
        return serve_moto()
    results = run(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
