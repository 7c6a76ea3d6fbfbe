from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keybroker.cli import build_parser

COMMANDS = [
    ["serve"],
    ["db", "upgrade"],
    ["doctor"],
    ["keys", "rotate"],
    ["keys", "rewrap"],
    ["clients", "add"],
    ["demo"],
]


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")}
    full_env.update({"KEYBROKER_DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run(
        [sys.executable, "-m", "keybroker", *args],
        env=full_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*command, "--help"])
    assert info.value.code == 0
    assert "usage: keybroker" in capsys.readouterr().out


def test_db_upgrade_then_doctor_masks_secrets(tmp_path: Path) -> None:
    upgraded = run(["db", "upgrade"], tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "migration(s); database is at the latest revision" in upgraded.stdout
    assert "applied 0 migration" not in upgraded.stdout
    assert "applied 0 migration" in run(["db", "upgrade"], tmp_path).stdout
    doctor = run(
        ["doctor"],
        tmp_path,
        KEYBROKER_UPSTREAM_URL="http://127.0.0.1:9/v1",
        KEYBROKER_DATABASE_URL=f"sqlite:///{tmp_path / 'data' / 'keybroker.db'}",
    )
    secrets = (tmp_path / "data" / "generated-secrets.env").read_text()
    for line in secrets.splitlines()[1:]:
        assert line.split("=", 1)[1] not in doctor.stdout
    assert "database: reachable, up to date" in doctor.stdout
    assert "prices: table of 2025-11-01," in doctor.stdout
    assert "upstream: NOT reachable" in doctor.stdout
    assert doctor.returncode == 1


def test_malformed_master_keys_stop_the_start_without_showing_the_key(tmp_path: Path) -> None:
    secret_material = "c2VjcmV0LWJ1dC1zaG9ydA=="
    result = run(["doctor"], tmp_path, KEYBROKER_MASTER_KEYS=f"k1:{secret_material}")
    assert result.returncode == 2
    assert "must be 32 bytes" in result.stderr
    assert secret_material not in result.stderr + result.stdout


def test_keys_rotate_then_rewrap_then_drop_old_kid(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from keybroker import db, provider_keys
    from keybroker.crypto.keyring import KeyRing
    from keybroker.models import User
    from keybroker.settings import load_settings

    env = {"KEYBROKER_DATA_DIR": str(tmp_path / "data")}
    settings = load_settings(env, env_file=None)
    engine = db.make_engine(settings.database_url)
    # An engine left to the garbage collector leaves its pooled SQLite connection unclosed: a
    # ResourceWarning, so an error in this suite, from Python 3.13 on.
    request.addfinalizer(engine.dispose)
    db.upgrade(engine)
    with db.session_scope(engine) as session:
        session.add(User(id="u1", webauthn_handle="h1", name="owner"))
    provider_keys.save_key(
        engine, KeyRing.parse(settings.master_keys), user_id="u1", key="sk-test-rotate-" + "r" * 30
    )

    rotated = run(["keys", "rotate"], tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert "k2" in rotated.stderr
    ring = KeyRing.parse(load_settings(env, env_file=None).master_keys)
    assert ring.kids == ("k2", "k1")

    rewrap = run(["keys", "rewrap"], tmp_path)
    assert rewrap.returncode == 0, rewrap.stderr
    assert "vault entries: 1 rewrapped to 'k2', 0 already current" in rewrap.stdout
    again = run(["keys", "rewrap"], tmp_path)
    assert "vault entries: 0 rewrapped to 'k2', 1 already current" in again.stdout

    only_new = ring.serialize().split(",")[0]
    assert (
        provider_keys.open_key(engine, KeyRing.parse(only_new), "u1")
        == "sk-test-rotate-" + "r" * 30
    )
    # With only the old kid, the record names the kid it needs.
    only_old = run(
        ["keys", "rewrap"], tmp_path, KEYBROKER_MASTER_KEYS=ring.serialize().split(",")[1]
    )
    assert only_old.returncode == 1
    assert "'k2'" in only_old.stderr


def test_keys_rotate_in_production_prints_the_new_ring(tmp_path: Path) -> None:
    import base64

    old = "k1:" + base64.b64encode(b"p" * 32).decode()
    result = run(
        ["keys", "rotate"], tmp_path, KEYBROKER_MASTER_KEYS=old, KEYBROKER_SECRET_KEY="s" * 40
    )
    assert result.returncode == 0
    line = result.stdout.strip()
    assert line.startswith("KEYBROKER_MASTER_KEYS=k2:")
    assert line.endswith("," + old)


def test_several_workers_need_redis(tmp_path: Path) -> None:
    result = run(["serve", "--workers", "2"], tmp_path)
    assert result.returncode == 2
    assert "KEYBROKER_REDIS_URL" in result.stderr


def test_clients_add_device_and_both_kinds(tmp_path: Path) -> None:
    from keybroker import db
    from keybroker.oauth.clients import DEVICE_CODE_GRANT_TYPE, find_client

    url = f"sqlite:///{tmp_path / 'data' / 'keybroker.db'}"
    assert run(["db", "upgrade"], tmp_path, KEYBROKER_DATABASE_URL=url).returncode == 0
    device = run(
        ["clients", "add", "--name", "Tool", "--device"], tmp_path, KEYBROKER_DATABASE_URL=url
    )
    assert device.returncode == 0, device.stderr
    both = run(
        [
            "clients",
            "add",
            "--name",
            "Both",
            "--device",
            "--redirect-uri",
            "http://127.0.0.1/callback",
        ],
        tmp_path,
        KEYBROKER_DATABASE_URL=url,
    )
    assert both.returncode == 0, both.stderr
    neither = run(["clients", "add", "--name", "None"], tmp_path, KEYBROKER_DATABASE_URL=url)
    assert neither.returncode == 2
    assert "--device" in neither.stderr
    engine = db.make_engine(url)
    tool = find_client(engine, device.stdout.strip())
    dual = find_client(engine, both.stdout.strip())
    engine.dispose()
    assert tool is not None
    assert dual is not None
    assert tool.check_grant_type(DEVICE_CODE_GRANT_TYPE)
    assert not tool.check_grant_type("authorization_code")
    assert tool.redirect_uris == ()
    assert dual.check_grant_type(DEVICE_CODE_GRANT_TYPE)
    assert dual.check_grant_type("authorization_code")
