"""template.yaml -> the same SQS queues, DynamoDB tables and Secrets Manager secret, created through boto3
(moto locally).

Only what a local run needs is created (queues, tables and secrets); any other resource resolves to a
placeholder, so `!Ref`/`!GetAtt` in function environments still yield strings. Every value is read from the
template.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import boto3
import yaml

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_STACK_NAME = "tiktok-bridge"

QUEUE_ID, DLQ_ID = "EventsQueue", "EventsDeadLetterQueue"
INGEST_ID, SENDER_ID = "IngestFunction", "SenderFunction"

# CloudFormation AWS::SQS::Queue properties that are SQS attributes of the same name.
_QUEUE_ATTRIBUTES = frozenset(
    {
        "ContentBasedDeduplication",
        "DeduplicationScope",
        "DelaySeconds",
        "FifoQueue",
        "FifoThroughputLimit",
        "KmsDataKeyReusePeriodSeconds",
        "KmsMasterKeyId",
        "MaximumMessageSize",
        "MessageRetentionPeriod",
        "ReceiveMessageWaitTimeSeconds",
        "RedriveAllowPolicy",
        "RedrivePolicy",
        "SqsManagedSseEnabled",
        "VisibilityTimeout",
    }
)
# AWS::DynamoDB::Table properties a local table supports.
_TABLE_PROPERTIES = frozenset(
    {
        "AttributeDefinitions",
        "BillingMode",
        "KeySchema",
        "SSESpecification",
        "TableName",
        "Tags",
        "TimeToLiveSpecification",
    }
)
_NO_VALUE = object()  # AWS::NoValue: the enclosing key or list item disappears


class TemplateError(ValueError):
    """The template cannot be read or uses something this local translation does not support."""


class _CfnLoader(yaml.SafeLoader):
    """YAML loader turning CloudFormation short tags (`!Ref`, `!GetAtt`, `!Sub`...) into their long form."""


def _short_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    name = suffix if suffix in {"Ref", "Condition"} else f"Fn::{suffix}"
    return {name: value}


_CfnLoader.add_multi_constructor("!", _short_tag)


def load_template(path: str | Path = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """Parse a CloudFormation/SAM template (YAML or JSON) into plain dicts with long-form intrinsics."""
    try:
        document = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_CfnLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"cannot read template {path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise TemplateError(f"{path} is not a CloudFormation template (no Resources section)")
    return document


@dataclass(frozen=True)
class FunctionSpec:
    """A Lambda function as the template declares it (Globals merged in)."""

    logical_id: str
    handler_file: Path
    handler_name: str
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]
    routes: tuple[tuple[str, str], ...] = ()  # HttpApi (METHOD, path); empty = no HTTP events


@dataclass(frozen=True)
class Stack:
    """The created resources and the template values that govern how the functions run."""

    queue_url: str
    queue_arn: str
    dlq_url: str
    secrets: dict[str, str]  # each key a template secret declares -> that secret's ARN
    visibility_timeout_s: int
    max_receive_count: int
    sender_batch_size: int
    sender_batching_window_s: int
    sender_report_batch_item_failures: bool
    sender_max_concurrency: int
    ingest: FunctionSpec
    sender: FunctionSpec
    region: str
    endpoint_url: str | None = None
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    session: boto3.session.Session | None = field(default=None, repr=False, compare=False)

    def client(self, service: Literal["sqs", "secretsmanager", "dynamodb"]) -> Any:
        """A boto3 client for `service` where the resources live (moto under mock_aws, or `endpoint_url`)."""
        return (self.session or boto3).client(
            service, region_name=self.region, endpoint_url=self.endpoint_url
        )

    def environment(self) -> dict[str, str]:
        """Both functions' environment variables in one mapping (sender values win on a conflict)."""
        return {**self.ingest.environment, **self.sender.environment}

    def secret_of(self, key: str) -> str:
        """The ARN of the secret that holds `key` (e.g. `access_token`, `webhook_secret`)."""
        try:
            return self.secrets[key]
        except KeyError:
            raise TemplateError(f"no secret of the template holds {key!r}") from None

    def put_secret(self, values: Mapping[str, Any]) -> None:
        """Replace every secret's value with the `values` of the keys it holds (each key goes to the secret
        that declares it) and drop Powertools' cached copies."""
        from aws_lambda_powertools.utilities import parameters

        by_secret: dict[str, dict[str, Any]] = {arn: {} for arn in self.secrets.values()}
        for key, value in values.items():
            by_secret[self.secret_of(key)][key] = value
        secrets_manager = self.client("secretsmanager")
        for arn, held in by_secret.items():
            secrets_manager.put_secret_value(SecretId=arn, SecretString=json.dumps(held))
        parameters.clear_caches()  # type: ignore[no-untyped-call]


