"""The control plane: the admin listener and the admin API (orgs, keys, webhooks)."""
