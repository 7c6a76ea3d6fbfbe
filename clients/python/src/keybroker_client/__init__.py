"""keybroker-client: OpenAI access for Python command-line and desktop apps through keybroker.

from openai import OpenAI
from keybroker_client import request_openai_api

client = OpenAI(**request_openai_api("https://broker.example", "kbc_..."))
"""

from __future__ import annotations

from keybroker_client.api import browser_available, request_openai_api, revoke
from keybroker_client.errors import CODES, KeybrokerError

__all__ = ["CODES", "KeybrokerError", "browser_available", "request_openai_api", "revoke"]
