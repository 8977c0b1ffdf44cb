"""The text fields of a ``multipart/form-data`` body (``/v1/audio/transcriptions`` names its model there).

Only the field names and values matter to the gate, and the gate puts the model it judged first in
the URL query when forwarding (Go's ``FormValue`` prefers the query), so a difference between this
reading and Go's ``mime/multipart`` cannot change which model Ollama loads. The stdlib email parser
does the MIME work.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser


class NotMultipart(Exception):
    """Not ``multipart/form-data`` with a boundary: Go's ParseMultipartForm refuses it (400)."""


class UnreadableMultipart(Exception):
    """Multipart that this parser cannot read (Go might): the gate refuses it rather than guess."""


def multipart_fields(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """(name, value) of every non-file part, in order."""
    head = EmailMessage()
    head["Content-Type"] = content_type
    if head.get_content_type() != "multipart/form-data" or not head.get_param("boundary"):
        raise NotMultipart(content_type)
    try:
        message = BytesParser(policy=policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    except (ValueError, UnicodeError) as exc:
        raise UnreadableMultipart(str(exc)) from None
    if not isinstance(message, EmailMessage) or not message.is_multipart() or message.defects:
        raise UnreadableMultipart("malformed multipart body")
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or part.get_filename() is not None:
            continue
        payload = part.get_payload(decode=True)
        fields.append((name, payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""))
    return fields
