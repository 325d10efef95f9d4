"""Text from outside that must be stored or printed as valid UTF-8: file and folder names.

Python decodes a file name's bytes that are not UTF-8 to lone surrogates (U+DC80-U+DCFF,
"surrogateescape"); those cannot be written to SQLite or to strict JSON readers. Such a byte is
written instead as ``\\xNN`` (backslash, x, two lowercase hex digits), which bash's ``$'...'``
quoting turns back into the byte; any other lone surrogate as ``\\uNNNN``. Names that are valid
UTF-8 are unchanged, so a name that itself holds ``\\xNN`` reads the same: the escaping is for
showing and storing names, not a lossless encoding.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def utf8_text(text: str) -> str:
    """``text`` with every lone surrogate escaped (module docstring), so it encodes as strict UTF-8."""
    return _SURROGATE.sub(_escape, text)


def is_utf8_text(text: str) -> bool:
    """Whether ``text`` encodes as strict UTF-8 (holds no lone surrogate)."""
    return _SURROGATE.search(text) is None


def utf8_values(value: Any) -> Any:
    """``utf8_text`` applied to every string inside nested dicts, lists and tuples (keys too)."""
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, dict):
        return {utf8_values(k): utf8_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [utf8_values(v) for v in value]
    return value
