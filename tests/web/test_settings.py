"""The settings page and its actions against an in-process broker and the mock upstream."""

from __future__ import annotations

import openai
import pytest
from sqlalchemy import inspect, select, text
from sqlmodel import Session

from keybroker.crypto import tokens
from keybroker.models import Passkey, User
from tests.helpers import SAME_ORIGIN, add_passkey, confirmed
from tests.live import Live, wait_for
from tests.softauthn import SoftAuthenticator

APP_A = "http://127.0.0.1:5555"
APP_B = "http://127.0.0.1:6666"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def chat(live: Live, token: str, **extra: str) -> object:
    return live.client(token).chat.completions.create(**{**CHAT, **extra})  # type: ignore[call-overload]


def grant_id(token: str) -> str:
    return tokens.parse_token(token).grant_id


def test_two_apps_shown_with_spend_then_revoke_one(live: Live) -> None:
    web, authn = live.owner()
    token_a = live.grant_for(web, authn, APP_A)
    token_b = live.grant_for(web, authn, APP_B)
    for _ in range(3):
        chat(live, token_a)
    chat(live, token_b)
    wait_for(lambda: len(live.usage(grant_id(token_a))) == 3)
    wait_for(lambda: len(live.usage(grant_id(token_b))) == 1)
    page = web.get("/settings").text
    assert APP_A in page
    assert APP_B in page
    # 3 requests at 10 in + 7 out tokens of gpt-4o-mini, 6 micro-USD each.
    assert '<span class="requests">3</span>' in page
    assert '<span class="spend">$0.0000</span>' in page or "$0.00" in page
    assert "30 tokens in, 21 out" in page
    assert "7 out" in page
    assert 'aria-label="Revoke access for http://127.0.0.1:5555"' in page
    assert "<svg" in page

    response = web.post(f"/settings/grants/{grant_id(token_a)}/revoke", headers=SAME_ORIGIN)
    assert "Access for http://127.0.0.1:5555 is revoked." in response.text
    with pytest.raises(openai.AuthenticationError):
        chat(live, token_a)
    chat(live, token_b)  # the other app still works

    log = web.get(f"/settings/grants/{grant_id(token_a)}/requests").text
    assert log.count("POST /v1/chat/completions") == 3
    activity = web.get("/settings").text
    assert "grant.revoked" in activity
    assert "grant.created" in activity


def test_budget_change_takes_effect_on_the_next_request(live: Live) -> None:
    web, authn = live.owner()
    token = live.grant_for(web, authn, APP_A)
    chat(live, token, model="gpt-4o")
    wait_for(lambda: live.usage(grant_id(token)))
    limits = {"budget_usd": "0", "rpm": "600", "days": "30", "models": ""}
    web.post(f"/settings/grants/{grant_id(token)}/limits", data=limits, headers=SAME_ORIGIN)
    with pytest.raises(openai.RateLimitError) as info:
        chat(live, token)
    assert info.value.code == "insufficient_quota"
    web.post(
        f"/settings/grants/{grant_id(token)}/limits",
        data={**limits, "budget_usd": "10"},
        headers=SAME_ORIGIN,
    )
    chat(live, token)
    # Models and rate limits change too.
    web.post(
        f"/settings/grants/{grant_id(token)}/limits",
        data={**limits, "budget_usd": "10", "models": "gpt-4o"},
        headers=SAME_ORIGIN,
    )
    with pytest.raises(openai.PermissionDeniedError):
        chat(live, token)
    bad = web.post(
        f"/settings/grants/{grant_id(token)}/limits",
        data={**limits, "rpm": "0"},
        headers=SAME_ORIGIN,
    )
    assert "Requests per minute must be between" in bad.text


def person_rows(live: Live, user_id: str, handle: str) -> dict[str, int]:
    """Rows in every table that mention this person, by any column."""
    counts = {}
    with Session(live.ctx.engine) as db:
        for table in inspect(live.ctx.engine).get_table_names():
            if table == "alembic_version":
                continue
            columns = [c["name"] for c in inspect(live.ctx.engine).get_columns(table)]
            wanted = [c for c in columns if c in ("user_id", "subject", "id", "webauthn_handle")]
            if not wanted:
                continue
            where = " OR ".join(f"CAST({c} AS VARCHAR) IN (:u, :h)" for c in wanted)
            counts[table] = db.execute(
                text(f"SELECT COUNT(*) FROM {table} WHERE {where}"), {"u": user_id, "h": handle}
            ).scalar_one()
    return counts


