"""read_file: {path} -> {content, size_bytes}. The file must be UTF-8 text."""

from typing import Any


class StageError(Exception):
    pass


def execute(input: Any) -> Any:
    if not isinstance(input, dict) or not isinstance(input.get("path"), str):
        raise StageError("input must be a record with a text field 'path'")
    path = input["path"]
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise StageError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise StageError(f"cannot read {path}: it is a directory") from None
    except PermissionError:
        raise StageError(f"cannot read {path}: permission denied (is it outside the stage's FsRead paths?)") from None
    except OSError as e:
        raise StageError(f"cannot read {path}: {e.strerror}") from None
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StageError(f"cannot read {path} as text: byte {e.start} is not valid UTF-8") from None
    # size_bytes counts bytes, not characters (as upstream).
    return {"content": content, "size_bytes": len(raw)}
