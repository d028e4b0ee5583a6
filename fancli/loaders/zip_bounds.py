"""Check a zip's end-of-central-directory claims before `zipfile` acts on them.

`zipfile.ZipFile` reads the central directory in one `read(size)` of the size the end record claims
(an 8 KB file claiming 3 GB allocates 3 GB), and keeps a ZipInfo of ~500 bytes per member (3 million
members: 1.5 GB). This reads only the end record (and its zip64 form), and refuses a directory larger
than the file holds or than any torch archive needs, before a byte of the directory is read.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from ..errors import SourceError
from ..safe_io import open_regular

#: Members of a torch archive: one per storage plus a few records. 250,000 is what pickle_scan's memory
#: budget lets a data.pkl describe; no real checkpoint comes near it.
MAX_ZIP_ENTRIES = 250_000
#: Central directory bytes: ~46 bytes plus the name per member, so ~100 bytes each for MAX_ZIP_ENTRIES;
#: this caps the ZipInfo objects zipfile builds at ~150 MB however short the names.
MAX_CENTRAL_DIRECTORY = 16 * 1024 * 1024

_EOCD = struct.Struct("<4s4H2LH")  # signature, disk, cd disk, entries here, entries, cd size, cd offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, offset of the zip64 end record, disks
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # signature, size, versions, disks, entries here, entries, size, offset
_MAX_COMMENT = 0xFFFF


def check_zip_claims(path: Path, handle: BinaryIO | None = None) -> None:
    """SourceError if the end record claims more members or directory bytes than the file or a torch
    archive could hold. A zip without an end record passes: zipfile then says what is wrong itself.
    `handle`, if given, is read instead of the file: a zip embedded in a larger file (a DCP item)."""
    try:
        if handle is None:
            with open_regular(path, str(path)) as opened:
                size, claims = _claims(opened)
        else:
            size, claims = _claims(handle)
    except OSError as error:
        raise SourceError(f"{path}: cannot read: {error.strerror or error}") from None
    for entries, cd_size, cd_offset in claims:
        _check(path, size, entries, cd_size, cd_offset)


def _claims(handle: BinaryIO) -> tuple[int, list[tuple[int, int, int]]]:
    """The file's size, and (entries, directory size, directory offset) as each end record states them:
    the plain one, and a zip64 one both where zipfile looks (just before the locator) and where the
    locator points (where torch's reader looks)."""
    handle.seek(0, 2)
    size = handle.tell()
    tail_start = max(0, size - _EOCD.size - _MAX_COMMENT)
    handle.seek(tail_start)
    tail = handle.read(size - tail_start)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        return size, []
    _, _, _, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    claims: list[tuple[int, int, int]] = []
    locator = at - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        _, _, stated, _ = _ZIP64_LOCATOR.unpack_from(tail, locator)
        for offset in {tail_start + locator - _ZIP64_EOCD.size, stated}:
            claims += _zip64_claims(handle, offset)
    # With a zip64 record the plain one holds placeholders (0xFFFFFFFF): both readers use the zip64 values.
    return size, claims or [(entries, cd_size, cd_offset)]


def _zip64_claims(handle, offset: int) -> list[tuple[int, int, int]]:
    """(entries, directory size, offset) from a zip64 end record at `offset`, if one is there."""
    if not 0 <= offset < 1 << 63:
        return []
    handle.seek(offset)
    record = handle.read(_ZIP64_EOCD.size)
    if len(record) < _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
        return []
    _, _, _, _, _, _, _, entries, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)
    return [(entries, cd_size, cd_offset)]


def _check(path: Path, size: int, entries: int, cd_size: int, cd_offset: int) -> None:
    if cd_size > size or cd_offset > size:
        raise SourceError(f"{path}: not a readable zip archive (its central directory claims {cd_size} bytes "
                          f"at offset {cd_offset}, in a file of {size})")
    if cd_size > MAX_CENTRAL_DIRECTORY:
        raise SourceError(f"{path}: a zip central directory of {cd_size} bytes, more than the "
                          f"{MAX_CENTRAL_DIRECTORY >> 20} MiB any torch archive needs; refused unread")
    if entries > MAX_ZIP_ENTRIES:
        raise SourceError(f"{path}: a zip of {entries} members, more than the {MAX_ZIP_ENTRIES:,} any torch "
                          "archive needs; refused unread")
