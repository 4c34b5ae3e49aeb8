"""Deployment settings, read once from the Lambda environment (set by template.yaml)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_TIKTOK_BASE_URL = "https://business-api.tiktok.com"


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


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"true", "1", "yes"}:
        return True
    if raw in {"false", "0", "no"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    """What a Lambda needs to know about its deployment."""

    secret_id: str = ""
    queue_url: str = ""
    dlq_url: str = ""
    config_text: str = ""
    tiktok_base_url: str = DEFAULT_TIKTOK_BASE_URL
    tiktok_timeout_s: int = 10
    max_body_bytes: int = 5_000_000
    accept_first_element_signature: bool = True
    profiles_table: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            secret_id=env.get("SECRET_ID", ""),
            queue_url=env.get("QUEUE_URL", ""),
            dlq_url=env.get("DLQ_URL", ""),
            config_text=env.get("BRIDGE_CONFIG", ""),
            tiktok_base_url=env.get("TIKTOK_BASE_URL", "").strip() or DEFAULT_TIKTOK_BASE_URL,
            tiktok_timeout_s=_int(env, "TIKTOK_TIMEOUT_S", 10, 1, 300),
            # API Gateway HTTP API caps bodies at 10 MB and a synchronous Lambda payload at 6 MB.
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 5_000_000, 1_024, 6_000_000),
            accept_first_element_signature=_bool(env, "ACCEPT_FIRST_ELEMENT_SIGNATURE", True),
            profiles_table=env.get("PROFILES_TABLE", ""),
        )
