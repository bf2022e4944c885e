"""API keys and identity: the key format, the key ring that resolves keys, scopes."""
