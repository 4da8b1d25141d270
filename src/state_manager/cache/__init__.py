"""The lookup cache: an in-process LRU in front of Redis when REDIS_URL is set, chosen once from settings."""

from state_manager.cache.lookups import Loaded, LookupCache, open_lookup_cache

__all__ = ["Loaded", "LookupCache", "open_lookup_cache"]
