"""CRC-16/IBM, the checksum of Teltonika TCP frames.

Teltonika calls it CRC-16/IBM; catalogues call it CRC-16/ARC: polynomial
0x8005 processed LSB first (0xA001), initial value 0, reflected, no final XOR;
the check value of ``b"123456789"`` is 0xBB3D. It covers a frame's data field,
codec id through Number of Data 2.

A pure-Python version loops over every byte in the interpreter, which costs
more than decoding the records it protects (bench/decode_bench.py measures
both), so the checksum comes from fastcrc's compiled implementation.
"""

from __future__ import annotations

from fastcrc import crc16 as _fastcrc16

__all__ = ["crc16_ibm"]


def crc16_ibm(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/IBM (CRC-16/ARC) of ``data`` (bytes, bytearray or memoryview)."""
    return _fastcrc16.arc(data)
