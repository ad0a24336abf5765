"""The IMEI policy and the two ways an IMEI travels on the wire.

A login frame carries the IMEI as ASCII digits after a u16 length; Codec 14
and 15 messages carry it packed, two decimal digits per byte in 8 bytes, a
15-digit IMEI padded with one leading zero. Readers and writers both use the
rules here so that what one accepts the other can produce.

Policy: 15 or 16 ASCII digits. Every Teltonika device sends 15 (an IMEI with
its check digit); 16 is the IMEISV form and the most the packed 8-byte field
can carry. The Luhn check digit is not verified: simulators and test benches
use IMEIs such as 123456789012345 that fail it, and deciding which devices may
connect is the server's admission policy, not the codec's.
"""

from __future__ import annotations

__all__ = [
    "IMEI_MAX_DIGITS",
    "IMEI_MIN_DIGITS",
    "PACKED_IMEI_SIZE",
    "is_digit_prefix",
    "is_valid_imei",
    "pack_imei",
    "unpack_imei",
]

IMEI_MIN_DIGITS = 15
IMEI_MAX_DIGITS = 16
PACKED_IMEI_SIZE = 8

_DIGITS = frozenset(b"0123456789")


def is_valid_imei(raw: bytes) -> bool:
    """True if ``raw`` is an IMEI under the policy above (ASCII digits)."""
    return IMEI_MIN_DIGITS <= len(raw) <= IMEI_MAX_DIGITS and _DIGITS.issuperset(raw)


def is_digit_prefix(raw: bytes) -> bool:
    """True if ``raw`` could still start a valid IMEI (only digits so far)."""
    return _DIGITS.issuperset(raw)


def pack_imei(imei: str) -> bytes | None:
    """The 8-byte packed form of ``imei``, or None if it cannot be packed.

    A 16-digit IMEI starting with 0 is refused: packed, it would read back as
    the 15-digit IMEI without that zero.
    """
    if not is_valid_imei(imei.encode("ascii", "replace")):
        return None
    if len(imei) == 2 * PACKED_IMEI_SIZE and imei.startswith("0"):
        return None
    return bytes.fromhex(imei.rjust(2 * PACKED_IMEI_SIZE, "0"))


def unpack_imei(packed: bytes) -> str | None:
    """The IMEI in an 8-byte packed field, or None if it holds non-digits."""
    digits = packed.hex()
    if not digits.isdigit():
        return None
    # A 15-digit IMEI is padded with exactly one leading zero.
    return digits[1:] if digits.startswith("0") else digits
