"""multipart/form-data bodies (photo uploads), parsed with the standard library's email parser."""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.parser import BytesParser

from worker.errors import FacewatchError


class FormError(FacewatchError):
    """A request body that is not the form the route expects."""


@dataclass(frozen=True)
class Part:
    """One field of a form: its name, the file name (None for a plain field) and its bytes."""

    name: str
    filename: str | None
    data: bytes


def parse_form(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart/form-data body; FormError when it is not one."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise FormError("expected a multipart/form-data body (curl -F)")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise FormError("malformed multipart/form-data body")
    parts = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise FormError("a form part has no name")
        data = part.get_payload(decode=True)
        parts.append(Part(name, part.get_filename(), data if isinstance(data, bytes) else b""))
    return parts


def field(parts: list[Part], name: str) -> str | None:
    """The text of the one plain field ``name`` (None when absent); FormError when given twice or not UTF-8."""
    found = [p for p in parts if p.name == name]
    if not found:
        return None
    if len(found) > 1:
        raise FormError(f"form field {name!r} given more than once")
    try:
        return found[0].data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError(f"form field {name!r} is not UTF-8 text") from None


def files(parts: list[Part], name: str) -> list[Part]:
    """Every part named ``name`` (the files of a repeated field)."""
    return [p for p in parts if p.name == name]
