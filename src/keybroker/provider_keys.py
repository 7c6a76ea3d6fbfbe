"""The owner's OpenAI key: shape checks, upstream validation, sealing, masking, deletion.

The plain key lives only in local variables for the few milliseconds between the form and
the seal; it is never logged, rendered (only ``sk-...abcd``) or put in an error message.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Engine, Select, select
from sqlmodel import Session, col

from keybroker.auth.accounts import audit
from keybroker.crypto import vault
from keybroker.crypto.keyring import KeyRing
from keybroker.models import KeySlot, VaultEntry, utcnow

PROVIDER = "openai"
MAX_KEY_LENGTH = 512
KEY_CHARS = re.compile(r"^[A-Za-z0-9_\-]+$")
# OpenAI echoes a partly masked key in some messages; none of it goes back to the page.
KEYLIKE = re.compile(r"sk-[A-Za-z0-9_\-*.]*")


class KeyRejectedError(ValueError):
    """The key cannot be kept; ``message`` says why in plain words and holds no part of it."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class StoredKey:
    hint: str
    kid: str
    created_at: str
    updated_at: str
    strict: bool = False


@dataclass(frozen=True)
class PrfProof:
    """A passkey's PRF output from a ceremony just verified: used, never stored."""

    passkey_id: str
    credential_id: str
    output: bytes = field(repr=False)


class VaultLockedError(Exception):
    message = (
        "Your key is in strict custody and this passkey has no key slot: confirm with "
        "a passkey that has one."
    )


class CustodyError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def content_binding(user_id: str) -> vault.Binding:
    return vault.Binding(subject=user_id, purpose=f"vault.{PROVIDER}.content")


def master_slot(user_id: str) -> vault.Binding:
    return vault.Binding(subject=user_id, purpose=f"vault.{PROVIDER}.master-slot")


def passkey_slot(passkey_id: str) -> vault.Binding:
    return vault.Binding(subject=passkey_id, purpose=f"vault.{PROVIDER}.passkey-slot")


def slot_key(proof: PrfProof) -> bytes:
    # The PRF output is already a secret per credential and salt; HKDF (RFC 5869) binds the
    # wrapping key to the credential and to this use.
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=proof.credential_id.encode(),
        info=b"keybroker passkey slot v1",
    ).derive(proof.output)


def binding(user_id: str) -> vault.Binding:
    return vault.Binding(subject=user_id, purpose=f"vault.{PROVIDER}")


def mask(key: str) -> str:
    return f"sk-...{key[-4:]}"


def check_shape(raw: str) -> str:
    """The pasted text, trimmed, if it can be an OpenAI key at all."""
    key = raw.strip()
    if not key:
        raise KeyRejectedError("Paste your OpenAI API key; the field was empty.")
    if len(key) > MAX_KEY_LENGTH:
        raise KeyRejectedError(
            f"That is far longer than an OpenAI API key ({len(key):,} characters). "
            "Copy just the key, which starts with sk-."
        )
    if not key.isascii():
        raise KeyRejectedError(
            "That contains characters an OpenAI API key never has (letters outside A-Z, "
            "accents, symbols or spaces). Copy the key again from the OpenAI dashboard."
        )
    if not key.startswith("sk-"):
        raise KeyRejectedError("OpenAI API keys start with sk-. Check that you copied the key.")
    if len(key) < 20 or not KEY_CHARS.match(key):
        raise KeyRejectedError(
            "That does not look like a whole OpenAI API key: it is too short or contains "
            "spaces or punctuation. Copy it again."
        )
    return key


