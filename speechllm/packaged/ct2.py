"""Reader for CTranslate2 ``model.bin`` files (binary format version 6).

Layout (little endian), as written by CTranslate2's ``ModelSpec.save``::

    u32 binary_version            (6)
    str spec_name                 e.g. "WhisperSpec"
    u32 spec_revision
    u32 num_variables
    num_variables x {
        str name                  "encoder/layer_0/self_attention/linear_0/weight"
        u8  rank, rank x u32 dims
        u8  dtype                 see DTYPES
        u32 num_bytes, raw bytes  (row-major)
    }
    u32 num_aliases
    num_aliases x { str alias, str target_name }   e.g. tied output projection -> embeddings

where ``str`` is a u16 length (including a trailing NUL) followed by UTF-8 bytes and the NUL.
Scalars (flags such as ``pre_norm`` or ``num_heads``) are rank-0 variables.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# CTranslate2's DataType enum, in its fixed order.
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
BFLOAT16 = 5
SUPPORTED_BINARY_VERSIONS = (6,)


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands (or is truncated)."""


@dataclass
class CT2Model:
    """The contents of a CTranslate2 ``model.bin``.

    Attributes:
        spec_name: model specification class name (e.g. ``WhisperSpec``).
        revision: specification revision.
        variables: name -> array (float16 weights stay float16; rank-0 arrays for scalars).
        aliases: alias name -> the variable name it refers to (tied weights).
    """

    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def scalar(self, name: str) -> int:
        """Return a rank-0 variable (a flag or a count) as a Python int."""
        return int(self.variables[name].reshape(()))


class _Cursor:
    """Sequential little-endian reads over a bytes buffer, failing clearly on truncation."""

    def __init__(self, data: memoryview, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise CT2FormatError(f"{self.path}: truncated at byte {self.pos} (wanted {n} more bytes)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.unpack("H")))
        return raw.rstrip(b"\0").decode("utf-8")


def read_ct2_model(path: str | Path) -> CT2Model:
    """Read every variable of a CTranslate2 ``model.bin``.

    Args:
        path: the ``model.bin`` file.

    Returns:
        The parsed model; arrays own their memory (the file is not kept open).

    Raises:
        CT2FormatError: unknown binary version, unsupported dtype, truncated or trailing data.
    """
    path = Path(path)
    data = path.read_bytes()
    cur = _Cursor(memoryview(data), path)
    version = cur.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version} is not supported")
    spec_name = cur.string()
    revision = cur.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(cur.unpack("I")):
        name = cur.string()
        shape = tuple(cur.unpack("I") for _ in range(cur.unpack("B")))
        dtype_id = cur.unpack("B")
        num_bytes = cur.unpack("I")
        raw = cur.take(num_bytes)
        if dtype_id == BFLOAT16:
            # numpy has no bfloat16: widen to float32 by placing the 16 bits in the high half.
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype_id in DTYPES:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[dtype_id]).newbyteorder("<")).copy()
        else:
            raise CT2FormatError(f"{path}: variable '{name}' has unknown dtype id {dtype_id}")
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise CT2FormatError(f"{path}: variable '{name}' has {arr.size} values for shape {shape}")
        variables[name] = arr.reshape(shape)
    aliases = {}
    for _ in range(cur.unpack("I")):
        alias = cur.string()
        aliases[alias] = cur.string()
    if cur.pos != len(cur.data):
        raise CT2FormatError(f"{path}: {len(cur.data) - cur.pos} unexpected bytes after the last record")
    return CT2Model(spec_name=spec_name, revision=revision, variables=variables, aliases=aliases)
