"""Draw template.yaml's CloudWatch dashboard from a local run: docs/dashboard.png, the README's picture.

    .venv/bin/python tools/render_dashboard.py [--out docs/dashboard.png] [--minutes 24] [--minute-s 2]

Runs the local stack (moto, the TikTok emulator, the ingest and sender functions as deployed, with the
offline destination on and the queue's timeouts scaled down) under sample traffic, one round of requests per
"minute", with incidents on some minutes: a wrong webhook secret (401s), TikTok throttling, a poison event
(dead-lettered), an SQS outage (503s) and bad requests. The functions' EMF blobs give the TikTokBridge
metrics; what AWS would measure (API Gateway counts and latency, queue depth and age) is measured on the local
stack. Each widget of the dashboard body is then drawn with matplotlib (a dev tool: `pip install matplotlib`):
its metrics, SEARCH expressions and metric math evaluated over those per-minute values.

The same module reads the dashboard for tests/unit/test_observability.py: `dashboard_body` (the body as
CloudFormation would deploy it, with resource names as tokens), `metric_refs` (every metric a widget names,
SEARCH queries included), `emf_data` (the metrics in an EMF blob) and `local_run` (what the code emits).
"""

from __future__ import annotations

import argparse
import ast
import bisect
import json
import math
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
from tiktok_bridge.auth import signature
from tiktok_bridge_cli.local import LocalStack
from tiktok_bridge_cli.stack import DEFAULT_TEMPLATE, LOCAL_ACCOUNT_ID, QUEUE_ID, SENDER_ID, load_template

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "events" / "segment"
OUT = ROOT / "docs" / "dashboard.png"
DASHBOARD_ID = "Dashboard"
REGION = "us-east-1"
# What ${AWS::...} pseudo parameters stand for in a resolved body.
PSEUDO = {
    "AWS::Region": REGION,
    "AWS::StackName": "tiktok-bridge",
    "AWS::AccountId": LOCAL_ACCOUNT_ID,
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}
_SUB = re.compile(r"\$\{([^}]*)\}")
_SEARCH = re.compile(r'^\{([^}]*)\}((?:\s+[\w.:-]+="[^"]*")*)\s*$')
_FILTER = re.compile(r'([\w.:-]+)="([^"]*)"')
EXPRESSION_FUNCTIONS = ("SEARCH", "SUM", "FILL")
WRONG_SECRET = "not-the-webhook-secret"
POISON = "poison"

Series = list[float | None]  # one value per minute; None: no datapoint


# --- the dashboard body ----------------------------------------------------------------------------------


def resolve(node: Any, template: Mapping[str, Any], conditions: Mapping[str, bool] | None = None) -> Any:
    """A CloudFormation value as text: `Fn::Sub` (both forms), `Ref` and `Fn::If` (conditions default to
    true). A parameter stands for its default, a pseudo parameter for PSEUDO's value, a resource for its
    logical id (`EventsQueue`) and an attribute for `Resource.Attribute` (`EventsQueue.QueueName`)."""
    conditions = conditions or {}
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"}:
        return _name(node["Ref"], {}, template)
    if set(node) == {"Fn::If"}:
        condition, when_true, when_false = node["Fn::If"]
        return resolve(when_true if conditions.get(condition, True) else when_false, template, conditions)
    if set(node) == {"Fn::Sub"}:
        text, variables = (node["Fn::Sub"], {}) if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"]
        values = {name: resolve(value, template, conditions) for name, value in variables.items()}
        return _SUB.sub(lambda match: _name(match.group(1), values, template), text)
    raise ValueError(f"cannot resolve {json.dumps(node)[:80]}")


def _name(name: str, variables: Mapping[str, Any], template: Mapping[str, Any]) -> str:
    if name.startswith("!"):
        return "${" + name[1:] + "}"  # ${!Literal}
    if name in variables:
        return str(variables[name])
    if name in PSEUDO:
        return PSEUDO[name]
    if name in template.get("Parameters", {}):
        return str(template["Parameters"][name].get("Default", ""))
    if name.split(".")[0] in template.get("Resources", {}):
        return name
    raise ValueError(f"${{{name}}} names no parameter, resource or pseudo parameter")


