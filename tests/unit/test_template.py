"""template.yaml: the offline check fails on broken copies; the deployed shape is what the code needs."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
from tiktok_bridge import settings

from tools.lint_template import TemplateError, check, main, transform

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
TIKTOK_REQUESTS_PER_S = 1_000
# One sender instance posts its requests one after another; a TikTok round trip takes at least ~50 ms.
REQUESTS_PER_S_PER_SENDER = 20


@pytest.fixture(scope="module")
def text() -> str:
    return TEMPLATE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def cfn(text: str) -> dict[str, Any]:
    """The CloudFormation SAM would deploy."""
    return transform(text)


def props(cfn: dict[str, Any], logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = cfn["Resources"][logical_id]["Properties"]
    return properties


def test_real_template_passes_the_check(text: str) -> None:
    assert check(text) == []


@pytest.mark.parametrize(
    ("original", "mutated", "rule"),
    [
        ("Runtime: python3.13", "Runtime: python3.99", "E3030"),
        ("BatchSize: 1000", "BatchSize: 20000", "E3034"),
        ("[ReportBatchItemFailures]", "[ReportBatchItemFailure]", "E3030"),
        ("VisibilityTimeout: 365", "VisibilityTimeout: 30", "E3505"),
    ],
    ids=["runtime", "batch-size", "response-type-typo", "visibility-below-timeout"],
)
def test_check_fails_on_mutated_template(text: str, original: str, mutated: str, rule: str) -> None:
    assert text.count(original) == 1
    problems = check(text.replace(original, mutated))
    assert any(problem.startswith(rule) for problem in problems), problems


def test_check_reports_untransformable_and_unparsable_templates(text: str) -> None:
    no_code = text.replace("      CodeUri: functions/sender/\n", "")
    assert check(no_code) == [
        "SAM transform: Resource with id [SenderFunction] is invalid. "
        "Only one of 'InlineCode' or 'CodeUri' can be set."
    ]
    with pytest.raises(TemplateError):
        transform("Resources: [")


def test_main_exit_code_and_output(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("BatchSize: 1000", "BatchSize: 20000"), encoding="utf-8")
    assert main([str(TEMPLATE), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{TEMPLATE}: SAM transform + cfn-lint clean" in out
    assert f"{bad}: E3034 Resources/SenderFunctionQueue/Properties/BatchSize" in out


def test_functions_run_python313_on_arm64_with_the_layer(cfn: dict[str, Any]) -> None:
    layer = next(k for k, v in cfn["Resources"].items() if v["Type"] == "AWS::Lambda::LayerVersion")
    assert props(cfn, layer)["CompatibleRuntimes"] == ["python3.13"]
    for function in ("IngestFunction", "SenderFunction"):
        p = props(cfn, function)
        assert (p["Runtime"], p["Architectures"]) == ("python3.13", ["arm64"])
        assert p["Handler"] == "app.lambda_handler"
        assert p["Layers"] == [{"Ref": layer}]


def test_sender_reads_full_batches_and_reports_partial_failures(cfn: dict[str, Any]) -> None:
    mapping = props(cfn, "SenderFunctionQueue")
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] == 1000  # TikTok's maximum per request
    assert mapping["MaximumBatchingWindowInSeconds"] >= 1  # required by SQS for BatchSize > 10


def test_sender_concurrency_respects_tiktok_rate_limit(cfn: dict[str, Any]) -> None:
    scaling = props(cfn, "SenderFunctionQueue")["ScalingConfig"]
    assert scaling == {"MaximumConcurrency": {"Ref": "SenderMaxConcurrency"}}
    parameter = cfn["Parameters"]["SenderMaxConcurrency"]
    assert parameter["MaxValue"] * REQUESTS_PER_S_PER_SENDER <= TIKTOK_REQUESTS_PER_S
    assert 2 <= parameter["MinValue"] <= parameter["Default"] <= parameter["MaxValue"]


def test_queue_visibility_covers_six_sender_timeouts(cfn: dict[str, Any]) -> None:
    window = props(cfn, "SenderFunctionQueue")["MaximumBatchingWindowInSeconds"]
    timeout = props(cfn, "SenderFunction")["Timeout"]
    assert props(cfn, "EventsQueue")["VisibilityTimeout"] >= 6 * timeout + window


def test_queues_are_encrypted_and_redrive_to_the_dlq(cfn: dict[str, Any]) -> None:
    queue, dlq = props(cfn, "EventsQueue"), props(cfn, "EventsDeadLetterQueue")
    assert queue["SqsManagedSseEnabled"] is True
    assert dlq["SqsManagedSseEnabled"] is True
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["EventsDeadLetterQueue", "Arn"]},
        "maxReceiveCount": 5,
    }
    # A dead letter keeps its original enqueue time, so the DLQ must keep messages longer than the queue.
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600 > queue["MessageRetentionPeriod"]


def test_generated_and_user_entered_credentials_live_in_separate_secrets(cfn: dict[str, Any]) -> None:
    """Editing a generator regenerates its own secret only, never the TikTok token the user typed in."""
    assert "GenerateSecretString" not in props(cfn, "TikTokSecret")
    typed = json.loads(props(cfn, "TikTokSecret")["SecretString"])
    assert typed == {"access_token": "", "pixel_code": "", "event_set_id": ""}
    generate = props(cfn, "WebhookSecret")["GenerateSecretString"]
    assert generate["GenerateStringKey"] == "webhook_secret"
    assert json.loads(generate["SecretStringTemplate"]) == {"previous_webhook_secret": ""}


def test_the_webhook_token_is_generated_too_and_only_ingest_reads_it(cfn: dict[str, Any]) -> None:
    """Secure by default: a first-element-signed batch needs the token, so the template generates one."""
    generate = props(cfn, "WebhookTokenSecret")["GenerateSecretString"]
    assert generate["GenerateStringKey"] == "webhook_token"
    assert json.loads(generate["SecretStringTemplate"]) == {"previous_webhook_token": ""}
    assert generate["PasswordLength"] >= 32
    ingest = props(cfn, "IngestFunction")["Environment"]["Variables"]
    assert ingest["WEBHOOK_TOKEN_SECRET_ID"] == {"Ref": "WebhookTokenSecret"}
    assert ingest["FIRST_ELEMENT_SIGNATURE"] == {"Ref": "FirstElementSignature"}
    assert cfn["Parameters"]["FirstElementSignature"]["Default"] == "with-token"


def test_the_event_limit_defaults_agree(cfn: dict[str, Any]) -> None:
    assert cfn["Parameters"]["MaxEvents"]["Default"] == settings.Settings().max_events
    ingest = props(cfn, "IngestFunction")["Environment"]["Variables"]
    assert ingest["MAX_EVENTS"] == {"Ref": "MaxEvents"}
    sender_reads = json.dumps(statements(cfn, "SenderFunctionRole"))
    assert "WebhookTokenSecret" not in sender_reads


def test_the_sender_dead_letters_before_sqs_would(cfn: dict[str, Any]) -> None:
    """The sender moves a record to the DLQ itself, with its reason, on the receive SQS would redrive it."""
    redrive = props(cfn, "EventsQueue")["RedrivePolicy"]
    sender = props(cfn, "SenderFunction")["Environment"]["Variables"]
    assert int(sender["MAX_RECEIVE_COUNT"]) == redrive["maxReceiveCount"]


def test_environment_names_are_the_ones_settings_reads(cfn: dict[str, Any]) -> None:
    source = inspect.getsource(settings.Settings.from_env)
    for function in ("IngestFunction", "SenderFunction"):
        variables = props(cfn, function)["Environment"]["Variables"]
        for name in variables:
            assert name.startswith("POWERTOOLS_") or f'"{name}"' in source, name
    ingest, sender = (props(cfn, f)["Environment"]["Variables"] for f in ("IngestFunction", "SenderFunction"))
    assert ingest["QUEUE_URL"] == {"Ref": "EventsQueue"}
    assert ingest["WEBHOOK_SECRET_ID"] == {"Ref": "WebhookSecret"}
    assert sender["DLQ_URL"] == {"Ref": "EventsDeadLetterQueue"}
    assert sender["TIKTOK_SECRET_ID"] == {"Ref": "TikTokSecret"}


def statements(cfn: dict[str, Any], role: str) -> list[tuple[list[str], Any]]:
    return [
        (statement["Action"], statement["Resource"])
        for policy in props(cfn, role)["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def queue_arn(logical_id: str) -> dict[str, Any]:
    return {
        "Fn::Sub": [
            "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${queueName}",
            {"queueName": {"Fn::GetAtt": [logical_id, "QueueName"]}},
        ]
    }


def read_secret(logical_id: str) -> tuple[list[str], Any]:
    return (
        ["secretsmanager:GetSecretValue"],
        {"Fn::Sub": ["${secretArn}", {"secretArn": {"Ref": logical_id}}]},
    )


def test_roles_grant_only_what_each_function_needs(cfn: dict[str, Any]) -> None:
    """Ingest faces the internet: it can read the webhook credentials, never the TikTok access token."""
    assert statements(cfn, "IngestFunctionRole") == [
        (["sqs:SendMessage*"], queue_arn("EventsQueue")),
        (["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"], {"Fn::GetAtt": ["ProfilesTable", "Arn"]}),
        read_secret("WebhookSecret"),
        read_secret("WebhookTokenSecret"),
    ]
    assert statements(cfn, "SenderFunctionRole") == [
        (["sqs:SendMessage*"], queue_arn("EventsDeadLetterQueue")),
        read_secret("TikTokSecret"),
    ]
    basic = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
    poller = "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole"  # added by SAM's SQS event
    assert props(cfn, "IngestFunctionRole")["ManagedPolicyArns"] == [basic]
    assert props(cfn, "SenderFunctionRole")["ManagedPolicyArns"] == [basic, poller]


def test_profiles_table_is_on_demand_encrypted_with_a_ttl(cfn: dict[str, Any]) -> None:
    table = props(cfn, "ProfilesTable")
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSESpecification"] == {"SSEEnabled": True}
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert "PointInTimeRecoverySpecification" not in table  # `forget` must erase for good
    variables = props(cfn, "IngestFunction")["Environment"]["Variables"]
    assert variables["PROFILES_TABLE"] == {"Ref": "ProfilesTable"}


def test_http_api_routes_post_v1_events_to_ingest(cfn: dict[str, Any]) -> None:
    api = cfn["Resources"]["HttpApi"]
    assert api["Type"] == "AWS::ApiGatewayV2::Api"
    paths = api["Properties"]["Body"]["paths"]
    assert list(paths) == ["/v1/events"]
    integration = paths["/v1/events"]["post"]["x-amazon-apigateway-integration"]
    assert integration["payloadFormatVersion"] == "2.0"
    assert "IngestFunction.Arn" in str(integration["uri"])


def test_alarms_watch_dlq_depth_and_sender_errors(cfn: dict[str, Any]) -> None:
    dlq_alarm, errors_alarm = props(cfn, "DeadLetterQueueAlarm"), props(cfn, "SenderErrorsAlarm")
    assert (dlq_alarm["MetricName"], dlq_alarm["Threshold"], dlq_alarm["ComparisonOperator"]) == (
        "ApproximateNumberOfMessagesVisible",
        0,
        "GreaterThanThreshold",
    )
    assert dlq_alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["EventsDeadLetterQueue", "QueueName"]}}
    ]
    assert errors_alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "SenderFunction"}}]
    assert cfn["Resources"]["AlarmTopic"]["Condition"] == "HasAlarmEmail"


def test_outputs_name_the_webhook_url(cfn: dict[str, Any]) -> None:
    assert cfn["Outputs"]["WebhookUrl"]["Value"] == {
        "Fn::Sub": "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/v1/events"
    }


def test_the_config_error_alarm_watches_the_metric_the_sender_emits(cfn: dict[str, Any]) -> None:
    alarm = props(cfn, "SenderConfigErrorAlarm")
    env = cfn["Resources"]["SenderFunction"]["Properties"]["Environment"]["Variables"]
    assert alarm["Namespace"] == env["POWERTOOLS_METRICS_NAMESPACE"]
    assert alarm["Dimensions"] == [{"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}]
    sender_source = (TEMPLATE.parent / "layers" / "bridge" / "tiktok_bridge" / "sender.py").read_text()
    assert f'"{alarm["MetricName"]}"' in sender_source


# --- operations: logs, throttling, outputs -----------------------------------------------------------------


def test_each_function_logs_to_its_own_log_group_with_the_retention_parameter(cfn: dict[str, Any]) -> None:
    """Lambda writes to /aws/lambda/<function name>; the template owns that group, so it has a retention."""
    functions = [k for k, v in cfn["Resources"].items() if v["Type"] == "AWS::Lambda::Function"]
    groups = {
        json.dumps(v["Properties"]["LogGroupName"]): v["Properties"]
        for v in cfn["Resources"].values()
        if v["Type"] == "AWS::Logs::LogGroup"
    }
    assert sorted(functions) == ["IngestFunction", "SenderFunction"]
    for function in functions:
        group = groups[json.dumps({"Fn::Sub": f"/aws/lambda/${{{function}}}"})]
        assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_log_retention_is_a_parameter_of_cloudwatchs_allowed_values(cfn: dict[str, Any]) -> None:
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", "AWS::Logs::LogGroup").schema
    parameter = cfn["Parameters"]["LogRetentionDays"]
    assert parameter["AllowedValues"] == schema["properties"]["RetentionInDays"]["enum"]
    assert parameter["Default"] == 30
    for resource in cfn["Resources"].values():
        if resource["Type"] == "AWS::Logs::LogGroup":
            assert resource["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_api_access_logs_are_json_lines_without_bodies_or_header_values(cfn: dict[str, Any]) -> None:
    settings = props(cfn, "HttpApiApiGatewayDefaultStage")["AccessLogSettings"]
    assert settings["DestinationArn"] == {"Fn::GetAtt": ["HttpApiAccessLogGroup", "Arn"]}
    fields = json.loads(settings["Format"])
    wanted = {
        "requestId",
        "ip",
        "requestTime",
        "routeKey",
        "status",
        "responseLength",
        "integrationErrorMessage",
    }
    assert wanted <= set(fields)
    for name, value in fields.items():
        assert value.startswith("$context."), name
        lowered = value.lower()
        # the body (raw PII before hashing), the signature, the token, or any header or query value
        assert not any(
            word in lowered for word in ("body", "header", "authoriz", "signature", "querystring")
        ), value
    assert props(cfn, "HttpApiAccessLogGroup")["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_the_stage_throttles_with_parameters_that_leave_segment_room(cfn: dict[str, Any]) -> None:
    routes = props(cfn, "HttpApiApiGatewayDefaultStage")["DefaultRouteSettings"]
    assert routes == {
        "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
        "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
    }
    rate, burst = cfn["Parameters"]["ApiThrottlingRateLimit"], cfn["Parameters"]["ApiThrottlingBurstLimit"]
    assert (rate["Default"], burst["Default"]) == (100, 200)
    assert burst["Default"] >= rate["Default"]
    for parameter in (rate, burst):
        assert 1 <= parameter["MinValue"] <= parameter["Default"] <= parameter["MaxValue"]
    # 100 requests/s of MaxEvents each is far more events than Segment sends one destination
    assert rate["Default"] * cfn["Parameters"]["MaxEvents"]["Default"] >= 100_000


def test_the_serverless_rules_run_on_the_transformed_template(text: str) -> None:
    no_throttling = text.replace(
        "      DefaultRouteSettings:\n"
        "        ThrottlingRateLimit: !Ref ApiThrottlingRateLimit\n"
        "        ThrottlingBurstLimit: !Ref ApiThrottlingBurstLimit\n",
        "",
    )
    assert no_throttling != text
    assert any(p.startswith("ES2003 Resources/HttpApiApiGatewayDefaultStage") for p in check(no_throttling))
    # a skip on a SAM function also covers the event source mapping SAM generates from it
    no_skip = text.replace("ignore_checks: [WS1000, ES1001]", "ignore_checks: [WS1000]")
    assert no_skip != text
    assert any(p.startswith("ES1001 Resources/SenderFunctionQueue") for p in check(no_skip))


def test_every_finding_skipped_in_the_template_has_a_reason(text: str) -> None:
    """Each `ignore_checks` line follows a comment naming every rule it skips, with the reason."""
    lines = text.splitlines()
    skips = [n for n, line in enumerate(lines) if line.strip().startswith("ignore_checks:")]
    assert skips
    for n in skips:
        rules = lines[n].split("[", 1)[1].rstrip("]").replace(" ", "").split(",")
        comments = []
        for line in reversed(lines[:n]):
            if not line.strip().startswith("#"):
                break
            comments.append(line)
        for rule in rules:
            assert any(f"# {rule} (" in comment for comment in comments), (rule, lines[n])


def test_outputs_name_the_dashboard_logs_and_alarm_topic(cfn: dict[str, Any]) -> None:
    outputs = cfn["Outputs"]
    assert "${Dashboard}" in outputs["DashboardUrl"]["Value"]["Fn::Sub"]
    assert "${AWS::StackName}" in outputs["AlarmsUrl"]["Value"]["Fn::Sub"]
    assert outputs["AlarmTopicArn"] == {
        "Condition": "HasAlarmEmail",
        "Description": outputs["AlarmTopicArn"]["Description"],
        "Value": {"Ref": "AlarmTopic"},
    }
    assert outputs["IngestLogGroupName"]["Value"] == {"Ref": "IngestFunctionLogGroup"}
    assert outputs["SenderLogGroupName"]["Value"] == {"Ref": "SenderFunctionLogGroup"}
    assert outputs["ApiAccessLogGroupName"]["Value"] == {"Ref": "HttpApiAccessLogGroup"}
    assert outputs["EventsQueueArn"]["Value"] == {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    assert outputs["EventsDeadLetterQueueArn"]["Value"] == {"Fn::GetAtt": ["EventsDeadLetterQueue", "Arn"]}
    dashboard = props(cfn, "Dashboard")
    assert dashboard["DashboardName"] == {
        "Fn::Sub": "${AWS::StackName}-${AWS::Region}"
    }  # dashboards are global


def test_outputs_hold_every_url_arn_and_name_the_readme_and_cli_use(cfn: dict[str, Any]) -> None:
    from tiktok_bridge_cli import dlq

    readme = (TEMPLATE.parent / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"[`<]([A-Z][A-Za-z0-9]+(?:Url|Arn|Name))\b", readme)) - set(cfn["Parameters"])
    assert named
    assert named | {dlq.QUEUE_OUTPUT, dlq.DLQ_OUTPUT} <= set(cfn["Outputs"])
