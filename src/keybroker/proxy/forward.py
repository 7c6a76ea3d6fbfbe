"""The hot path: an OpenAI-compatible reverse proxy as a plain ASGI app under /v1.

Order of checks (cheapest first): path shape, token shape and checksum (no storage read for
garbage), grant (cached), scope, rate, budget, body and model; then the provider key is
opened from the grant copy for this one request (GrantCache.open_key) and the request goes
upstream with only the headers that belong there.
Answers stream back as they arrive; server-sent events are relayed event by event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.types import Message, Receive, Scope, Send

from keybroker import send_now as extension
from keybroker.crypto import tokens
from keybroker.crypto.keyring import UnknownKidError
from keybroker.crypto.vault import SealedRecordError
from keybroker.grants import GrantView
from keybroker.models import utcnow
from keybroker.oauth.clients import web_origin
from keybroker.proxy import batch_input, errors, listing, ownership, policy, scopes
from keybroker.proxy.bodies import TooLarge, add_include_usage, read_request
from keybroker.proxy.cache import GrantCache
from keybroker.proxy.framing import FramingError, body_type, multipart_parts
from keybroker.proxy.http1 import PoolTimeout, UpstreamProtocolError
from keybroker.proxy.key_scrub import KeyScrubber, StreamScrub
from keybroker.proxy.limits import LimitsUnavailable, Reservation
from keybroker.proxy.paths import UnsafePathError, api_path
from keybroker.proxy.policy import Decision, Refused
from keybroker.proxy.spend import (
    NOTHING,
    CostUnknown,
    NotPriced,
    Plan,
    Spend,
    Unreadable,
    route_kind,
)
from keybroker.proxy.stats import ProxyMetrics
from keybroker.proxy.upstream import (
    Upstream,
    UpstreamAnswer,
    response_headers,
    upstream_request_headers,
)
from keybroker.proxy.usage import Finished, Recorder, Seen, Tail, event_usage, json_usage

logger = logging.getLogger("keybroker.proxy")
USAGE_SCAN_LIMIT = 8 * 1024 * 1024  # answers read whole to record the objects they make
# Streams that report usage only when asked (stream_options.include_usage); keybroker asks.
USAGE_STREAMS = frozenset({"/chat/completions", "/completions"})
# The multipart fields an images or audio request is priced by.
FORM_FIELDS = ("model", "n", "size", "quality", "image", "image[]")
# Bodies up to this size with a declared length are relayed without a disconnect watcher: a
# watcher task costs more CPU than such a request's whole relay (docs/benchmarks.md).
WATCH_ABOVE = 1024 * 1024


@dataclass
class Prepared:
    body: bytes | AsyncIterator[bytes] | None
    model: str
    strip_usage_chunk: bool
    decision: Decision
    fields: dict[str, object] | None = None  # a JSON body's top-level object


class ProxyApp:
    def __init__(
        self,
        *,
        grants: GrantCache,
        spend: Spend,
        recorder: Recorder,
        upstream: Upstream,
    ) -> None:
        self.grants = grants
        self.spend = spend
        self.limits = spend.limits  # also counts sign-in attempts and key checks (web/abuse.py)
        self.recorder = recorder
        self.upstream = upstream
        self.metrics = ProxyMetrics()
        self.ownership = ownership.Ownership(grants.engine)

    async def authenticate(self, authorization: bytes) -> tuple[tokens.AppToken, GrantView] | None:
        if not authorization.startswith(b"Bearer "):
            return None
        try:
            token = tokens.parse_token(authorization[7:].strip().decode("ascii"))
        except (tokens.MalformedTokenError, UnicodeDecodeError):
            return None
        grant = await self.grants.get(token.grant_id)
        if grant is None or not tokens.secret_matches(token, grant.secret_hash):
            return None
        return token, grant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        lookup = dict(headers)
        origin = lookup.get(b"origin", b"").decode("latin-1") or None

        if method == "OPTIONS":
            await self._preflight(send, origin, lookup)
            return
        try:
            rest = api_path(scope.get("raw_path") or scope["path"].encode())
            found_route = policy.route(method, rest)
        except UnsafePathError:
            await errors.send_error(
                send, 404, "Unknown request URL.", "invalid_request_error", "unknown_url"
            )
            return
        except Refused as refused:  # no scope lists this pair: the upstream never sees it
            await send_refusal(send, refused, [])
            return
        found = await self.authenticate(lookup.get(b"authorization", b""))
        if found is None:
            await errors.send_error(send, *errors.INVALID_KEY)
            return
        token, grant = found
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None and origin == grant.web_origin:
            cors = [
                (b"access-control-allow-origin", origin.encode()),
                (b"vary", b"Origin"),
                (b"access-control-expose-headers", b"x-request-id, retry-after"),
            ]
        if not grant.live:
            await errors.send_error(send, *errors.ENDED, headers=cors)
            return
        try:
            policy.check_scope(grant, found_route)
        except Refused as refused:
            await send_refusal(send, refused, cors)
            return
        try:
            prepared = await self._prepare(method, headers, lookup, receive, grant, found_route)
        except TooLarge:
            await errors.send_error(
                send,
                413,
                "Request body too large for this endpoint.",
                "invalid_request_error",
                "request_too_large",
                headers=cors,
            )
            return
        except FramingError as exc:
            await errors.send_error(
                send, 400, str(exc), "invalid_request_error", "invalid_body", headers=cors
            )
            return
        except Refused as refused:
            await send_refusal(send, refused, cors)
            return
        except ConnectionResetError:
            return
        query = scope.get("query_string", b"")
        named = ownership.named(prepared.decision, query)
        if named:
            # Another grant's object, or the owner's own, is "no such object" (issue #22).
            missing = await run_in_threadpool(self.ownership.missing, grant.id, named)
            if missing:
                await send_refusal(send, ownership.not_found(missing[0]), cors)
                return
        body = prepared.body if isinstance(prepared.body, bytes) else None
        form = None
        content_type = prepared.decision.facts.content_type or b""
        multipart = body is not None and content_type.startswith(b"multipart/form-data")
        if multipart and body is not None and route_kind(method, rest) in ("images", "minutes"):
            parts = multipart_parts(body, body_type(content_type))
            form = {
                name: [p.data.decode("utf-8", "replace") for p in parts if p.name == name]
                for name in FORM_FIELDS
            }
        try:
            plan = self.spend.plan(method, rest, body, prepared.fields, form)
        except NotPriced as exc:
            await errors.send_error(
                send,
                403,
                f"keybroker has no price for the model {exc.model[:100]!r}, so a key with a "
                "budget may not use it. The broker's operator can price it "
                "(KEYBROKER_PRICING_FILE).",
                "invalid_request_error",
                "model_not_priced",
                param="model",
                headers=cors,
            )
            return
        except Unreadable as exc:
            await errors.send_error(
                send, 400, str(exc), "invalid_request_error", "invalid_body", headers=cors
            )
            return
        except CostUnknown as exc:
            await errors.send_error(
                send, 403, str(exc), "invalid_request_error", "cost_unknown", headers=cors
            )
            return
        try:
            admitted = await self.spend.admit(grant, plan)
        except LimitsUnavailable:
            # Fail closed: nobody is counting, so nothing goes through (issue: scale-out).
            await errors.send_error(
                send,
                503,
                "keybroker cannot check this key's limits right now (its shared "
                "limit store is unreachable). Retry in a few seconds.",
                "server_error",
                "limits_unavailable",
                headers=[*cors, (b"retry-after", b"2")],
            )
            return
        if admitted.over_budget:
            await errors.send_error(
                send,
                429,
                "This key's monthly budget, set by the key's owner, cannot cover this "
                "request: it is spent, or held by the key's requests in flight.",
                "insufficient_quota",
                "insufficient_quota",
                headers=cors,
            )
            return
        if not admitted.allowed:
            await errors.send_error(
                send,
                429,
                f"Rate limit of {grant.rpm} requests per minute reached for this "
                f"key. Retry after {admitted.retry_after} s.",
                "requests",
                "rate_limit_exceeded",
                headers=[*cors, (b"retry-after", str(admitted.retry_after).encode())],
            )
            return
        handed = False  # to _forward, which settles the reservation itself
        try:
            handed = await self._after_admission(
                scope,
                receive,
                send,
                method,
                rest,
                started,
                token,
                grant,
                prepared,
                cors,
                plan,
                admitted.reservation,
            )
        finally:
            if not handed:
                await self.spend.settle(grant, plan, admitted.reservation, NOTHING, Seen())

    async def _after_admission(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        method: str,
        rest: str,
        started: float,
        token: tokens.AppToken,
        grant: GrantView,
        prepared: Prepared,
        cors: list[tuple[bytes, bytes]],
        plan: Plan,
        reservation: Reservation | None,
    ) -> bool:
        """True once the request is handed to ``_forward``."""
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        query = scope.get("query_string", b"")
        try:
            key = self.grants.open_key(grant, token)
        except (SealedRecordError, UnknownKidError) as exc:
            logger.error("grant %s: its grant copy cannot be opened: %s", grant.id, exc)
            await errors.send_error(
                send,
                500,
                "keybroker could not open this grant. Tell the broker's operator.",
                "server_error",
                "grant_unavailable",
                headers=cors,
            )
            return False
        # Everything relayed from here on has this key taken out (proxy/key_scrub.py).
        scrubber = KeyScrubber(key)
        target = rest.encode() + (b"?" + query if query else b"")
        route = prepared.decision.route
        up_headers = upstream_request_headers(headers, key)
        if (route.method, route.template) == ("POST", "/batches"):
            try:
                await self._check_batch_input(prepared, grant, up_headers)
            except Refused as refused:
                await send_refusal(send, refused, cors)
                return False
        listed = ownership.LISTS.get((route.method, route.template))
        if listed is not None:
            await self._relay_owned_list(
                rest, query, listed, up_headers, scrubber, send, cors, grant
            )
            return False
        await self._forward(
            method,
            target,
            up_headers,
            scrubber,
            prepared,
            receive,
            send,
            scope,
            cors,
            grant,
            rest,
            started,
            plan,
            reservation,
        )
        return True

    async def _check_batch_input(
        self, prepared: Prepared, grant: GrantView, up_headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Every line of the batch's input file (its own file: checked above) may run under
        this grant, or the batch is refused before it is created (proxy/batch_input.py)."""
        assert self.upstream.pool is not None
        fields = prepared.fields or {}
        file_id = fields.get("input_file_id")
        if not isinstance(file_id, str):
            return  # the upstream refuses a batch without one
        unreadable = Refused(
            400,
            "keybroker could not read the batch input file to check it.",
            "invalid_request_error",
            "invalid_batch_input",
            param="input_file_id",
        )
        headers = [(n, v) for n, v in up_headers if n != b"content-type"]
        try:
            response = await self.upstream.pool.request(
                "GET", f"/files/{file_id}/content".encode(), headers, None
            )
        except (OSError, ValueError):
            raise unreadable from None
        try:
            kept: list[bytes] = []
            size = 0
            async for chunk in response.iter_chunks():
                size += len(chunk)
                if size > batch_input.FILE_LIMIT:
                    raise unreadable
                kept.append(chunk)
        except OSError:
            raise unreadable from None
        finally:
            if response.at_eof:
                response.release()
            else:
                response.close()
        if response.status != 200:
            raise unreadable
        checked = batch_input.check(grant, fields.get("endpoint"), b"".join(kept))
        if checked.references:
            missing = await run_in_threadpool(
                self.ownership.missing, grant.id, list(checked.references)
            )
            if missing:
                raise ownership.not_found(missing[0])

    async def _preflight(self, send: Send, origin: str | None, lookup: dict[bytes, bytes]) -> None:
        # The grant is unknown before the real request (no Authorization on a preflight);
        # the real response carries CORS headers only for the grant's own origin.
        out: list[tuple[bytes, bytes]] = []
        if origin is not None and web_origin(origin) is not None:
            out = [
                (b"access-control-allow-origin", origin.encode()),
                (b"vary", b"Origin"),
                (b"access-control-allow-methods", b"GET, POST, DELETE"),
                (
                    b"access-control-allow-headers",
                    lookup.get(b"access-control-request-headers", b"authorization, content-type"),
                ),
                (b"access-control-max-age", b"600"),
            ]
        await send({"type": "http.response.start", "status": 204, "headers": out})
        await send({"type": "http.response.body", "body": b""})

    async def _prepare(
        self,
        method: str,
        headers: list[tuple[bytes, bytes]],
        lookup: dict[bytes, bytes],
        receive: Receive,
        grant: GrantView,
        found: scopes.Match,
    ) -> Prepared:
        read = await read_request(method, found.route.template, headers, lookup, receive)
        decision = policy.decide(grant, found, read.facts)
        body = read.body
        strip = False
        fields = read.fields
        streamed_chat = (
            fields is not None
            and fields.get("stream") is True
            and found.route.template in USAGE_STREAMS
        )
        if isinstance(body, bytes) and fields is not None and streamed_chat:
            changed = add_include_usage(body, fields)
            if changed is not None:
                body, strip = changed, True
        return Prepared(body, decision.model or "", strip, decision, fields)

    async def _forward(
        self,
        method: str,
        target: bytes,
        up_headers: list[tuple[bytes, bytes]],
        scrubber: KeyScrubber,
        prepared: Prepared,
        receive: Receive,
        send: Send,
        scope: Scope,
        cors: list[tuple[bytes, bytes]],
        grant: GrantView,
        rest: str,
        started: float,
        plan: Plan,
        reservation: Reservation | None,
    ) -> None:
        assert self.upstream.pool is not None
        seen = Seen(model=prepared.model)
        status = 0
        interrupted = False
        watcher: asyncio.Task[None] | None = None
        try:
            response = await self.upstream.pool.request(method, target, up_headers, prepared.body)
        except PoolTimeout as exc:  # never sent: nothing to charge
            await self.spend.settle(grant, plan, reservation, NOTHING, seen)
            await send_upstream_error(send, exc, cors)
            return
        except TimeoutError:
            # Sent, unanswered: charged its estimate, as the upstream may bill it.
            await self._settle(
                grant, plan, reservation, seen, 504, True, True, method, rest, started
            )
            await errors.send_error(
                send,
                504,
                "The OpenAI API did not answer in time.",
                "upstream_error",
                "upstream_timeout",
                headers=cors,
            )
            return
        except ValueError:
            await self.spend.settle(grant, plan, reservation, NOTHING, seen)
            await errors.send_error(
                send,
                400,
                "The request has a header or query this proxy cannot pass on.",
                "invalid_request_error",
                "invalid_request",
                headers=cors,
            )
            return
        except OSError as exc:  # unreachable, or an answer refused (UpstreamProtocolError)
            await self.spend.settle(grant, plan, reservation, NOTHING, seen)
            await send_upstream_error(send, exc, cors)
            return
        streamed = response.content_type.startswith("text/event-stream")
        held: bytes | None = None
        try:
            status = response.status
            content_type = response.content_type
            length = response.content_length
            headers = [*scrubber.headers(response_headers(response)), *cors]
            if status >= 400:
                await self._relay_error(response, send, status, headers, scrubber)
                return
            decision = prepared.decision
            forgets = ownership.DELETES.get((decision.route.method, decision.route.template))
            if forgets is not None and 200 <= status < 300:
                # Deleted upstream: forgotten before the app hears so, so that its next
                # request about the id is refused here, not asked of the upstream.
                await run_in_threadpool(
                    self.ownership.forget, grant.id, dict(decision.params)[forgets]
                )
            recording = ownership.recorder_for(decision) if 200 <= status < 300 else None
            if recording is not None and not streamed:
                await self._relay_recorded(
                    response, send, status, headers, seen, grant, decision, scrubber
                )
                return
            if response.decoded and not streamed:
                # A whole gzip answer is inflated (within the client's bound) before its head
                # goes out, so one that inflates too far is still a clean 502, not a cut 200.
                try:
                    held = b"".join([chunk async for chunk in response.iter_chunks()])
                except OSError as exc:
                    status = 502
                    await send_upstream_error(send, exc, cors)
                    return
                length = len(held)
            if not streamed and length is not None and status not in (204, 304):
                # Relayed with a found key overwritten byte for byte, so the upstream's length
                # holds: the app's client knows
                # where the answer ends without chunked framing (RFC 9112 §6.3).
                headers.append((b"content-length", b"%d" % length))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            if streamed or length is None or length > WATCH_ABOVE:
                # The request body is fully read now: a disconnect from here on cancels
                # upstream. A short body already on its way is relayed without a watcher.
                # Started after the head, whose send is held to the end of this turn, so that
                # the watcher's first step runs after that send, not before it.
                watcher = asyncio.create_task(_watch_disconnect(receive, response))
            if held is not None:
                await send({"type": "http.response.body", "body": held, "more_body": True})
                if "json" in content_type and len(held) < USAGE_SCAN_LIMIT:
                    json_usage(held, seen)
            elif streamed:
                events = EventSplitter(
                    seen, prepared.strip_usage_chunk, scrubber, decision if recording else None
                )
                # Ids a stream makes are recorded before the event naming them is relayed, so
                # the relay stays in this task (no send_now) when there is one to record.
                offered = None if recording else extension.offered(scope, send)
                await self._relay_events(response, send, offered, events, grant.id)
                await send({"type": "http.response.body", "body": b""})
            else:
                relay = scrubber.stream()
                await self._relay_body(response, send, seen, "json" in content_type, relay)
                await send({"type": "http.response.body", "body": relay.rest()})
            interrupted = watcher is not None and watcher.done()
        except (OSError, asyncio.CancelledError) as exc:  # TimeoutError is an OSError
            interrupted = True
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if watcher is not None:
                watcher.cancel()
            if interrupted or not response.at_eof:
                response.close()  # drop the connection: the upstream request is cancelled
            else:
                response.release()  # back to the pool for the next request (keep-alive)
            await self._settle(
                grant, plan, reservation, seen, status, interrupted, True, method, rest, started
            )

    async def _settle(
        self,
        grant: GrantView,
        plan: Plan,
        reservation: Reservation | None,
        seen: Seen,
        status: int,
        interrupted: bool,
        sent: bool,
        method: str,
        rest: str,
        started: float,
    ) -> None:
        charge = self.spend.charge(plan, seen, status, interrupted) if sent else NOTHING
        cost = await self.spend.settle(grant, plan, reservation, charge, seen)
        if not sent:
            return
        latency_ms = int((time.perf_counter() - started) * 1000)
        self.metrics.observe(status, latency_ms)
        await self.recorder.record(
            Finished(
                grant_id=grant.id,
                user_id=grant.user_id,
                method=method,
                path=rest,
                model=charge.model,
                status=status,
                input_tokens=charge.input_tokens,
                output_tokens=charge.output_tokens,
                cost_microusd=cost,
                latency_ms=latency_ms,
                interrupted=interrupted or charge.estimated,
                at=utcnow(),
                unknown_model=plan.price is None and plan.kind != "free" and bool(charge.model),
            )
        )

    async def _relay_error(
        self,
        response: UpstreamAnswer,
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]],
        scrubber: KeyScrubber,
    ) -> None:
        """An upstream error, read whole and sent with key-shaped text replaced: an upstream
        that echoes the key it was given (whole, or masked to its ends) must not hand it to
        the app."""
        kept: list[bytes] = []
        size = 0
        async for chunk in response.iter_chunks():
            size += len(chunk)
            if size > errors.ERROR_BODY_LIMIT:
                response.close()
                body = errors.error_body(
                    f"The OpenAI API answered {status} with a body too large to check.",
                    "upstream_error",
                    "upstream_error",
                )
                headers = [(n, v) for n, v in headers if n != b"content-type"]
                headers.append((b"content-type", b"application/json"))
                break
            kept.append(chunk)
        else:
            body = errors.scrub(b"".join(kept), scrubber)
        headers = [*headers, (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _relay_recorded(
        self,
        response: UpstreamAnswer,
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]],
        seen: Seen,
        grant: GrantView,
        decision: Decision,
        scrubber: KeyScrubber,
    ) -> None:
        """An answer that gives the grant objects: read whole, its ids recorded, then sent,
        so that the app can use an id as soon as it has it."""
        kept: list[bytes] = []
        size = 0
        async for chunk in response.iter_chunks():
            size += len(chunk)
            kept.append(chunk)
            if size > USAGE_SCAN_LIMIT:
                break  # too large to hold: relayed as it comes, and nothing recorded
        body = b"".join(kept)
        if size <= USAGE_SCAN_LIMIT:
            try:
                answer = json.loads(body)
            except ValueError:
                answer = None
            made = ownership.created(decision, answer)
            if made:
                await run_in_threadpool(self.ownership.record, grant.id, made)
            json_usage(body, seen)
            body = scrubber.scrub(body)
            headers = [*headers, (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        logger.warning("grant %s: an answer of %d+ bytes was not recorded", grant.id, size)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        relay = scrubber.stream()
        await send({"type": "http.response.body", "body": relay.take(body), "more_body": True})
        await self._relay_body(response, send, seen, False, relay)
        await send({"type": "http.response.body", "body": relay.rest()})

    async def _relay_owned_list(
        self,
        rest: str,
        query: bytes,
        kind: str,
        up_headers: list[tuple[bytes, bytes]],
        scrubber: KeyScrubber,
        send: Send,
        cors: list[tuple[bytes, bytes]],
        grant: GrantView,
    ) -> None:
        """A list filtered to the grant's own objects (proxy/listing.py)."""
        assert self.upstream.pool is not None
        pool = self.upstream.pool

        async def fetch(target: bytes) -> listing.Fetched:
            response = await pool.request("GET", target, up_headers, None)
            try:
                body = b"".join([chunk async for chunk in response.iter_chunks()])
            except BaseException:
                response.close()
                raise
            response.release()
            request_id = dict(response.raw_headers).get(b"x-request-id")
            return listing.Fetched(response.status, body, request_id)

        async def owned_among(ids: list[str]) -> set[str]:
            return await run_in_threadpool(self.ownership.owned_among, grant.id, kind, ids)

        try:
            if not await run_in_threadpool(self.ownership.has_any, grant.id, kind):
                answer: dict[str, object] = {"object": "list", "data": [], "first_id": None}
                answer.update(last_id=None, has_more=False)
                request_id = None
            else:
                answer, request_id = await listing.owned_list(rest, query, kind, fetch, owned_among)
        except listing.ListError as failed:
            body = errors.scrub(failed.fetched.body, scrubber)
            out = [(b"content-type", b"application/json"), *cors]
            out.append((b"content-length", b"%d" % len(body)))
            status = failed.fetched.status
            await send({"type": "http.response.start", "status": status, "headers": out})
            await send({"type": "http.response.body", "body": body})
            return
        except (OSError, ValueError):
            await errors.send_error(
                send,
                502,
                "The OpenAI API could not be reached or answered a list this proxy cannot read.",
                "upstream_error",
                "upstream_unreachable",
                headers=cors,
            )
            return
        items = answer["data"]
        assert isinstance(items, list)
        children = [c for item in items for c in ownership.children_of(kind, item)]
        if children:
            await run_in_threadpool(self.ownership.record, grant.id, children)
        body = scrubber.scrub(json.dumps(answer).encode())
        out = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if request_id is not None:
            out.append((b"x-request-id", scrubber.scrub(request_id)))
        await send({"type": "http.response.start", "status": 200, "headers": [*out, *cors]})
        await send({"type": "http.response.body", "body": body})

    async def _relay_body(
        self, response: UpstreamAnswer, send: Send, seen: Seen, scan: bool, relay: StreamScrub
    ) -> None:
        """The body as it comes, less the key (its last bytes wait in relay for the end)."""
        tail = Tail() if scan else None
        async for chunk in response.iter_chunks():
            out = relay.take(chunk)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            if tail is not None:
                tail.add(chunk)
        if tail is not None:
            tail.read(seen)

    async def _relay_events(
        self,
        response: UpstreamAnswer,
        send: Send,
        send_now: extension.SendNow | None,
        events: EventSplitter,
        grant_id: str,
    ) -> None:
        if send_now is not None:

            def sink(chunk: bytes) -> bool:
                if not send_now.ready():
                    return False  # the client is not taking more: the task waits for it
                out = events.take(chunk)
                if out:
                    send_now(out)
                return True

            response.relay_to(sink)
        try:
            async for chunk in response.iter_chunks():
                out = events.take(chunk)
                if events.made:
                    made, events.made = events.made, []
                    await run_in_threadpool(self.ownership.record, grant_id, made)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        finally:
            response.relay_to(None)
        if events.pending:
            rest = events.scrubber.scrub(events.pending)
            await send({"type": "http.response.body", "body": rest, "more_body": True})


class EventSplitter:
    """Whole server-sent events out of the upstream's chunks, with their usage noted."""

    def __init__(
        self,
        seen: Seen,
        strip_usage_chunk: bool,
        scrubber: KeyScrubber,
        recording: Decision | None = None,
    ) -> None:
        self.seen = seen
        self.scrubber = scrubber  # whole events: a key cannot straddle two of them
        self.strip_usage_chunk = strip_usage_chunk
        self.pending = b""
        self.recording = recording  # the request whose first event names what it made
        self.made: list[ownership.Named] = []

    def take(self, chunk: bytes) -> bytes:
        """The events this chunk completes (b"" if none); a partial event is kept."""
        pending = self.pending + chunk
        # Events end with a blank line (HTML Standard, server-sent events); normalise CRLF.
        if b"\r" in pending:
            pending = pending.replace(b"\r\n", b"\n")
        cut = pending.rfind(b"\n\n")
        if cut < 0:
            self.pending = pending
            return b""
        ready, self.pending = pending[: cut + 2], pending[cut + 2 :]
        out = []
        for event in ready.split(b"\n\n")[:-1]:
            if self.recording is not None:
                self.made = ownership.event_created(self.recording, event)
                if self.made:
                    self.recording = None  # the first event that names it is enough
            if event_usage(event, self.seen) and self.strip_usage_chunk:
                continue  # the app did not ask for the usage chunk; we did
            out.append(event + b"\n\n")
        return self.scrubber.scrub(b"".join(out))


async def send_refusal(send: Send, refused: Refused, cors: list[tuple[bytes, bytes]]) -> None:
    await errors.send_error(
        send,
        refused.status,
        refused.message,
        refused.kind,
        refused.code,
        headers=cors,
        param=refused.param,
    )


async def send_upstream_error(
    send: Send, exc: BaseException, cors: list[tuple[bytes, bytes]]
) -> None:
    """The answer for a request the upstream client could not complete (DESIGN.md statuses)."""
    if isinstance(exc, PoolTimeout):
        await errors.send_error(
            send,
            503,
            "keybroker's connections to the OpenAI API are all busy. Retry in a few seconds.",
            "server_error",
            "upstream_busy",
            headers=[*cors, (b"retry-after", b"1")],
        )
    elif isinstance(exc, TimeoutError):
        await errors.send_error(
            send,
            504,
            "The OpenAI API did not answer in time.",
            "upstream_error",
            "upstream_timeout",
            headers=cors,
        )
    elif isinstance(exc, ValueError):
        await errors.send_error(
            send,
            400,
            "The request has a header or query this proxy cannot pass on.",
            "invalid_request_error",
            "invalid_request",
            headers=cors,
        )
    elif isinstance(exc, UpstreamProtocolError):
        # Our own description of what was refused: no byte of the request is in it.
        logger.warning("upstream answer refused: %s", exc)
        await errors.send_error(
            send,
            502,
            "The OpenAI API sent an answer keybroker cannot relay.",
            "upstream_error",
            "upstream_bad_answer",
            headers=cors,
        )
    else:
        # The class and errno text only: never the request, whose headers carry the key.
        strerror = exc.strerror if isinstance(exc, OSError) else None
        logger.warning("upstream request failed: %s: %s", type(exc).__name__, strerror or "")
        await errors.send_error(
            send,
            502,
            "The OpenAI API could not be reached.",
            "upstream_error",
            "upstream_unreachable",
            headers=cors,
        )


async def _watch_disconnect(receive: Receive, response: UpstreamAnswer) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            response.close()  # cancels the upstream request and ends the relay loop
            return
