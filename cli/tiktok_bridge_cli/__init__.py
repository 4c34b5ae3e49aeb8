"""`tiktok-bridge`: the command line, the local stack and the TikTok emulator. Never deployed: Lambda runs
only `tiktok_bridge` (layers/bridge/).
"""
