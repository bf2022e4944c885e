"""Where the redis store keeps each record.

A name's ``{...}`` part is its hash tag: Redis Cluster puts every key with the same tag in one
slot, so the keys one script touches always share a tag. What belongs to an org shares the
org's id as its tag (its record, its keys, their last-used times, and, written elsewhere, its
rate limits and idempotency records), which spreads orgs over every master. What is looked
up by something other than the org (a key by its hash or id, an org by its slug) has a small
pointer under that thing's own tag. Webhook endpoints and their delivery queue live in one of
``WEBHOOK_SHARDS`` shards, picked by the org, so that delivery claims can visit every shard.
"""

from __future__ import annotations

import zlib

# Fixed: a delivery queue can only be found where its shard number says. 16 shards spread
# over up to 16 masters.
WEBHOOK_SHARDS = 16
# The request log's streams, likewise fixed: an org's entries are in the stream its id picks,
# and those of no org (no key, a bad key) in one more of their own: a flood of requests without
# a key must not push any org's history out.
REQUEST_LOG_SHARDS = 16
REQUEST_LOG_STREAMS = REQUEST_LOG_SHARDS + 1


class Keyspace:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    # -- an org's own slot -------------------------------------------------------------------

    def org(self, org_id: str) -> str:
        return f"{self.prefix}:{{{org_id}}}:org"

    def org_keys(self, org_id: str) -> str:
        """The org's key ids, scored by creation time."""
        return f"{self.prefix}:{{{org_id}}}:keys"

    def key(self, org_id: str, key_id: str) -> str:
        return f"{self.prefix}:{{{org_id}}}:key:{key_id}"

    def last_used(self, org_id: str) -> str:
        """The org's key ids, scored by when each was last used (only ever moved forward)."""
        return f"{self.prefix}:{{{org_id}}}:lastused"

    def idempotency(self, org_id: str, rest: str) -> str:
        return f"{self.prefix}:idem:{{{org_id}}}:{rest}"

    # -- pointers, each in the slot of what it is looked up by --------------------------------

    def orgs(self) -> str:
        """Every org id, scored by creation time: written once per org, read by listings."""
        return f"{self.prefix}:orgs"

    def slug(self, slug: str) -> str:
        """The slug's org id, or ``pending <id> <ms>`` while that org is being created."""
        return f"{self.prefix}:orgslug:{{{slug}}}"

    def key_hash(self, key_hash: str) -> str:
        """``<org id>:<key id>`` of the key with this hash: what a request's key is found by."""
        return f"{self.prefix}:keyhash:{{{key_hash}}}"

    def key_org(self, key_id: str) -> str:
        return f"{self.prefix}:keyorg:{{{key_id}}}"

    # -- webhooks -----------------------------------------------------------------------------

    def webhook_shard(self, org_id: str) -> int:
        return zlib.crc32(org_id.encode()) % WEBHOOK_SHARDS

    def webhooks(self, shard: int) -> str:
        """The common start of every webhook key of a shard (the scripts build names on it)."""
        return f"{self.prefix}:{{wh{shard}}}:"

    # -- activity: the request log, usage counts, the audit log -------------------------------

    def request_log_shard(self, org_id: str | None) -> int:
        """The stream of an org's entries; the last one for those of no org."""
        if org_id is None:
            return REQUEST_LOG_SHARDS
        return zlib.crc32(org_id.encode()) % REQUEST_LOG_SHARDS

    def request_log(self, shard: int) -> str:
        return f"{self.prefix}:{{rl{shard}}}:requests"

    def usage(self, org_id: str | None, size: int, start: int) -> str:
        """A bucket's counts: an org's (its keys' too, as fields) in the org's slot; those of
        every request together in a slot of their own."""
        tag = org_id if org_id is not None else "usage"
        return f"{self.prefix}:{{{tag}}}:use:{size}:{start}"

    def audit(self) -> str:
        return f"{self.prefix}:{{audit}}:log"

    # -- the layout itself --------------------------------------------------------------------

    def layout(self) -> str:
        """Which layout the data is in (see redis_layout); ``:moving`` beside it is the lock
        of the instance that moves a dataset into it."""
        return f"{self.prefix}:{{layout}}"
