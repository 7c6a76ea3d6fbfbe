"""The owner's OpenAI key: shape checks, upstream validation, sealing, masking, deletion.

The plain key lives only in local variables for the few milliseconds between the form and
the seal; it is never logged, rendered (only ``sk-...abcd``) or put in an error message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
from sqlalchemy import Engine, Select, select
from sqlmodel import Session, col

from keybroker.auth.accounts import audit
from keybroker.crypto import vault
from keybroker.crypto.keyring import KeyRing
from keybroker.models import VaultEntry, utcnow

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
        kid=row.kid,
        created_at=row.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        updated_at=row.updated_at.strftime("%Y-%m-%d %H:%M UTC"),
    )


def _query(user_id: str) -> Select[VaultEntry]:
    return select(VaultEntry).where(
        col(VaultEntry.user_id) == user_id, col(VaultEntry.provider) == PROVIDER
    )


def _entry(engine: Engine, user_id: str) -> VaultEntry | None:
    with Session(engine) as db:
        return db.execute(_query(user_id)).scalar_one_or_none()


def save_key(engine: Engine, ring: KeyRing, *, user_id: str, key: str) -> bool:
    """Seal and keep a validated key; returns True when it replaced an earlier one."""
    sealed = vault.seal(key.encode(), ring, binding=binding(user_id))
    with Session(engine) as db:
        row = db.execute(_query(user_id)).scalar_one_or_none()
        replaced = row is not None
        if row is None:
            row = VaultEntry(
                user_id=user_id,
                provider=PROVIDER,
                sealed=sealed,
                kid=ring.active_kid,
                hint=mask(key),
            )
        else:
            row.sealed, row.kid, row.hint, row.updated_at = (
                sealed,
                ring.active_kid,
                mask(key),
                utcnow(),
            )
        db.add(row)
        audit(db, user_id, "key.replaced" if replaced else "key.saved", mask(key))
        db.commit()
    return replaced


def open_key(engine: Engine, ring: KeyRing, user_id: str) -> str | None:
    """The plain key, for re-sealing into a grant copy while the owner is present."""
    row = _entry(engine, user_id)
    if row is None:
        return None
    return vault.open_sealed(row.sealed, ring, expected_binding=binding(user_id)).decode()


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
