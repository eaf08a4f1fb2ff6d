"""records_to_arrow: Apache Arrow IPC stream bytes (base64, the Bytes JSON form) -> a list of records.

Runs in a sandbox with pyarrow: untrusted IPC bytes are never parsed in the
daemon's process.
"""

import base64
import binascii
import math
from typing import Any

import pyarrow as pa


class StageError(Exception):
    pass


def _plain(v: Any) -> Any:
    # JSON has no NaN/Infinity, dates or bytes: say so instead of emitting invalid JSON.
    if isinstance(v, float) and not math.isfinite(v):
        raise StageError(f"a value is {v}, which JSON cannot represent")
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    return str(v)


def execute(input: Any) -> Any:
    if not isinstance(input, str):
        raise StageError("input must be Arrow IPC bytes as base64 text")
    try:
        raw = base64.b64decode(input, validate=True)
    except (binascii.Error, ValueError):
        raise StageError("input is not valid base64") from None
    try:
        table = pa.ipc.open_stream(raw).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise StageError(f"input is not an Arrow IPC stream: {e}") from None
    return [_plain(row) for row in table.to_pylist()]
