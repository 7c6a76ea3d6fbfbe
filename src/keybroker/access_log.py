"""What the access log may say about a request: the device flow's pages carry the user code in
the verification_uri_complete's query (RFC 8628 §3.3.1), and a user code is a short-lived
secret (§5.1), so the query of any path under ``/device`` is dropped before uvicorn's access
log writes the line. (The pages never put the code or the request id in a path.)"""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"
# Path prefixes whose query string may carry a secret.
SECRET_QUERY_PATHS = ("/device",)


class DropSecretQueries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn logs: client address, method, path with query, HTTP version, status.
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, sep, _ = args[2].partition("?")
            if sep and path.startswith(SECRET_QUERY_PATHS):
                record.args = (*args[:2], path + "?[dropped]", *args[3:])
        return True


def install() -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, DropSecretQueries) for f in logger.filters):
        logger.addFilter(DropSecretQueries())
