"""Browser sessions: a random token in an itsdangerous-signed cookie, its hash in the database.

The signature (salt ``keybroker.session``, one namespace per purpose) rejects forged cookies
without a database read; the row lets sign-out and account deletion end a session for good.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import Engine, delete, select
from sqlmodel import Session, col
from starlette.requests import HTTPConnection
from starlette.responses import Response

from keybroker.models import BrowserSession, User, utcnow

SESSION_TTL = timedelta(days=14)


@dataclass(frozen=True)
class SignedIn:
    user: User
    session: BrowserSession


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionManager:
    def __init__(self, engine: Engine, secret_key: str, *, secure: bool) -> None:
        self.engine = engine
        self.secure = secure
        # The __Host- prefix pins the cookie to this exact host and path (RFC 6265bis §4.1.3.2).
        self.cookie_name = "__Host-kb_session" if secure else "kb_session"
        self._signer = URLSafeTimedSerializer(secret_key, salt="keybroker.session")

    def _token(self, conn: HTTPConnection) -> str | None:
        raw = conn.cookies.get(self.cookie_name)
        if not raw:
            return None
        try:
            token = self._signer.loads(raw, max_age=int(SESSION_TTL.total_seconds()))
        except BadSignature:
            return None
        return token if isinstance(token, str) else None

    def current(self, conn: HTTPConnection) -> SignedIn | None:
        token = self._token(conn)
        if token is None:
            return None
        with Session(self.engine, expire_on_commit=False) as db:
            row = db.execute(
                select(BrowserSession, User)
                .join(User, col(User.id) == col(BrowserSession.user_id))
                .where(col(BrowserSession.id) == _hash(token))
            ).first()
        if row is None or row[0].expires_at < utcnow():
            return None
        return SignedIn(user=row[1], session=row[0])

    def start(self, conn: HTTPConnection, response: Response, user_id: str) -> None:
        """Sign in: any earlier session of this browser ends, a new token is issued."""
        old = self._token(conn)
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with Session(self.engine) as db:
            if old is not None:
                db.execute(delete(BrowserSession).where(col(BrowserSession.id) == _hash(old)))
            db.add(
                BrowserSession(
                    id=_hash(token),
                    user_id=user_id,
                    created_at=now,
                    expires_at=now + SESSION_TTL,
                    verified_at=now,
                )
            )
            db.commit()
        response.set_cookie(
            self.cookie_name,
            self._signer.dumps(token),
            max_age=int(SESSION_TTL.total_seconds()),
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )

    def end(self, conn: HTTPConnection, response: Response) -> None:
        token = self._token(conn)
        if token is not None:
            with Session(self.engine) as db:
                db.execute(delete(BrowserSession).where(col(BrowserSession.id) == _hash(token)))
                db.commit()
        response.delete_cookie(
            self.cookie_name, path="/", secure=self.secure, httponly=True, samesite="lax"
        )

    def mark_verified(self, signed_in: SignedIn) -> None:
        with Session(self.engine) as db:
            row = db.get(BrowserSession, signed_in.session.id)
            if row is not None:
                row.verified_at = utcnow()
                db.add(row)
                db.commit()
