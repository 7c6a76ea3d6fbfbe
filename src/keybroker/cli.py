"""The ``keybroker`` command."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence

import httpx
import uvicorn
from sqlalchemy import text

from keybroker import db
from keybroker.settings import Settings, SettingsError, load_settings, mask_url

logger = logging.getLogger("keybroker")


def app_factory() -> object:
    """uvicorn's factory for ``keybroker serve``: each worker reads the settings itself."""
    from keybroker import access_log, server_protocol
    from keybroker.app import create_app

    access_log.install()
    settings = load_settings()
    server_protocol.configure(settings.header_timeout)
    app = create_app(settings, migrate=False)
    # A full collection walks the ~130,000 objects that imports and start-up leave behind and
    # stalls every request in flight for ~50 ms (docs/benchmarks.md). They live as long as the
    # process, so they go to the permanent generation, out of the collector's way.
    gc.collect()
    gc.freeze()
    # Each proxied request allocates a few hundred objects and frees nearly all by reference
    # counting; collecting the youngest generation every 700 allocations cost ~4% of the
    # proxy's CPU (docs/benchmarks.md). Cyclic garbage still goes, just in larger sweeps.
    gc.set_threshold(20_000, 50, 100)
    return app


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from keybroker import server_protocol  # uvicorn's HTTP stack: serve only

    try:
        protocol = server_protocol.choose(stock=settings.server_protocol == "stock")
    except RuntimeError as exc:
        print(f"keybroker: {exc}", file=sys.stderr)
        return 2

    if args.workers > 1 and not settings.redis_url:
        print(
            "keybroker: --workers above 1 needs KEYBROKER_REDIS_URL: without it rate limits, "
            "budget counters and revocation notices live inside each process and would "
            "disagree. Set KEYBROKER_REDIS_URL or run one worker per instance.",
            file=sys.stderr,
        )
        return 2
    served = settings.served_at(args.host, args.port)
    if served is not settings:
        # Each worker reads the settings again (app_factory): the environment carries the
        # public URL that follows --host and --port to them.
        os.environ["KEYBROKER_PUBLIC_URL"] = served.public_url
        settings = served
    engine = db.make_engine(settings.database_url)
    if not settings.production:
        db.upgrade(engine)  # once here, not in each worker
    elif pending := db.pending_migrations(engine):
        print(
            f"keybroker: the database needs migrations {pending}; run 'keybroker db upgrade'",
            file=sys.stderr,
        )
        return 2
    engine.dispose()
    print(
        f"keybroker: serving {settings.public_url} (listening on {args.host}:{args.port})",
        file=sys.stderr,
    )
    if args.with_demo:
        if args.workers != 1:
            print("keybroker: --with-demo runs one worker; drop --workers", file=sys.stderr)
            return 2
        _start_demo_thread(settings.public_url, args.host, args.demo_port)
    uvicorn.run(
        "keybroker.cli:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # X-Forwarded-For/-Proto are believed only from the configured reverse proxies.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        access_log=not args.no_access_log,
        log_level=args.log_level,
        server_header=False,
        http=protocol,
    )
    return 0


def _start_demo_thread(broker_url: str, host: str, port: int) -> None:
    import threading

    from keybroker.demo import create_demo_app

    server = uvicorn.Server(
        uvicorn.Config(
            create_demo_app(broker_url), host=host, port=port, log_level="warning", lifespan="off"
        )
    )
    threading.Thread(target=server.run, name="demo", daemon=True).start()
    print(
        f"keybroker: demo app on http://{host}:{port} - open it and click 'Sign in with OpenAI'",
        file=sys.stderr,
    )


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from keybroker.demo import create_demo_app

    broker = args.broker or settings.public_url
    print(
        f"keybroker: demo app on http://{args.host}:{args.port} using the broker at {broker};"
        " open it and click 'Sign in with OpenAI'",
        file=sys.stderr,
    )
    uvicorn.run(
        create_demo_app(broker), host=args.host, port=args.port, log_level="warning", lifespan="off"
    )
    return 0


