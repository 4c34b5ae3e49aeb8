"""`tiktok-bridge dlq list|redrive|purge`: look at the dead-letter queue by reason, move chosen letters back
to the events queue, or delete them.

Works against a deployed stack (`--stack NAME`: the queue URLs from its outputs, with the caller's AWS
credentials), against `tiktok-bridge serve` (`--endpoint-url` of its moto: the queues are found by name), or
on explicit `--queue-url` and `--dlq-url`.

Letters are read by receiving them with a visibility timeout (never more than `--scan-limit` of them), so
nothing is lost if the command stops half way: what it did not delete reappears in the DLQ, at once when it
ends normally, after the timeout otherwise. A redrive sends a letter to the events queue first and deletes it
from the DLQ only once SQS accepted it (a crash in between leaves it on both: delivery is at least once, and
TikTok drops duplicates by `event_id`).

Output names reasons, TikTok codes and messages, attempts, times and message ids; never a body or any other
attribute value.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ProfileNotFound,
)
from tiktok_bridge import queue
from tiktok_bridge.model import chunked

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

QUEUE_OUTPUT, DLQ_OUTPUT = "EventsQueueUrl", "EventsDeadLetterQueueUrl"
QUEUE_ID, DLQ_ID = "EventsQueue", "EventsDeadLetterQueue"
# What the sender adds to a dead letter (sender._dead_letter); a redrive takes them off again.
REASON_ATTRIBUTES = ("dlq_reason", "tiktok_code", "tiktok_message", "attempts")
NO_REASON = "(no reason: moved by SQS after maxReceiveCount)"
NO_CODE = "-"
LOCAL_REGION = "us-east-1"  # `serve`'s
LOCAL_CREDENTIALS = ("local", "local")  # access key id, secret

RECEIVE_MAX = 10  # ReceiveMessage, SendMessageBatch, DeleteMessageBatch, ChangeMessageVisibilityBatch
RECEIVE_WAIT_S = 1  # long polling asks every SQS server, so an empty answer means the DLQ has no more
SEND_ATTEMPTS = 3
BACKOFF_S = 0.1
DEFAULT_VISIBILITY_S = 300
DEFAULT_SCAN_LIMIT = 10_000
DEFAULT_IDS_SHOWN = 3
MESSAGE_SHOWN_CHARS = 160
_QUEUE_NAME = re.compile(r"^(?P<prefix>.*?)(?P<kind>EventsDeadLetterQueue|EventsQueue)(-[A-Za-z0-9]+)?$")
_RELATIVE_TIME = re.compile(r"^(\d+)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
NO_CREDENTIALS = "no AWS credentials: configure a profile (--profile, AWS_PROFILE) or AWS_ACCESS_KEY_ID/..."
NO_REGION = "no AWS region: pass --region or set AWS_REGION"
# A few quick retries: an unreachable endpoint is reported in seconds, not after botocore's legacy backoff.
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=30)


class TargetError(Exception):
    """The queues cannot be found or reached; the message says why and what to pass instead."""


# --- what a letter is and which letters are chosen ----------------------------------------------------------


@dataclass
class Letter:
    """A received DLQ message. `body` and `attributes` are only ever sent back to SQS, never printed."""

    message_id: str
    receipt_handle: str
    body: str
    attributes: dict[str, Any]  # SQS message attributes, as ReceiveMessage returns them
    sent_ms: int  # SentTimestamp: when it entered the DLQ (sender) or the events queue (SQS's redrive)

    def _text(self, name: str) -> str | None:
        value = self.attributes.get(name)
        text = value.get("StringValue") if isinstance(value, Mapping) else None
        return text if isinstance(text, str) else None

    @property
    def reason(self) -> str | None:
        return self._text("dlq_reason")

    @property
    def code(self) -> str | None:
        return self._text("tiktok_code")

    @property
    def tiktok_message(self) -> str | None:
        return self._text("tiktok_message")

    @property
    def attempts(self) -> str | None:
        return self._text("attempts")

    def redrive_entry(self, entry_id: str) -> dict[str, Any]:
        """A SendMessageBatch entry: the body unchanged, every attribute but the reason ones."""
        attributes = {}
        for name, value in self.attributes.items():
            if name in REASON_ATTRIBUTES or not isinstance(value, Mapping):
                continue
            attributes[name] = {
                key: value[key] for key in ("DataType", "StringValue", "BinaryValue") if key in value
            }
        return {"Id": entry_id, "MessageBody": self.body, "MessageAttributes": attributes}


def parse_time(text: str) -> int:
    """Epoch milliseconds of an ISO 8601 time (UTC unless it names a zone) or of `N[smhd]` ago."""
    relative = _RELATIVE_TIME.match(text.strip())
    if relative:
        return int((time.time() - int(relative[1]) * _UNIT_S[relative[2]]) * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601 such as 2025-06-01T12:00, UTC by default, or 90m, 6h, 2d ago)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Selection:
    """Which letters a command acts on. Nothing given selects every letter.

    A letter is chosen when its `dlq_reason` equals or starts with one of `reasons` (or it has none and
    `no_reason` is set), its `tiktok_code` is one of `codes`, and it was sent within [`since_ms`,
    `until_ms`); a criterion left empty does not filter.
    """

    reasons: tuple[str, ...] = ()
    no_reason: bool = False
    codes: tuple[str, ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def filters_by_letter(self) -> bool:
        """Whether it names a reason or a code (what `purge` demands unless `--all`)."""
        return bool(self.reasons or self.no_reason or self.codes)

    def __call__(self, letter: Letter) -> bool:
        if self.reasons or self.no_reason:
            reason = letter.reason
            by_reason = reason is None and self.no_reason
            by_reason |= reason is not None and any(reason.startswith(chosen) for chosen in self.reasons)
            if not by_reason:
                return False
        if self.codes and letter.code not in self.codes:
            return False
        if self.since_ms is not None and letter.sent_ms < self.since_ms:
            return False
        return self.until_ms is None or letter.sent_ms < self.until_ms

    def describe(self) -> str:
        parts = [f"reason {reason!r}*" for reason in self.reasons]
        parts += ["no reason"] if self.no_reason else []
        parts += [f"code {code}" for code in self.codes]
        parts += [f"sent since {_iso(self.since_ms)}"] if self.since_ms is not None else []
        parts += [f"sent before {_iso(self.until_ms)}"] if self.until_ms is not None else []
        return ", ".join(parts) or "every letter"


# --- reading and changing the DLQ ---------------------------------------------------------------------------


@dataclass
class Scan:
    """The letters a scan holds invisible: those selected (at most `max_selected`) and the others."""

    selected: list[Letter] = field(default_factory=list)
    others: list[Letter] = field(default_factory=list)
    stopped: str | None = None  # "--scan-limit" or "--max" when it stopped there: more may be in the DLQ

    @property
    def complete(self) -> bool:
        return self.stopped is None

    @property
    def read(self) -> int:
        return len(self.selected) + len(self.others)


@dataclass
class Outcome:
    """What a redrive or purge did; letters in `failed` are still in the DLQ (visible again)."""

    done: list[Letter] = field(default_factory=list)
    failed: list[Letter] = field(default_factory=list)
    undeleted: list[Letter] = field(default_factory=list)  # redrive: sent, but still in the DLQ too


class DeadLetterQueue:
    """The DLQ through one SQS client: scan (receive and hold), release, delete, redrive, purge."""

    def __init__(
        self,
        sqs: SQSClient,
        url: str,
        *,
        visibility_timeout_s: int = DEFAULT_VISIBILITY_S,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
        wait_s: int | None = None,
    ) -> None:
        self.sqs, self.url = sqs, url
        self.visibility_timeout_s, self.scan_limit = visibility_timeout_s, scan_limit
        self.wait_s = RECEIVE_WAIT_S if wait_s is None else wait_s

    def approximate_count(self) -> int:
        """SQS's count of the DLQ's messages, visible or not."""
        found = self.sqs.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        visible = int(found.get("ApproximateNumberOfMessages", "0"))
        return visible + int(found.get("ApproximateNumberOfMessagesNotVisible", "0"))

    def scan(self, selection: Callable[[Letter], bool], max_selected: int | None = None) -> Scan:
        """Receive letters (hidden for the visibility timeout) until no new one comes, the scan limit is
        reached or `max_selected` are chosen. The caller must `release` what it does not delete."""
        scan = Scan()
        seen: dict[str, Letter] = {}
        while True:
            if max_selected is not None and len(scan.selected) >= max_selected:
                scan.stopped = "--max"
                break
            if len(seen) >= self.scan_limit:
                scan.stopped = "--scan-limit"
                break
            response = self.sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=min(RECEIVE_MAX, self.scan_limit - len(seen)),
                VisibilityTimeout=self.visibility_timeout_s,
                WaitTimeSeconds=self.wait_s,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["SentTimestamp"],
            )
            new = 0
            for message in response.get("Messages", []):
                known = seen.get(message["MessageId"])
                if known is not None:  # it outlived the visibility timeout: only the newest handle deletes
                    known.receipt_handle = message["ReceiptHandle"]
                    continue
                new += 1
                letter = Letter(
                    message_id=message["MessageId"],
                    receipt_handle=message["ReceiptHandle"],
                    body=message.get("Body", ""),
                    attributes=dict(message.get("MessageAttributes") or {}),
                    sent_ms=int((message.get("Attributes") or {}).get("SentTimestamp", 0)),
                )
                seen[letter.message_id] = letter
                chosen = selection(letter) and (max_selected is None or len(scan.selected) < max_selected)
                (scan.selected if chosen else scan.others).append(letter)
            if not new:
                break
        return scan

    def release(self, letters: Sequence[Letter]) -> None:
        """Make `letters` visible again now (best effort: otherwise they reappear after the timeout)."""
        for chunk in chunked(letters, RECEIVE_MAX):
            entries = [
                {"Id": str(index), "ReceiptHandle": letter.receipt_handle, "VisibilityTimeout": 0}
                for index, letter in enumerate(chunk)
            ]
            with suppress(BotoCoreError, ClientError):
                self.sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)  # type: ignore[arg-type]

    def delete(self, letters: Sequence[Letter]) -> list[Letter]:
        """Delete `letters` from the DLQ; return those that could not be (after SEND_ATTEMPTS tries)."""
        pending = list(letters)
        for attempt in range(SEND_ATTEMPTS):
            if not pending:
                break
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            failed: list[Letter] = []
            for chunk in chunked(pending, RECEIVE_MAX):
                entries = [
                    {"Id": str(index), "ReceiptHandle": letter.receipt_handle}
                    for index, letter in enumerate(chunk)
                ]
                try:
                    response = self.sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)  # type: ignore[arg-type]
                except (BotoCoreError, ClientError):
                    failed += chunk
                    continue
                failed += [chunk[int(failure["Id"])] for failure in response.get("Failed", [])]
            pending = failed
        return pending

    def send(self, queue_url: str, letters: Sequence[Letter]) -> list[Letter]:
        """Send `letters` to `queue_url` without their reason attributes; return those SQS did not accept
        (after SEND_ATTEMPTS tries)."""
        by_id = {str(index): letter for index, letter in enumerate(letters)}
        pending = [letter.redrive_entry(entry_id) for entry_id, letter in by_id.items()]
        for attempt in range(SEND_ATTEMPTS):
            if not pending:
                break
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            pending = [
                entry
                for batch in queue.batches(pending)
                for entry in queue.send_batch(self.sqs, queue_url, batch)
            ]
        return [by_id[entry["Id"]] for entry in pending]

    def redrive(self, queue_url: str, letters: Sequence[Letter]) -> Outcome:
        """Move `letters` to `queue_url`: send, then delete from the DLQ what was sent; what was not sent is
        released back into the DLQ."""
        unsent = self.send(queue_url, letters)
        unsent_ids = {letter.message_id for letter in unsent}
        sent = [letter for letter in letters if letter.message_id not in unsent_ids]
        undeleted = self.delete(sent)
        self.release([*unsent, *undeleted])
        return Outcome(done=sent, failed=unsent, undeleted=undeleted)

    def purge(self, letters: Sequence[Letter]) -> Outcome:
        failed = self.delete(letters)
        self.release(failed)
        failed_ids = {letter.message_id for letter in failed}
        return Outcome(
            done=[letter for letter in letters if letter.message_id not in failed_ids], failed=failed
        )


# --- summaries ------------------------------------------------------------------------------------------


@dataclass
class Group:
    """The letters of one (reason, code): counts, times, TikTok's messages and a few ids."""

    reason: str
    code: str
    count: int
    first_sent_ms: int
    last_sent_ms: int
    tiktok_messages: Counter[str]
    attempts: Counter[str]
    message_ids: list[str]

    def as_json(self, ids_shown: int) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "code": self.code,
            "count": self.count,
            "first_sent": _iso(self.first_sent_ms),
            "last_sent": _iso(self.last_sent_ms),
            "tiktok_messages": dict(self.tiktok_messages.most_common()),
            "attempts": dict(sorted(self.attempts.items())),
            "message_ids": _shown(self.message_ids, ids_shown),
        }


