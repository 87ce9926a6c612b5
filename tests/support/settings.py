"""Settings for tests and benches, built explicitly (never read from this process's environment).

Usage::

    settings = make_settings(tmp_path)                                  # SQLite under tmp_path/data
    settings = make_settings(tmp_path, database_url, redis_url, chunk_size=32)
"""

from __future__ import annotations

from pathlib import Path

from common.platform.config import Settings


def make_settings(root: Path, database_url: str | None = None, redis_url: str = "", **overrides) -> Settings:
    """Settings with the data root at ``root/data``, the signing key at ``root/keys/signing.key`` and a
    fixed session secret; ``database_url`` defaults to SQLite in the data root."""
    env = {
        "LATENTLAB_DATA": str(root / "data"),
        "LATENTLAB_DATABASE_URL": database_url or f"sqlite:///{root / 'data' / 'latentlab.db'}",
        "LATENTLAB_REDIS_URL": redis_url,
        "LATENTLAB_SECRET_KEY": "test-secret-key",
        "LATENTLAB_SIGNING_KEY_FILE": str(root / "keys" / "signing.key"),
    }
    return Settings.from_env(env, **overrides)
