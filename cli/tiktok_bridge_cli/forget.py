"""`tiktok-bridge forget`: erase a user's Identify profile, and the identities linked to it, from DynamoDB.

Uses the caller's AWS credentials (the usual boto3 chain), so it works against the deployed table as is.
Prints hashed keys only, never the ids it was given.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from tiktok_bridge import identity


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "forget",
        help="erase a user's Identify profile (and linked ones) from the profiles table",
        description=(
            "Delete the profile items of a userId and/or anonymousId, and of every identity they are linked "
            "to. Stop the user's events at the source first (Segment suppression), or ingest re-creates them."
        ),
    )
    parser.add_argument("--user-id", help="Segment userId")
    parser.add_argument("--anonymous-id", help="Segment anonymousId")
    parser.add_argument(
        "--table",
        default=os.environ.get("PROFILES_TABLE"),
        help="profiles table name (the stack output ProfilesTableName; default: $PROFILES_TABLE)",
    )
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--endpoint-url", help="DynamoDB endpoint, e.g. a local moto server")
    parser.set_defaults(run=forget)


def forget(args: argparse.Namespace) -> int:
    """0 when done (also when nothing was stored), 1 when DynamoDB failed, 2 for bad arguments."""
    keys = [
        key
        for key in (
            identity.profile_key("user", args.user_id),
            identity.profile_key("anon", args.anonymous_id),
        )
        if key
    ]
    if not keys or not args.table:
        print(
            "forget: give --user-id and/or --anonymous-id, and --table (or PROFILES_TABLE)", file=sys.stderr
        )
        return 2
    dynamodb = identity.client(region_name=args.region, endpoint_url=args.endpoint_url)
    try:
        deleted = identity.ProfileStore(dynamodb, args.table).forget(keys)
    except (identity.StoreError, BotoCoreError, ClientError) as error:
        print(f"forget: DynamoDB failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"deleted {len(deleted)} profile item(s) from {args.table}")
    for key in deleted:
        print(f"  {key}")
    return 0
