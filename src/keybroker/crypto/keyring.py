"""The master key ring: ``KEYBROKER_MASTER_KEYS="kid1:<base64 32 bytes>,kid0:..."``.

The first entry is active (new records are sealed under it); the others only open old
records until ``keybroker keys rewrap`` has moved everything to the active kid. The ring
never touches the database, and no error message ever contains key material.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

KID_RE = re.compile(r"^[A-Za-z0-9_.]{1,32}$")
KEY_BYTES = 32


class KeyRingError(ValueError):
    """KEYBROKER_MASTER_KEYS is malformed; the message says where, never what the key is."""


class UnknownKidError(LookupError):
    def __init__(self, kid: str) -> None:
        super().__init__(
            f"record is sealed under master key {kid!r}, which is not in KEYBROKER_MASTER_KEYS"
        )
        self.kid = kid


@dataclass(frozen=True)
class KeyRing:
    kids: tuple[str, ...]
    _keys: dict[str, bytes] = field(repr=False, compare=False)
    _imported: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        entries = [e.strip() for e in text.split(",") if e.strip()]
        if not entries:
            raise KeyRingError("KEYBROKER_MASTER_KEYS is empty; expected 'kid:<base64 32 bytes>'")
        keys: dict[str, bytes] = {}
        for position, entry in enumerate(entries, start=1):
            kid, sep, encoded = entry.partition(":")
            kid = kid.strip()
            if not sep:
                raise KeyRingError(f"KEYBROKER_MASTER_KEYS entry {position} has no 'kid:' prefix")
            if not KID_RE.match(kid):
                raise KeyRingError(
                    f"KEYBROKER_MASTER_KEYS entry {position}: kid must be 1-32 of A-Z a-z 0-9 _ ."
                )
            if kid in keys:
                raise KeyRingError(f"KEYBROKER_MASTER_KEYS names kid {kid!r} twice")
            try:
                raw = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(
                    f"KEYBROKER_MASTER_KEYS kid {kid!r}: the key is not valid base64"
                ) from None
            if len(raw) != KEY_BYTES:
                raise KeyRingError(
                    f"KEYBROKER_MASTER_KEYS kid {kid!r}: the key must be {KEY_BYTES} bytes,"
                    f" got {len(raw)}"
                )
            keys[kid] = raw
        return cls(tuple(keys), keys)

    @property
    def active_kid(self) -> str:
        return self.kids[0]

    def oct_key(self, kid: str) -> Any:
        """The key as a joserfc OctKey, imported once per kid."""
        cached = self._imported.get(kid)
        if cached is None:
            from joserfc.jwk import OctKey

            cached = self._imported[kid] = OctKey.import_key(self.key(kid))
        return cached

    def key(self, kid: str) -> bytes:
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKidError(kid) from None

    def rotated(self) -> tuple[KeyRing, str]:
        """A ring with a fresh active key in front, and its environment-variable text."""
        numbers = [int(k[1:]) for k in self.kids if re.fullmatch(r"k\d+", k)]
        kid = f"k{max(numbers, default=0) + 1}"
        while kid in self._keys:
            kid += "_"
        keys = {kid: secrets.token_bytes(KEY_BYTES), **self._keys}
        ring = KeyRing(tuple(keys), keys)
        return ring, ring.serialize()

    def serialize(self) -> str:
        return ",".join(f"{k}:{base64.b64encode(self._keys[k]).decode()}" for k in self.kids)
