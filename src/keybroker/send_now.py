"""The ``keybroker.send_now`` ASGI extension: what the server offers and the proxy uses.

`keybroker serve` offers it (server_protocol.SendNow); the proxy relays a stream's events
through it from the upstream connection's ``data_received``, without waking its own task
(docs/design.md). Under any other server the extension is absent and the proxy awaits ``send``.
"""

from __future__ import annotations

from typing import Protocol

from starlette.types import Scope, Send

NAME = "keybroker.send_now"


class SendNow(Protocol):
    def serves(self, send: object) -> bool:
        """Whether ``send`` is the server's own (no middleware would be gone around)."""
        ...

    def ready(self) -> bool:
        """Whether a body part can be sent now, without waiting."""
        ...

    def __call__(self, body: bytes) -> None: ...


def offered(scope: Scope, send: Send) -> SendNow | None:
    """The server's extension, if it serves this very ``send``."""
    extension = scope.get("extensions", {}).get(NAME)
    send_now: SendNow | None = extension.get("send") if extension else None
    return send_now if send_now is not None and send_now.serves(send) else None