def dashboard_body(
    template: Mapping[str, Any], conditions: Mapping[str, bool] | None = None, logical_id: str = DASHBOARD_ID
) -> dict[str, Any]:
    """The dashboard body as CloudFormation would deploy it (resources as tokens, see `resolve`)."""
    body = template["Resources"][logical_id]["Properties"]["DashboardBody"]
    parsed: dict[str, Any] = json.loads(resolve(body, template, conditions))
    return parsed


@dataclass(frozen=True)
class Search:
    """A SEARCH('{Namespace,Dim,...} MetricName="X" Dim="v"', 'Stat', Period) query."""

    namespace: str
    metric_name: str
    dimensions: tuple[tuple[str, str | None], ...]  # every schema dimension; None: any value
    stat: str
    period: int


@dataclass(frozen=True)
class MetricRef:
    """A metric a widget names, directly or through a SEARCH query."""

    widget: str
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str | None], ...]  # sorted; None: any value (SEARCH)
    stat: str
    label: str = ""
    search: bool = False

    def matches(self, namespace: str, name: str, dimensions: Mapping[str, str]) -> bool:
        """Whether a metric with these namespace, name and dimensions is one this reference shows."""
        wanted = dict(self.dimensions)
        return (
            (namespace, name) == (self.namespace, self.name)
            and set(dimensions) == set(wanted)
            and all(value is None or dimensions[key] == value for key, value in wanted.items())
        )


def parse_search(call: ast.Call) -> Search:
    """A SEARCH call of a metric-math expression; ValueError for a form this module does not read."""
    args = [arg.value if isinstance(arg, ast.Constant) else None for arg in call.args]
    if len(args) != 3 or not (
        isinstance(args[0], str) and isinstance(args[1], str) and isinstance(args[2], int)
    ):
        raise ValueError("SEARCH takes a query, a statistic and a period")
    query, stat, period = args[0], args[1], args[2]
    match = _SEARCH.match(query)
    if not match:
        raise ValueError(
            f"SEARCH query not of the form '{{Namespace,Dimension,...}} Key=\"value\" ...': {query}"
        )
    namespace, *schema = (part.strip() for part in match.group(1).split(","))
    filters = dict(_FILTER.findall(match.group(2)))
    metric_name = filters.pop("MetricName", None)
    if metric_name is None or not set(filters) <= set(schema):
        raise ValueError(f"SEARCH query needs MetricName and filters on schema dimensions only: {query}")
    dimensions = tuple(sorted((name, filters.get(name)) for name in schema))
    return Search(namespace, metric_name, dimensions, stat, period)


def parse_expression(expression: str) -> ast.expr:
    """A metric-math expression as a Python AST (the subset this module evaluates: SEARCH, SUM, FILL, ids,
    numbers, + - * /); ValueError for anything else."""
    tree = ast.parse(expression, mode="eval").body
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if (
                not (isinstance(node.func, ast.Name) and node.func.id in EXPRESSION_FUNCTIONS)
                or node.keywords
            ):
                raise ValueError(f"unsupported function in {expression!r}")
            if node.func.id == "SEARCH":
                parse_search(node)
        elif not isinstance(
            node,
            ast.BinOp
            | ast.Name
            | ast.Constant
            | ast.Load
            | ast.Add
            | ast.Sub
            | ast.Mult
            | ast.Div
            | ast.UnaryOp,
        ) or (isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.USub)):
            raise ValueError(f"unsupported {type(node).__name__} in {expression!r}")
    return tree


def searches(expression: str) -> list[Search]:
    return [
        parse_search(node)
        for node in ast.walk(parse_expression(expression))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "SEARCH"
    ]


@dataclass(frozen=True)
class Row:
    """One entry of a widget's `metrics`: a metric (namespace, name, dimensions) or an expression."""

    options: dict[str, Any]
    namespace: str = ""
    name: str = ""
    dimensions: tuple[tuple[str, str], ...] = ()
    expression: str = ""


