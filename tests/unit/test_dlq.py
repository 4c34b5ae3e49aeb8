"""`tiktok-bridge dlq list|redrive|purge` on moto: the template's queues (the `stack` fixture), a
CloudFormation stack (`--stack`) and a moto server as `serve` runs it (`--endpoint-url`)."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from tiktok_bridge import queue
from tiktok_bridge_cli import cli, dlq
from tiktok_bridge_cli.local import moto_server, serving, url_of
from tiktok_bridge_cli.stack import Stack, create_stack, delete_stack

SECRET = "PLAINTEXT-BODY-VALUE"  # in every body: must never be printed
TEST_CODE = "TEST-CODE-ROUTING-VALUE"  # a routing attribute value: must never be printed either
REJECTED = "rejected by TikTok with code 40002"
EXHAUSTED = "retries exhausted, last verdict 40105"
CORRUPT = "corrupt record: message attribute 'event_source' is missing"
ROUTING = ("event_source", "source_id_key", "test_event_code")


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def letter(n: int, reason: str | None = None, code: str = "", message: str = "", attempts: str = "") -> Any:
    """A SendMessageBatch entry as the sender dead-letters it (or, without `reason`, as SQS moves it)."""
    attributes = {"event_source": _string("web"), "source_id_key": _string("pixel_code")}
    if n % 2:
        attributes["test_event_code"] = _string(TEST_CODE)
    if reason is not None:
        attributes["dlq_reason"] = _string(reason)
        extra = {"tiktok_code": code, "tiktok_message": message, "attempts": attempts}
        attributes |= {name: _string(value) for name, value in extra.items() if value}
    body = {"event": "CompletePayment", "event_id": f"e-{n}", "properties": {"content_name": f"{SECRET}-{n}"}}
    return {"Id": str(n), "MessageBody": json.dumps(body), "MessageAttributes": attributes}


LETTERS = [
    letter(0, REJECTED, "40002", "Invalid value for user.email", "1"),
    letter(1, REJECTED, "40002", "Invalid value for user.email", "1"),
    letter(2, REJECTED, "40002", "Invalid value for properties.value", "2"),
    letter(3, EXHAUSTED, "40105", "access token is invalid", "4"),
    letter(4, EXHAUSTED, "40105", "access token is invalid", "4"),
    letter(5, CORRUPT),
    letter(6),
    letter(7),
]


@pytest.fixture(autouse=True)
def short_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlq, "RECEIVE_WAIT_S", 0)


def put(sqs: Any, url: str, entries: list[dict[str, Any]] = LETTERS) -> dict[str, str]:
    """Send `entries` to `url`; their message ids by entry Id."""
    ids: dict[str, str] = {}
    for start in range(0, len(entries), 10):
        response = sqs.send_message_batch(QueueUrl=url, Entries=entries[start : start + 10])
        assert not response.get("Failed")
        ids |= {ok["Id"]: ok["MessageId"] for ok in response["Successful"]}
    return ids


def messages(sqs: Any, url: str) -> dict[str, dict[str, Any]]:
    """Every visible message of `url` by MessageId, left in place."""
    found: dict[str, dict[str, Any]] = {}
    while True:
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30, MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not batch:
            break
        found |= {message["MessageId"]: message for message in batch}
    for message in found.values():
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    return found


def reason_of(message: dict[str, Any]) -> str | None:
    value = (message.get("MessageAttributes") or {}).get("dlq_reason")
    return value["StringValue"] if value else None


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`tiktok-bridge dlq ARGV` -> exit code and stdout + stderr, which must hold no body or routing value."""
    code = cli.main(["dlq", *argv])
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert SECRET not in output and TEST_CODE not in output and "CompletePayment" not in output
    return code, output


@pytest.fixture
def urls(stack: Stack) -> list[str]:
    return ["--queue-url", stack.queue_url, "--dlq-url", stack.dlq_url]


@pytest.fixture
def ids(stack: Stack) -> dict[str, str]:
    return put(stack.client("sqs"), stack.dlq_url)


