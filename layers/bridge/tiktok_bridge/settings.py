"""Deployment settings, read once from the Lambda environment (set by template.yaml)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

DEFAULT_TIKTOK_BASE_URL = "https://business-api.tiktok.com"
# How a signature over only the first element of a batch (Segment's Actions webhook) counts (SPEC §2):
# with-token: only together with the webhook token; without-token: alone, but events 2..n are then never
# used to write or link Identify profiles; refused: never (whole-body signatures only).
FirstElementSignature = Literal["with-token", "without-token", "refused"]


class SettingsError(ValueError):
    """An environment variable is missing or malformed; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    """What a Lambda needs to know about its deployment."""

    tiktok_secret_id: str = ""  # the sender's: access token, pixel code, event set id
    webhook_secret_id: str = ""  # ingest's: the webhook secret
    queue_url: str = ""
    dlq_url: str = ""
    config_text: str = ""
    tiktok_base_url: str = DEFAULT_TIKTOK_BASE_URL
    tiktok_timeout_s: int = 10
    max_body_bytes: int = 5_000_000
    max_events: int = 1_000
    first_element_signature: FirstElementSignature = "with-token"
    webhook_token_secret_id: str = ""
    profiles_table: str = ""
    max_receive_count: int = 5

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            tiktok_secret_id=env.get("TIKTOK_SECRET_ID", ""),
            webhook_secret_id=env.get("WEBHOOK_SECRET_ID", ""),
            queue_url=env.get("QUEUE_URL", ""),
            dlq_url=env.get("DLQ_URL", ""),
            config_text=env.get("BRIDGE_CONFIG", ""),
            tiktok_base_url=env.get("TIKTOK_BASE_URL", "").strip() or DEFAULT_TIKTOK_BASE_URL,
            tiktok_timeout_s=_int(env, "TIKTOK_TIMEOUT_S", 10, 1, 300),
            # API Gateway HTTP API caps bodies at 10 MB and a synchronous Lambda payload at 6 MB.
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 5_000_000, 1_024, 6_000_000),
            # What ingest enqueues within Segment's 5 s with margin: `make bench`, ingest.safe_max_events.
            max_events=_int(env, "MAX_EVENTS", 1_000, 1, 100_000),
            first_element_signature=_choice(  # type: ignore[arg-type]
                env, "FIRST_ELEMENT_SIGNATURE", "with-token", get_args(FirstElementSignature)
            ),
            webhook_token_secret_id=env.get("WEBHOOK_TOKEN_SECRET_ID", ""),
            profiles_table=env.get("PROFILES_TABLE", ""),
            # The source queue's maxReceiveCount: the sender dead-letters a record itself before SQS would.
            max_receive_count=_int(env, "MAX_RECEIVE_COUNT", 5, 1, 1000),
        )
