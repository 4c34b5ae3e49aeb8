"""Write events/apigw-*.json: API Gateway HTTP API (payload 2.0) requests made from events/segment/*.json.

    .venv/bin/python events/make_apigw_events.py           # (re)write the samples
    .venv/bin/python events/make_apigw_events.py --check   # exit 1 if a committed sample is stale

Each sample works with `sam local invoke IngestFunction -e events/<file>`. They are signed with the demo
secret and carry the demo token below: put `"webhook_secret": "demo-webhook-secret"` in the bridge secret
and `"webhook_token": "demo-webhook-token"` in the webhook token secret for them to verify.
`apigw-batch.json` is what Segment's Webhooks (Actions) destination sends with batching on: a bare array,
signed over its first element only (which counts only together with the token).
"""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tiktok_bridge.auth import signature

DEMO_WEBHOOK_SECRET = "demo-webhook-secret"
DEMO_WEBHOOK_TOKEN = "demo-webhook-token"
EVENTS_DIR = Path(__file__).resolve().parent
ROUTE = ("POST", "/v1/events")
PAYLOADS = ("track", "page", "identify")


def apigw_event(body: bytes, headers: Mapping[str, str], *, base64_body: bool = False) -> dict[str, Any]:
    """An HTTP API payload 2.0 event for POST /v1/events (header names lower-cased, as API Gateway does)."""
    method, path = ROUTE
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "host": "abc123.execute-api.us-east-1.amazonaws.com",
            "user-agent": "Segment.io/1.0",
            **{name.lower(): value for name, value in headers.items()},
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "54.186.0.1",
                "userAgent": "Segment.io/1.0",
            },
            "requestId": "demo-request-0001",
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "15/Jan/2026:10:00:01 +0000",
            "timeEpoch": 1768471201000,
        },
        "body": base64.b64encode(body).decode() if base64_body else body.decode(),
        "isBase64Encoded": base64_body,
    }


def compact(event: Any) -> bytes:
    """JSON as Segment's JavaScript writes it for these payloads (no spaces, UTF-8 text unescaped)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def signed(body: bytes, covered: bytes, secret: str = DEMO_WEBHOOK_SECRET) -> dict[str, Any]:
    """The request for `body`, its `X-Signature` over `covered` and the demo token in `Authorization`."""
    headers = {"x-signature": signature(secret, covered), "authorization": f"Bearer {DEMO_WEBHOOK_TOKEN}"}
    return apigw_event(body, headers)


def samples(segment_dir: Path = EVENTS_DIR / "segment") -> dict[str, dict[str, Any]]:
    """File name -> API Gateway event, from the plain Segment payloads."""
    bodies = {name: compact(json.loads((segment_dir / f"{name}.json").read_text())) for name in PAYLOADS}
    elements = [bodies[name] for name in ("identify", "page", "track")]  # Identify first, as a session starts
    return {
        **{f"apigw-{name}.json": signed(body, body) for name, body in bodies.items()},
        "apigw-batch.json": signed(b"[" + b",".join(elements) + b"]", elements[0]),
        "apigw-bad-signature.json": signed(bodies["track"], bodies["track"], secret="not-the-demo-secret"),
    }


def render(event: Mapping[str, Any]) -> str:
    return json.dumps(event, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a sample differs from its source")
    args = parser.parse_args(argv)
    stale = []
    for name, event in samples().items():
        path = EVENTS_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != render(event):
                stale.append(name)
        else:
            path.write_text(render(event))
    if stale:
        print(f"stale: {', '.join(stale)}; run events/make_apigw_events.py")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