def widget_rows(widget: Mapping[str, Any]) -> list[Row]:
    """A metric widget's rows, with CloudWatch's "." (same as the row above) expanded."""
    rows: list[Row] = []
    previous: list[Any] = []
    for entry in widget["properties"].get("metrics", []):
        options = dict(entry[-1]) if entry and isinstance(entry[-1], dict) else {}
        values = entry[:-1] if options else list(entry)
        if not values and "expression" in options:
            rows.append(Row(options, expression=str(options["expression"])))
            continue
        values = [
            previous[i] if value == "." and i < len(previous) else value for i, value in enumerate(values)
        ]
        previous = values
        if len(values) < 2 or len(values) % 2:
            raise ValueError(f"metric row {entry!r}: namespace, name, then dimension name/value pairs")
        pairs = tuple(sorted(zip(values[2::2], values[3::2], strict=True)))
        rows.append(Row(options, str(values[0]), str(values[1]), pairs))
    return rows


def metric_refs(body: Mapping[str, Any]) -> list[MetricRef]:
    """Every metric the dashboard's metric widgets name, SEARCH queries included."""
    refs = []
    for widget in body["widgets"]:
        if widget.get("type") != "metric":
            continue
        title, default_stat = (
            widget["properties"].get("title", ""),
            widget["properties"].get("stat", "Average"),
        )
        for row in widget_rows(widget):
            label = str(row.options.get("label", ""))
            if row.expression:
                refs += [
                    MetricRef(title, s.namespace, s.metric_name, s.dimensions, s.stat, label, search=True)
                    for s in searches(row.expression)
                ]
            else:
                stat = str(row.options.get("stat", default_stat))
                refs.append(MetricRef(title, row.namespace, row.name, row.dimensions, stat, label))
    return refs


# --- what the code emits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Datum:
    """One metric of an EMF blob, for one of its dimension sets."""

    function: str  # "ingest", "sender", or "" when unknown
    timestamp_ms: int
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]  # sorted
    values: tuple[float, ...]
    unit: str


def emf_data(line: str, function: str = "") -> list[Datum]:
    """The metrics of a log line that is an EMF blob (CloudWatch's embedded metric format); [] otherwise."""
    try:
        blob = json.loads(line)
    except ValueError:
        return []
    if not isinstance(blob, dict) or not isinstance(blob.get("_aws"), dict):
        return []
    meta, data = blob["_aws"], []
    for directive in meta.get("CloudWatchMetrics", []):
        for dimension_set in directive.get("Dimensions", []):
            dimensions = tuple(sorted((name, str(blob[name])) for name in dimension_set))
            for metric in directive.get("Metrics", []):
                raw = blob[metric["Name"]]
                values = tuple(float(v) for v in (raw if isinstance(raw, list) else [raw]))
                data.append(
                    Datum(
                        function,
                        int(meta.get("Timestamp", 0)),
                        directive["Namespace"],
                        metric["Name"],
                        dimensions,
                        values,
                        str(metric.get("Unit", "None")),
                    )
                )
    return data


@dataclass(frozen=True)
class Plan:
    """A local run: `minutes` rounds of sample traffic, `minute_s` seconds each, and incidents by minute."""

    minutes: int = 24
    minute_s: float = 2.0
    incidents: Mapping[int, str] = field(
        default_factory=lambda: {
            5: "wrong secret",
            6: "wrong secret",
            9: "TikTok throttling",
            10: "TikTok throttling",
            11: "TikTok throttling",
            14: "poison event",
            17: "SQS outage",
            20: "bad requests",
        }
    )
    visibility_timeout_s: int = 4  # throttled events come back within a few minutes of the run
    copies: Callable[[int], int] = lambda minute: 1 + (minute * 5) % 7 // 4  # sample rounds per minute


# Every path that emits a metric, one minute each (tests/unit/test_observability.py: what the code emits).
COVERAGE_PLAN = Plan(
    minutes=6,
    minute_s=1.0,
    incidents={
        1: "wrong secret",
        2: "TikTok throttling",
        3: "poison event",
        4: "SQS outage",
        5: "bad requests",
    },
    copies=lambda minute: 1,
)
# The mapping config of a run: the offline destination on too, so that both sources have deliveries.
RUN_CONFIG = "offline:\n  enabled: true\n"


