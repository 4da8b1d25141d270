"""Webhook signatures, receiver URLs and the retry schedule, as pure functions."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import pytest

from state_manager.subscriptions.dispatcher import backoff_seconds
from state_manager.subscriptions.signing import new_secret, secret_hint, signature_header, verify
from state_manager.subscriptions.urls import check_url, names_private_host, resolves_to_private

SECRET = "whsec_test-secret-0123456789"
BODY = b'{"seq":1,"type":"customer.created"}'


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    header = signature_header(SECRET, 1_700_000_000, BODY)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_verify_accepts_the_signature_and_refuses_tampering_and_old_timestamps() -> None:
    header = signature_header(SECRET, 1_700_000_000, BODY)
    assert verify(SECRET, header, BODY, now=1_700_000_100)
    assert not verify(SECRET, header, BODY + b" ", now=1_700_000_100)
    assert not verify(SECRET + "x", header, BODY, now=1_700_000_100)
    assert not verify(SECRET, header, BODY, now=1_700_000_301)  # replayed after the tolerance
    assert not verify(SECRET, header.replace("t=1700000000", "t=1700000200"), BODY, now=1_700_000_200)
    assert not verify(SECRET, "garbage", BODY)


def test_secrets_are_random_and_their_hint_shows_only_the_end() -> None:
    first, second = new_secret(), new_secret()
    assert first != second
    assert first.startswith("whsec_")
    assert len(first) >= 6 + 43
    assert secret_hint(first) == "whsec_…" + first[-4:]
    assert secret_hint("custom-secret-value-1234") == "…1234"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "https://user:pw@example.com/",
        "https://user@example.com/",
        "https:///path",
        "https://example.com/#f",
        "https://example.com:0/",
        "https://example.com:70000/",
        "https://exa mple.com/",
        "https://example.com/a\nb",
        "https://example.com/" + "a" * 2048,
        "javascript:alert(1)",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"^(must|is not)"):
        check_url(url)


def test_good_urls_are_kept() -> None:
    assert check_url(" https://hooks.example.com:8443/in?x=1 ") == "https://hooks.example.com:8443/in?x=1"
    assert check_url("http://10.0.0.5/hook") == "http://10.0.0.5/hook"


@pytest.mark.parametrize(
    ("url", "private"),
    [
        ("http://127.0.0.1/", True),
        ("http://localhost:8080/", True),
        ("http://api.localhost/", True),
        ("http://10.1.2.3/", True),
        ("http://192.168.0.1/", True),
        ("http://169.254.169.254/latest/meta-data", True),
        ("http://[::1]/", True),
        ("http://[::ffff:127.0.0.1]/", True),
        ("http://0.0.0.0/", True),
        ("http://8.8.8.8/", False),
        ("https://example.com/", False),
    ],
)
def test_private_hosts_are_recognised(url: str, private: bool) -> None:
    assert names_private_host(url) is private


def test_a_name_resolving_to_loopback_is_private() -> None:
    assert asyncio.run(resolves_to_private("http://localhost./x"))


def test_backoff_doubles_up_to_the_ceiling_with_jitter() -> None:
    for attempt, full in [(1, 10.0), (2, 20.0), (3, 40.0), (10, 3600.0), (60, 3600.0), (500, 3600.0)]:
        waits = [backoff_seconds(attempt, 10.0, 3600.0) for _ in range(200)]
        assert all(full / 2 <= wait <= full for wait in waits)
        assert max(waits) - min(waits) > 0