def _upstream_reason(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = ""
    message = KEYLIKE.sub("(your key)", str(message)).strip()[:300]
    return message


def validate_upstream(key: str, *, upstream_url: str, timeout: float) -> None:
    """Ask the upstream whether the key works (``GET /models``) before keeping it."""
    try:
        response = httpx.get(
            f"{upstream_url}/models",
            headers={"authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(timeout),
        )
    except httpx.TimeoutException:
        raise KeyRejectedError(
            "OpenAI did not answer in time, so the key could not be checked. Nothing was "
            "saved; try again in a minute.",
            status=504,
        ) from None
    except httpx.HTTPError:
        raise KeyRejectedError(
            "OpenAI could not be reached, so the key could not be checked. Nothing was saved; "
            "try again in a minute.",
            status=502,
        ) from None
    if response.status_code == 200:
        return
    reason = _upstream_reason(response)
    if response.status_code in (401, 403):
        raise KeyRejectedError(
            "OpenAI rejected this key"
            + (f": {reason}" if reason else ".")
            + " Check that it is current and not revoked.",
        )
    if response.status_code == 429:
        raise KeyRejectedError(
            "OpenAI refused the check because this key is rate limited or out of quota"
            + (f": {reason}" if reason else ".")
            + " Nothing was saved.",
        )
    raise KeyRejectedError(
        f"OpenAI answered the check with an error (HTTP {response.status_code}). Nothing was "
        "saved; try again in a minute.",
        status=502,
    )


def stored_key(engine: Engine, user_id: str) -> StoredKey | None:
    row = _entry(engine, user_id)
    if row is None:
        return None
    return StoredKey(
        hint=row.hint,
        kid=row.kid or "",
        created_at=row.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        updated_at=row.updated_at.strftime("%Y-%m-%d %H:%M UTC"),
        strict=row.strict,
    )


def _query(user_id: str) -> Select[VaultEntry]:
    return select(VaultEntry).where(
        col(VaultEntry.user_id) == user_id, col(VaultEntry.provider) == PROVIDER
    )


def _entry(engine: Engine, user_id: str) -> VaultEntry | None:
    with Session(engine) as db:
        return db.execute(_query(user_id)).scalar_one_or_none()


def _content_key(db: Session, row: VaultEntry, ring: KeyRing, proof: PrfProof | None) -> bytes:
    """The vault's content key, through the master slot or the given passkey's slot."""
    if row.sealed is not None:
        return vault.open_sealed(row.sealed, ring, expected_binding=master_slot(row.user_id))
    if proof is not None:
        slot = db.execute(
            select(KeySlot).where(
                col(KeySlot.passkey_id) == proof.passkey_id, col(KeySlot.user_id) == row.user_id
            )
        ).scalar_one_or_none()
        if slot is not None:
            return vault.open_direct(
                slot.wrapped, slot_key(proof), expected_binding=passkey_slot(proof.passkey_id)
            )
    raise VaultLockedError()


def _upgrade(row: VaultEntry, ring: KeyRing) -> None:
    """Format 1 (key under a master key) to format 2 (content key + master slot)."""
    if row.format != 1 or row.sealed is None:
        return
    key = vault.open_sealed(row.sealed, ring, expected_binding=binding(row.user_id))
    cek = secrets.token_bytes(32)
    row.content = vault.seal_direct(key, cek, binding=content_binding(row.user_id))
    row.sealed = vault.seal(cek, ring, binding=master_slot(row.user_id))
    row.kid, row.format = ring.active_kid, 2


def save_key(engine: Engine, ring: KeyRing, *, user_id: str, key: str) -> bool:
    """Seal and keep a validated key; returns True when it replaced an earlier one.

    A replacement keeps the content key, so existing passkey slots keep opening the vault.
    """
    with Session(engine) as db:
        row = db.execute(_query(user_id)).scalar_one_or_none()
        replaced = row is not None
        if row is None:
            cek = secrets.token_bytes(32)
            row = VaultEntry(
                user_id=user_id,
                provider=PROVIDER,
                format=2,
                hint=mask(key),
                sealed=vault.seal(cek, ring, binding=master_slot(user_id)),
                kid=ring.active_kid,
            )
        else:
            if row.strict:
                raise KeyRejectedError(
                    "Your key is in strict custody: only your passkeys can open it. Switch to "
                    "master-key custody in settings to replace it, then switch back.",
                    status=409,
                )
            _upgrade(row, ring)
            cek = _content_key(db, row, ring, None)
            row.hint, row.updated_at = mask(key), utcnow()
        row.content = vault.seal_direct(key.encode(), cek, binding=content_binding(user_id))
        db.add(row)
        audit(db, user_id, "key.replaced" if replaced else "key.saved", mask(key))
        db.commit()
    return replaced


def open_key(
    engine: Engine, ring: KeyRing, user_id: str, proof: PrfProof | None = None
) -> str | None:
    """The plain key, for re-sealing into a grant copy while the owner is present."""
    with Session(engine) as db:
        row = db.execute(_query(user_id)).scalar_one_or_none()
        if row is None:
            return None
        if row.format == 1:
            assert row.sealed is not None
            return vault.open_sealed(row.sealed, ring, expected_binding=binding(user_id)).decode()
        assert row.content is not None
        cek = _content_key(db, row, ring, proof)
        return vault.open_direct(
            row.content, cek, expected_binding=content_binding(user_id)
        ).decode()


def add_slot(
    engine: Engine, ring: KeyRing, user_id: str, new: PrfProof, opener: PrfProof | None = None
) -> bool:
    """Wrap the content key for ``new``'s passkey; ``opener`` opens it in strict custody.

    Returns True when a slot was added; raises VaultLockedError when nothing opens the vault.
    """
    with Session(engine) as db:
        row = db.execute(_query(user_id)).scalar_one_or_none()
        if row is None:
            return False
        exists = db.execute(
            select(KeySlot).where(col(KeySlot.passkey_id) == new.passkey_id)
        ).scalar_one_or_none()
        if exists is not None:
            return False
        _upgrade(row, ring)
        cek = _content_key(db, row, ring, opener or new)
        db.add(row)
        db.add(
            KeySlot(
                user_id=user_id,
                passkey_id=new.passkey_id,
                wrapped=vault.seal_direct(cek, slot_key(new), binding=passkey_slot(new.passkey_id)),
            )
        )
        audit(db, user_id, "key.slot_added", new.passkey_id)
        db.commit()
    return True


def slotted_passkeys(engine: Engine, user_id: str) -> set[str]:
    with Session(engine) as db:
        return set(
            db.execute(
                select(col(KeySlot.passkey_id)).where(col(KeySlot.user_id) == user_id)
            ).scalars()
        )


def set_custody(
    engine: Engine, ring: KeyRing, user_id: str, *, strict: bool, proof: PrfProof | None
) -> None:
    """Strict custody drops the master slot; master-key custody puts it back."""
    from keybroker.models import Passkey

    with Session(engine) as db:
        row = db.execute(_query(user_id)).scalar_one_or_none()
        if row is None:
            raise CustodyError("There is no key to protect yet. Save your OpenAI key first.")
        if strict == row.strict:
            return
        if strict:
            passkeys = list(
                db.execute(select(Passkey).where(col(Passkey.user_id) == user_id)).scalars()
            )
            slotted = set(
                db.execute(
                    select(col(KeySlot.passkey_id)).where(col(KeySlot.user_id) == user_id)
                ).scalars()
            )
            without_prf = [p.name for p in passkeys if not p.prf_supported]
            if without_prf:
                raise CustodyError(
                    "Strict custody needs every passkey to support the PRF extension, and "
                    f"these do not: {', '.join(without_prf)}. Remove them or keep master-key "
                    "custody."
                )
            unslotted = [p.name for p in passkeys if p.id not in slotted]
            if unslotted:
                raise CustodyError(
                    "These passkeys have no key slot yet; confirm once with each of them "
                    f"(for example by allowing an app) first: {', '.join(unslotted)}."
                )
            _upgrade(row, ring)
            row.sealed, row.kid, row.strict = None, None, True
            audit(db, user_id, "key.custody_strict")
        else:
            cek = _content_key(db, row, ring, proof)
            row.sealed = vault.seal(cek, ring, binding=master_slot(user_id))
            row.kid, row.strict = ring.active_kid, False
            audit(db, user_id, "key.custody_master")
        db.add(row)
        db.commit()


def delete_key(engine: Engine, user_id: str) -> bool:
    """Erase the key and end every grant made from it (their grant copies go too)."""
    from keybroker.grants import revoke_all_of

    revoke_all_of(engine, user_id, reason="grant.revoked_key_deleted")
    with Session(engine) as db:
        row = db.execute(_query(user_id)).scalar_one_or_none()
        if row is None:
            return False
        db.delete(row)
        audit(db, user_id, "key.deleted", row.hint)
        db.commit()
    return True