def create_stack(
    template: Mapping[str, Any] | str | Path = DEFAULT_TEMPLATE,
    *,
    region: str = "us-east-1",
    endpoint_url: str | None = None,
    parameters: Mapping[str, str] | None = None,
    stack_name: str = DEFAULT_STACK_NAME,
    base_dir: Path | None = None,
    session: boto3.session.Session | None = None,
) -> Stack:
    """Create the template's queues and secret through boto3 and describe the functions that use them.

    `endpoint_url` (and `session`, for credentials) point boto3 at a moto server; leave them None under
    `moto.mock_aws`. `CodeUri`s are relative to `base_dir`: by default the template file's folder, or the
    repository for an already-loaded template.
    """
    if isinstance(template, Mapping):
        document, folder = template, base_dir or DEFAULT_TEMPLATE.parent
    else:
        document, folder = load_template(template), base_dir or Path(template).resolve().parent
    clients = session or boto3
    sqs = clients.client("sqs", region_name=region, endpoint_url=endpoint_url)
    secrets_manager = clients.client("secretsmanager", region_name=region, endpoint_url=endpoint_url)
    dynamodb = clients.client("dynamodb", region_name=region, endpoint_url=endpoint_url)
    builder = _Builder(
        document, folder, region, dict(parameters or {}), stack_name, sqs, secrets_manager, dynamodb
    )
    for logical_id in builder.resources:
        builder.attributes(logical_id)  # creates every queue and secret, dependencies first
    queue = builder.resource_properties(QUEUE_ID, "AWS::SQS::Queue")
    redrive = queue.get("RedrivePolicy") or {}
    ingest, sender = builder.function(INGEST_ID), builder.function(SENDER_ID)
    sqs_event = builder.sqs_event(SENDER_ID, builder.attributes(QUEUE_ID)["Arn"])
    return Stack(
        queue_url=builder.attributes(QUEUE_ID)["Ref"],
        queue_arn=builder.attributes(QUEUE_ID)["Arn"],
        dlq_url=builder.attributes(DLQ_ID)["Ref"],
        secrets={
            key: builder.attributes(logical_id)["Ref"]
            for logical_id, resource in builder.resources.items()
            if resource.get("Type") == "AWS::SecretsManager::Secret"
            for key in _secret_keys(builder.resource_properties(logical_id))
        },
        visibility_timeout_s=int(queue.get("VisibilityTimeout", 30)),
        max_receive_count=int(redrive.get("maxReceiveCount", 0)),
        sender_batch_size=int(sqs_event.get("BatchSize", 10)),
        sender_batching_window_s=int(sqs_event.get("MaximumBatchingWindowInSeconds", 0)),
        sender_report_batch_item_failures="ReportBatchItemFailures"
        in sqs_event.get("FunctionResponseTypes", ()),
        sender_max_concurrency=int((sqs_event.get("ScalingConfig") or {}).get("MaximumConcurrency", 1000)),
        ingest=ingest,
        sender=sender,
        region=region,
        endpoint_url=endpoint_url,
        resources=dict(builder.created),
        session=session,
    )


def delete_stack(stack: Stack) -> None:
    """Delete what `create_stack` made (queues, tables, secrets), e.g. to leave a shared moto server clean."""
    for attributes in stack.resources.values():
        if "QueueUrl" in attributes:
            stack.client("sqs").delete_queue(QueueUrl=attributes["QueueUrl"])
        elif "TableName" in attributes:
            stack.client("dynamodb").delete_table(TableName=attributes["TableName"])
        else:
            stack.client("secretsmanager").delete_secret(
                SecretId=attributes["Arn"], ForceDeleteWithoutRecovery=True
            )


