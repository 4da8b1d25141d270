"""Analytics: the per-conversation facts projection, the reports built on it, and system health."""
