"""Ingest Lambda (HTTP API -> SQS); the logic lives in the bridge layer's `tiktok_bridge.ingest`."""

from tiktok_bridge.ingest import lambda_handler

__all__ = ["lambda_handler"]