def cmd_clients_add(settings: Settings, args: argparse.Namespace) -> int:
    from keybroker.oauth.clients import ClientRegistrationError, register_client

    engine = db.make_engine(settings.database_url)
    try:
        client_id = register_client(
            engine, name=args.name, redirect_uris=args.redirect_uri or [], device=args.device
        )
    except ClientRegistrationError as exc:
        print(f"keybroker: {exc}", file=sys.stderr)
        return 2
    print(f"registered {args.name!r}; its client_id is:", file=sys.stderr)
    print(client_id)
    return 0


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    engine = db.make_engine(settings.database_url)
    before = db.pending_migrations(engine)
    db.upgrade(engine)
    print(f"applied {len(before)} migration(s); database is at the latest revision")
    return 0


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    ok = True
    print("keybroker configuration")
    rows = [
        ("KEYBROKER_ENV", settings.env),
        ("KEYBROKER_PUBLIC_URL", settings.public_url),
        ("KEYBROKER_DATA_DIR", str(settings.data_dir)),
        ("KEYBROKER_DATABASE_URL", mask_url(settings.database_url)),
        ("KEYBROKER_UPSTREAM_URL", settings.upstream_url),
        ("KEYBROKER_REDIS_URL", mask_url(settings.redis_url) if settings.redis_url else "(off)"),
        (
            "KEYBROKER_SECRET_KEY",
            "*** (generated, development only)" if settings.generated_secrets else "*** (set)",
        ),
        ("KEYBROKER_MASTER_KEYS", _ring_summary(settings)),
    ]
    for name, value in rows:
        print(f"  {name:24} {value}")
    try:
        engine = db.make_engine(settings.database_url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        pending = db.pending_migrations(engine)
        print(
            "database: reachable"
            + (f", pending migrations {pending}" if pending else ", up to date")
        )
    except Exception as exc:  # doctor reports every failure rather than stopping
        ok = False
        print(f"database: NOT reachable ({type(exc).__name__})")
    if settings.redis_url:
        try:
            import redis

            redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
            print("redis: reachable")
        except Exception as exc:  # doctor reports every failure rather than stopping
            ok = False
            print(f"redis: NOT reachable ({type(exc).__name__})")
    from keybroker.proxy.pricing import PriceTable, PriceTableError

    try:
        prices = PriceTable.load(settings.pricing_file)
        print(f"prices: table of {prices.date}, {prices.size} models and snapshots")
    except PriceTableError as exc:
        ok = False
        print(f"prices: NOT usable ({exc})")
    try:
        response = httpx.get(f"{settings.upstream_url}/models", timeout=5)
        print(f"upstream: reachable (GET /models without a key answered {response.status_code})")
    except httpx.HTTPError as exc:
        ok = False
        print(f"upstream: NOT reachable ({type(exc).__name__})")
    return 0 if ok else 1


def cmd_keys_rotate(settings: Settings, args: argparse.Namespace) -> int:
    from keybroker.crypto.keyring import KeyRing

    ring, text = KeyRing.parse(settings.master_keys).rotated()
    if settings.generated_secrets:
        _update_generated_ring(settings, text)
        print(
            f"new active master key {ring.active_kid!r} written to the development secrets in"
            f" {settings.data_dir}; now run 'keybroker keys rewrap'",
            file=sys.stderr,
        )
        return 0
    print(
        f"# new active master key {ring.active_kid!r}. Set this, restart every instance,",
        file=sys.stderr,
    )
    print(
        "# then run 'keybroker keys rewrap'; old kids can be dropped after that.", file=sys.stderr
    )
    print(f"KEYBROKER_MASTER_KEYS={text}")
    return 0


def _update_generated_ring(settings: Settings, text: str) -> None:
    from keybroker.settings import GENERATED_SECRETS_FILE

    path = settings.data_dir / GENERATED_SECRETS_FILE
    lines = [
        f"KEYBROKER_MASTER_KEYS={text}" if line.startswith("KEYBROKER_MASTER_KEYS=") else line
        for line in path.read_text().splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")


def cmd_keys_rewrap(settings: Settings, args: argparse.Namespace) -> int:
    from keybroker.crypto.keyring import KeyRing
    from keybroker.rotation import rewrap_all

    ring = KeyRing.parse(settings.master_keys)
    engine = db.make_engine(settings.database_url)
    report = rewrap_all(engine, ring)
    for label, count in report.rewrapped.items():
        print(
            f"{label}: {count} rewrapped to {ring.active_kid!r},"
            f" {report.current[label]} already current"
        )
    for failure in report.failed:
        print(f"FAILED {failure}", file=sys.stderr)
    if report.failed:
        print(
            f"{len(report.failed)} record(s) could not be rewrapped; fix the ring and run again",
            file=sys.stderr,
        )
        return 1
    return 0


def _ring_summary(settings: Settings) -> str:
    from keybroker.crypto.keyring import KeyRing

    ring = KeyRing.parse(settings.master_keys)
    return f"*** (kids {', '.join(ring.kids)}; active {ring.active_kid})"


Command = Callable[[Settings, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keybroker",
        description="A self-hostable 'Sign in with OpenAI' consent broker. Settings come from "
        "KEYBROKER_* environment variables or a .env file (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the broker",
        description="Run the broker and print its public URL. In development mode pending "
        "database migrations are applied first, and with no KEYBROKER_PUBLIC_URL the public "
        "URL is http://localhost:PORT (or the --host given). Production needs "
        "KEYBROKER_PUBLIC_URL.",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on. In development with no KEYBROKER_PUBLIC_URL the public "
        "URL follows --host and --port (127.0.0.1 and 0.0.0.0 become localhost)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument("--no-access-log", action="store_true", help="do not log a line per request")
    serve.add_argument(
        "--with-demo",
        action="store_true",
        help="also serve the example third-party app on --demo-port",
    )
    serve.add_argument("--demo-port", type=int, default=8001, help="port for --with-demo")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser(
        "demo",
        help="serve the example third-party app",
        description="Serve the example chat app (examples/demo-app) on a "
        "second origin, using the broker at --broker.",
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8001)
    demo.add_argument(
        "--broker", default=None, help="the broker's URL (default: KEYBROKER_PUBLIC_URL)"
    )
    demo.set_defaults(func=cmd_demo)

    clients = sub.add_parser("clients", help="registered apps")
    clients_sub = clients.add_subparsers(dest="clients_command", required=True, metavar="COMMAND")
    add = clients_sub.add_parser(
        "add",
        help="register a desktop, command-line or server app",
        description="Register an app that receives its authorization response by redirect, "
        "or (--device) a command-line or headless app that uses the device flow (RFC 8628): "
        "it shows a code that the person enters at <public url>/device. An app may have both. "
        "A loopback redirect such as http://127.0.0.1/callback matches any port "
        "(RFC 8252 section 7.3); every other redirect URI must match exactly. Prints the "
        "client_id.",
    )
    add.add_argument("--name", required=True, help="shown to people on the consent screen")
    add.add_argument(
        "--redirect-uri",
        action="append",
        help="an allowed redirect URI (repeat for several)",
    )
    add.add_argument(
        "--device",
        action="store_true",
        help="allow the device flow (RFC 8628), with or without redirect URIs",
    )
    add.set_defaults(func=cmd_clients_add)

    database = sub.add_parser("db", help="database commands")
    db_sub = database.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = db_sub.add_parser(
        "upgrade",
        help="apply pending migrations",
        description="Apply every pending database migration.",
    )
    upgrade.set_defaults(func=cmd_db_upgrade)

    keys = sub.add_parser("keys", help="master key rotation")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    rotate = keys_sub.add_parser(
        "rotate",
        help="add a new active master key",
        description="Add a new active master key in front of the ring and print the new "
        "KEYBROKER_MASTER_KEYS (in development, update the generated secrets file instead).",
    )
    rotate.set_defaults(func=cmd_keys_rotate)
    rewrap = keys_sub.add_parser(
        "rewrap",
        help="re-seal every record under the active master key",
        description="Re-seal every vault entry and grant copy under the active master key. "
        "Resumable: run it again after an interruption. Reports counts.",
    )
    rewrap.set_defaults(func=cmd_keys_rewrap)

    doctor = sub.add_parser(
        "doctor",
        help="check the configuration",
        description="Print the effective configuration (secrets masked) "
        "and check that the database and the upstream are reachable.",
    )
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except (SettingsError, ValueError) as exc:
        print(f"keybroker: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    func: Command = args.func
    return func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
