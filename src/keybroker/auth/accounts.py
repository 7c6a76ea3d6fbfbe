"""Accounts and their passkeys in the database; every change leaves an audit event."""

from __future__ import annotations

import json

from sqlalchemy import Engine, delete, select
from sqlmodel import Session, col

from keybroker.auth.passkeys import Assertion, NewCredential, StoredCredential
from keybroker.models import AuditEvent, Passkey, User, utcnow


def audit(db: Session, user_id: str, action: str, detail: str = "") -> None:
    db.add(AuditEvent(user_id=user_id, action=action, detail=detail[:500]))


def _passkey_row(user_id: str, cred: NewCredential, name: str, prf: bool = False) -> Passkey:
    return Passkey(
        user_id=user_id,
        credential_id=cred.credential_id,
        public_key=cred.public_key,
        sign_count=cred.sign_count,
        transports=json.dumps(cred.transports),
        aaguid=cred.aaguid,
        device_type=cred.device_type,
        backed_up=cred.backed_up,
        prf_supported=prf,
        name=name[:100],
        last_used_at=utcnow(),
    )


def create_account(
    engine: Engine, *, handle: str, name: str, cred: NewCredential, prf: bool = False
) -> User:
    with Session(engine, expire_on_commit=False) as db:
        user = User(webauthn_handle=handle, name=name)
        db.add(user)
        db.flush()
        db.add(_passkey_row(user.id, cred, "First passkey", prf))
        audit(db, user.id, "account.created")
        audit(db, user.id, "passkey.added", "First passkey")
        db.commit()
        return user


def add_passkey(
    engine: Engine, *, user_id: str, cred: NewCredential, name: str, prf: bool = False
) -> Passkey:
    with Session(engine, expire_on_commit=False) as db:
        row = _passkey_row(user_id, cred, name, prf)
        db.add(row)
        audit(db, user_id, "passkey.added", name)
        db.commit()
        return row


def find_credential(engine: Engine, credential_id: str) -> tuple[Passkey, User] | None:
    with Session(engine, expire_on_commit=False) as db:
        row = db.execute(
            select(Passkey, User)
            .join(User, col(User.id) == col(Passkey.user_id))
            .where(col(Passkey.credential_id) == credential_id)
        ).first()
        return None if row is None else (row[0], row[1])


def stored_credential(passkey: Passkey, user: User) -> StoredCredential:
    return StoredCredential(
        credential_id=passkey.credential_id,
        user_handle=user.webauthn_handle,
        public_key=passkey.public_key,
        sign_count=passkey.sign_count,
        device_type=passkey.device_type,
    )


def record_sign_in(
    engine: Engine,
    passkey_id: str,
    assertion: Assertion,
    *,
    action: str = "signed_in",
    prf: bool = False,
) -> None:
    with Session(engine) as db:
        row = db.get(Passkey, passkey_id)
        if row is None:
            return
        row.sign_count = assertion.new_sign_count
        row.backed_up = assertion.backed_up
        row.prf_supported = row.prf_supported or prf
        row.last_used_at = utcnow()
        db.add(row)
        audit(db, row.user_id, action, row.name)
        db.commit()


def passkeys_of(engine: Engine, user_id: str) -> list[Passkey]:
    with Session(engine) as db:
        return list(
            db.execute(
                select(Passkey)
                .where(col(Passkey.user_id) == user_id)
                .order_by(col(Passkey.created_at))
            ).scalars()
        )


def rename_passkey(engine: Engine, user_id: str, passkey_id: str, name: str) -> bool:
    with Session(engine) as db:
        row = db.get(Passkey, passkey_id)
        if row is None or row.user_id != user_id:
            return False
        old, row.name = row.name, name[:100]
        db.add(row)
        audit(db, user_id, "passkey.renamed", f"{old} -> {row.name}")
        db.commit()
    return True


class LastPasskeyError(Exception):
    pass


def remove_passkey(engine: Engine, user_id: str, passkey_id: str) -> bool:
    with Session(engine) as db:
        rows = list(db.execute(select(Passkey).where(col(Passkey.user_id) == user_id)).scalars())
        row = next((r for r in rows if r.id == passkey_id), None)
        if row is None:
            return False
        if len(rows) == 1:
            raise LastPasskeyError()
        db.delete(row)
        audit(db, user_id, "passkey.removed", row.name)
        db.commit()
    return True


def delete_account(engine: Engine, user_id: str) -> None:
    """Remove the person and everything of theirs; their apps' tokens die at once."""
    from keybroker.events import GRANT_CHANGES
    from keybroker.models import Challenge, Grant

    with Session(engine) as db:
        user = db.get(User, user_id)
        if user is None:
            return
        grant_ids = list(
            db.execute(select(col(Grant.id)).where(col(Grant.user_id) == user_id)).scalars()
        )
        db.execute(
            delete(Challenge).where(col(Challenge.subject).in_([user_id, user.webauthn_handle]))
        )
        # ON DELETE CASCADE removes passkeys, sessions, vault entry, codes, grants, usage, audit.
        db.execute(delete(User).where(col(User.id) == user_id))
        db.commit()
    for grant_id in grant_ids:
        GRANT_CHANGES.publish(grant_id)