def test_list_counts_by_reason_and_code_and_leaves_every_letter(
    stack: Stack, urls: list[str], ids: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "list", *urls, "--ids", "0")
    assert code == 0
    assert "read 8 letter(s) of about 8; 8 match every letter" in out
    rows = {
        line.split(None, 2)[0]: line for line in out.splitlines() if REJECTED in line or EXHAUSTED in line
    }
    assert rows == {"3": rows["3"], "2": rows["2"]} and "40002" in rows["3"] and "40105" in rows["2"]
    assert "2  -" in out and dlq.NO_REASON in out and CORRUPT in out
    assert '"Invalid value for user.email" (2)' in out and "attempts: 1 x2, 2 x1" in out
    assert all(message_id in out for message_id in ids.values())
    assert messages(stack.client("sqs"), stack.dlq_url).keys() == set(ids.values())  # all still there

    code, out = run(capsys, "list", *urls, "--json", "--reason", "retries")
    report = json.loads(out)
    assert code == 0 and report["read"] == 8 and report["selected"] == 2 and report["complete"]
    [group] = report["groups"]
    assert (group["reason"], group["code"], group["count"]) == (EXHAUSTED, "40105", 2)
    assert sorted(group["message_ids"]) == sorted([ids["3"], ids["4"]])
    assert group["tiktok_messages"] == {"access token is invalid": 2} and group["attempts"] == {"4": 2}


