"""State store: orgs and keys (and later limits, idempotency records, webhooks)."""

from gateway.store.base import Conflict, Invalidation, Store, StoreError
from gateway.store.models import ApiKey, Org, new_id

__all__ = [
    "ApiKey",
    "Conflict",
    "Invalidation",
    "Org",
    "Store",
    "StoreError",
    "new_id",
    "open_store",
]


def open_store(backend: str, *, path: str = "", url: str = "", key_prefix: str = "gw") -> Store:
    """The configured backend, not yet started."""
    if backend == "redis":
        from gateway.store.redis import RedisStore

        return RedisStore(url, key_prefix=key_prefix)
    from gateway.store.local import LocalStore

    return LocalStore(path)
