from __future__ import annotations

import pytest

from state_manager.customers.identity import IdentityChannel, InvalidIdentity, normalize

C = IdentityChannel


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("919876543210", "+919876543210"),
        ("+919876543210", "+919876543210"),
        ("14155552671", "+14155552671"),
        ("+1 415 555 2671", "+14155552671"),
    ],
)
def test_phone_numbers_are_stored_in_e164(raw: str, e164: str) -> None:
    assert normalize(C.PHONE, raw) == e164


@pytest.mark.parametrize("raw", ["", "abc", "0123456789", "+0123456789", "123456789012345678", "+1555"])
def test_invalid_phone_numbers_are_refused(raw: str) -> None:
    with pytest.raises(InvalidIdentity):
        normalize(C.PHONE, raw)


def test_wa_id_is_digits_without_plus() -> None:
    assert normalize(C.WHATSAPP, "+16505551234") == "16505551234"
    for bad in ("0650", "abc", "1234", "16505551234x"):
        with pytest.raises(InvalidIdentity):
            normalize(C.WHATSAPP, bad)


def test_business_scoped_user_id() -> None:
    assert normalize(C.WHATSAPP_BSUID, "BR.1502576394655843") == "BR.1502576394655843"
    with pytest.raises(InvalidIdentity):
        normalize(C.WHATSAPP_BSUID, "br.150")
