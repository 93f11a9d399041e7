"""The frames of a spool segment: a header ``<IIHi`` = (crc32, body length, topic length, key
length or -1 for None) then the body = topic utf-8 + key + value. The crc covers the three
length fields (header bytes 4..14) followed by the body, so a torn or overwritten header is
detected as surely as a torn body."""

from __future__ import annotations

import io
import struct
import zlib

SpoolRecord = tuple[str, bytes | None, bytes]
"""(topic, key or None, value)."""

_HEADER = struct.Struct("<IIHi")  # crc32, body length, topic length, key length (-1: None)
_LENGTHS = struct.Struct("<IHi")  # the part of the header the crc covers


def encode_frame(record: SpoolRecord) -> bytes:
    """One record as a frame."""
    topic, key, value = record
    topic_b = topic.encode()
    key_b = b"" if key is None else key
    body_len = len(topic_b) + len(key_b) + len(value)
    if len(topic_b) > 0xFFFF or body_len > 0xFFFFFFFF:
        raise ValueError(f"record too large for the spool (topic {topic!r})")
    lengths = _LENGTHS.pack(body_len, len(topic_b), -1 if key is None else len(key_b))
    crc = zlib.crc32(value, zlib.crc32(key_b, zlib.crc32(topic_b, zlib.crc32(lengths))))
    return b"".join((struct.pack("<I", crc), lengths, topic_b, key_b, value))


def read_frame(f: io.BufferedReader, limit: int) -> tuple[SpoolRecord, int] | None:
    """The frame at the file position and its size, or None if no valid frame fits in limit."""
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    crc, body_len, topic_len, key_len = _HEADER.unpack(header)
    key_n = max(key_len, 0)
    # Check lengths before reading so a garbage header cannot make us allocate gigabytes.
    if key_len < -1 or topic_len + key_n > body_len or _HEADER.size + body_len > limit:
        return None
    body = f.read(body_len)
    if len(body) < body_len or zlib.crc32(body, zlib.crc32(header[4:])) != crc:
        return None
    try:
        topic = body[:topic_len].decode()
    except UnicodeDecodeError:
        return None
    key = None if key_len < 0 else body[topic_len : topic_len + key_n]
    return (topic, key, body[topic_len + key_n :]), _HEADER.size + body_len
