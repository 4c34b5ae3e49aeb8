"""template.yaml: the offline check fails on broken copies; the deployed shape is what the code needs."""

from __future__ import annotations

import inspect
import json
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


def test_secret_generates_the_webhook_secret(cfn: dict[str, Any]) -> None:
    generate = props(cfn, "BridgeSecret")["GenerateSecretString"]
    assert generate["GenerateStringKey"] == "webhook_secret"
    placeholders = json.loads(generate["SecretStringTemplate"])
    assert placeholders == {"access_token": "", "pixel_code": "", "event_set_id": ""}


def test_the_webhook_token_is_generated_too_and_only_ingest_reads_it(cfn: dict[str, Any]) -> None:
    """Secure by default: a first-element-signed batch needs the token, so the template generates one."""
    generate = props(cfn, "WebhookTokenSecret")["GenerateSecretString"]
    assert generate["GenerateStringKey"] == "webhook_token"
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
        assert variables["SECRET_ID"] == {"Ref": "BridgeSecret"}
        for name in variables:
            assert name.startswith("POWERTOOLS_") or f'"{name}"' in source, name
    ingest, sender = (props(cfn, f)["Environment"]["Variables"] for f in ("IngestFunction", "SenderFunction"))
    assert ingest["QUEUE_URL"] == {"Ref": "EventsQueue"}
    assert sender["DLQ_URL"] == {"Ref": "EventsDeadLetterQueue"}


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


SECRET_ARN = {"Fn::Sub": ["${secretArn}", {"secretArn": {"Ref": "BridgeSecret"}}]}


def test_roles_grant_only_what_each_function_needs(cfn: dict[str, Any]) -> None:
    read_secret = (["secretsmanager:GetSecretValue"], SECRET_ARN)
    assert statements(cfn, "IngestFunctionRole") == [
        (["sqs:SendMessage*"], queue_arn("EventsQueue")),
        (["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"], {"Fn::GetAtt": ["ProfilesTable", "Arn"]}),
        read_secret,
        (
            ["secretsmanager:GetSecretValue"],
            {"Fn::Sub": ["${secretArn}", {"secretArn": {"Ref": "WebhookTokenSecret"}}]},
        ),
    ]
    assert statements(cfn, "SenderFunctionRole") == [
        (["sqs:SendMessage*"], queue_arn("EventsDeadLetterQueue")),
        read_secret,
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
