"""What every request handler needs, built once by create_app and kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from starlette.requests import HTTPConnection
from starlette.templating import Jinja2Templates

from keybroker.auth.challenges import ChallengeStore
from keybroker.auth.passkeys import RelyingParty
from keybroker.auth.sessions import SessionManager
from keybroker.crypto.keyring import KeyRing
from keybroker.oauth.server import AuthorizationServer
from keybroker.proxy.forward import ProxyApp
from keybroker.settings import Settings


@dataclass
class Context:
    settings: Settings
    engine: Engine
    ring: KeyRing
    sessions: SessionManager
    challenges: ChallengeStore
    templates: Jinja2Templates
    rp: RelyingParty
    oauth: AuthorizationServer
    proxy: ProxyApp
    bridge: Any = None  # RedisGrantBridge when KEYBROKER_REDIS_URL is set


def get_context(conn: HTTPConnection) -> Context:
    ctx: Context = conn.app.state.kb
    return ctx
