"""Sender Lambda (SQS -> TikTok Events API); the logic lives in the bridge layer's `tiktok_bridge.sender`."""

from tiktok_bridge.sender import lambda_handler

__all__ = ["lambda_handler"]
