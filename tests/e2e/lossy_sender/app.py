"""A deliberately broken sender for the chaos test: it drops every record whose event_id ends in 7 (they are
reported as processed, so SQS deletes them) and hands the rest to the real sender."""

import json
from typing import Any

from tiktok_bridge.sender import lambda_handler as deliver


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    kept = [r for r in event["Records"] if not json.loads(r["body"])["event_id"].endswith("7")]
    answer: dict[str, Any] = deliver({**event, "Records": kept}, context)
    return answer
