"""The Secrets Manager secrets: the TikTok credentials and source ids (the sender's), the generated webhook
secret and token (ingest's), each with the previous value accepted while a rotation is under way."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

SECRET_MAX_AGE_S = 300


class SecretError(RuntimeError):
    """The secret is missing or malformed; the message never contains secret values."""


class BridgeSecret(BaseModel):
    """Every key of the bridge's secrets (each function reads only its own); unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    access_token: SecretStr = SecretStr("")
    pixel_code: str = ""
    event_set_id: str = ""
    webhook_secret: SecretStr = SecretStr("")
    webhook_token: SecretStr = SecretStr("")
    previous_webhook_secret: SecretStr = SecretStr("")  # still accepted: Segment may not use the new one yet
    previous_webhook_token: SecretStr = SecretStr("")

    def source_ids(self) -> dict[str, str]:
        """Source ids by the `Route.source_id_key` that names them."""
        return {"pixel_code": self.pixel_code, "event_set_id": self.event_set_id}

    @classmethod
    def parse(cls, raw: str | bytes | dict[str, Any]) -> BridgeSecret:
        """Validate the secret's JSON text (or decoded dict)."""
        try:
            value = json.loads(raw) if isinstance(raw, str | bytes) else raw
        except ValueError:
            raise SecretError("the secret is not valid JSON") from None
        if not isinstance(value, dict):
            raise SecretError("the secret must be a JSON object")
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            keys = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors())
            raise SecretError(f"the secret has malformed keys: {keys} (each must be a string)") from None


def fetch_secret(secret_id: str, *, force: bool = False) -> BridgeSecret:
    """Read and validate the secret through Powertools Parameters (cached for 5 minutes)."""
    from aws_lambda_powertools.utilities import parameters

    if not secret_id:
        raise SecretError("the secret's id is not set (TIKTOK_SECRET_ID or WEBHOOK_SECRET_ID)")
    try:
        raw = parameters.get_secret(secret_id, max_age=SECRET_MAX_AGE_S, force_fetch=force)
    except parameters.exceptions.GetParameterError as exc:
        raise SecretError(f"cannot read secret {secret_id}: {type(exc.__cause__ or exc).__name__}") from None
    return BridgeSecret.parse(raw if isinstance(raw, str | bytes) else json.dumps(raw))
