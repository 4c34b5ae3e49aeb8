"""Offline template check: expand the SAM transform with aws-sam-translator, then run cfn-lint on the result,
with AWS's Serverless Rules (the cfn-lint-serverless plugin) on top of cfn-lint's own.

cfn-lint >= 1.54 (and so `sam validate --lint`) no longer expands `AWS::Serverless-2016-10-31`, so it
misses errors inside SAM resources: a bad runtime, SQS event properties, a queue visibility timeout below the
function timeout. Linting the CloudFormation that SAM would deploy catches them. The Serverless Rules add the
operational checks: log retention, API access logs and throttling, tracing, dead-letter paths. A finding that
does not apply is skipped in template.yaml with a reason: `Metadata: cfn-lint: config: ignore_checks` on the
resource; on a SAM resource it also covers what SAM generates from it (role, event source mappings, stage).
No network, no credentials.

Usage: `python tools/lint_template.py [template.yaml ...]`; exits 1 and prints each problem if any is found.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import boto3
from cfnlint.api import ManualArgs, lint
from cfnlint.decode.decode import decode_str
from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

REGION = "us-east-1"
# The translator needs S3 locations for code; any URI will do for linting.
PLACEHOLDER_URI = "s3://tiktok-bridge-lint/artifact.zip"
_LOCAL_URI_KEYS = ("CodeUri", "ContentUri")
# AWS's Serverless Rules for cfn-lint (package cfn-lint-serverless): ES* errors and WS* warnings.
SERVERLESS_RULES = "cfn_lint_serverless.rules"


class TemplateError(ValueError):
    """The template cannot be parsed or transformed; the message lists every reason."""


def transform(text: str, region: str = REGION) -> dict[str, Any]:
    """The CloudFormation template SAM would deploy from template text (parameters at their defaults)."""
    decoded, errors = decode_str(text)
    if errors or decoded is None:
        raise TemplateError("; ".join(match.message for match in errors) or "the template is empty")
    template: dict[str, Any] = json.loads(json.dumps(decoded))  # plain dicts, short-form intrinsics expanded
    for resource in template.get("Resources", {}).values():
        properties = resource.get("Properties", {}) if isinstance(resource, dict) else {}
        for key in _LOCAL_URI_KEYS:
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://"):
                properties[key] = PLACEHOLDER_URI
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    try:
        result: dict[str, Any] = translator.translate(template, {}, get_managed_policy_map=dict)
    except InvalidDocumentException as exc:
        raise TemplateError("; ".join(cause.message for cause in exc.causes)) from None
    finally:
        translator.metrics.publish()  # its metrics go nowhere; publishing keeps it from warning at exit
    return result


def _ignored_checks(resource: Any) -> list[str]:
    """The rule ids a resource's `Metadata: cfn-lint: config: ignore_checks` skips."""
    metadata = resource.get("Metadata") if isinstance(resource, dict) else None
    config = (metadata or {}).get("cfn-lint", {}).get("config", {}) if isinstance(metadata, dict) else {}
    ignored = config.get("ignore_checks", []) if isinstance(config, dict) else []
    return [str(rule) for rule in ignored] if isinstance(ignored, list) else []


def carry_ignores(source: dict[str, Any], cloudformation: dict[str, Any]) -> dict[str, Any]:
    """`cloudformation` with each SAM resource's cfn-lint ignores also on the resources SAM generated from it
    (named after it: `SenderFunctionQueue`, `HttpApiApiGatewayDefaultStage`...), which get no Metadata."""
    sources = source.get("Resources") or {}
    resources = cloudformation.get("Resources") or {}
    for logical_id, resource in sources.items():
        ignored = _ignored_checks(resource)
        if not ignored or not str(resource.get("Type", "")).startswith("AWS::Serverless::"):
            continue
        for generated_id, generated in resources.items():
            if generated_id.startswith(logical_id) and generated_id not in sources:
                config = (
                    generated.setdefault("Metadata", {}).setdefault("cfn-lint", {}).setdefault("config", {})
                )
                config["ignore_checks"] = sorted({*config.get("ignore_checks", []), *ignored})
    return cloudformation


def check(text: str, region: str = REGION) -> list[str]:
    """Problems in a SAM template, one line each: transform errors, else the findings of cfn-lint and the
    Serverless Rules on its output."""
    try:
        cloudformation = transform(text, region)
    except TemplateError as exc:
        return [f"SAM transform: {exc}"]
    source, _ = decode_str(text)
    carry_ignores(json.loads(json.dumps(source)), cloudformation)
    config = ManualArgs(regions=[region], append_rules=[SERVERLESS_RULES])
    return [
        f"{match.rule.id} {getattr(match, 'path_string', '')}: {match.message}"
        for match in lint(json.dumps(cloudformation), config=config)
    ]


def main(argv: list[str]) -> int:
    """Check each template named in `argv` (default template.yaml); 1 if any has a problem."""
    failed = False
    for path in argv or ["template.yaml"]:
        problems = check(Path(path).read_text(encoding="utf-8"))
        for problem in problems:
            print(f"{path}: {problem}")
        failed = failed or bool(problems)
        if not problems:
            print(f"{path}: SAM transform + cfn-lint clean")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
