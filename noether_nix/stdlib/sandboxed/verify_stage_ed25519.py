"""verify_stage_ed25519: a stage record -> {passed, signed, warning}.

Verifies ``ed25519_signature`` (hex) over the ASCII hex stage ``id`` with
``signer_public_key`` (hex). An unsigned stage passes with a warning.
Ed25519 verification is RFC 8032 §6 in plain Python (standard library only).
"""

import hashlib
from typing import Any

Point = tuple[int, int, int, int]


class StageError(Exception):
    pass


_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _add(a: Point, b: Point) -> Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    c = 2 * t1 * t2 * _D % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - c, dd + c, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, point: Point) -> Point:
    result = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            result = _add(result, point)
        point = _add(point, point)
        s >>= 1
    return result


def _equal(a: Point, b: Point) -> bool:
    x1, y1, z1, _ = a
    x2, y2, z2, _ = b
    return (x1 * z2 - x2 * z1) % _P == 0 and (y1 * z2 - y2 * z1) % _P == 0


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _decompress(data: bytes) -> Point | None:
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % _P)


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_G: Point = (_GX, _GY, 1, _GX * _GY % _P)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    if len(public) != 32 or len(signature) != 64:
        return False
    a = _decompress(public)
    r = _decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _Q:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % _Q
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))


def _hex(value: str, field: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise StageError(f"{field} is not hexadecimal") from None
    if len(raw) != size:
        raise StageError(f"{field} must be {size} bytes ({2 * size} hex digits), got {len(raw)}")
    return raw


def execute(input: Any) -> Any:
    if not isinstance(input, dict):
        raise StageError("input must be a stage record")
    signature, public_key = input.get("ed25519_signature"), input.get("signer_public_key")
    if signature is None and public_key is None:
        return {"passed": True, "signed": False,
                "warning": "stage is unsigned — consider signing before promoting to Active"}
    if signature is None or public_key is None:
        return {"passed": False, "signed": False,
                "warning": "malformed: exactly one of ed25519_signature / signer_public_key is set"}
    if not isinstance(signature, str) or not isinstance(public_key, str):
        raise StageError("ed25519_signature and signer_public_key must be hex text")
    stage_id = input.get("id")
    if not isinstance(stage_id, str):
        stage_id = ""
    try:
        sig = _hex(signature, "ed25519_signature", 64)
        pub = _hex(public_key, "signer_public_key", 32)
    except StageError as e:
        return {"passed": False, "signed": True, "warning": f"signature decode error: {e}"}
    if ed25519_verify(pub, stage_id.encode("ascii", "replace"), sig):
        return {"passed": True, "signed": True, "warning": None}
    return {"passed": False, "signed": True,
            "warning": "Ed25519 signature verification failed — stage may have been tampered with"}
