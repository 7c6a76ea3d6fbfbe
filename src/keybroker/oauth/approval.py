"""The owner's approval as authlib carries it from the consent screen to the token."""

from __future__ import annotations

from dataclasses import dataclass, field

from keybroker.crypto import tokens
from keybroker.grants import Choices


@dataclass
class Consent:
    """The approving owner, passed to authlib as ``grant_user``."""

    user_id: str
    choices: Choices
    provider_key: str = field(repr=False)
    token: tokens.AppToken | None = None
