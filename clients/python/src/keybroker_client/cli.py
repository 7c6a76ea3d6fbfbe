"""``keybroker-login BROKER --client-id ID``: sign in, print the variables for a shell.

    eval "$(keybroker-login https://broker.example --client-id kbc_...)"

The instructions (the code to enter, the URL) go to stderr; stdout carries only
``OPENAI_API_KEY=... OPENAI_BASE_URL=...``, which the official OpenAI SDKs read.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from keybroker_client.api import request_openai_api, revoke
from keybroker_client.errors import KeybrokerError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keybroker-login",
        description="Get an OpenAI API key and base URL for this app from a keybroker, with "
        "the owner's consent, and print them as OPENAI_API_KEY=... OPENAI_BASE_URL=... "
        "(for eval in a shell). Opens a browser when one is available (loopback flow), "
        "else prints a code to enter at the broker (device flow).",
    )
    parser.add_argument("broker", metavar="BROKER", help="the broker's URL")
    parser.add_argument("--client-id", required=True, help="from 'keybroker clients add'")
    parser.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        help="an API family to ask for: chat, embeddings, images, audio, files, "
        "moderations, models (repeat; default chat and models)",
    )
    parser.add_argument("--model", action="append", dest="models", help="a model to ask for")
    parser.add_argument("--budget-usd", type=float, help="a monthly budget to suggest")
    flow = parser.add_mutually_exclusive_group()
    flow.add_argument("--device", action="store_true", help="use the device flow")
    flow.add_argument("--loopback", action="store_true", help="use the browser (loopback)")
    parser.add_argument(
        "--cache", action="store_true", help="keep the token in the user's config directory"
    )
    parser.add_argument(
        "--revoke", action="store_true", help="revoke the cached token(s) of this client, and exit"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait (600)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.revoke:
            count = revoke(args.broker, args.client_id, cache=True)
            print(f"keybroker-login: revoked {count} token(s)", file=sys.stderr)
            return 0
        access = request_openai_api(
            args.broker,
            args.client_id,
            scopes=args.scopes or ("chat", "models"),
            models=args.models or (),
            budget_usd=args.budget_usd,
            flow="device" if args.device else "loopback" if args.loopback else "auto",
            cache=args.cache,
            timeout=args.timeout,
        )
    except KeybrokerError as exc:
        print(f"keybroker-login: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"keybroker-login: {exc}", file=sys.stderr)
        return 2
    print(
        f"OPENAI_API_KEY={shlex.quote(access['api_key'])}"
        f" OPENAI_BASE_URL={shlex.quote(access['base_url'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
