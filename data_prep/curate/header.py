"""Reading the few header attributes curation needs, fast.

Most CT files are encoded explicit-VR little endian (uncompressed or JPEG): for them a small
element walker reads the bytes up to the pixel data, keeps the values of the wanted tags and
decodes only those, several times faster than building a pydicom Dataset. Every other encoding
(implicit VR, big endian, deflate, ISO 2022 character sets, undefined-length UN) goes through
pydicom. Both give the same ``Header`` interface, and a test checks they agree value for value.
"""

from __future__ import annotations

import struct

import pydicom

PIXEL_DATA = 0x7FE00010
CHUNK = 16384
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# VRs with a 2-byte reserved field and a 4-byte length in explicit VR encoding.
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
# Transfer syntaxes the walker does not read: implicit VR, big endian, deflated.
NOT_EXPLICIT_LITTLE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
CHARSETS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 101": "iso8859_2",
            "ISO_IR 109": "iso8859_3", "ISO_IR 110": "iso8859_4", "ISO_IR 148": "iso8859_9",
            "ISO_IR 192": "utf_8"}
SPECIFIC_CHARACTER_SET = 0x00080005
TRANSFER_SYNTAX = 0x00020010
_US = {b"US": "H", b"SS": "h", b"UL": "I", b"SL": "i", b"FL": "f", b"FD": "d"}


class NotDicom(Exception):
    """No DICOM preamble / 'DICM' prefix."""


class Truncated(Exception):
    """The header ends in the middle of an element."""


class Unsupported(Exception):
    """An encoding the walker leaves to pydicom."""


class Header:
    """Text and numbers of the wanted attributes of one file, and where its pixel data starts."""

    transfer_syntax: str
    pixel_data_at: int | None  # file offset of the pixel data element; None when there is none

    def text(self, tag: int) -> str:
        """The value as text, multiple values joined by a backslash, padding stripped."""
        raise NotImplementedError

    def number(self, tag: int, index: int = 0) -> float:
        """The ``index``-th value as a float; NaN when missing or not a number."""
        raise NotImplementedError

    def has(self, tag: int) -> bool:
        raise NotImplementedError


def _clean(text: str) -> str:
    text = text.strip(" \0")
    return "\\".join(v.strip(" \0") for v in text.split("\\")) if "\\" in text else text


class RawHeader(Header):
    """Values as read by the walker: tag -> (VR, bytes)."""

    def __init__(self, values: dict[int, tuple[bytes, bytes]], transfer_syntax: str, pixel_data_at: int | None):
        self.values = values
        self.transfer_syntax = transfer_syntax
        self.pixel_data_at = pixel_data_at
        charset = values.get(SPECIFIC_CHARACTER_SET, (b"CS", b""))[1].decode("latin_1")
        charset = _clean(charset).split("\\")[0]
        if charset not in CHARSETS:
            raise Unsupported(f"character set {charset!r}")
        self.codec = CHARSETS[charset]

    def has(self, tag: int) -> bool:
        return tag in self.values

    def text(self, tag: int) -> str:
        item = self.values.get(tag)
        if item is None:
            return ""
        vr, raw = item
        if vr in _US:
            return "\\".join(f"{v:g}" if vr in (b"FL", b"FD") else str(v) for v in self._binary(vr, raw))
        return _clean(raw.decode(self.codec, errors="replace"))

    @staticmethod
    def _binary(vr: bytes, raw: bytes) -> tuple:
        fmt = _US[vr]
        n = len(raw) // struct.calcsize(fmt)
        return struct.unpack(f"<{n}{fmt}", raw[: n * struct.calcsize(fmt)])

    def number(self, tag: int, index: int = 0) -> float:
        item = self.values.get(tag)
        if item is None:
            return float("nan")
        vr, raw = item
        if vr in _US:
            values = self._binary(vr, raw)
        else:
            values = self.text(tag).split("\\")
        try:
            return float(values[index]) if len(values) > index and values[index] != "" else float("nan")
        except ValueError:
            return float("nan")


class PydicomHeader(Header):
    """Values from a pydicom Dataset (for encodings the walker does not read)."""

    def __init__(self, ds, pixel_data_at: int | None):
        self.ds = ds
        self.transfer_syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "")
        self.pixel_data_at = pixel_data_at

    def _dataset(self, tag: int):
        return self.ds.file_meta if tag >> 16 == 0x0002 else self.ds

    def has(self, tag: int) -> bool:
        return tag in self._dataset(tag)

    def _value(self, tag: int):
        elem = self._dataset(tag).get(tag)
        return None if elem is None else elem.value

    def text(self, tag: int) -> str:
        value = self._value(tag)
        if value is None:
            return ""
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return "\\".join(str(v).strip() for v in value)
        if isinstance(value, bytes):
            return _clean(value.decode("latin_1", errors="replace"))
        return str(value).strip()

    def number(self, tag: int, index: int = 0) -> float:
        value = self._value(tag)
        if value is None or value == "":
            return float("nan")
        values = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        try:
            return float(values[index]) if len(values) > index else float("nan")
        except (TypeError, ValueError):
            return float("nan")