def test_redrive_by_reason_moves_exactly_those_letters_without_their_reason(
    stack: Stack, urls: list[str], ids: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sqs = stack.client("sqs")
    code, out = run(capsys, "redrive", *urls, "--reason", "rejected by TikTok")
    assert code == 0 and "moved 3, failed 0" in out
    moved = messages(sqs, stack.queue_url)
    assert len(moved) == 3
    by_body = {entry["MessageBody"]: entry for entry in LETTERS}
    for message in moved.values():
        original = by_body[message["Body"]]  # body unchanged
        assert original["MessageAttributes"]["dlq_reason"]["StringValue"] == REJECTED
        expected = {k: v for k, v in original["MessageAttributes"].items() if k in ROUTING}
        attributes = {
            name: {"DataType": value["DataType"], "StringValue": value["StringValue"]}
            for name, value in message["MessageAttributes"].items()
        }
        assert attributes == expected  # routing kept (test_event_code too), reason attributes gone
        queue.decode(message["Body"], message["MessageAttributes"])  # what the sender reads
    left = messages(sqs, stack.dlq_url)
    assert left.keys() == {ids[n] for n in "34567"}
    assert {reason_of(message) for message in left.values()} == {EXHAUSTED, CORRUPT, None}


def test_redrive_by_code_or_without_reason_max_and_dry_run(
    stack: Stack, urls: list[str], ids: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sqs = stack.client("sqs")
    code, out = run(capsys, "redrive", *urls, "--code", "40105", "--dry-run")
    assert code == 0 and "dry run: 2 letter(s) would be moved, nothing changed" in out
    assert ids["3"] in out and ids["4"] in out
    assert not messages(sqs, stack.queue_url) and len(messages(sqs, stack.dlq_url)) == 8

    code, out = run(capsys, "redrive", *urls, "--code", "40105", "--max", "1")
    assert code == 0 and "moved 1, failed 0" in out and "(stopped at --max:" in out
    [moved] = messages(sqs, stack.queue_url).values()
    assert moved["Body"] in {LETTERS[3]["MessageBody"], LETTERS[4]["MessageBody"]}
    assert len(messages(sqs, stack.dlq_url)) == 7

    code, out = run(capsys, "redrive", *urls, "--no-reason")
    assert code == 0 and "moved 2, failed 0" in out
    bodies = {message["Body"] for message in messages(sqs, stack.queue_url).values()}
    assert {LETTERS[6]["MessageBody"], LETTERS[7]["MessageBody"]} < bodies
    assert {reason_of(m) for m in messages(sqs, stack.dlq_url).values()} == {REJECTED, EXHAUSTED, CORRUPT}


def test_time_range_selects_by_sent_timestamp(
    stack: Stack, urls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    sqs = stack.client("sqs")
    put(sqs, stack.dlq_url, LETTERS[:3])
    time.sleep(0.05)
    middle = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    late = put(sqs, stack.dlq_url, LETTERS[3:5])
    code, out = run(capsys, "redrive", *urls, "--since", middle, "--dry-run", "--ids", "0")
    assert code == 0 and "2 match" in out and all(message_id in out for message_id in late.values())
    code, out = run(capsys, "redrive", *urls, "--until", middle)
    assert code == 0 and "moved 3, failed 0" in out
    code, out = run(capsys, "list", *urls, "--since", "1h", "--until", "2099-01-01")
    assert code == 0 and "read 2 letter(s) of about 2; 2 match" in out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["dlq", "list", *urls, "--since", "yesterday"])
    assert exit_.value.code == 2 and "not a time" in capsys.readouterr().err


def test_purge_deletes_only_the_chosen_letters(
    stack: Stack, urls: list[str], ids: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sqs = stack.client("sqs")
    code, out = run(capsys, "purge", *urls)
    assert code == 2 and "say which letters" in out
    code, out = run(capsys, "purge", *urls, "--all")
    assert code == 2 and "--yes" in out
    code, out = run(capsys, "purge", *urls, "--reason", "corrupt record")
    assert code == 0 and "deleted 1, failed 0" in out
    assert messages(sqs, stack.dlq_url).keys() == set(ids.values()) - {ids["5"]}
    assert not messages(sqs, stack.queue_url)
    code, out = run(capsys, "purge", *urls, "--all", "--yes")
    assert code == 0 and "deleted 7, failed 0" in out and not messages(sqs, stack.dlq_url)


def test_scan_limit_reads_part_and_leaves_everything(
    stack: Stack, urls: list[str], ids: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "list", *urls, "--scan-limit", "3")
    assert code == 0 and "read 3 letter(s) of about 8 (stopped at --scan-limit:" in out
    assert len(messages(stack.client("sqs"), stack.dlq_url)) == 8


class FlakySqs:
    """The real client, but SQS refuses to send the bodies in `refuse_sends` and fails the first
    `refuse_deletes` DeleteMessageBatch calls."""

    def __init__(self, sqs: Any, refuse_sends: Collection[str] = (), refuse_deletes: int = 0) -> None:
        self._sqs, self.refuse_sends, self.refuse_deletes = sqs, refuse_sends, refuse_deletes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> Any:
        refused = [entry for entry in Entries if entry["MessageBody"] in self.refuse_sends]
        accepted = [entry for entry in Entries if entry not in refused]
        response = self._sqs.send_message_batch(QueueUrl=QueueUrl, Entries=accepted) if accepted else {}
        failed = [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError"} for e in refused]
        return {**response, "Failed": failed}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> Any:
        if self.refuse_deletes:
            self.refuse_deletes -= 1
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "injected"}}, "DeleteMessageBatch"
            )
        return self._sqs.delete_message_batch(QueueUrl=QueueUrl, Entries=Entries)


def test_letters_sqs_does_not_accept_stay_in_the_dlq(stack: Stack, ids: dict[str, str]) -> None:
    sqs = stack.client("sqs")
    refused = LETTERS[0]["MessageBody"]
    letters = dlq.DeadLetterQueue(FlakySqs(sqs, {refused}), stack.dlq_url, wait_s=0)  # type: ignore[arg-type]
    scan = letters.scan(dlq.Selection(reasons=(REJECTED,)))
    letters.release(scan.others)
    outcome = letters.redrive(stack.queue_url, scan.selected)
    assert [letter.message_id for letter in outcome.failed] == [ids["0"]] and len(outcome.done) == 2
    assert {m["Body"] for m in messages(sqs, stack.queue_url).values()} == {
        LETTERS[1]["MessageBody"],
        LETTERS[2]["MessageBody"],
    }
    assert ids["0"] in messages(sqs, stack.dlq_url)  # released at once, not after the visibility timeout


def test_a_letter_sent_but_not_deleted_is_reported(stack: Stack, ids: dict[str, str]) -> None:
    sqs = stack.client("sqs")
    letters = dlq.DeadLetterQueue(FlakySqs(sqs, refuse_deletes=dlq.SEND_ATTEMPTS), stack.dlq_url, wait_s=0)  # type: ignore[arg-type]
    scan = letters.scan(dlq.Selection(codes=("40105",)))
    letters.release(scan.others)
    outcome = letters.redrive(stack.queue_url, scan.selected)
    assert len(outcome.done) == 2 and len(outcome.undeleted) == 2 and not outcome.failed
    assert len(messages(sqs, stack.queue_url)) == 2 and len(messages(sqs, stack.dlq_url)) == 8


MINIMAL_TEMPLATE = {
    "Resources": {
        "EventsDeadLetterQueue": {"Type": "AWS::SQS::Queue"},
        "EventsQueue": {"Type": "AWS::SQS::Queue"},
    },
    "Outputs": {
        "EventsQueueUrl": {"Value": {"Ref": "EventsQueue"}},
        "EventsDeadLetterQueueUrl": {"Value": {"Ref": "EventsDeadLetterQueue"}},
    },
}


def test_stack_name_finds_the_queues_from_the_outputs(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(StackName="bridge", TemplateBody=json.dumps(MINIMAL_TEMPLATE))
    outputs = dlq.stack_outputs(cloudformation, "bridge")
    sqs = boto3.client("sqs")
    ids = put(sqs, outputs["EventsDeadLetterQueueUrl"])
    code, out = run(capsys, "redrive", "--stack", "bridge", "--reason", EXHAUSTED)
    assert code == 0 and "moved 2, failed 0" in out and outputs["EventsDeadLetterQueueUrl"] in out
    assert {m["Body"] for m in messages(sqs, outputs["EventsQueueUrl"]).values()} == {
        LETTERS[3]["MessageBody"],
        LETTERS[4]["MessageBody"],
    }
    assert messages(sqs, outputs["EventsDeadLetterQueueUrl"]).keys() == set(ids.values()) - {
        ids["3"],
        ids["4"],
    }

    code, out = run(capsys, "list", "--stack", "no-such-stack")
    assert code == 2 and "no CloudFormation stack 'no-such-stack' in us-east-1" in out
    no_outputs = {"Resources": MINIMAL_TEMPLATE["Resources"]}
    cloudformation.create_stack(StackName="other", TemplateBody=json.dumps(no_outputs))
    code, out = run(capsys, "list", "--stack", "other")
    assert code == 2 and "has no output EventsQueueUrl or EventsDeadLetterQueueUrl" in out
    code, out = run(capsys, "list", "--queue-url", outputs["EventsQueueUrl"])
    assert code == 2 and "both --queue-url and --dlq-url" in out
    code, out = run(capsys, "list")
    assert code == 2 and "say where the queues are" in out


@pytest.fixture
def no_aws_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No credentials, region or profile anywhere (and no instance metadata lookups)."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def moto_url() -> Iterator[str]:
    """A moto server on 127.0.0.1 as `tiktok-bridge serve` runs it."""
    server = moto_server(0)
    with serving(server):
        yield url_of(server)


def serve_stack(moto_url: str, name: str) -> Stack:
    """The template's resources at `moto_url`, named as `serve` names them (`local-XXXXXXXX-<logical id>`)."""
    session = boto3.session.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
    )
    return create_stack(region="us-east-1", endpoint_url=moto_url, session=session, stack_name=name)


def test_endpoint_url_finds_serves_queues(
    no_aws_configuration: None, moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "list", "--endpoint-url", moto_url)
    assert code == 2 and "no EventsQueue and EventsDeadLetterQueue queues" in out
    local = serve_stack(moto_url, "local-1a2b3c4d")
    try:
        sqs = local.client("sqs")
        ids = put(sqs, local.dlq_url)
        code, out = run(capsys, "list", "--endpoint-url", moto_url)
        assert code == 0 and local.dlq_url in out and "read 8 letter(s)" in out
        code, out = run(capsys, "redrive", "--endpoint-url", moto_url, "--reason", REJECTED, "--max", "2")
        assert code == 0 and "moved 2, failed 0" in out
        assert len(messages(sqs, local.queue_url)) == 2
        assert {ids["0"], ids["1"], ids["2"]} - messages(sqs, local.dlq_url).keys() != set()
        assert len(messages(sqs, local.dlq_url)) == 6
        code, out = run(capsys, "purge", "--endpoint-url", moto_url, "--no-reason", "--json")
        assert code == 0 and json.loads(out)["deleted"] == 2 and len(messages(sqs, local.dlq_url)) == 4

        other = serve_stack(moto_url, "local-5e6f7a8b")
        try:
            code, out = run(capsys, "list", "--endpoint-url", moto_url)
            assert code == 2 and "several bridges' queues" in out and local.dlq_url in out
            assert other.dlq_url in out
            code, out = run(capsys, "list", "--endpoint-url", moto_url, "--queue-url", local.queue_url,
                            "--dlq-url", local.dlq_url)  # fmt: skip
            assert code == 0 and "read 4 letter(s)" in out
        finally:
            delete_stack(other)
    finally:
        delete_stack(local)


def test_unreachable_endpoint_and_missing_credentials_are_clear_errors(
    no_aws_configuration: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "list", "--endpoint-url", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach http://127.0.0.1:9" in out and "Traceback" not in out
    code, out = run(capsys, "list", "--stack", "bridge", "--region", "us-east-1")
    assert code == 2 and "no AWS credentials" in out
    code, out = run(capsys, "list", "--stack", "bridge")
    assert code == 2 and "no AWS region" in out
    code, out = run(capsys, "list", "--stack", "bridge", "--profile", "nobody")
    assert code == 2 and "nobody" in out


def test_selection_matches_exactly_or_by_prefix() -> None:
    def make(reason: str | None, code: str | None = None, sent_ms: int = 1000) -> dlq.Letter:
        attributes = {}
        if reason is not None:
            attributes["dlq_reason"] = _string(reason)
        if code is not None:
            attributes["tiktok_code"] = _string(code)
        return dlq.Letter("id", "handle", "{}", attributes, sent_ms)

    assert dlq.Selection()(make(None)) and dlq.Selection()(make(REJECTED))
    assert dlq.Selection(reasons=(REJECTED,))(make(REJECTED))
    assert dlq.Selection(reasons=("rejected",))(make(REJECTED))
    assert not dlq.Selection(reasons=("rejected",))(make(None))
    assert not dlq.Selection(reasons=("code 40002",))(make(REJECTED))  # a prefix, not a substring
    assert dlq.Selection(reasons=("rejected",), no_reason=True)(make(None))
    assert not dlq.Selection(reasons=("rejected",), codes=("40001",))(make(REJECTED, "40002"))
    assert dlq.Selection(codes=("40001", "40002"))(make(REJECTED, "40002"))
    assert not dlq.Selection(since_ms=1001)(make(REJECTED)) and dlq.Selection(until_ms=1001)(make(REJECTED))
    assert not dlq.Selection(until_ms=1000)(make(REJECTED))


def test_redrive_entry_keeps_every_attribute_but_the_reasons() -> None:
    attributes = {
        "event_source": _string("offline"),
        "custom": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        **{name: _string("x") for name in dlq.REASON_ATTRIBUTES},
    }
    entry = dlq.Letter("id", "handle", "body", attributes, 0).redrive_entry("7")
    assert entry == {
        "Id": "7",
        "MessageBody": "body",
        "MessageAttributes": {
            "event_source": _string("offline"),
            "custom": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        },
    }
