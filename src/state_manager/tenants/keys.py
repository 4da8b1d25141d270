"""API key format and hashing. A key is `smk_<prefix>_<secret>`; only SHA-256 of the secret is stored.

The secret is 256 random bits, so a fast hash is enough (no password stretching is needed), and it is
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "smk_"


@dataclass(frozen=True, slots=True)
class NewKey:
    prefix: str
    secret_hash: str
    plaintext: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate() -> NewKey:
    prefix = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(prefix=prefix, secret_hash=hash_secret(secret), plaintext=f"{KEY_PREFIX}{prefix}_{secret}")


def split(plaintext: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None."""
    if not plaintext.startswith(KEY_PREFIX):
        return None
    prefix, sep, secret = plaintext[len(KEY_PREFIX) :].partition("_")
    if not sep or len(prefix) != 16 or not secret or len(secret) > 128:
        return None
    return prefix, secret


def matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)
