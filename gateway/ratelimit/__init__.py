"""Rate limits and quotas: the algorithm, its two backends, and the outage policy."""
