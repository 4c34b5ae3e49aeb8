"""Alarms and dashboard against what the code emits.

What the code emits is not listed here: `emitted` runs the local stack (the functions as deployed, in child
processes) through every path that emits a metric (tools/render_dashboard.py's COVERAGE_PLAN: samples, a
wrong secret, TikTok throttling, a poison event, an SQS outage, bad requests) and parses the EMF blobs each
function prints. Every alarm and every dashboard widget must name metrics found there, with the namespace
and dimensions the functions give them, so that a renamed metric or dimension fails here, not in CloudWatch.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.lint_template import transform
from tools.render_dashboard import (
    COVERAGE_PLAN,
    Datum,
    MetricRef,
    Run,
    dashboard_body,
    emf_data,
    local_run,
    metric_refs,
    parse_expression,
    render,
    searches,
    widget_rows,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
SOURCES = {
    "ingest": ROOT / "layers" / "bridge" / "tiktok_bridge" / "ingest.py",
    "sender": ROOT / "layers" / "bridge" / "tiktok_bridge" / "sender.py",
}

# Which function each custom-metric alarm is about: its metric must come from that function, and only from it
# (both share the namespace and the service dimension, so a metric both emit is the sum of two things).
CUSTOM_METRIC_ALARMS = {
    "IngestUnauthorizedAlarm": {"Http401": "ingest"},
    "DeliveryStalledAlarm": {"EventsAccepted": "ingest", "EventsDelivered": "sender"},
    "NoTrafficAlarm": {"EventsReceived": "ingest"},
    "SenderConfigErrorAlarm": {"EventsHeldByConfigError": "sender"},
}
# AWS metrics: namespace, metric, and the dimensions naming this stack's resource (as CloudFormation values).
AWS_METRIC_ALARMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "IngestErrorsAlarm": ("AWS/Lambda", "Errors", {"FunctionName": {"Ref": "IngestFunction"}}),
    "SenderErrorsAlarm": ("AWS/Lambda", "Errors", {"FunctionName": {"Ref": "SenderFunction"}}),
    "Ingest5xxAlarm": ("AWS/ApiGateway", "5xx", {"ApiId": {"Ref": "HttpApi"}, "Stage": "<default stage>"}),
    "QueueAgeAlarm": (
        "AWS/SQS",
        "ApproximateAgeOfOldestMessage",
        {"QueueName": {"Fn::GetAtt": ["EventsQueue", "QueueName"]}},
    ),
    "DeadLetterQueueAlarm": (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        {"QueueName": {"Fn::GetAtt": ["EventsDeadLetterQueue", "QueueName"]}},
    ),
}
# The AWS metrics the dashboard may name, per namespace, and the resource each dimension must point at.
AWS_METRICS = {
    "AWS/SQS": {"ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible"}
    | {"ApproximateAgeOfOldestMessage", "NumberOfMessagesSent", "NumberOfMessagesDeleted"},
    "AWS/Lambda": {"Errors", "Invocations", "Duration", "Throttles", "ConcurrentExecutions"},
    "AWS/ApiGateway": {"Count", "4xx", "5xx", "Latency", "IntegrationLatency", "DataProcessed"},
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    from tiktok_bridge_cli.stack import load_template

    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def cfn() -> dict[str, Any]:
    return transform(TEMPLATE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def body(template: dict[str, Any]) -> dict[str, Any]:
    return dashboard_body(template)


@pytest.fixture(scope="module")
def run() -> Run:
    """Every metric-emitting path through the local stack (about 10 s)."""
    return local_run(COVERAGE_PLAN)


@pytest.fixture(scope="module")
def emitted(run: Run) -> list[Datum]:
    assert {datum.function for datum in run.data} == {"ingest", "sender"}
    return run.data


@pytest.fixture(scope="module")
def environment(cfn: dict[str, Any]) -> dict[str, str]:
    """The Powertools variables both functions get: the metrics' namespace and `service` dimension."""
    variables = [
        cfn["Resources"][function]["Properties"]["Environment"]["Variables"]
        for function in ("IngestFunction", "SenderFunction")
    ]
    names = ("POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_SERVICE_NAME")
    assert {name: variables[0][name] for name in names} == {name: variables[1][name] for name in names}
    return {name: variables[0][name] for name in names}


