"""Outbound webhooks: signing and target safety (delivery arrives with its queue)."""