def summarize(letters: Iterable[Letter]) -> list[Group]:
    """Groups by (dlq_reason, tiktok_code), largest first."""
    groups: dict[tuple[str, str], Group] = {}
    for letter in letters:
        key = (letter.reason or NO_REASON, letter.code or NO_CODE)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(*key, 0, letter.sent_ms, letter.sent_ms, Counter(), Counter(), [])
        group.count += 1
        group.first_sent_ms = min(group.first_sent_ms, letter.sent_ms)
        group.last_sent_ms = max(group.last_sent_ms, letter.sent_ms)
        if letter.tiktok_message is not None:
            group.tiktok_messages[letter.tiktok_message[:MESSAGE_SHOWN_CHARS]] += 1
        if letter.attempts is not None:
            group.attempts[letter.attempts] += 1
        group.message_ids.append(letter.message_id)
    return sorted(groups.values(), key=lambda group: (-group.count, group.reason, group.code))


def _iso(epoch_ms: int | None) -> str:
    if not epoch_ms:
        return "?"
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _shown(ids: Sequence[str], ids_shown: int) -> list[str]:
    return list(ids if ids_shown <= 0 else ids[:ids_shown])


def print_groups(groups: Sequence[Group], ids_shown: int) -> None:
    if not groups:
        print("  (none)")
        return
    print(f"  {'count':>6}  {'code':<8}  {'first sent':<20}  {'last sent':<20}  reason")
    for group in groups:
        times = f"{_iso(group.first_sent_ms):<20}  {_iso(group.last_sent_ms):<20}"
        print(f"  {group.count:>6}  {group.code:<8}  {times}  {group.reason}")
        for message, count in group.tiktok_messages.most_common(3):
            print(f"  {'':>6}  tiktok: {json.dumps(message)} ({count})")
        if group.attempts:
            attempts = ", ".join(f"{n} x{count}" for n, count in sorted(group.attempts.items()))
            print(f"  {'':>6}  attempts: {attempts}")
        shown = _shown(group.message_ids, ids_shown)
        more = (
            f" (+{len(group.message_ids) - len(shown)} more)" if len(shown) < len(group.message_ids) else ""
        )
        print(f"  {'':>6}  ids: {' '.join(shown)}{more}")


