"""keybroker: a self-hostable "Sign in with OpenAI" consent broker."""

from __future__ import annotations

__version__ = "0.1.0"