def test_delete_account_leaves_no_row_and_kills_every_token(live: Live) -> None:
    web, authn = live.owner()
    tokens_issued = [live.grant_for(web, authn, APP_A), live.grant_for(web, authn, APP_B)]
    for token in tokens_issued:
        chat(live, token)
    wait_for(lambda: all(live.usage(grant_id(t)) for t in tokens_issued))
    with Session(live.ctx.engine) as db:
        user = db.execute(
            select(User)
            .join(Passkey, Passkey.user_id == User.id)
            .where(  # type: ignore[arg-type]
                Passkey.credential_id == authn.credential_id_b64
            )
        ).scalar_one()  # type: ignore[arg-type]
    before = person_rows(live, user.id, user.webauthn_handle)
    assert sum(before.values()) > 8
    refused = web.post("/settings/account/delete", json={}, headers=SAME_ORIGIN)
    assert refused.status_code == 400  # no passkey confirmation
    done = confirmed(web, authn, "/settings/account/delete")  # type: ignore[arg-type]
    assert done.json() == {"redirect": "/?deleted=1"}
    after = person_rows(live, user.id, user.webauthn_handle)
    assert after == dict.fromkeys(after, 0), after
    for token in tokens_issued:
        with pytest.raises(openai.AuthenticationError):
            chat(live, token)
    assert web.get("/settings", follow_redirects=False).status_code == 303


def test_passkeys_rename_remove_never_the_last(live: Live) -> None:
    web, authn = live.owner()
    with Session(live.ctx.engine) as db:
        mine = db.execute(
            select(Passkey).where(Passkey.credential_id == authn.credential_id_b64)
        ).scalar_one()  # type: ignore[arg-type]
    web.post(
        f"/settings/passkeys/{mine.id}/rename", data={"name": "Work laptop 7"}, headers=SAME_ORIGIN
    )
    assert "Work laptop 7" in web.get("/settings").text
    last = confirmed(web, authn, f"/settings/passkeys/{mine.id}/remove")  # type: ignore[arg-type]
    assert last.status_code == 409
    assert "only passkey" in last.json()["error"]
    second = SoftAuthenticator()
    added = add_passkey(web, second, confirm_with=authn)  # type: ignore[arg-type]
    assert added.status_code == 200, added.text
    removed = confirmed(web, second, f"/settings/passkeys/{mine.id}/remove")  # type: ignore[arg-type]
    assert removed.status_code == 200
    page = web.get("/settings").text
    assert 'value="Work laptop 7"' not in page  # no rename field: the row is gone
    assert "<td>passkey.removed</td><td>Work laptop 7</td>" in page


SETTINGS_POSTS = [
    "/settings/grants/x/revoke",
    "/settings/grants/x/limits",
    "/settings/passkeys/x/rename",
    "/settings/passkeys/x/remove",
    "/settings/key/delete",
    "/settings/account/delete",
    "/key",
    "/auth/passkeys/options",
    "/auth/confirm/options",
    "/auth/signout",
]


@pytest.mark.parametrize("path", SETTINGS_POSTS)
def test_cross_site_posts_are_refused(live: Live, path: str) -> None:
    web, _ = live.owner()
    response = web.post(
        path,
        data={"x": "1"},
        follow_redirects=False,
        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
    )
    assert response.status_code == 403
    assert web.get("/settings", follow_redirects=False).status_code == 200  # still signed in


@pytest.mark.parametrize(
    "path", ["/settings", "/settings/activity", "/key", "/settings/grants/x/requests"]
)
def test_signed_out_pages_send_to_sign_in(live: Live, path: str) -> None:
    import httpx

    response = httpx.get(f"{live.url}{path}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/signin?next=")


@pytest.mark.parametrize("path", ["/settings/grants/x/revoke", "/settings/account/delete"])
def test_signed_out_actions_are_refused(live: Live, path: str) -> None:
    import httpx

    response = httpx.post(f"{live.url}{path}", json={}, follow_redirects=False, headers=SAME_ORIGIN)
    assert response.status_code in (303, 401)


def test_the_page_shows_no_text_from_a_link(live: Live) -> None:
    web, _ = live.owner()
    bait = "Your account is locked. Call 555-0100"
    for query in (f"error={bait}", f"done={bait}", f"notice={bait}", "notice=WyJlcnJvciIsIngiXQ"):
        assert bait not in web.get(f"/settings?{query}").text
        assert 'role="alert">' not in web.get(f"/settings?{query}").text.split("<nav")[0]
    # What keybroker itself says after an action is shown.
    answer = web.post("/settings/grants/nope/revoke", headers=SAME_ORIGIN)
    assert "No such app." in answer.text
