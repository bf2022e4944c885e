"""Outbound webhooks: events to endpoints, signed, retried from a durable queue, SSRF-safe."""
