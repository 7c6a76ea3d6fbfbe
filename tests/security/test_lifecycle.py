"""A hypothesis state machine over the grant lifecycle: create, use, change limits, expire,
revoke, delete the key, delete the account. A token works exactly while its grant is live
and within its limits."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import update
from sqlmodel import Session
from starlette.testclient import TestClient

from keybroker.app import create_app
from keybroker.context import get_context
from keybroker.crypto import tokens
from keybroker.models import Grant, utcnow
from keybroker.settings import Settings
from tests.helpers import SAME_ORIGIN, confirmed, grant_token, register, save_key
from tests.softauthn import SoftAuthenticator


@dataclass
class Model:
    token: str
    owner: int
    revoked: bool = False
    expired: bool = False
    budget_zero: bool = False


def lifecycle(base: Settings, tmp: Path) -> type[RuleBasedStateMachine]:
    class GrantLifecycle(RuleBasedStateMachine):
        grants = Bundle("grants")

        def __init__(self) -> None:
            super().__init__()
            url = f"sqlite:///{tmp / f'lifecycle-{id(self)}.db'}"
            self.client = TestClient(
                create_app(replace(base, database_url=url)), base_url="http://localhost:8000"
            )
            self.client.__enter__()
            self.models: list[Model] = []
            self.has_key = True
            self.authn: SoftAuthenticator | None = None
            self.generation = 0  # which account is the current one

        @initialize()
        def owner(self) -> None:
            self.authn = register(self.client)
            self.generation += 1
            save_key(self.client, self.authn)
            self.has_key = True

        @property
        def engine(self):  # type: ignore[no-untyped-def]
            return get_context(self.client).engine

        @rule(target=grants)
        def create(self) -> Model:
            if self.authn is None or not self.has_key:
                self.owner() if self.authn is None else save_key(self.client, self.authn)
                self.has_key = True
            token = grant_token(self.client, self.authn)["access_token"]  # type: ignore[arg-type]
            model = Model(token, self.generation)
            self.models.append(model)
            return model

        @rule(model=grants)
        def use(self, model: Model) -> None:
            response = self.client.get(
                "/v1/models", headers={"authorization": f"Bearer {model.token}"}
            )
            if model.revoked or model.expired:
                assert response.status_code == 401, response.text
            elif model.budget_zero:
                assert response.status_code == 429, response.text
                assert response.json()["error"]["code"] == "insufficient_quota"
            else:
                assert response.status_code == 200, response.text

        @rule(model=grants, zero=st.booleans())
        def change_budget(self, model: Model, zero: bool) -> None:
            grant_id = tokens.parse_token(model.token).grant_id
            response = self.client.post(
                f"/settings/grants/{grant_id}/limits",
                headers=SAME_ORIGIN,
                data={
                    "budget_usd": "0" if zero else "5",
                    "rpm": "1000",
                    "days": "30",
                    "models": "",
                },
            )
            if self.authn is not None and model.owner == self.generation:
                # The owner changed the limits; the expiry now counts from now.
                assert "changed" in response.text
                model.budget_zero = zero
                model.expired = False

        @rule(model=grants)
        def expire(self, model: Model) -> None:
            with Session(self.engine) as db:
                db.execute(
                    update(Grant)
                    .where(Grant.id == tokens.parse_token(model.token).grant_id)  # type: ignore[arg-type]
                    .values(expires_at=utcnow() - timedelta(seconds=1))
                )
                db.commit()
            from keybroker.events import GRANT_CHANGES

            GRANT_CHANGES.publish(tokens.parse_token(model.token).grant_id)
            model.expired = True

        @rule(model=grants)
        def revoke(self, model: Model) -> None:
            self.client.post(
                "/oauth/revoke", data={"token": model.token, "client_id": "http://127.0.0.1:5555"}
            )
            model.revoked = True

        @rule()
        def delete_key(self) -> None:
            if self.authn is None:
                return
            confirmed(self.client, self.authn, "/settings/key/delete")
            self.has_key = False
            for model in self.models:
                model.revoked = True

        @rule()
        def delete_account(self) -> None:
            if self.authn is None:
                return
            confirmed(self.client, self.authn, "/settings/account/delete")
            self.client.cookies.clear()
            self.authn = None
            for model in self.models:
                model.revoked = True

        @invariant()
        def nothing_leaks(self) -> None:
            for model in self.models[-1:]:
                secret = tokens.parse_token(model.token).secret
                assert secret not in self.client.get("/").text

        def teardown(self) -> None:
            self.client.__exit__(None, None, None)

    return GrantLifecycle


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_grant_lifecycle(settings: Settings, tmp_path: Path) -> None:
    machine = lifecycle(settings, tmp_path)
    run_state_machine_as_test(machine, settings=settings_for_ci())


def settings_for_ci() -> hypothesis_settings:
    return hypothesis_settings(
        max_examples=12,
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