class _Walker:
    """Explicit-VR little-endian element walker over a growing buffer of the file's first bytes."""

    def __init__(self, fp, wanted: frozenset[int]):
        self.fp = fp
        self.buf = fp.read(CHUNK)
        self.wanted = wanted
        self.values: dict[int, tuple[bytes, bytes]] = {}

    def ensure(self, end: int) -> bool:
        """Make the buffer reach ``end``; False at the end of the file."""
        while len(self.buf) < end:
            more = self.fp.read(max(CHUNK, end - len(self.buf)))
            if not more:
                return False
            self.buf += more
        return True

    def element(self, pos: int) -> tuple[int, bytes, int, int]:
        """(tag, VR, value length, header length) of the element at ``pos``."""
        if not self.ensure(pos + 8):
            raise Truncated("header cut off")
        group, elem = struct.unpack_from("<HH", self.buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:  # item and delimiters carry no VR
            return tag, b"", struct.unpack_from("<I", self.buf, pos + 4)[0], 8
        vr = self.buf[pos + 4:pos + 6]
        if vr in LONG_VRS:
            if not self.ensure(pos + 12):
                raise Truncated("header cut off")
            return tag, vr, struct.unpack_from("<I", self.buf, pos + 8)[0], 12
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise Unsupported("not an explicit VR")
        return tag, vr, struct.unpack_from("<H", self.buf, pos + 6)[0], 8

    def skip_sequence(self, pos: int) -> int:
        """Position after an undefined-length sequence whose items start at ``pos``."""
        while True:
            tag, _, length, header = self.element(pos)
            if tag == SEQUENCE_END:
                return pos + header
            if tag != ITEM:
                raise Unsupported("malformed sequence")
            pos += header
            if length != UNDEFINED:
                pos += length
                continue
            while True:  # an undefined-length item: its elements up to the item delimiter
                tag, vr, length, header = self.element(pos)
                if tag == ITEM_END:
                    pos += header
                    break
                pos = self.skip_value(pos + header, vr, length)

    def skip_value(self, pos: int, vr: bytes, length: int) -> int:
        if length != UNDEFINED:
            return pos + length
        if vr == b"SQ":
            return self.skip_sequence(pos)
        raise Unsupported(f"undefined length {vr.decode(errors='replace')}")

    def walk(self, pos: int, stop_group: int | None = None) -> tuple[int, int | None]:
        """Walk top-level elements from ``pos``; returns (position reached, pixel data offset or None).

        With ``stop_group`` the walk ends at the first element of another group (the file meta).
        """
        while True:
            if not self.ensure(pos + 1):
                return pos, None
            if stop_group is not None:
                if not self.ensure(pos + 2) or struct.unpack_from("<H", self.buf, pos)[0] != stop_group:
                    return pos, None
            tag, vr, length, header = self.element(pos)
            if tag == PIXEL_DATA:
                return pos, pos
            if tag in self.wanted:
                if length == UNDEFINED or not self.ensure(pos + header + length):
                    raise Truncated("header cut off")
                self.values[tag] = (vr, bytes(self.buf[pos + header:pos + header + length]))
            pos = self.skip_value(pos + header, vr, length)


def read_raw(fp, wanted: frozenset[int]) -> RawHeader:
    """Walk the file (opened in binary mode, at its start); raises NotDicom, Truncated or Unsupported."""
    walker = _Walker(fp, wanted | {TRANSFER_SYNTAX, SPECIFIC_CHARACTER_SET})
    if len(walker.buf) < 132 or walker.buf[128:132] != b"DICM":
        raise NotDicom("no DICOM preamble / DICM prefix")
    pos, _ = walker.walk(132, stop_group=0x0002)
    transfer_syntax = _clean(walker.values.get(TRANSFER_SYNTAX, (b"UI", b""))[1].decode("latin_1"))
    if not transfer_syntax or transfer_syntax in NOT_EXPLICIT_LITTLE:
        raise Unsupported(f"transfer syntax {transfer_syntax or 'missing'}")
    _, pixel_data_at = walker.walk(pos)
    return RawHeader(walker.values, transfer_syntax, pixel_data_at)


def read_pydicom(fp) -> PydicomHeader:
    """The same through pydicom (the file position ends at the pixel data element, or the end)."""
    fp.seek(0)
    ds = pydicom.dcmread(fp, stop_before_pixels=True)
    pos = fp.tell()
    head = fp.read(4)
    fp.seek(pos)
    little = str(getattr(ds.file_meta, "TransferSyntaxUID", "")) != "1.2.840.10008.1.2.2"
    at = pos if len(head) == 4 and (struct.unpack("<HH" if little else ">HH", head) == (0x7FE0, 0x0010)) else None
    return PydicomHeader(ds, at)
