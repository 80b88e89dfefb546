"""Which queue faults can pass on retry and which never will.

A message over the server's max_payload, one that does not parse, or a request JetStream
refuses as bad will fail the same way every time: retrying it only burns the slot that
holds it. A lost connection, a timeout or a server that is not ready yet may pass.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError

_NEVER_PASS = (
    nats.errors.MaxPayloadError,
    nats.errors.BadSubjectError,
    nats.errors.BadHeaderError,
    nats.js.errors.BadRequestError,
    nats.js.errors.InvalidObjectNameError,
    DecodeError,
    ValueError,
    TypeError,
)


def permanent(exc: BaseException) -> bool:
    """Whether `exc`, raised by a queue or object-store call, can never pass on retry."""
    if isinstance(exc, _NEVER_PASS):
        return True
    # JetStream answers 400 (bad request) and 413 (too large) for what it will never take.
    return isinstance(exc, nats.js.errors.APIError) and exc.code in (400, 413)