def props(cfn: dict[str, Any], logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = cfn["Resources"][logical_id]["Properties"]
    return properties


def alarm_metrics(alarm: dict[str, Any]) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """(namespace, metric, dimensions) of an alarm: its metric, or each metric of its metric math."""
    if "MetricName" in alarm:
        yield alarm["Namespace"], alarm["MetricName"], alarm.get("Dimensions", [])
    for query in alarm.get("Metrics", []):
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            yield metric["Namespace"], metric["MetricName"], metric.get("Dimensions", [])


def identity(datum: Datum) -> tuple[str, str, tuple[str, ...], str]:
    """What makes two functions' metrics one CloudWatch metric: namespace, name, dimension names, service."""
    dims = dict(datum.dimensions)
    return datum.namespace, datum.name, tuple(sorted(dims)), dims.get("service", "")


# --- what the code emits -----------------------------------------------------------------------------------


def test_emf_data_reads_every_metric_and_dimension_set() -> None:
    blob = {
        "_aws": {
            "Timestamp": 1_700_000_000_000,
            "CloudWatchMetrics": [
                {
                    "Namespace": "TikTokBridge",
                    "Dimensions": [["service"], ["service", "TikTokCode"]],
                    "Metrics": [
                        {"Name": "TikTokResponses", "Unit": "Count"},
                        {"Name": "Lat", "Unit": "Milliseconds"},
                    ],
                }
            ],
        },
        "service": "tiktok-bridge",
        "TikTokCode": "40100",
        "TikTokResponses": [1.0, 2.0],
        "Lat": 12,
    }
    data = emf_data(json.dumps(blob), "sender")
    assert [(d.name, d.dimensions, d.values) for d in data] == [
        ("TikTokResponses", (("service", "tiktok-bridge"),), (1.0, 2.0)),
        ("Lat", (("service", "tiktok-bridge"),), (12.0,)),
        ("TikTokResponses", (("TikTokCode", "40100"), ("service", "tiktok-bridge")), (1.0, 2.0)),
        ("Lat", (("TikTokCode", "40100"), ("service", "tiktok-bridge")), (12.0,)),
    ]
    assert emf_data('{"level": "INFO", "message": "batch processed"}') == []
    assert emf_data("not json") == []


def literal_metric_names(source: Path) -> set[str]:
    """Metric names written as literals in `add_metric(name=...)` / `single_metric(name=...)` calls and as the
    name argument of `count_by(metrics, "Name", ...)`."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if called in ("add_metric", "single_metric"):
            for keyword in node.keywords:
                if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                    names.add(str(keyword.value.value))
        elif called == "count_by" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
            names.add(str(node.args[1].value))
    return names


@pytest.mark.parametrize("function", sorted(SOURCES))
def test_the_run_exercises_every_literal_metric_call(function: str, emitted: list[Datum]) -> None:
    """The coverage run reaches each metric the source names literally (the dimensioned ones in particular),
    so that the checks below see everything the code can emit."""
    names = {datum.name for datum in emitted if datum.function == function}
    assert literal_metric_names(SOURCES[function]) - names == set()


def test_no_metric_is_emitted_by_both_functions(emitted: list[Datum]) -> None:
    """Both functions share the namespace and `service`: a name both use adds up two different counts (the
    sender's records received would hide a silent ingest from NoTrafficAlarm)."""
    by_function: dict[str, set[tuple[str, str, tuple[str, ...], str]]] = {"ingest": set(), "sender": set()}
    for datum in emitted:
        by_function[datum.function].add(identity(datum))
    assert sorted(by_function["ingest"] & by_function["sender"]) == []


# --- alarms ------------------------------------------------------------------------------------------------


def test_every_alarm_has_a_wiring_test(cfn: dict[str, Any]) -> None:
    alarms = {k for k, v in cfn["Resources"].items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    assert alarms == set(CUSTOM_METRIC_ALARMS) | set(AWS_METRIC_ALARMS)


@pytest.mark.parametrize("alarm_id", sorted(CUSTOM_METRIC_ALARMS))
def test_custom_metric_alarm_watches_what_the_code_emits(
    alarm_id: str, cfn: dict[str, Any], environment: dict[str, str], emitted: list[Datum]
) -> None:
    metrics = list(alarm_metrics(props(cfn, alarm_id)))
    assert {name for _, name, _ in metrics} == set(CUSTOM_METRIC_ALARMS[alarm_id])
    for namespace, name, dimensions in metrics:
        assert namespace == environment["POWERTOOLS_METRICS_NAMESPACE"]
        assert dimensions == [{"Name": "service", "Value": environment["POWERTOOLS_SERVICE_NAME"]}]
        wanted = (namespace, name, tuple(sorted((d["Name"], d["Value"]) for d in dimensions)))
        emitters = {d.function for d in emitted if (d.namespace, d.name, d.dimensions) == wanted}
        assert emitters == {CUSTOM_METRIC_ALARMS[alarm_id][name]}, (name, emitters)


@pytest.mark.parametrize("alarm_id", sorted(AWS_METRIC_ALARMS))
def test_aws_metric_alarm_watches_this_stacks_resource(alarm_id: str, cfn: dict[str, Any]) -> None:
    namespace, metric, dimensions = AWS_METRIC_ALARMS[alarm_id]
    stage = props(cfn, "HttpApiApiGatewayDefaultStage")
    assert stage["ApiId"] == {"Ref": "HttpApi"}
    expected = {k: stage["StageName"] if v == "<default stage>" else v for k, v in dimensions.items()}
    [(alarm_namespace, alarm_metric, alarm_dimensions)] = alarm_metrics(props(cfn, alarm_id))
    assert (alarm_namespace, alarm_metric) == (namespace, metric)
    assert {d["Name"]: d["Value"] for d in alarm_dimensions} == expected
    assert metric in AWS_METRICS[namespace]


def test_the_5xx_alarm_watches_the_api_that_routes_to_ingest(cfn: dict[str, Any]) -> None:
    paths = props(cfn, "HttpApi")["Body"]["paths"]
    assert "IngestFunction.Arn" in str(paths["/v1/events"]["post"]["x-amazon-apigateway-integration"]["uri"])
    assert props(cfn, "HttpApiApiGatewayDefaultStage")["StageName"] == "$default"


def test_every_alarm_notifies_the_optional_topic(cfn: dict[str, Any]) -> None:
    for logical_id, resource in cfn["Resources"].items():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            actions = resource["Properties"]["AlarmActions"]
            assert actions == {
                "Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]
            }, logical_id
            assert resource["Properties"]["AlarmDescription"], logical_id


def test_the_delivery_alarm_fires_on_accepted_but_none_delivered(cfn: dict[str, Any]) -> None:
    alarm = props(cfn, "DeliveryStalledAlarm")
    queries = {query["Id"]: query for query in alarm["Metrics"]}
    assert [q["Id"] for q in alarm["Metrics"] if q.get("ReturnData", True)] == ["stalled"]
    for metric_id, metric in (("accepted", "EventsAccepted"), ("delivered", "EventsDelivered")):
        stat = queries[metric_id]["MetricStat"]
        assert (stat["Metric"]["MetricName"], stat["Stat"]) == (metric, "Sum")
        assert stat["Period"] == {"Ref": "DeliveryAlarmPeriodSeconds"}
    # a sender that never runs emits nothing: delivered counts as 0, not as missing
    assert queries["stalled"]["Expression"] == "IF(accepted > 0 AND FILL(delivered, 0) == 0, 1, 0)"
    assert (alarm["Threshold"], alarm["ComparisonOperator"], alarm["EvaluationPeriods"]) == (
        0,
        "GreaterThanThreshold",
        1,
    )
    assert alarm["TreatMissingData"] == "notBreaching"  # no accepted events: nothing to deliver
    assert cfn["Parameters"]["DeliveryAlarmPeriodSeconds"]["Default"] == 3600


def test_the_no_traffic_alarm_breaches_on_silence_and_can_be_turned_off(cfn: dict[str, Any]) -> None:
    alarm = props(cfn, "NoTrafficAlarm")
    assert cfn["Resources"]["NoTrafficAlarm"]["Condition"] == "HasNoTrafficAlarm"
    assert cfn["Conditions"]["HasNoTrafficAlarm"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "NoTrafficAlarmHours"}, "0"]}]
    }
    assert (alarm["Statistic"], alarm["Period"], alarm["EvaluationPeriods"]) == (
        "Sum",
        3600,
        {"Ref": "NoTrafficAlarmHours"},
    )
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "LessThanThreshold")
    assert alarm["TreatMissingData"] == "breaching"  # no datapoint at all is exactly the case
    hours = cfn["Parameters"]["NoTrafficAlarmHours"]
    assert (hours["Default"], hours["MinValue"], hours["MaxValue"]) == (1, 0, 24)


