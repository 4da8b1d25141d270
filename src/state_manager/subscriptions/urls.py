"""What a receiver's URL may be: http or https, a host, no credentials, a bounded length; and, with
WEBHOOK_REFUSE_PRIVATE_ADDRESSES, no loopback, private, link-local or reserved address."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048


def check_url(url: str) -> str:
    """The URL, stripped; ValueError saying what is wrong with it."""
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials; the signature authenticates deliveries")
    if parts.fragment:
        raise ValueError("must not have a fragment")
    if port == 0:
        raise ValueError("must not use port 0")
    return url


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def names_private_host(url: str) -> bool:
    """True when the URL's host is `localhost` or an IP literal that is not a public address."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return _private(host)
    except ValueError:
        return False  # a name: checked when it is resolved, before each attempt


async def resolves_to_private(url: str) -> bool:
    """True when the URL's host names, or resolves to, any non-public address.

    Checked before each attempt; a name that changes between this check and the connection (DNS
    rebinding) is not covered, which an egress proxy that refuses private ranges would cover.
    """
    if names_private_host(url):
        return True
    parts = urlsplit(url)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except OSError:
        return False  # the attempt itself fails and says why
    return any(_private(str(info[4][0])) for info in found)
