from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.helpers import register, save_key
from tests.softauthn import SoftAuthenticator


@pytest.fixture
def owner(client: TestClient) -> SoftAuthenticator:
    """A signed-in owner with a saved key, in ``client``'s session."""
    authn = register(client)
    save_key(client, authn)
    return authn
