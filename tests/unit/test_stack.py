"""template.yaml -> moto resources: what gets created follows the template, not a copy of its values."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from tiktok_bridge.secret import BridgeSecret
from tiktok_bridge_cli.stack import DEFAULT_TEMPLATE, Stack, TemplateError, create_stack, load_template

TEMPLATE = load_template(DEFAULT_TEMPLATE)


def queue_attributes(url: str) -> dict[str, str]:
    response = boto3.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    return {str(key): value for key, value in response["Attributes"].items()}


def edited(edit: Any) -> dict[str, Any]:
    """A fresh copy of template.yaml, changed in place by `edit`."""
    document = load_template(DEFAULT_TEMPLATE)
    edit(document)
    return document


def test_short_tags_become_long_form_intrinsics() -> None:
    sender_env = TEMPLATE["Resources"]["SenderFunction"]["Properties"]["Environment"]["Variables"]
    assert sender_env["DLQ_URL"] == {"Ref": "EventsDeadLetterQueue"}
    redrive = TEMPLATE["Resources"]["EventsQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": "EventsDeadLetterQueue.Arn"}
    assert TEMPLATE["Conditions"]["HasAlarmEmail"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]
    }


def test_queues_follow_the_template(stack: Stack) -> None:
    properties = TEMPLATE["Resources"]["EventsQueue"]["Properties"]
    queue = queue_attributes(stack.queue_url)
    assert queue["VisibilityTimeout"] == str(properties["VisibilityTimeout"])
    assert stack.visibility_timeout_s == properties["VisibilityTimeout"]
    assert queue["MessageRetentionPeriod"] == str(properties["MessageRetentionPeriod"])
    assert queue["SqsManagedSseEnabled"] == "true"
    assert json.loads(queue["RedrivePolicy"]) == {
        "deadLetterTargetArn": queue_attributes(stack.dlq_url)["QueueArn"],
        "maxReceiveCount": properties["RedrivePolicy"]["maxReceiveCount"],
    }
    dlq_retention = TEMPLATE["Resources"]["EventsDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"]
    assert queue_attributes(stack.dlq_url)["MessageRetentionPeriod"] == str(dlq_retention)
    assert stack.max_receive_count == properties["RedrivePolicy"]["maxReceiveCount"]


def test_sender_event_source_and_function_settings_come_from_the_template(stack: Stack) -> None:
    sender = TEMPLATE["Resources"]["SenderFunction"]["Properties"]
    sqs_event = sender["Events"]["Queue"]["Properties"]
    assert stack.sender_batch_size == sqs_event["BatchSize"]
    assert stack.sender_batching_window_s == sqs_event["MaximumBatchingWindowInSeconds"]
    assert stack.sender_report_batch_item_failures
    assert stack.sender_max_concurrency == TEMPLATE["Parameters"]["SenderMaxConcurrency"]["Default"]
    assert stack.sender.timeout_s == sender["Timeout"]
    assert stack.sender.handler_file == DEFAULT_TEMPLATE.parent / "functions" / "sender" / "app.py"
    assert stack.ingest.routes == (("POST", "/v1/events"),)


def test_function_environments_resolve_refs_to_the_created_resources(stack: Stack) -> None:
    assert stack.ingest.environment["QUEUE_URL"] == stack.queue_url
    assert stack.sender.environment["DLQ_URL"] == stack.dlq_url
    assert stack.ingest.environment["WEBHOOK_SECRET_ID"] == stack.secret_of("webhook_secret")
    assert stack.ingest.environment["WEBHOOK_TOKEN_SECRET_ID"] == stack.secret_of("webhook_token")
    assert stack.sender.environment["TIKTOK_SECRET_ID"] == stack.secret_of("access_token")
    assert stack.ingest.environment["MAX_BODY_BYTES"] == "5000000"  # a parameter's default
    assert stack.sender.environment["POWERTOOLS_METRICS_NAMESPACE"] == "TikTokBridge"  # from Globals


def test_stack_fixture_sets_the_handler_environment_and_fills_the_secret(
    stack: Stack, bridge_secret: dict[str, str]
) -> None:
    assert os.environ["QUEUE_URL"] == stack.queue_url
    assert os.environ["DLQ_URL"] == stack.dlq_url
    assert os.environ["TIKTOK_SECRET_ID"] == stack.secret_of("access_token")
    assert os.environ["TIKTOK_BASE_URL"].startswith("http://127.0.0.1")  # never the real TikTok in tests
    raw = boto3.client("secretsmanager").get_secret_value(SecretId=stack.secret_of("pixel_code"))[
        "SecretString"
    ]
    secret = BridgeSecret.parse(raw)
    assert secret.access_token.get_secret_value() == bridge_secret["access_token"] == "test-token"
    assert secret.source_ids() == {"pixel_code": "PIXEL123", "event_set_id": "EVENTSET123"}


@pytest.mark.usefixtures("aws")
def test_generated_secret_follows_generate_secret_string() -> None:
    stack = create_stack(TEMPLATE)
    for logical_id, key in (("WebhookSecret", "webhook_secret"), ("WebhookTokenSecret", "webhook_token")):
        raw = json.loads(
            boto3.client("secretsmanager").get_secret_value(SecretId=stack.secret_of(key))["SecretString"]
        )
        generate = TEMPLATE["Resources"][logical_id]["Properties"]["GenerateSecretString"]
        assert set(raw) == set(json.loads(generate["SecretStringTemplate"])) | {generate["GenerateStringKey"]}
        assert len(raw[key]) == generate["PasswordLength"]
        assert raw[key].isalnum()  # ExcludePunctuation


@pytest.mark.usefixtures("aws")
def test_put_secret_sends_each_key_to_the_secret_that_declares_it() -> None:
    stack = create_stack(TEMPLATE)
    stack.put_secret({"access_token": "t", "webhook_secret": "s", "webhook_token": "b"})
    read = boto3.client("secretsmanager").get_secret_value
    assert json.loads(read(SecretId=stack.secret_of("access_token"))["SecretString"]) == {"access_token": "t"}
    assert json.loads(read(SecretId=stack.secret_of("webhook_secret"))["SecretString"]) == {
        "webhook_secret": "s"
    }
    assert json.loads(read(SecretId=stack.secret_of("webhook_token"))["SecretString"]) == {
        "webhook_token": "b"
    }
    with pytest.raises(TemplateError, match="no secret of the template holds 'nonsense'"):
        stack.put_secret({"nonsense": "x"})


@pytest.mark.usefixtures("aws")
def test_a_changed_template_copy_changes_the_created_queue(tmp_path: Path) -> None:
    def edit(document: dict[str, Any]) -> None:
        queue = document["Resources"]["EventsQueue"]["Properties"]
        queue["VisibilityTimeout"] = 7
        queue["RedrivePolicy"]["maxReceiveCount"] = 2
        document["Resources"]["SenderFunction"]["Properties"]["Events"]["Queue"]["Properties"][
            "BatchSize"
        ] = 3

    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(edited(edit)), encoding="utf-8")
    stack = create_stack(path, stack_name="copy")
    assert queue_attributes(stack.queue_url)["VisibilityTimeout"] == "7"
    assert json.loads(queue_attributes(stack.queue_url)["RedrivePolicy"])["maxReceiveCount"] == 2
    assert (stack.visibility_timeout_s, stack.max_receive_count, stack.sender_batch_size) == (7, 2, 3)
    assert stack.queue_url.endswith("/copy-EventsQueue")
    assert stack.ingest.handler_file == tmp_path / "functions" / "ingest" / "app.py"


@pytest.mark.usefixtures("aws")
def test_parameters_override_defaults_and_unknown_ones_are_refused() -> None:
    stack = create_stack(TEMPLATE, parameters={"TikTokBaseUrl": "http://127.0.0.1:1234", "LogLevel": "DEBUG"})
    assert stack.sender.environment["TIKTOK_BASE_URL"] == "http://127.0.0.1:1234"
    assert stack.ingest.environment["POWERTOOLS_LOG_LEVEL"] == "DEBUG"
    with pytest.raises(TemplateError, match=r"unknown template parameter.*Nope"):
        create_stack(TEMPLATE, parameters={"Nope": "x"}, stack_name="other")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["Resources"]["EventsQueue"]["Properties"].update(Bogus=1),
            "unsupported queue properties Bogus",
        ),
        (lambda d: d["Resources"].pop("TikTokSecret"), "no resource TikTokSecret"),
        (
            lambda d: d["Resources"]["EventsQueue"].update(Type="AWS::SNS::Topic"),
            "EventsQueue must be AWS::SQS::Queue",
        ),
        (
            lambda d: d["Resources"]["SenderFunction"]["Properties"]["Events"].clear(),
            "SenderFunction has no SQS event",
        ),
        (
            lambda d: d["Resources"]["IngestFunction"]["Properties"]["Environment"]["Variables"].update(
                X={"Fn::Transform": {}}
            ),
            "unsupported intrinsic function Fn::Transform",
        ),
    ],
)
@pytest.mark.usefixtures("aws")
def test_unsupported_or_broken_templates_fail_clearly(edit: Any, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        create_stack(edited(edit))


@pytest.mark.parametrize("text", ["", "[1, 2]", "Resources: [", "Parameters: {}\n"])
def test_unreadable_templates_fail_clearly(tmp_path: Path, text: str) -> None:
    path = tmp_path / "template.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TemplateError, match=r"template\.yaml"):
        load_template(path)


def test_missing_template_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="cannot read template"):
        load_template(tmp_path / "absent.yaml")
