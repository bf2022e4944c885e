"""State store: orgs, keys, idempotency records, limit counts and webhooks, on SQLite or Redis."""

from gateway.config import StoreConfig
from gateway.store.base import Conflict, IdempotencyBegin, Invalidation, Store, StoreError
from gateway.store.models import ApiKey, Org, new_id, prefixed_id

__all__ = [
    "ApiKey",
    "Conflict",
    "IdempotencyBegin",
    "Invalidation",
    "Org",
    "Store",
    "StoreError",
    "new_id",
    "open_store",
    "prefixed_id",
]


def open_store(config: StoreConfig) -> Store:
    """The configured backend, not yet started."""
    if config.backend == "redis":
        from gateway.store.redis import RedisStore

        return RedisStore(
            config.redis_urls,
            cluster=config.cluster,
            key_prefix=config.key_prefix,
            username=config.username,
            password=config.password,
            ca_pem=config.ca_pem,
            replica_acks=config.replica_acks,
            replica_ack_timeout=config.replica_ack_timeout,
        )
    from gateway.store.local import LocalStore

    return LocalStore(config.path)
