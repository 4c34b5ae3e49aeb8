"""Segment -> TikTok Events API 2.0 bridge: the domain package shared by both Lambdas and the CLI."""
