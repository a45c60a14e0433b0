"""Reader of IDX files, the format of MNIST and Fashion-MNIST (plain or gzip-compressed); numpy only.

An IDX file is two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian uint32 sizes, then the
values in C order, big-endian. A gzip file is recognised by its magic bytes, whatever its name.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from autoq.host.tasks.datasets import DatasetError

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


class IdxError(DatasetError):
    """An IDX file is missing, truncated or malformed."""


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """The array held by the bytes of an (uncompressed) IDX file, in native byte order."""
    if len(data) < 4:
        raise IdxError(f"{source}: {len(data)} bytes, too short for an IDX header")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in IDX_TYPES:
        raise IdxError(f"{source}: not an IDX file (magic {data[:4].hex()}; expected 0000 then a type code in "
                       f"{[f'{c:02x}' for c in IDX_TYPES]} and the number of dimensions)")
    if ndim == 0:
        raise IdxError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{source}: truncated header ({len(data)} bytes, {header} needed for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IdxError(f"{source}: shape {shape} of {dtype.name} needs {expected} data bytes, file has {len(data) - header}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """The array of the IDX file at ``path`` (``.gz`` or plain, told apart by content)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == GZIP_MAGIC:
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise IdxError(f"IDX file {path} does not exist") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"{path}: cannot read ({exc})") from None
    return parse_idx(data, str(path))