def test_the_thresholds_are_parameters(cfn: dict[str, Any]) -> None:
    unauthorized, age = props(cfn, "IngestUnauthorizedAlarm"), props(cfn, "QueueAgeAlarm")
    assert (unauthorized["Statistic"], unauthorized["Period"]) == ("Sum", 300)
    assert unauthorized["Threshold"] == {"Ref": "UnauthorizedAlarmThreshold"}
    assert unauthorized["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert cfn["Parameters"]["UnauthorizedAlarmThreshold"]["Default"] == 5
    assert (age["Statistic"], age["Threshold"]) == ("Maximum", {"Ref": "QueueAgeAlarmSeconds"})
    assert cfn["Parameters"]["QueueAgeAlarmSeconds"]["Default"] == 900
    for alarm_id in ("IngestErrorsAlarm", "Ingest5xxAlarm", "SenderErrorsAlarm", "DeadLetterQueueAlarm"):
        alarm = props(cfn, alarm_id)
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold"), alarm_id


# --- the dashboard -----------------------------------------------------------------------------------------


def test_every_dashboard_metric_of_the_bridge_is_one_the_code_emits(
    body: dict[str, Any], environment: dict[str, str], emitted: list[Datum]
) -> None:
    refs = [ref for ref in metric_refs(body) if not ref.namespace.startswith("AWS/")]
    assert refs
    missing = [
        f"{ref.widget}: {ref.name} {dict(ref.dimensions)}"
        for ref in refs
        if not any(ref.matches(d.namespace, d.name, dict(d.dimensions)) for d in emitted)
    ]
    assert missing == []
    assert {ref.namespace for ref in refs} == {environment["POWERTOOLS_METRICS_NAMESPACE"]}
    assert {dict(ref.dimensions)["service"] for ref in refs} == {environment["POWERTOOLS_SERVICE_NAME"]}


def test_every_dashboard_aws_metric_is_one_of_this_stacks_resources(
    body: dict[str, Any], cfn: dict[str, Any]
) -> None:
    stage = props(cfn, "HttpApiApiGatewayDefaultStage")["StageName"]
    resources = {
        "QueueName": {"EventsQueue.QueueName", "EventsDeadLetterQueue.QueueName"},
        "FunctionName": {"IngestFunction", "SenderFunction"},
        "ApiId": {"HttpApi"},
        "Stage": {stage},
    }
    refs = [ref for ref in metric_refs(body) if ref.namespace.startswith("AWS/")]
    assert refs
    for ref in refs:
        assert ref.name in AWS_METRICS[ref.namespace], ref
        for name, value in ref.dimensions:
            assert value in resources[name], ref
        assert {name for name, _ in ref.dimensions} == {
            "AWS/SQS": {"QueueName"},
            "AWS/Lambda": {"FunctionName"},
            "AWS/ApiGateway": {"ApiId", "Stage"},
        }[ref.namespace], ref


def shown(refs: list[MetricRef], name: str, **dimensions: str | None) -> bool:
    return any(
        ref.name == name and all(dict(ref.dimensions).get(k, "") == v for k, v in dimensions.items())
        for ref in refs
    )


def test_the_dashboard_shows_what_an_operator_needs(body: dict[str, Any]) -> None:
    refs = metric_refs(body)
    assert shown(refs, "EventsAccepted")
    for source in ("web", "offline"):  # delivered per source
        assert shown(refs, "EventsDeliveredBySource", EventSource=source, Event=None)
    assert shown(refs, "EventsRejectedByReason", Reason=None)
    assert shown(refs, "TikTokResponses", TikTokCode=None)
    queue, dlq = "EventsQueue.QueueName", "EventsDeadLetterQueue.QueueName"
    assert shown(refs, "ApproximateNumberOfMessagesVisible", QueueName=queue)
    assert shown(refs, "ApproximateAgeOfOldestMessage", QueueName=queue)
    assert shown(refs, "ApproximateNumberOfMessagesVisible", QueueName=dlq)
    assert shown(refs, "TikTokLatency")
    assert shown(refs, "Latency", ApiId="HttpApi")
    assert shown(refs, "EventsForwarded")
    for key in ("Email", "Phone", "ExternalId", "Ttclid"):
        assert shown(refs, f"MatchKey{key}After") and shown(refs, f"MatchKey{key}Before")


def test_the_dashboard_body_is_well_formed(body: dict[str, Any]) -> None:
    cells: set[tuple[int, int]] = set()
    for widget in body["widgets"]:
        x, y, width, height = widget["x"], widget["y"], widget["width"], widget["height"]
        assert x >= 0 and x + width <= 24 and height > 0, widget
        area = {(col, row) for col in range(x, x + width) for row in range(y, y + height)}
        assert not area & cells, f"overlapping widget {widget['properties'].get('title')}"
        cells |= area
        if widget["type"] != "metric":
            continue
        properties = widget["properties"]
        assert properties["region"] == "us-east-1" and properties["title"]  # ${AWS::Region}, resolved
        rows = widget_rows(widget)
        ids = [str(row.options["id"]) for row in rows if "id" in row.options]
        assert len(ids) == len(set(ids)), properties["title"]
        for row in rows:
            if row.expression:
                assert re.fullmatch(r"[a-z][a-zA-Z0-9_]*", str(row.options.get("id", ""))), row
                tree = parse_expression(row.expression)
                names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
                assert names - {"SEARCH", "SUM", "FILL"} <= set(ids), row.expression
                for search in searches(row.expression):
                    assert search.period == properties["period"], row.expression


def test_the_alarm_widget_shows_every_alarm(template: dict[str, Any], body: dict[str, Any]) -> None:
    alarms = {k for k, v in template["Resources"].items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    [widget] = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert {arn.removesuffix(".Arn") for arn in widget["properties"]["alarms"]} == alarms
    # NoTrafficAlarmHours 0: the alarm does not exist, and the dashboard does not name it
    without = dashboard_body(template, conditions={"HasNoTrafficAlarm": False})
    [widget] = [w for w in without["widgets"] if w["type"] == "alarm"]
    assert {arn.removesuffix(".Arn") for arn in widget["properties"]["alarms"]} == alarms - {"NoTrafficAlarm"}


def test_the_dashboard_names_the_queue_age_threshold(body: dict[str, Any], template: dict[str, Any]) -> None:
    [widget] = [w for w in body["widgets"] if "age of the oldest" in w["properties"].get("title", "")]
    [line] = widget["properties"]["annotations"]["horizontal"]
    assert line["value"] == template["Parameters"]["QueueAgeAlarmSeconds"]["Default"]


def test_the_picture_can_be_drawn(body: dict[str, Any], run: Run, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "dashboard.png"
    render(body, run, out, ["DeadLetterQueueAlarm"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_picture_exists() -> None:
    assert (ROOT / "docs" / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
