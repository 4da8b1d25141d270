"""Which media URLs the service accepts: https only, on a host of `MEDIA_URL_ALLOWED_HOSTS`, matched exactly.

The service never fetches a media URL: it stores it and hands it on (the `outbound-processed` queue message,
the API's reads), and whoever fetches it downstream trusts it. So a URL is judged as the strictest of the
parsers that may read it later would see it, and anything two parsers could read differently is refused
rather than guessed at:

- the scheme is `https` (any case);
- the authority holds no user information (`@`), no percent-encoding, no backslash (browsers and Node read
  `\\` as `/`, Python does not), nothing outside printable ASCII, and a port only if it is 443;
- no whitespace or control character anywhere (WHATWG parsers drop tabs and newlines silently);
- the host, lowercased and with one trailing dot removed, equals an entry of the list. No suffix, prefix or
  wildcard matching: `lookaside.fbsbx.com.evil.com` and `cdn.lookaside.fbsbx.com` are other hosts. An IP
  literal matches only an IP entry, compared as addresses.

Entries are normalised the same way when the setting is read (IDNA: a Unicode name becomes its `xn--`
form; a URL must already use that form, so a look-alike host never matches by mapping).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from state_manager.errors import ValidationFailed

MAX_URL_LENGTH = 2048
ANY_HOST = "*"

# Meta's WhatsApp Cloud API hands out media downloads on lookaside.fbsbx.com (`GET /{media-id}` answers
# `"url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=…"`). Genesys Cloud's Open
# Messaging attachments are served by the region's API host (`https://api.<region>/api/v2/downloads/…`);
# these are the public regions' API hosts. Deployments whose transformers rehost media elsewhere set their
# own list.
DEFAULT_MEDIA_URL_HOSTS = (
    "lookaside.fbsbx.com",
    "api.mypurecloud.com",
    "api.use2.us-gov-pure.cloud",
    "api.usw2.pure.cloud",
    "api.cac1.pure.cloud",
    "api.sae1.pure.cloud",
    "api.mypurecloud.ie",
    "api.euw2.pure.cloud",
    "api.mypurecloud.de",
    "api.euc2.pure.cloud",
    "api.mec1.pure.cloud",
    "api.aps1.pure.cloud",
    "api.mypurecloud.jp",
    "api.apne2.pure.cloud",
    "api.apne3.pure.cloud",
    "api.mypurecloud.com.au",
)

_HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


class InvalidMediaUrl(ValidationFailed):
    """A media URL that is not https on an allowed host; `errors` names the field."""

    code = "invalid-media-url"
    title = "Media URL not allowed"
    error_type = "invalid_media_url"  # the field error's type, and the queue's DLQ reason

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(
            f"{field}: {reason}",
            errors=[{"field": field, "location": "body", "message": reason, "type": self.error_type}],
        )
        self.field = field
        self.reason = reason


def _dns_name(value: str) -> str | None:
    """`value` as a lowercase ASCII host name without its trailing dot, or None if it is not one."""
    name = value.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or not set(name) <= _HOST_CHARACTERS:
        return None
    labels = name.split(".")
    if any(not label or len(label) > 63 or label[0] == "-" or label[-1] == "-" for label in labels):
        return None
    return name


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def normalized_entry(entry: str) -> str:
    """One entry of the setting, as URLs' hosts are compared with it; ValueError if it is no host."""
    value = entry.strip()
    if not value:
        raise ValueError("an empty host")
    if "*" in value:
        raise ValueError(f"{value!r}: hosts are matched exactly; list each host (no wildcards)")
    address = _ip(value)
    if address is not None:
        return address.compressed
    try:
        ascii_name = value.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"{value!r} is not a host name") from exc
    name = _dns_name(ascii_name)
    if name is None:
        raise ValueError(f"{value!r} is not a host name (no scheme, port or path: just the host)")
    return name


@dataclass(frozen=True, slots=True)
class MediaUrlPolicy:
    """`hosts` None: any host (still https)."""

    hosts: frozenset[str] | None

    @classmethod
    def parse(cls, setting: str) -> MediaUrlPolicy:
        """`MEDIA_URL_ALLOWED_HOSTS`: comma-separated hosts, or `*` alone for any https host."""
        if setting.strip() == ANY_HOST:
            return cls(None)
        entries = [entry for entry in setting.split(",") if entry.strip()]
        if not entries:
            raise ValueError("name at least one host, or * for any https host")
        return cls(frozenset(normalized_entry(entry) for entry in entries))

    def refusal(self, url: str) -> str | None:
        """Why `url` is refused, or None when it is accepted."""
        if len(url) > MAX_URL_LENGTH:
            return f"longer than {MAX_URL_LENGTH} characters"
        if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
            return "holds whitespace or a control character"
        if "\\" in url:
            return "holds a backslash"
        try:
            parts = urlsplit(url)
        except ValueError:
            return "is not a URL"
        if parts.scheme != "https":
            return "must be an https:// URL"
        authority = parts.netloc
        if not authority:
            return "names no host"
        if "@" in authority:
            return "must not hold user information (@)"
        if "%" in authority:
            return "must not percent-encode its host"
        if not authority.isascii():
            return "must write its host in ASCII (an internationalised name in its xn-- form)"
        host, port = _split_authority(authority)
        if port is not None and port != "443":
            return "must use the default port (443)"
        if host is None:
            return "names no valid host"
        if self.hosts is None:
            return None
        if host in self.hosts:
            return None
        return "its host is not in MEDIA_URL_ALLOWED_HOSTS"

    def check(self, url: str | None, field: str) -> None:
        if url is None:
            return
        reason = self.refusal(url)
        if reason is not None:
            raise InvalidMediaUrl(field, reason)


def _split_authority(authority: str) -> tuple[str | None, str | None]:
    """The normalised host (None if it is not a valid host) and the port as written (None if absent)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None, None
        literal, rest = authority[1:end], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            return None, None
        port = rest[1:] if rest else None
        if port == "":
            return None, ""
        try:
            return ipaddress.IPv6Address(literal).compressed, port
        except ValueError:
            return None, port
    host, colon, port_text = authority.partition(":")
    port = port_text if colon else None
    if port is not None and (not port.isdigit() or not port.isascii()):
        return None, port
    address = _ip(host) if host and (host[0].isdigit()) else None
    if address is not None:
        # Only a dotted quad is an address here; WHATWG's other IPv4 forms (0x7f.1, 2130706433) fall
        # through to names and match nothing, since entries are real names.
        return (address.compressed if str(address) == host else None), port
    return _dns_name(host), port


_current = MediaUrlPolicy.parse(",".join(DEFAULT_MEDIA_URL_HOSTS))


def configure(policy: MediaUrlPolicy) -> None:
    """The process's policy, set from the settings when the app or a CLI command starts."""
    global _current
    _current = policy


def current() -> MediaUrlPolicy:
    return _current


def check(url: str | None, field: str) -> None:
    """Raises `InvalidMediaUrl` (422) unless `url` is None or accepted by the process's policy."""
    _current.check(url, field)


def check_media(media: Any, field: str = "media.url") -> None:
    """The same for a `Media` (or None)."""
    if media is not None:
        check(media.url, field)