@dataclass
class Run:
    """What a local run measured: EMF data from the functions and AWS-side observations, by minute."""

    plan: Plan
    # time.time() at which each minute began (a minute lasts `minute_s`, or as long as its traffic took)
    starts: list[float] = field(default_factory=list)
    ended: float = math.inf
    data: list[Datum] = field(default_factory=list)
    # (namespace, name, dimensions) -> minute -> values, for the AWS metrics the dashboard names
    observed: dict[tuple[str, str, tuple[tuple[str, str], ...]], dict[int, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    lines: list[str] = field(default_factory=list)

    def minute_of(self, timestamp_s: float) -> int | None:
        if not self.starts or not self.starts[0] <= timestamp_s < self.ended:
            return None
        return bisect.bisect_right(self.starts, timestamp_s) - 1

    def observe(self, namespace: str, name: str, dimensions: Mapping[str, str], value: float) -> None:
        minute = self.minute_of(time.time())
        if minute is not None:
            self.observed[(namespace, name, tuple(sorted(dimensions.items())))][minute].append(value)

    def values(
        self, namespace: str, name: str, dimensions: tuple[tuple[str, str], ...]
    ) -> dict[int, list[float]]:
        """Per minute, every value of one metric (EMF data, else the AWS-side observations)."""
        found: dict[int, list[float]] = defaultdict(list)
        for datum in self.data:
            if (datum.namespace, datum.name, datum.dimensions) == (namespace, name, dimensions):
                minute = self.minute_of(datum.timestamp_ms / 1000)
                if minute is not None:
                    found[minute].extend(datum.values)
        for minute, values in self.observed.get((namespace, name, dimensions), {}).items():
            found[minute].extend(values)
        return found


def run_template(plan: Plan) -> dict[str, Any]:
    """template.yaml with the queue's visibility timeout and the sender's timeout scaled down."""
    template = load_template(DEFAULT_TEMPLATE)
    template["Resources"][QUEUE_ID]["Properties"]["VisibilityTimeout"] = plan.visibility_timeout_s
    sender = template["Resources"][SENDER_ID]["Properties"]
    sender["Timeout"] = max(1, plan.visibility_timeout_s // 2)
    sender["Environment"]["Variables"]["TIKTOK_TIMEOUT_S"] = "1"
    return template


class AwsFaults:
    """WSGI middleware in front of moto: while `sqs_outage` is set, SendMessageBatch to `queue_url` fails
    every entry; while `secrets_outage` is set, GetSecretValue is refused."""

    def __init__(self) -> None:
        self.sqs_outage, self.secrets_outage = threading.Event(), threading.Event()
        self.queue_url = ""

    def __call__(self, app: Callable[..., Any]) -> Callable[..., Any]:
        def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            target = environ.get("HTTP_X_AMZ_TARGET")
            if self.secrets_outage.is_set() and target == "secretsmanager.GetSecretValue":
                return _answer(start_response, "400 Bad Request", {"__type": "AccessDeniedException"})
            if self.sqs_outage.is_set() and target == "AmazonSQS.SendMessageBatch":
                raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                environ["wsgi.input"] = BytesIO(raw)
                request = json.loads(raw or b"{}")
                if request.get("QueueUrl") == self.queue_url:
                    failed = [
                        {
                            "Id": entry["Id"],
                            "SenderFault": False,
                            "Code": "InternalError",
                            "Message": "outage",
                        }
                        for entry in request.get("Entries", [])
                    ]
                    return _answer(start_response, "200 OK", {"Successful": [], "Failed": failed})
            answer: Iterable[bytes] = app(environ, start_response)
            return answer

        return middleware


def _answer(start_response: Callable[..., Any], status: str, answer: Mapping[str, Any]) -> list[bytes]:
    raw = json.dumps(answer).encode()
    start_response(
        status, [("Content-Type", "application/x-amz-json-1.0"), ("Content-Length", str(len(raw)))]
    )
    return [raw]


def segment_bodies(minute: int, copies: int, incident: str) -> list[bytes]:
    """The Segment requests of one minute: every sample `copies` times with fresh messageIds, plus a request
    whose events ingest rejects (an invalid timestamp; an offline event without a match key)."""
    bodies = []
    for copy in range(copies):
        for path in sorted(SAMPLES.glob("*.json")):
            payload = json.loads(path.read_bytes())
            events = payload if isinstance(payload, list) else [payload]
            for n, event in enumerate(events):
                event["messageId"] = f"{event.get('messageId', 'm')}-{minute}-{copy}-{n}"
            if incident == "poison event" and copy == 0 and path.name == "order-completed.json":
                events[0]["messageId"] = f"{POISON}-{minute}"
            bodies.append(json.dumps(payload if isinstance(payload, list) else events[0]).encode())
    rejected = [
        {
            "type": "track",
            "event": "Order Completed",
            "messageId": f"bad-time-{minute}",
            "timestamp": "not a time",
        },
        {
            "type": "track",
            "event": "Order Completed",
            "messageId": f"no-key-{minute}",
            "timestamp": "2026-01-15T10:00:00Z",
            "properties": {"order_id": f"o-{minute}", "total": 10, "currency": "USD"},
        },
    ]
    bodies.append(json.dumps(rejected).encode())
    return bodies


@contextmanager
def _tagged_logs(local: LocalStack, run: Run) -> Iterator[None]:
    """Route each function's log lines into `run` with the function's name (the EMF blobs of both functions
    look alike; which one printed a metric is what the tests check)."""
    for function, worker in local.workers.items():

        def log(line: str, function: str = function) -> None:
            run.lines.append(line)
            run.data.extend(emf_data(line, function))

        worker._log = log  # the worker's log thread looks the callback up for every line
    yield


def _sample_queues(local: LocalStack, run: Run) -> None:
    """What CloudWatch reads from SQS (the age of the oldest message from moto's own queue)."""
    depth = local.queue_depth()
    queue = {"QueueName": f"{QUEUE_ID}.QueueName"}
    run.observe("AWS/SQS", "ApproximateNumberOfMessagesVisible", queue, depth["queued"])
    run.observe("AWS/SQS", "ApproximateNumberOfMessagesNotVisible", queue, depth["in_flight"])
    dlq = {"QueueName": "EventsDeadLetterQueue.QueueName"}
    run.observe("AWS/SQS", "ApproximateNumberOfMessagesVisible", dlq, depth["dead_lettered"])
    age = _oldest_message_age_s(local)
    if age is not None:
        run.observe("AWS/SQS", "ApproximateAgeOfOldestMessage", queue, age)


def _oldest_message_age_s(local: LocalStack) -> float | None:
    try:
        from moto.sqs.models import sqs_backends

        name = local.stack.queue_url.rsplit("/", 1)[-1]
        messages = list(sqs_backends[LOCAL_ACCOUNT_ID][REGION].queues[name]._messages)
    except Exception:  # moto's internals: no age rather than no picture
        return None
    sent = [float(stamp) for m in messages if (stamp := getattr(m, "sent_timestamp", None))]
    return max(0.0, time.time() - min(sent) / 1000) if sent else 0.0


def _post(client: httpx.Client, local: LocalStack, run: Run, body: bytes, headers: Mapping[str, str]) -> int:
    """POST to ingest and record what API Gateway and Lambda would count for it."""
    started = time.monotonic()
    response = client.post(local.ingest_url, content=body, headers=dict(headers))
    api = {"ApiId": "HttpApi", "Stage": "$default"}
    run.observe("AWS/ApiGateway", "Count", api, 1)
    run.observe("AWS/ApiGateway", "4xx", api, float(400 <= response.status_code < 500))
    run.observe("AWS/ApiGateway", "5xx", api, float(response.status_code >= 500))
    run.observe("AWS/ApiGateway", "Latency", api, (time.monotonic() - started) * 1000)
    run.observe(
        "AWS/Lambda", "Errors", {"FunctionName": "IngestFunction"}, float(response.status_code in (502, 504))
    )
    return response.status_code


def _minute_traffic(
    local: LocalStack, run: Run, client: httpx.Client, minute: int, faults: AwsFaults
) -> None:
    plan, incident = run.plan, run.plan.incidents.get(minute, "")
    assert local.emulator is not None
    local.emulator.set_faults(
        throttle=10_000 if incident == "TikTok throttling" else 0,
        # Always on: only the poison minute's events carry it, and the sender may post them a minute later.
        poison_marker=POISON,
        delay_s=0.02 + 0.015 * (1 + math.sin(minute / 2)),
    )
    if incident == "SQS outage":
        faults.sqs_outage.set()
    for n, body in enumerate(segment_bodies(minute, plan.copies(minute), incident)):
        headers = local.webhook_headers(body)
        if incident == "wrong secret":
            headers = {
                **headers,
                "x-signature": signature(WRONG_SECRET, body),
                "authorization": "Bearer wrong",
            }
            if n == 0:  # its first refusal re-reads the secrets, while Secrets Manager refuses: a 503
                faults.secrets_outage.set()
        _post(client, local, run, body, headers)
        faults.secrets_outage.clear()
    if incident == "bad requests":
        for body in (b"this is not JSON", json.dumps([{}] * 1001).encode()):
            _post(client, local, run, body, local.webhook_headers(body))
    faults.sqs_outage.clear()


def local_run(plan: Plan | None = None, progress: Callable[[str], None] = lambda line: None) -> Run:
    """Run `plan` (default: `Plan()`) on the local stack and return what it measured."""
    plan = plan or Plan()
    faults = AwsFaults()
    with LocalStack(
        template=run_template(plan), config_text=RUN_CONFIG, batching_window_s=0.5, moto_middleware=faults
    ) as local:
        faults.queue_url = local.stack.queue_url
        run = Run(plan)
        with _tagged_logs(local, run), httpx.Client(timeout=30) as client:
            for minute in range(plan.minutes):
                progress(f"minute {minute} {plan.incidents.get(minute, '')}".rstrip())
                run.starts.append(time.time())
                _minute_traffic(local, run, client, minute, faults)
                _sample_queues(local, run)
                while time.time() < run.starts[-1] + plan.minute_s:
                    time.sleep(min(0.25, plan.minute_s / 4))
                    _sample_queues(local, run)
            run.ended = time.time()
            time.sleep(0.3)  # the last EMF lines
        return run


# --- drawing -----------------------------------------------------------------------------------------------


def statistic(values: Sequence[float], stat: str) -> float | None:
    """A CloudWatch statistic of one period's values (None: no datapoint)."""
    if not values:
        return None
    ordered = sorted(values)
    if stat == "Sum":
        return sum(ordered)
    if stat == "Average":
        return sum(ordered) / len(ordered)
    if stat == "Maximum":
        return ordered[-1]
    if stat == "Minimum":
        return ordered[0]
    if stat == "SampleCount":
        return float(len(ordered))
    if re.fullmatch(r"p\d+(\.\d+)?", stat):
        rank = float(stat[1:]) / 100 * (len(ordered) - 1)
        low, high = math.floor(rank), math.ceil(rank)
        return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    raise ValueError(f"statistic {stat!r}")


def series_of(
    run: Run, namespace: str, name: str, dimensions: tuple[tuple[str, str], ...], stat: str
) -> Series:
    per_minute = run.values(namespace, name, dimensions)
    return [statistic(per_minute.get(minute, []), stat) for minute in range(run.plan.minutes)]


def _search(run: Run, query: Search) -> dict[str, Series]:
    """SEARCH over the run: one series per metric found, labelled with its varying dimension values."""
    found: set[tuple[tuple[str, str], ...]] = set()
    ref = MetricRef("", query.namespace, query.metric_name, query.dimensions, query.stat, search=True)
    for datum in run.data:
        if ref.matches(datum.namespace, datum.name, dict(datum.dimensions)):
            found.add(datum.dimensions)
    varying = [name for name, value in query.dimensions if value is None]
    return {
        " ".join(dict(dims)[name] for name in varying): series_of(
            run, query.namespace, query.metric_name, dims, query.stat
        )
        for dims in sorted(found)
    }


def _combine(a: Series, b: Series, op: Callable[[float, float], float]) -> Series:
    out: Series = []
    for x, y in zip(a, b, strict=True):
        try:
            out.append(None if x is None or y is None else op(x, y))
        except ZeroDivisionError:
            out.append(None)
    return out


def evaluate(node: ast.expr, run: Run, ids: Mapping[str, Series]) -> dict[str, Series]:
    """A metric-math expression over the run: label -> series (one unlabelled series for a single result)."""
    minutes = run.plan.minutes
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return {"": [float(node.value)] * minutes}
    if isinstance(node, ast.Name):
        return {"": list(ids[node.id])}
    if isinstance(node, ast.UnaryOp):
        return {
            k: [None if v is None else -v for v in s] for k, s in evaluate(node.operand, run, ids).items()
        }
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == "SEARCH":
            return _search(run, parse_search(node))
        arguments = evaluate(node.args[0], run, ids)
        if node.func.id == "SUM":
            total: Series = [None] * minutes
            for series in arguments.values():
                total = [
                    t if v is None else (v if t is None else t + v)
                    for t, v in zip(total, series, strict=True)
                ]
            return {"": total}
        fill = float(ast.literal_eval(node.args[1]) if len(node.args) > 1 else 0)
        return {k: [fill if v is None else v for v in s] for k, s in arguments.items()}
    if isinstance(node, ast.BinOp):
        ops: dict[type[ast.operator], Callable[[float, float], float]] = {
            ast.Add: lambda x, y: x + y,
            ast.Sub: lambda x, y: x - y,
            ast.Mult: lambda x, y: x * y,
            ast.Div: lambda x, y: x / y,
        }
        left, right = evaluate(node.left, run, ids), evaluate(node.right, run, ids)
        if len(left) != 1 or len(right) != 1:
            raise ValueError("arithmetic on SEARCH results is not drawn")
        return {"": _combine(next(iter(left.values())), next(iter(right.values())), ops[type(node.op)])}
    raise ValueError(f"cannot evaluate {ast.dump(node)}")


def widget_series(widget: Mapping[str, Any], run: Run) -> list[tuple[str, Series, dict[str, Any]]]:
    """The visible series of a metric widget: (label, values per minute, the row's options)."""
    default_stat = widget["properties"].get("stat", "Average")
    ids: dict[str, Series] = {}
    drawn: list[tuple[str, Series, dict[str, Any]]] = []
    for index, row in enumerate(widget_rows(widget)):
        if row.expression:
            results = evaluate(parse_expression(row.expression), run, ids)
            label = str(row.options.get("label", ""))
            named = [(name or label or row.expression, series) for name, series in results.items()]
            if len(named) == 1:
                ids[str(row.options.get("id", f"e{index}"))] = named[0][1]
        else:
            stat = str(row.options.get("stat", default_stat))
            series = series_of(run, row.namespace, row.name, row.dimensions, stat)
            ids[str(row.options.get("id", f"m{index}"))] = series
            named = [(str(row.options.get("label", row.name)), series)]
        if row.options.get("visible", True):
            drawn += [(label, series, row.options) for label, series in named]
    return drawn


def render(body: Mapping[str, Any], run: Run, out: Path, alarm_names: Sequence[str]) -> None:
    """Draw the dashboard's widgets on CloudWatch's 24-column grid and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    widgets, plan = body["widgets"], run.plan
    rows = max(w["y"] + w["height"] for w in widgets)
    height = rows * 0.7 + 1.2
    fig = plt.figure(figsize=(20, height), dpi=100)
    # quarter rows: a widget's title, its plot, then its legend below
    grid = GridSpec(4 * rows, 24, figure=fig, left=0.035, right=0.99, top=1 - 1.1 / height, bottom=0.005)
    grid.update(hspace=0.0, wspace=1.6)
    fig.suptitle(
        f"CloudWatch dashboard of template.yaml, drawn from a local run: {plan.minutes} minutes of sample"
        " traffic (time-compressed; x axis: minutes)\nwith incidents (shaded): " + _incidents(plan),
        fontsize=12,
        x=0.01,
        ha="left",
        linespacing=1.5,
    )
    minutes = list(range(plan.minutes))
    for widget in widgets:
        top, left, properties = widget["y"], widget["x"], widget["properties"]
        legend_rows = 5 if widget["type"] == "metric" else 0
        cell = grid[4 * top + 2 : 4 * (top + widget["height"]) - legend_rows, left : left + widget["width"]]
        ax = fig.add_subplot(cell)
        ax.set_title(properties.get("title", ""), fontsize=10, loc="left")
        if widget["type"] == "alarm":
            _draw_alarms(ax, alarm_names)
            continue
        right = None
        for minute in plan.incidents:
            ax.axvspan(minute - 0.5, minute + 0.5, color="#f6dede", zorder=0)
        series = widget_series(widget, run)
        if properties.get("stacked"):
            stacks = [[v or 0.0 for v in s] for _, s, _ in series]
            if stacks:
                ax.stackplot(minutes, stacks, labels=[label for label, _, _ in series], alpha=0.85)
        else:
            for n, (label, values, options) in enumerate(series):
                target = ax
                if options.get("yAxis") == "right":
                    right = right or ax.twinx()
                    target = right
                target.plot(
                    minutes,
                    [math.nan if v is None else v for v in values],
                    marker=".",
                    linewidth=1.4,
                    markersize=4,
                    label=label,
                    color=f"C{n % 10}",
                    linestyle="--" if "mapping alone" in label else "-",
                )
        for annotation in properties.get("annotations", {}).get("horizontal", []):
            _annotate(ax, right, annotation)
        y_left = properties.get("yAxis", {}).get("left", {})
        ax.set_ylim(y_left.get("min", 0), y_left.get("max"))
        ax.set_xlim(-0.5, plan.minutes - 0.5)
        ax.tick_params(labelsize=7)
        handles, labels = ax.get_legend_handles_labels()
        if right:
            right.set_ylim(bottom=0)
            right.tick_params(labelsize=7)
            more = right.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if not handles:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#888")
            continue
        ax.legend(
            handles,
            labels,
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(0.0, -0.1),
            ncol=4 if len(labels) > 6 else 3,
            frameon=False,
            borderaxespad=0.0,
            handlelength=1.6,
            columnspacing=1.2,
        )
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _incidents(plan: Plan) -> str:
    """`5-6 wrong secret, 9-11 TikTok throttling, ...`: the plan's incidents by run of minutes."""
    runs: list[tuple[int, int, str]] = []
    for minute, incident in sorted(plan.incidents.items()):
        if runs and runs[-1][2] == incident and runs[-1][1] == minute - 1:
            runs[-1] = (runs[-1][0], minute, incident)
        else:
            runs.append((minute, minute, incident))
    return ", ".join(f"{a}{f'-{b}' if b != a else ''} {incident}" for a, b, incident in runs)


def _annotate(ax: Any, right: Any, annotation: Mapping[str, Any]) -> None:
    target = right if annotation.get("yAxis") == "right" and right is not None else ax
    value = float(annotation["value"])
    top = max((max(line.get_ydata(), default=0) for line in target.lines), default=0)
    if value <= 2 * max(top, 1):
        target.axhline(value, color="#c00", linestyle="--", linewidth=1)
    else:
        target.text(
            0.99,
            0.97,
            f"{annotation.get('label', '')} at {value:g} (off scale)",
            transform=target.transAxes,
            fontsize=7,
            ha="right",
            va="top",
            color="#c00",
        )


def _draw_alarms(ax: Any, names: Sequence[str]) -> None:
    ax.set_axis_off()
    per_row = 5
    for n, name in enumerate(names):
        x, y = (n % per_row) / per_row, 1 - (n // per_row + 1) * 0.45
        ax.text(
            x + 0.005,
            y,
            name,
            fontsize=9,
            transform=ax.transAxes,
            va="bottom",
            bbox={"boxstyle": "round", "facecolor": "#eef3ee", "edgecolor": "#7a7"},
        )


def alarm_names(body: Mapping[str, Any]) -> list[str]:
    """The logical ids of the alarms the dashboard's alarm widgets show."""
    return [
        arn.split(".")[0]
        for w in body["widgets"]
        if w["type"] == "alarm"
        for arn in w["properties"]["alarms"]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--minutes", type=int, default=Plan.minutes)
    parser.add_argument("--minute-s", type=float, default=Plan.minute_s)
    args = parser.parse_args(argv)
    body = dashboard_body(load_template(DEFAULT_TEMPLATE))
    run = local_run(
        Plan(minutes=args.minutes, minute_s=args.minute_s), progress=lambda line: print(line, file=sys.stderr)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    render(body, run, args.out, alarm_names(body))
    print(f"{args.out}: {len(body['widgets'])} widgets from {len(run.data)} EMF metrics of a local run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
