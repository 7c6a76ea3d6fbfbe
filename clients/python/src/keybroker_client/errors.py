"""The one exception the package raises, with a code like the JS SDK's."""

from __future__ import annotations

# What went wrong, as a program can act on it:
CODES = {
    "access_denied": "the owner denied access",
    "timeout": "no answer in the time allowed",
    "expired": "the device code expired before the owner answered",
    "invalid_response": "the broker answered something this package does not understand",
    "unreachable": "the broker could not be reached",
    "refused": "the broker refused the request (unknown client, scope or flow)",
    "no_browser": "flow='loopback' was asked for, but no browser could be opened",
}


class KeybrokerError(Exception):
    """``code`` is one of CODES; the message says more, and never contains a token."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
