# dkimpy 1.1: what Continuity uses of it (roster/dkim.py and its tests).
from collections.abc import Callable, Sequence
from typing import Any

class DKIMException(Exception): ...
class KeyFormatError(DKIMException): ...
class ParameterError(DKIMException): ...

def sign(
    message: bytes,
    selector: bytes,
    domain: bytes,
    privkey: bytes,
    identity: bytes | None = None,
    canonicalize: tuple[bytes, bytes] = ...,
    signature_algorithm: bytes = ...,
    include_headers: Sequence[bytes] | None = None,
    length: bool = False,
    logger: Any = None,
    linesep: bytes = b"\r\n",
    tlsrpt: bool | str = False,
) -> bytes: ...
def verify(
    message: bytes,
    logger: Any = None,
    dnsfunc: Callable[..., bytes | None] = ...,
    minkey: int = 1024,
    timeout: int = 5,
    tlsrpt: bool | str = False,
) -> bool: ...
