"""write_file: {path, content} -> {path, bytes_written}. Creates or truncates the file."""

from typing import Any


class StageError(Exception):
    pass


def execute(input: Any) -> Any:
    if not isinstance(input, dict):
        raise StageError("input must be a record with text fields 'path' and 'content'")
    path, content = input.get("path"), input.get("content")
    if not isinstance(path, str):
        raise StageError("field 'path' must be text")
    if not isinstance(content, str):
        raise StageError("field 'content' must be text")
    data = content.encode("utf-8")
    try:
        with open(path, "wb") as f:
            f.write(data)
    except FileNotFoundError:
        raise StageError(f"cannot write {path}: its directory does not exist") from None
    except IsADirectoryError:
        raise StageError(f"cannot write {path}: it is a directory") from None
    except PermissionError:
        raise StageError(f"cannot write {path}: permission denied (is it outside the stage's FsWrite paths?)") from None
    except OSError as e:
        raise StageError(f"cannot write {path}: {e.strerror}") from None
    return {"bytes_written": len(data), "path": path}
