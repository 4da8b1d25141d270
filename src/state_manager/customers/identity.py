"""Customer identities: which channels exist and how each external ID is validated and normalised."""

from __future__ import annotations

import enum
import re

import phonenumbers


class IdentityChannel(enum.StrEnum):
    WHATSAPP = "whatsapp"  # WhatsApp user ID (wa_id): digits, not always the phone number
    WHATSAPP_BSUID = "whatsapp_bsuid"  # business-scoped user ID, e.g. BR.1502576394655843
    PHONE = "phone"  # E.164
    EMAIL = "email"
    GENESYS = "genesys"  # Genesys external contact ID


class InvalidIdentity(ValueError):
    pass


_WA_ID = re.compile(r"^[1-9][0-9]{5,19}$")
_BSUID = re.compile(r"^[A-Z]{2}\.[A-Za-z0-9]{1,128}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
_OPAQUE = re.compile(r"^[A-Za-z0-9._:@-]{1,256}$")


def normalize_phone(value: str) -> str:
    """E.164 from a number with or without its leading +; the country code must be present."""
    raw = value.strip()
    candidate = raw if raw.startswith("+") else "+" + raw
    try:
        number = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException as exc:
        # The value is not repeated: refusals never echo input (docs/security.md, "Errors").
        raise InvalidIdentity("not a phone number in international form (country code first)") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentity("not a valid phone number for its country code")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalize(channel: IdentityChannel, external_id: str) -> str:
    value = external_id.strip()
    match channel:
        case IdentityChannel.WHATSAPP:
            value = value.removeprefix("+")
            if not _WA_ID.match(value):
                raise InvalidIdentity("a WhatsApp ID is 6 to 20 digits and does not start with 0")
            return value
        case IdentityChannel.WHATSAPP_BSUID:
            if not _BSUID.match(value):
                raise InvalidIdentity("a business-scoped user ID is CC.<up to 128 letters and digits>")
            return value
        case IdentityChannel.PHONE:
            return normalize_phone(value)
        case IdentityChannel.EMAIL:
            if not _EMAIL.match(value):
                raise InvalidIdentity("not an e-mail address")
            return value.lower()
        case IdentityChannel.GENESYS:
            if not _OPAQUE.match(value):
                raise InvalidIdentity("an ID of 1 to 256 letters, digits and ._:@-")
            return value


def phone_from_wa_id(wa_id: str) -> str | None:
    """The E.164 number a wa_id spells, when it spells a valid one (it usually does, not always)."""
    try:
        return normalize_phone(wa_id)
    except InvalidIdentity:
        return None
