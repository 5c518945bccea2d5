"""The hand-written asyncio orchestration (the sync twin is generated from it)."""
