"""Writes small but real DICOM Part 10 files (Secondary Capture, Explicit VR Little
Endian) with random pixel data, and compares stored files by their data set bytes."""

import hashlib
import os
import struct

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
ROOT = "1.2.826.0.1.3680043.9.7433"  # test UIDs
LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"}


def _element(group, elem, vr, value):
    if isinstance(value, str):
        pad = b"\0" if vr == b"UI" else b" "
        value = value.encode()
        if len(value) % 2:
            value += pad
    elif len(value) % 2:
        value += b"\0"
    head = struct.pack("<HH", group, elem) + vr
    if vr in LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _us(v):
    return struct.pack("<H", v)


def make(path, index, study="1", rows=256, cols=256, seed=None):
    """One image of `rows` x `cols` 8-bit pixels; returns the data set bytes."""
    sop = f"{ROOT}.{study}.{index}.{os.getpid()}"
    pixels = os.urandom(rows * cols) if seed is None else bytes((i * seed) % 251 for i in range(rows * cols))
    dataset = b"".join([
        _element(0x0008, 0x0016, b"UI", SECONDARY_CAPTURE),
        _element(0x0008, 0x0018, b"UI", sop),
        _element(0x0008, 0x0020, b"DA", "20261128"),
        _element(0x0008, 0x0060, b"CS", "OT"),
        _element(0x0010, 0x0010, b"PN", "TEST^LOADBALANCER"),
        _element(0x0010, 0x0020, b"LO", "LB-TEST-1"),
        _element(0x0020, 0x000D, b"UI", f"{ROOT}.{study}"),
        _element(0x0020, 0x000E, b"UI", f"{ROOT}.{study}.1"),
        _element(0x0020, 0x0013, b"IS", str(index)),
        _element(0x0028, 0x0002, b"US", _us(1)),
        _element(0x0028, 0x0004, b"CS", "MONOCHROME2"),
        _element(0x0028, 0x0010, b"US", _us(rows)),
        _element(0x0028, 0x0011, b"US", _us(cols)),
        _element(0x0028, 0x0100, b"US", _us(8)),
        _element(0x0028, 0x0101, b"US", _us(8)),
        _element(0x0028, 0x0102, b"US", _us(7)),
        _element(0x0028, 0x0103, b"US", _us(0)),
        _element(0x7FE0, 0x0010, b"OB", pixels),
    ])
    meta_body = b"".join([
        _element(0x0002, 0x0001, b"OB", b"\0\1"),
        _element(0x0002, 0x0002, b"UI", SECONDARY_CAPTURE),
        _element(0x0002, 0x0003, b"UI", sop),
        _element(0x0002, 0x0010, b"UI", EXPLICIT_LE),
        _element(0x0002, 0x0012, b"UI", f"{ROOT}.0"),
    ])
    meta = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + meta + dataset)
    return dataset


def dataset_of(path):
    """The data set bytes of a Part 10 file (after the preamble and meta group)."""
    data = open(path, "rb").read()
    assert data[128:132] == b"DICM", f"{path} is not a DICOM file"
    (group_length,) = struct.unpack("<I", data[132 + 8:132 + 12])
    return data[132 + 12 + group_length:]


def digest(blob):
    return hashlib.sha256(blob).hexdigest()
