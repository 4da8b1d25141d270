"""The cache interface and its two implementations, chosen once from settings."""

from state_manager.cache.base import Cache, open_cache

__all__ = ["Cache", "open_cache"]