# --- where the queues are -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    sqs: SQSClient
    queue_url: str
    dlq_url: str


def _session(args: argparse.Namespace) -> boto3.session.Session:
    """The caller's AWS session; against an endpoint (`serve`'s moto) a region and credentials by default."""
    try:
        session = boto3.session.Session(profile_name=args.profile, region_name=args.region)
    except ProfileNotFound as exc:
        raise TargetError(str(exc)) from None
    region = session.region_name or (LOCAL_REGION if args.endpoint_url else None)
    if not region:
        raise TargetError(NO_REGION)
    if session.get_credentials() is None:
        if not args.endpoint_url:
            raise TargetError(NO_CREDENTIALS)
        return boto3.session.Session(*LOCAL_CREDENTIALS, region_name=region)  # moto takes any
    if region != session.region_name:
        return boto3.session.Session(profile_name=args.profile, region_name=region)
    return session


def stack_outputs(cloudformation: Any, stack_name: str) -> dict[str, str]:
    """The outputs of a CloudFormation stack; TargetError when there is no such stack."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ValidationError":
            raise TargetError(
                f"no CloudFormation stack {stack_name!r} in {cloudformation.meta.region_name}"
            ) from None
        raise
    outputs = stacks[0].get("Outputs") or [] if stacks else []
    return {output["OutputKey"]: output["OutputValue"] for output in outputs if "OutputKey" in output}


def discover_queues(sqs: Any) -> tuple[str, str]:
    """The events queue and DLQ among all queues at an endpoint, by name (`<prefix>EventsQueue`,
    `<prefix>EventsDeadLetterQueue`, perhaps with CloudFormation's `-SUFFIX`); exactly one pair."""
    urls: list[str] = []
    kwargs: dict[str, Any] = {"MaxResults": 1000}
    while True:
        response = sqs.list_queues(**kwargs)
        urls += response.get("QueueUrls", [])
        if not response.get("NextToken"):
            break
        kwargs["NextToken"] = response["NextToken"]
    pairs: dict[str, dict[str, str]] = {}
    for url in urls:
        match = _QUEUE_NAME.match(url.rstrip("/").rsplit("/", 1)[-1])
        if match:
            pairs.setdefault(match["prefix"], {})[match["kind"]] = url
    complete = {prefix: kinds for prefix, kinds in pairs.items() if len(kinds) == 2}
    if not complete:
        raise TargetError(
            f"no {QUEUE_ID} and {DLQ_ID} queues at {sqs.meta.endpoint_url} (is `tiktok-bridge serve` running "
            "there?); pass --queue-url and --dlq-url"
        )
    if len(complete) > 1:
        found = "; ".join(f"{kinds[QUEUE_ID]} + {kinds[DLQ_ID]}" for kinds in complete.values())
        raise TargetError(
            f"several bridges' queues at {sqs.meta.endpoint_url}: {found}; pass --queue-url and --dlq-url"
        )
    [kinds] = complete.values()
    return kinds[QUEUE_ID], kinds[DLQ_ID]


def resolve_target(args: argparse.Namespace) -> Target:
    """The SQS client and queue URLs `args` point at; TargetError (never a traceback) when they cannot be
    found or reached."""
    if bool(args.queue_url) != bool(args.dlq_url):
        raise TargetError("give both --queue-url and --dlq-url")
    if not (args.stack or args.endpoint_url or args.queue_url):
        raise TargetError(
            "say where the queues are: --stack NAME, --endpoint-url URL (serve), or --queue-url/--dlq-url"
        )
    where = args.endpoint_url or "AWS"
    try:
        session = _session(args)
        sqs = session.client("sqs", endpoint_url=args.endpoint_url, config=CLIENT_CONFIG)
        if args.queue_url:
            queue_url, dlq_url = args.queue_url, args.dlq_url
        elif args.stack:
            cloudformation = session.client(
                "cloudformation", endpoint_url=args.endpoint_url, config=CLIENT_CONFIG
            )
            outputs = stack_outputs(cloudformation, args.stack)
            missing = [name for name in (QUEUE_OUTPUT, DLQ_OUTPUT) if not outputs.get(name)]
            if missing:
                raise TargetError(
                    f"stack {args.stack!r} has no output {' or '.join(missing)} "
                    "(is it a tiktok-bridge stack?)"
                )
            queue_url, dlq_url = outputs[QUEUE_OUTPUT], outputs[DLQ_OUTPUT]
        else:
            queue_url, dlq_url = discover_queues(sqs)
        sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])  # reachable, and allowed
    except NoCredentialsError:
        raise TargetError(NO_CREDENTIALS) from None
    except NoRegionError:
        raise TargetError(NO_REGION) from None
    except EndpointConnectionError as exc:
        raise TargetError(f"cannot reach {where}: {exc}") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise TargetError(f"{where}: {error.get('Code', 'error')}: {error.get('Message', exc)}") from None
    except BotoCoreError as exc:
        raise TargetError(f"{where}: {type(exc).__name__}: {exc}") from None
    return Target(sqs, queue_url, dlq_url)


