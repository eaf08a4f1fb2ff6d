"""text_hash: {text, algorithm?} -> {algorithm, hash}; SHA-256 unless told otherwise."""

import hashlib
from typing import Any

ALGORITHMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512",
              "sha3_224", "sha3_256", "sha3_384", "sha3_512", "blake2b", "blake2s")


class StageError(Exception):
    pass


def execute(input: Any) -> Any:
    if not isinstance(input, dict) or not isinstance(input.get("text"), str):
        raise StageError("input must be a record with a text field 'text'")
    algorithm = input.get("algorithm")
    if algorithm is None:
        algorithm = "sha256"
    if not isinstance(algorithm, str):
        raise StageError("field 'algorithm' must be text or null")
    if algorithm not in ALGORITHMS:
        raise StageError(f"unsupported algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    digest = hashlib.new(algorithm, input["text"].encode("utf-8")).hexdigest()
    return {"algorithm": algorithm, "hash": digest}
