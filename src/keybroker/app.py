"""create_app(settings): routes, middleware, lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Message, Receive, Scope, Send

from keybroker import db, metrics, rollups
from keybroker.auth.challenges import ChallengeStore, DatabaseChallengeStore
from keybroker.auth.passkeys import RelyingParty
from keybroker.auth.sessions import SessionManager
from keybroker.context import Context
from keybroker.crypto.keyring import KeyRing
from keybroker.grants import get_grant
from keybroker.oauth import endpoints as oauth_endpoints
from keybroker.oauth.grants import build_server
from keybroker.proxy import grant_info
from keybroker.proxy.cache import LOCAL_TTL_SECONDS, SHARED_TTL_SECONDS, GrantCache
from keybroker.proxy.forward import ProxyApp
from keybroker.proxy.limits import Limits, MemoryLimits
from keybroker.proxy.pricing import PriceTable
from keybroker.proxy.spend import Spend
from keybroker.proxy.upstream import Upstream
from keybroker.proxy.usage import Recorder
from keybroker.resources import resource_dir
from keybroker.settings import Settings
from keybroker.web import (
    auth_routes,
    confirm,
    consent,
    device_routes,
    key_routes,
    pages,
    settings_routes,
)
from keybroker.web.headers import SecurityHeadersMiddleware

logger = logging.getLogger("keybroker")


class CrossOriginStatic:
    def __init__(self, directory: Path) -> None:
        self.files = StaticFiles(directory=directory, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["access-control-allow-origin"] = "*"
                headers["cross-origin-resource-policy"] = "cross-origin"
            await send(message)

        await self.files(scope, receive, send_with_cors)


def build_context(settings: Settings) -> Context:
    engine = db.make_engine(settings.database_url)
    ring = KeyRing.parse(settings.master_keys)
    limits: Limits = MemoryLimits()
    challenges: ChallengeStore = DatabaseChallengeStore(engine)
    cache = GrantCache(
        engine, ring, ttl=SHARED_TTL_SECONDS if settings.redis_url else LOCAL_TTL_SECONDS
    )
    bridge = None
    if settings.redis_url:
        import redis
        import redis.asyncio

        from keybroker.auth.redis_challenges import RedisChallengeStore
        from keybroker.proxy.redis_events import RedisGrantBridge
        from keybroker.proxy.redis_limits import RedisLimits

        async_redis = redis.asyncio.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        limits = RedisLimits(async_redis)
        challenges = RedisChallengeStore(
            redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        )
        bridge = RedisGrantBridge(async_redis, cache.invalidate, on_reset=cache.clear)
    proxy = ProxyApp(
        grants=cache,
        spend=Spend(limits, PriceTable.load(settings.pricing_file), engine),
        recorder=Recorder(engine, retention_days=settings.usage_retention_days),
        upstream=Upstream.from_settings(settings),
    )
    return Context(
        settings=settings,
        engine=engine,
        ring=ring,
        sessions=SessionManager(engine, settings.secret_key, secure=settings.secure_cookies),
        challenges=challenges,
        templates=Jinja2Templates(directory=resource_dir("templates")),
        rp=RelyingParty(id=settings.rp_id, name="keybroker", origin=settings.origin),
        oauth=build_server(engine, ring, issuer=settings.public_url, base_url=settings.base_url),
        proxy=proxy,
        bridge=bridge,
    )


def warm_up(ctx: Context) -> None:
    """Pay at start what the first request of a grant would otherwise pay: the ORM's mappers
    configured, the grant and month's-spend statements compiled, a pooled connection open."""
    nobody = "0" * 20
    get_grant(ctx.engine, nobody)
    rollups.month_spend(ctx.engine, nobody)


class KeybrokerApp:
    """The proxy under /v1 as a bare ASGI app, everything else through Starlette."""

    def __init__(self, site: Starlette, proxy: ProxyApp) -> None:
        self.site = site
        self.proxy = proxy
        self.state = site.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.proxy(scope, receive, send)
        else:
            await self.site(scope, receive, send)


def create_app(settings: Settings, *, migrate: bool | None = None) -> KeybrokerApp:
    """The ASGI app. ``migrate`` defaults to on in development and off in production."""
    ctx = build_context(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if migrate if migrate is not None else not settings.production:
            db.upgrade(ctx.engine)
        elif pending := db.pending_migrations(ctx.engine):
            raise RuntimeError(
                f"database needs migrations {pending}: run 'keybroker db upgrade' first"
            )
        if settings.generated_secrets:
            logger.warning(
                "development mode: using secrets generated into %s; set KEYBROKER_ENV=production"
                " with real KEYBROKER_SECRET_KEY and KEYBROKER_MASTER_KEYS for real use",
                settings.data_dir,
            )
        await run_in_threadpool(warm_up, ctx)
        await ctx.proxy.upstream.start()
        ctx.proxy.recorder.start()
        if ctx.bridge is not None:
            ctx.bridge.start()
        try:
            yield
        finally:
            if ctx.bridge is not None:
                await ctx.bridge.stop()
            await ctx.proxy.recorder.stop()
            await ctx.proxy.upstream.close()
            ctx.proxy.grants.close()
            ctx.engine.dispose()

    app = Starlette(
        routes=[
            *pages.routes,
            *auth_routes.routes,
            *key_routes.routes,
            *settings_routes.routes,
            *consent.routes,
            *device_routes.routes,
            *confirm.routes,
            *oauth_endpoints.routes,
            *grant_info.routes,
            *metrics.routes,
            Mount("/static", StaticFiles(directory=resource_dir("static")), name="static"),
            # The SDK is loaded by other origins (ES module imports need CORS).
            Mount("/sdk", CrossOriginStatic(resource_dir("static") / "sdk"), name="sdk"),
        ],
        middleware=[Middleware(SecurityHeadersMiddleware, hsts=settings.secure_cookies)],
        lifespan=lifespan,
    )
    app.state.kb = ctx
    return KeybrokerApp(app, ctx.proxy)