# --- the command line ---------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="the dead-letter queue: counts by reason, redrive or purge chosen letters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="dlq_command", required=True, metavar="{list,redrive,purge}")
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where the queues are (one of)")
    where.add_argument(
        "--stack",
        metavar="NAME",
        help="deployed stack: the queues from its outputs (CloudFormation at --endpoint-url if given)",
    )
    where.add_argument(
        "--endpoint-url", metavar="URL", help="SQS endpoint, e.g. `tiktok-bridge serve`'s moto URL"
    )
    where.add_argument("--queue-url", metavar="URL", help="the events queue URL (with --dlq-url)")
    where.add_argument("--dlq-url", metavar="URL", help="the dead-letter queue URL (with --queue-url)")
    where.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    where.add_argument("--profile", help="AWS profile (default: the AWS configuration's)")
    choose = common.add_argument_group("which letters (all given must hold; none = every letter)")
    choose.add_argument(
        "--reason",
        action="append",
        metavar="R",
        default=[],
        help="dlq_reason equal to or starting with this, e.g. 'rejected by TikTok' (repeatable)",
    )
    choose.add_argument("--no-reason", action="store_true", help=f"letters without a dlq_reason: {NO_REASON}")
    choose.add_argument(
        "--code", action="append", default=[], metavar="CODE", help="tiktok_code equal to this (repeatable)"
    )
    choose.add_argument(
        "--since",
        type=parse_time,
        metavar="TIME",
        help="sent at or after TIME: ISO 8601 (UTC unless a zone is given) or N[smhd] ago, e.g. 6h",
    )
    choose.add_argument("--until", type=parse_time, metavar="TIME", help="sent before TIME")
    tuning = common.add_argument_group("reading")
    tuning.add_argument(
        "--scan-limit",
        type=int,
        default=DEFAULT_SCAN_LIMIT,
        help=f"read at most this many letters in one run (default {DEFAULT_SCAN_LIMIT})",
    )
    tuning.add_argument(
        "--visibility-timeout",
        type=int,
        default=DEFAULT_VISIBILITY_S,
        help="seconds the letters read stay hidden if the command is killed (default %(default)s)",
    )
    tuning.add_argument(
        "--ids", type=int, default=DEFAULT_IDS_SHOWN, help="message ids shown per group (0 = all; default 3)"
    )
    tuning.add_argument("--json", action="store_true", help="print one JSON document")

    listing = commands.add_parser(
        "list",
        parents=[common],
        help="count letters by reason and TikTok code (ids, never contents)",
        description="Count the letters by (dlq_reason, tiktok_code), with first/last SentTimestamp, TikTok's "
        "messages, attempts and a few message ids. The letters stay in the DLQ.",
    )
    listing.set_defaults(run=list_command)
    redrive = commands.add_parser(
        "redrive",
        parents=[common],
        help="move the chosen letters back to the events queue",
        description="Send the chosen letters to the events queue (body and routing attributes unchanged, "
        "without the dlq_reason, tiktok_code, tiktok_message and attempts attributes), then delete them "
        "from the DLQ. A letter SQS does not accept stays in the DLQ.",
    )
    redrive.add_argument("--max", type=int, help="move at most this many letters")
    redrive.add_argument("--dry-run", action="store_true", help="show what would move, move nothing")
    redrive.set_defaults(run=redrive_command)
    purge = commands.add_parser(
        "purge",
        parents=[common],
        help="delete the chosen letters (--reason/--code/--no-reason, or --all --yes)",
        description="Delete the chosen letters from the DLQ for good. Needs --reason, --code or --no-reason; "
        "--all (every letter, still narrowed by --since/--until) needs --yes.",
    )
    purge.add_argument("--all", action="store_true", help="every letter (with --yes)")
    purge.add_argument("--yes", action="store_true", help="confirm --all")
    purge.add_argument("--max", type=int, help="delete at most this many letters")
    purge.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")
    purge.set_defaults(run=purge_command)


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(
        reasons=tuple(args.reason),
        no_reason=args.no_reason,
        codes=tuple(args.code),
        since_ms=args.since,
        until_ms=args.until,
    )


