"""arrow_from_records: a list of records -> Apache Arrow IPC stream bytes, base64 (the Bytes JSON form).

Runs in a sandbox with pyarrow, pinned by the engine (``# requires:`` line
prepended) to the version the daemon's ``arrow`` extra installed.
"""

import base64
import io
from typing import Any

import pyarrow as pa


class StageError(Exception):
    pass


def execute(input: Any) -> Any:
    if not isinstance(input, list) or not all(isinstance(r, dict) for r in input):
        raise StageError("input must be a list of records")
    try:
        table = pa.Table.from_pylist(input)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
        raise StageError(f"records do not form a table: {e}") from None
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return base64.b64encode(sink.getvalue()).decode("ascii")
