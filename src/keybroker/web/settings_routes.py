"""The owner's control panel: apps with access, key, passkeys, activity, account."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from keybroker import grants as grant_store
from keybroker import object_cleanup, provider_keys, reports
from keybroker.auth import accounts
from keybroker.auth.sessions import SignedIn
from keybroker.context import Context, get_context
from keybroker.grants import ChoiceError, GrantNotFoundError
from keybroker.provider_keys import PrfProof, VaultLockedError
from keybroker.proxy.limits import LimitsUnavailable
from keybroker.proxy.ownership import counts_of
from keybroker.web.confirm import (
    CONFIRMATION_ERRORS,
    confirmation_problem,
    verify_fresh_assertion,
)
from keybroker.web.forms import guard, json_guard, read_form
from keybroker.web.http import HTTPProblem, read_json_object
from keybroker.web.notices import Kind, Notices
from keybroker.web.pages import render


def _page(request: Request) -> int:
    value = request.query_params.get("page", "0")
    return min(int(value), 10_000) if value.isdigit() else 0


async def settings_page(request: Request) -> Response:
    signed_in = await guard(request, "/settings")
    if isinstance(signed_in, Response):
        return signed_in
    ctx = get_context(request)
    user_id = signed_in.user.id
    all_grants = await run_in_threadpool(grant_store.grants_of, ctx.engine, user_id)
    totals = await run_in_threadpool(reports.month_totals, ctx.engine, user_id)
    days = await run_in_threadpool(reports.daily, ctx.engine, user_id)
    keys = await run_in_threadpool(accounts.passkeys_of, ctx.engine, user_id)
    stored = await run_in_threadpool(provider_keys.stored_key, ctx.engine, user_id)
    activity, more = await run_in_threadpool(reports.activity_page, ctx.engine, user_id, 0)
    slots = await run_in_threadpool(provider_keys.slotted_passkeys, ctx.engine, user_id)
    charts = {g.id: reports.spend_chart(days.get(g.id, [])) for g in all_grants if g.live}
    objects = await run_in_threadpool(counts_of, ctx.engine, user_id)
    reserved: dict[str, int | None] = {}
    for g in all_grants:
        if g.live:
            try:
                reserved[g.id] = (await ctx.proxy.spend.state(g))[1]
            except LimitsUnavailable:
                reserved[g.id] = None  # shown as unknown; the page still works
    return render(
        request,
        "settings.html",
        signed_in=signed_in,
        live=[g for g in all_grants if g.live],
        ended=[g for g in all_grants if not g.live],
        totals=totals,
        empty=reports.Totals(),
        charts=charts,
        objects=objects,
        reserved=reserved,
        passkeys=keys,
        stored_key=stored,
        activity=activity,
        more_activity=more,
        slots=slots,
        notice=_notices(ctx).read(request.query_params.get("notice")),
    )


def _notices(ctx: Context) -> Notices:
    return Notices(ctx.settings.secret_key)


def _back(ctx: Context, kind: Kind, text: str, fragment: str = "") -> str:
    """The settings page showing ``text`` (signed: the page shows no text from a link)."""
    return _notices(ctx).url("/settings", kind, text, fragment)


FormAction = Callable[[Request, Context, SignedIn, dict[str, str]], Awaitable[str]]


def form_action(action: FormAction) -> Callable[[Request], Awaitable[Response]]:
    """A settings form post: same-site, signed in, then back to the page with a message."""

    async def endpoint(request: Request) -> Response:
        signed_in = await guard(request, "/settings")
        if isinstance(signed_in, Response):
            return signed_in
        ctx = get_context(request)
        try:
            form = await read_form(request)
            done = await action(request, ctx, signed_in, form.fields)
        except (HTTPProblem, ChoiceError) as exc:
            message = exc.message if isinstance(exc, HTTPProblem) else str(exc)
            return RedirectResponse(_back(ctx, "error", message, "apps"), status_code=303)
        except GrantNotFoundError:
            return RedirectResponse(_back(ctx, "error", "No such app.", "apps"), status_code=303)
        return RedirectResponse(_back(ctx, "done", done), status_code=303)

    return endpoint


async def revoke(request: Request, ctx: Context, signed_in: SignedIn, form: dict[str, str]) -> str:
    grant = await run_in_threadpool(
        grant_store.owned, ctx.engine, request.path_params["grant_id"], signed_in.user.id
    )
    await run_in_threadpool(grant_store.revoke, ctx.engine, grant.id)
    return f"Access for {grant.client_name} is revoked."


async def revoke_and_delete(
    request: Request, ctx: Context, signed_in: SignedIn, form: dict[str, str]
) -> str:
    """Revoke, then delete upstream what the app made through keybroker (issue #22)."""
    grant = await run_in_threadpool(
        grant_store.owned, ctx.engine, request.path_params["grant_id"], signed_in.user.id
    )
    await run_in_threadpool(grant_store.revoke, ctx.engine, grant.id)
    try:
        key = await run_in_threadpool(
            provider_keys.open_key, ctx.engine, ctx.ring, signed_in.user.id
        )
    except VaultLockedError:
        key = None  # strict custody: the vault opens only with a passkey's PRF output
    if key is None:
        raise HTTPProblem(
            409,
            f"Access for {grant.client_name} is revoked, but its files were not deleted: "
            "keybroker cannot open your OpenAI key without your passkey here.",
        )
    done = await run_in_threadpool(
        lambda: object_cleanup.delete_objects(
            ctx.engine,
            grant.id,
            key,
            upstream_url=ctx.settings.upstream_url,
            timeout=ctx.settings.validation_timeout,
        )
    )
    message = f"Access for {grant.client_name} is revoked; {done.deleted} of its objects deleted."
    if done.failed:
        message += f" {done.failed} could not be deleted now; delete them at OpenAI."
    if done.kept:
        message += f" {done.kept} (batches, fine-tuning jobs, uploads) OpenAI keeps."
    return message


async def change_limits(
    request: Request, ctx: Context, signed_in: SignedIn, form: dict[str, str]
) -> str:
    grant = await run_in_threadpool(
        grant_store.owned, ctx.engine, request.path_params["grant_id"], signed_in.user.id
    )
    choices = grant_store.choices_from_form(form, sorted(grant.scopes))
    await run_in_threadpool(
        grant_store.update_limits, ctx.engine, grant.id, signed_in.user.id, choices
    )
    return f"Limits for {grant.client_name} changed."


async def rename_passkey(
    request: Request, ctx: Context, signed_in: SignedIn, form: dict[str, str]
) -> str:
    name = form.get("name", "").strip()
    if not name:
        raise HTTPProblem(400, "A passkey needs a name.")
    if not await run_in_threadpool(
        accounts.rename_passkey,
        ctx.engine,
        signed_in.user.id,
        request.path_params["passkey_id"],
        name,
    ):
        raise HTTPProblem(404, "No such passkey.")
    return f"Passkey renamed to {name[:100]}."


ConfirmedAction = Callable[
    [Request, Context, SignedIn, dict[str, Any], PrfProof | None], Awaitable[dict[str, Any]]
]


def confirmed_action(action: ConfirmedAction) -> Callable[[Request], Awaitable[Response]]:
    """A consequential action: same-site JSON post with a fresh passkey assertion."""

    async def endpoint(request: Request) -> Response:
        ctx = get_context(request)
        signed_in = await json_guard(request)
        if isinstance(signed_in, Response):
            return signed_in
        try:
            body = await read_json_object(request)
            proof = await verify_fresh_assertion(ctx, signed_in.user.id, body)
            result = await action(request, ctx, signed_in, body, proof)
        except CONFIRMATION_ERRORS as exc:
            return confirmation_problem(exc)
        return JSONResponse(result)

    return endpoint


async def remove_passkey(
    request: Request,
    ctx: Context,
    signed_in: SignedIn,
    body: dict[str, Any],
    proof: PrfProof | None,
) -> dict[str, Any]:
    passkey_id = request.path_params["passkey_id"]
    stored = await run_in_threadpool(provider_keys.stored_key, ctx.engine, signed_in.user.id)
    last_slot = False
    if stored is not None and stored.strict:
        slots = await run_in_threadpool(
            provider_keys.slotted_passkeys, ctx.engine, signed_in.user.id
        )
        last_slot = slots == {passkey_id}
    # The last key slot in strict custody: removing it makes the key unopenable.
    if last_slot and body.get("delete_key") is not True:
        raise HTTPProblem(
            409,
            "This passkey holds the last key slot of your key in strict custody. "
            "Removing it deletes your OpenAI key (and ends every app's access); "
            "confirm that, or switch to master-key custody first.",
            code="confirm_delete_key",
        )
    try:
        removed = await run_in_threadpool(
            accounts.remove_passkey, ctx.engine, signed_in.user.id, passkey_id
        )
    except accounts.LastPasskeyError:
        raise HTTPProblem(
            409, "This is your only passkey; add another before removing it."
        ) from None
    if not removed:
        raise HTTPProblem(404, "No such passkey.")
    if last_slot:  # only once the passkey is really gone
        await run_in_threadpool(provider_keys.delete_key, ctx.engine, signed_in.user.id)
    return {"redirect": _back(ctx, "done", "Passkey removed.", "passkeys")}


async def delete_key(
    request: Request,
    ctx: Context,
    signed_in: SignedIn,
    body: dict[str, Any],
    proof: PrfProof | None,
) -> dict[str, Any]:
    await run_in_threadpool(provider_keys.delete_key, ctx.engine, signed_in.user.id)
    return {"redirect": "/key?deleted=1"}


async def delete_account(
    request: Request,
    ctx: Context,
    signed_in: SignedIn,
    body: dict[str, Any],
    proof: PrfProof | None,
) -> dict[str, Any]:
    await run_in_threadpool(accounts.delete_account, ctx.engine, signed_in.user.id)
    return {"redirect": "/?deleted=1"}


async def custody(
    request: Request,
    ctx: Context,
    signed_in: SignedIn,
    body: dict[str, Any],
    proof: PrfProof | None,
) -> dict[str, Any]:
    strict = body.get("strict") is True
    if proof is not None:  # the confirming passkey gets its slot first, if it has none
        await run_in_threadpool(
            provider_keys.add_slot, ctx.engine, ctx.ring, signed_in.user.id, proof
        )
    await run_in_threadpool(
        lambda: provider_keys.set_custody(
            ctx.engine, ctx.ring, signed_in.user.id, strict=strict, proof=proof
        )
    )
    done = "Strict custody is on." if strict else "Master-key custody is on."
    return {"redirect": _back(ctx, "done", done, "key")}


async def grant_requests(request: Request) -> Response:
    signed_in = await guard(request, "/settings")
    if isinstance(signed_in, Response):
        return signed_in
    ctx = get_context(request)
    try:
        grant = await run_in_threadpool(
            grant_store.owned, ctx.engine, request.path_params["grant_id"], signed_in.user.id
        )
    except GrantNotFoundError:
        return RedirectResponse(_back(ctx, "error", "No such app."), status_code=303)
    value = request.query_params.get("before", "")
    before = int(value) if value.isdigit() and len(value) <= 18 else None
    rows, more = await run_in_threadpool(reports.requests_page, ctx.engine, grant.id, before)
    oldest = await run_in_threadpool(reports.oldest_request, ctx.engine, grant.id)
    return render(
        request,
        "requests.html",
        signed_in=signed_in,
        grant=grant,
        rows=rows,
        more=more,
        paged=before is not None,
        oldest=oldest,
        retention_days=ctx.settings.usage_retention_days,
    )


async def activity(request: Request) -> Response:
    signed_in = await guard(request, "/settings/activity")
    if isinstance(signed_in, Response):
        return signed_in
    ctx = get_context(request)
    page = _page(request)
    rows, more = await run_in_threadpool(reports.activity_page, ctx.engine, signed_in.user.id, page)
    return render(request, "activity.html", signed_in=signed_in, rows=rows, page=page, more=more)


routes = [
    Route("/settings", settings_page),
    Route("/settings/activity", activity),
    Route("/settings/grants/{grant_id}/requests", grant_requests),
    Route("/settings/grants/{grant_id}/revoke", form_action(revoke), methods=["POST"]),
    Route(
        "/settings/grants/{grant_id}/revoke-and-delete",
        form_action(revoke_and_delete),
        methods=["POST"],
    ),
    Route("/settings/grants/{grant_id}/limits", form_action(change_limits), methods=["POST"]),
    Route("/settings/passkeys/{passkey_id}/rename", form_action(rename_passkey), methods=["POST"]),
    Route(
        "/settings/passkeys/{passkey_id}/remove", confirmed_action(remove_passkey), methods=["POST"]
    ),
    Route("/settings/key/delete", confirmed_action(delete_key), methods=["POST"]),
    Route("/settings/custody", confirmed_action(custody), methods=["POST"]),
    Route("/settings/account/delete", confirmed_action(delete_account), methods=["POST"]),
]