def _fail(command: str, message: str) -> int:
    print(f"dlq {command}: {message}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace, act: Callable[[Target, DeadLetterQueue, Selection], int]) -> int:
    """Resolve the target, then `act`; argument and target problems are exit 2, AWS failing midway 1."""
    command = args.dlq_command
    if args.scan_limit < 1 or args.visibility_timeout < 0 or args.visibility_timeout > 43200:
        return _fail(command, "--scan-limit must be ≥ 1 and --visibility-timeout within 0..43200")
    if getattr(args, "max", None) is not None and args.max < 1:
        return _fail(command, "--max must be ≥ 1")
    try:
        target = resolve_target(args)
    except TargetError as exc:
        return _fail(command, str(exc))
    dlq = DeadLetterQueue(
        target.sqs, target.dlq_url, visibility_timeout_s=args.visibility_timeout, scan_limit=args.scan_limit
    )
    try:
        return act(target, dlq, _selection(args))
    except (BotoCoreError, ClientError) as exc:
        print(
            f"dlq {command}: SQS failed: {type(exc).__name__}: {exc} (letters not deleted reappear in the "
            f"DLQ after {args.visibility_timeout} s)",
            file=sys.stderr,
        )
        return 1


def _header(target: Target, scan: Scan, selection: Selection, approximate: int) -> str:
    more = "" if scan.complete else f" (stopped at {scan.stopped}: more may be in the DLQ)"
    return (
        f"DLQ {target.dlq_url}\n"
        f"read {scan.read} letter(s) of about {approximate}{more}; "
        f"{len(scan.selected)} match {selection.describe()}"
    )


def list_command(args: argparse.Namespace) -> int:
    def act(target: Target, dlq: DeadLetterQueue, selection: Selection) -> int:
        approximate = dlq.approximate_count()
        scan = Scan()
        try:
            scan = dlq.scan(selection)
        finally:
            dlq.release([*scan.selected, *scan.others])
        groups = summarize(scan.selected)
        if args.json:
            print(json.dumps(_report(target, scan, selection, approximate, groups, args.ids), indent=2))
        else:
            print(_header(target, scan, selection, approximate))
            print_groups(groups, args.ids)
        return 0

    return _run(args, act)


def _report(
    target: Target, scan: Scan, selection: Selection, approximate: int, groups: Sequence[Group], ids: int
) -> dict[str, Any]:
    return {
        "dlq_url": target.dlq_url,
        "queue_url": target.queue_url,
        "selection": selection.describe(),
        "read": scan.read,
        "approximate_count": approximate,
        "complete": scan.complete,
        "selected": len(scan.selected),
        "groups": [group.as_json(ids) for group in groups],
    }


def _change_command(
    args: argparse.Namespace, verb: str, change: Callable[[DeadLetterQueue, str, list[Letter]], Outcome]
) -> int:
    def act(target: Target, dlq: DeadLetterQueue, selection: Selection) -> int:
        approximate = dlq.approximate_count()
        scan = Scan()
        outcome: Outcome | None = None
        try:
            scan = dlq.scan(selection, max_selected=args.max)
            dlq.release(scan.others)
            if not args.dry_run:
                outcome = change(dlq, target.queue_url, scan.selected)
        finally:
            if outcome is None:
                dlq.release([*scan.selected, *scan.others])
        groups = summarize(scan.selected)
        failed = len(outcome.failed) if outcome else 0
        undeleted = len(outcome.undeleted) if outcome else 0
        done = len(outcome.done) if outcome else 0
        if args.json:
            report = _report(target, scan, selection, approximate, groups, args.ids)
            report |= {"dry_run": args.dry_run, verb: done, "failed": failed}
            report |= {"undeleted": undeleted} if verb == "moved" else {}
            print(json.dumps(report, indent=2))
        else:
            print(_header(target, scan, selection, approximate))
            print_groups(groups, args.ids)
            if args.dry_run:
                print(f"dry run: {len(scan.selected)} letter(s) would be {verb}, nothing changed")
            else:
                print(f"{verb} {done}, failed {failed} (still in the DLQ)")
                if undeleted:
                    print(
                        f"{undeleted} of the moved letter(s) could not be deleted from the DLQ: they are on "
                        "both queues (TikTok drops the duplicates by event_id)"
                    )
        return 1 if failed or undeleted else 0

    return _run(args, act)


def redrive_command(args: argparse.Namespace) -> int:
    return _change_command(args, "moved", lambda dlq, queue_url, letters: dlq.redrive(queue_url, letters))


def purge_command(args: argparse.Namespace) -> int:
    selection = _selection(args)
    if args.all and selection.filters_by_letter:
        return _fail("purge", "--all selects every letter; drop --reason/--code/--no-reason or --all")
    if not args.all and not selection.filters_by_letter:
        return _fail(
            "purge", "say which letters: --reason, --code or --no-reason (or --all --yes for every one)"
        )
    if args.all and not args.yes and not args.dry_run:
        return _fail("purge", "--all deletes every letter for good; add --yes to confirm")
    return _change_command(args, "deleted", lambda dlq, _queue_url, letters: dlq.purge(letters))