class _Builder:
    """Resolves intrinsics over one template and creates resources on first reference."""

    def __init__(
        self,
        document: Mapping[str, Any],
        base_dir: Path,
        region: str,
        parameters: dict[str, str],
        stack_name: str,
        sqs: SQSClient,
        secrets_manager: SecretsManagerClient,
        dynamodb: DynamoDBClient,
    ) -> None:
        self.document = document
        self.resources: dict[str, Any] = document["Resources"]
        self.base_dir = base_dir
        self.region, self.stack_name = region, stack_name
        self.parameters = self._parameters(parameters)
        self.created: dict[str, dict[str, str]] = {}
        self._creating: set[str] = set()
        self._sqs, self._secrets, self._dynamodb = sqs, secrets_manager, dynamodb
        self._creators: dict[str, Callable[[str, dict[str, Any]], dict[str, str]]] = {
            "AWS::SQS::Queue": self._create_queue,
            "AWS::SecretsManager::Secret": self._create_secret,
            "AWS::DynamoDB::Table": self._create_table,
        }

    def _parameters(self, given: dict[str, str]) -> dict[str, Any]:
        declared: dict[str, Any] = self.document.get("Parameters") or {}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise TemplateError(f"unknown template parameter(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            if name in given:
                values[name] = given[name]
            elif "Default" in spec:
                values[name] = spec["Default"]
            else:
                raise TemplateError(f"template parameter {name} has no Default; pass a value")
            if str(spec.get("Type", "")).startswith("List<") or spec.get("Type") == "CommaDelimitedList":
                values[name] = [item.strip() for item in str(values[name]).split(",")]
        return values

    # --- resources ---

    def _resource(self, logical_id: str) -> Mapping[str, Any]:
        try:
            resource: Mapping[str, Any] = self.resources[logical_id]
        except KeyError:
            raise TemplateError(f"the template has no resource {logical_id}") from None
        return resource

    def resource_properties(self, logical_id: str, expected_type: str | None = None) -> dict[str, Any]:
        resource = self._resource(logical_id)
        if expected_type and resource.get("Type") != expected_type:
            raise TemplateError(f"{logical_id} must be {expected_type}, not {resource.get('Type')}")
        properties = self.value(resource.get("Properties") or {})
        return properties if isinstance(properties, dict) else {}

    def attributes(self, logical_id: str) -> dict[str, str]:
        """`Ref` and `GetAtt` values of a resource, creating it on first use."""
        if logical_id in self.created:
            return self.created[logical_id]
        resource = self._resource(logical_id)
        create = self._creators.get(str(resource.get("Type")))
        if create is None or not self.condition_holds(resource.get("Condition")):
            return _Placeholder(logical_id)
        if logical_id in self._creating:
            raise TemplateError(f"circular reference through {logical_id}")
        self._creating.add(logical_id)
        self.created[logical_id] = create(logical_id, self.resource_properties(logical_id))
        return self.created[logical_id]

    def _physical_name(self, logical_id: str) -> str:
        return f"{self.stack_name}-{logical_id}"

    def _create_queue(self, logical_id: str, properties: dict[str, Any]) -> dict[str, str]:
        unknown = sorted(set(properties) - _QUEUE_ATTRIBUTES - {"QueueName", "Tags"})
        if unknown:
            raise TemplateError(f"{logical_id}: unsupported queue properties {', '.join(unknown)}")
        name = str(properties.get("QueueName") or self._physical_name(logical_id))
        if properties.get("FifoQueue") and not name.endswith(".fifo"):
            name += ".fifo"
        attributes = {
            key: _attribute_text(value) for key, value in properties.items() if key in _QUEUE_ATTRIBUTES
        }
        tags = {str(tag["Key"]): str(tag["Value"]) for tag in properties.get("Tags", [])}
        created = self._sqs.create_queue(QueueName=name, Attributes=attributes, tags=tags)  # type: ignore[arg-type]
        url = created["QueueUrl"]
        described = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        arn = described["Attributes"]["QueueArn"]
        return {"Ref": url, "Arn": arn, "QueueUrl": url, "QueueName": name}

    def _create_table(self, logical_id: str, properties: dict[str, Any]) -> dict[str, str]:
        unknown = sorted(set(properties) - _TABLE_PROPERTIES)
        if unknown:
            raise TemplateError(f"{logical_id}: unsupported table properties {', '.join(unknown)}")
        name = str(properties.get("TableName") or self._physical_name(logical_id))
        sse = properties.get("SSESpecification") or {}
        table = self._dynamodb.create_table(
            TableName=name,
            AttributeDefinitions=properties["AttributeDefinitions"],
            KeySchema=properties["KeySchema"],
            BillingMode=properties.get("BillingMode", "PAY_PER_REQUEST"),
            SSESpecification={"Enabled": bool(sse.get("SSEEnabled", False))},
            Tags=[{"Key": str(tag["Key"]), "Value": str(tag["Value"])} for tag in properties.get("Tags", [])],
        )["TableDescription"]
        ttl = properties.get("TimeToLiveSpecification")
        if ttl:
            self._dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={
                    "AttributeName": ttl["AttributeName"],
                    "Enabled": bool(ttl["Enabled"]),
                },
            )
        return {"Ref": name, "Arn": table["TableArn"], "TableName": name}

    def _create_secret(self, logical_id: str, properties: dict[str, Any]) -> dict[str, str]:
        generate = properties.get("GenerateSecretString")
        if "SecretString" in properties:
            secret_string = str(properties["SecretString"])
        elif isinstance(generate, dict):
            secret_string = _generated_secret(generate)
        else:
            secret_string = _generated_secret({})
        name = str(properties.get("Name") or self._physical_name(logical_id))
        tags = [{"Key": str(tag["Key"]), "Value": str(tag["Value"])} for tag in properties.get("Tags", [])]
        arn = self._secrets.create_secret(
            Name=name,
            Description=str(properties.get("Description", "")),
            SecretString=secret_string,
            Tags=tags,  # type: ignore[arg-type]
        )["ARN"]
        return {"Ref": arn, "Arn": arn, "Id": arn, "Name": name}

    # --- functions ---

    def function(self, logical_id: str) -> FunctionSpec:
        properties = self._function_properties(logical_id)
        code_uri, handler = properties.get("CodeUri"), str(properties.get("Handler", ""))
        module, _, name = handler.rpartition(".")
        if not isinstance(code_uri, str) or not module or not name:
            raise TemplateError(f"{logical_id} needs a local CodeUri and a Handler like module.function")
        variables = (properties.get("Environment") or {}).get("Variables") or {}
        routes = tuple(
            (
                str(event_properties.get("Method", "ANY")).upper(),
                str(event_properties.get("Path", "$default")),
            )
            for event_properties in self._events(properties, "HttpApi")
        )
        return FunctionSpec(
            logical_id=logical_id,
            handler_file=(self.base_dir / code_uri / (module.replace(".", "/") + ".py")).resolve(),
            handler_name=name,
            timeout_s=int(properties.get("Timeout", 3)),
            memory_mb=int(properties.get("MemorySize", 128)),
            environment={str(key): _attribute_text(value) for key, value in variables.items()},
            routes=routes,
        )

    def sqs_event(self, logical_id: str, queue_arn: str) -> dict[str, Any]:
        """The function's SQS event source properties for `queue_arn` (SAM `Events: {Type: SQS}`)."""
        for event_properties in self._events(self._function_properties(logical_id), "SQS"):
            if event_properties.get("Queue") == queue_arn:
                return event_properties
        raise TemplateError(f"{logical_id} has no SQS event reading {queue_arn}")

    @staticmethod
    def _events(properties: Mapping[str, Any], event_type: str) -> Iterator[dict[str, Any]]:
        for event in (properties.get("Events") or {}).values():
            if isinstance(event, dict) and event.get("Type") == event_type:
                yield event.get("Properties") or {}

    def _function_properties(self, logical_id: str) -> dict[str, Any]:
        resource = self._resource(logical_id)
        if resource.get("Type") != "AWS::Serverless::Function":
            raise TemplateError(f"{logical_id} must be AWS::Serverless::Function")
        defaults = self.value((self.document.get("Globals") or {}).get("Function") or {})
        properties = self.resource_properties(logical_id)
        merged = {**defaults, **properties}
        merged["Environment"] = {
            "Variables": {
                **(defaults.get("Environment") or {}).get("Variables", {}),
                **(properties.get("Environment") or {}).get("Variables", {}),
            }
        }
        return merged

    # --- intrinsics ---

    def value(self, node: Any) -> Any:
        """`node` with every intrinsic function resolved (AWS::NoValue entries removed)."""
        if isinstance(node, list):
            return [item for item in (self.value(i) for i in node) if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, argument), *_ = node.items()
            if key == "Ref" or key.startswith("Fn::"):
                return self._intrinsic(key, argument)
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not _NO_VALUE}

    def _intrinsic(self, name: str, argument: Any) -> Any:
        if name == "Ref":
            return self._ref(str(argument))
        if name == "Fn::GetAtt":
            logical_id, attribute = argument.split(".", 1) if isinstance(argument, str) else argument
            return self.attributes(str(logical_id))[str(self.value(attribute))]
        if name == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            return self._sub(text, self.value(variables))
        if name == "Fn::If":
            condition, when_true, when_false = argument
            return self.value(when_true if self.condition_holds(condition) else when_false)
        args = self.value(argument)
        if name == "Fn::Join":
            return str(args[0]).join(_attribute_text(item) for item in args[1])
        if name == "Fn::Select":
            return args[1][int(args[0])]
        if name == "Fn::Split":
            return str(args[1]).split(str(args[0]))
        if name == "Fn::FindInMap":
            return self.document["Mappings"][args[0]][args[1]][args[2]]
        if name in {"Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or"}:
            return self._condition_function(name, args)
        raise TemplateError(f"unsupported intrinsic function {name}")

    def _ref(self, name: str) -> Any:
        stack_id = f"arn:aws:cloudformation:{self.region}:{LOCAL_ACCOUNT_ID}:stack/{self.stack_name}/local"
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": LOCAL_ACCOUNT_ID,
            "AWS::StackName": self.stack_name,
            "AWS::StackId": stack_id,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": _NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        return self.attributes(name)["Ref"]

    def _sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            expression = match.group(1)
            if expression.startswith("!"):
                return "${" + expression[1:] + "}"
            if expression in variables:
                return _attribute_text(variables[expression])
            if "." in expression and not expression.startswith("AWS::"):
                logical_id, attribute = expression.split(".", 1)
                return self.attributes(logical_id)[attribute]
            return _attribute_text(self._ref(expression))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def condition_holds(self, condition: Any) -> bool:
        if condition is None:
            return True
        if isinstance(condition, str):
            conditions = self.document.get("Conditions") or {}
            if condition not in conditions:
                raise TemplateError(f"unknown condition {condition}")
            return bool(self.value(conditions[condition]))
        return bool(self.value(condition))

    def _condition_function(self, name: str, args: list[Any]) -> bool:
        if name == "Fn::Equals":
            return _attribute_text(args[0]) == _attribute_text(args[1])
        values = [
            self.condition_holds(item["Condition"]) if _is_condition(item) else bool(item) for item in args
        ]
        if name == "Fn::Not":
            return not values[0]
        return all(values) if name == "Fn::And" else any(values)


