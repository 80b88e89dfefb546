"""How large a gRPC response may grow: the mesh's answers must reach clients that keep
gRPC's default 4 MiB receive limit (Go, Node and Java do)."""

from __future__ import annotations

# Room to spare under 4 MiB for the envelope, metadata and trailers.
MAX_RESPONSE_BYTES = 3 * 1024 * 1024
