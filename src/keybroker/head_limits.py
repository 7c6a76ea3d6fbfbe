"""Bounds on an HTTP/1.1 message head, the same for what clients send us and what the upstream
answers: 64 KiB and 100 fields, in line with common server defaults (nginx refuses a request
whose headers exceed its large_client_header_buffers, 4 x 8 KiB by default; Apache httpd's
LimitRequestFields is 100). llhttp itself has no limit: a peer sending an endless header made
the parser (through httptools) hold all of it.
"""

from __future__ import annotations

MAX_HEAD_BYTES = 64 * 1024
MAX_FIELDS = 100