class _Placeholder(dict[str, str]):
    """Attributes of a resource that is not created locally: `Ref` is the logical id, `GetAtt` `Id.Attr`."""

    def __init__(self, logical_id: str) -> None:
        super().__init__()
        self.logical_id = logical_id

    def __missing__(self, attribute: str) -> str:
        return self.logical_id if attribute == "Ref" else f"{self.logical_id}.{attribute}"


def _is_condition(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == {"Condition"}


def _attribute_text(value: Any) -> str:
    """A template value as the string AWS stores (booleans lower-case, objects as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _secret_keys(properties: Mapping[str, Any]) -> list[str]:
    """The keys a secret declares: its `SecretString`'s, or its generated template's and GenerateStringKey."""
    generate = properties.get("GenerateSecretString") or {}
    text = properties.get("SecretString", generate.get("SecretStringTemplate") or "{}")
    try:
        document = json.loads(str(text))
    except ValueError:
        raise TemplateError("a secret's SecretString (or SecretStringTemplate) is not JSON") from None
    keys = list(document) if isinstance(document, dict) else []
    return [*keys, str(generate["GenerateStringKey"])] if generate.get("GenerateStringKey") else keys


def _generated_secret(generate: Mapping[str, Any]) -> str:
    """What `GenerateSecretString` makes: the template JSON with a random value under `GenerateStringKey`."""
    alphabet = string.ascii_letters + string.digits  # satisfies every Exclude* option
    value = "".join(secrets.choice(alphabet) for _ in range(int(generate.get("PasswordLength", 32))))
    template_text, key = generate.get("SecretStringTemplate"), generate.get("GenerateStringKey")
    if not template_text or not key:
        return value
    try:
        document = json.loads(str(template_text))
    except ValueError:
        raise TemplateError("GenerateSecretString.SecretStringTemplate is not JSON") from None
    return json.dumps({**document, str(key): value})
