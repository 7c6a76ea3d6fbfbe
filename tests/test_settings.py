from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keybroker.settings import SettingsError, load_settings

GOOD_RING = "k1:" + "A" * 43 + "="


def test_development_defaults_generate_secrets_once(tmp_path: Path) -> None:
    env = {"KEYBROKER_DATA_DIR": str(tmp_path)}
    first = load_settings(env, env_file=None)
    second = load_settings(env, env_file=None)
    assert first.generated_secrets
    assert first.secret_key == second.secret_key
    assert first.master_keys == second.master_keys
    assert first.database_url == f"sqlite:///{tmp_path / 'keybroker.db'}"
    assert first.public_url == "http://localhost:8000"
    assert first.upstream_url == "https://api.openai.com/v1"
    assert (tmp_path / "generated-secrets.env").stat().st_mode & 0o777 == 0o600
    assert first.secret_key not in repr(first)


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "KEYBROKER_UPSTREAM_URL=http://127.0.0.1:9/v1\nKEYBROKER_PUBLIC_URL=http://localhost:1234\n"
    )
    settings = load_settings(
        {"KEYBROKER_DATA_DIR": str(tmp_path), "KEYBROKER_PUBLIC_URL": "http://localhost:5678"},
        env_file=env_file,
    )
    assert settings.upstream_url == "http://127.0.0.1:9/v1"
    assert settings.public_url == "http://localhost:5678"


def test_production_names_every_missing_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(
            {"KEYBROKER_ENV": "production", "KEYBROKER_DATA_DIR": str(tmp_path)}, env_file=None
        )
    for name in ("KEYBROKER_SECRET_KEY", "KEYBROKER_MASTER_KEYS", "KEYBROKER_PUBLIC_URL"):
        assert name in str(info.value)
    assert not (tmp_path / "generated-secrets.env").exists()


def test_production_needs_https(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="https"):
        load_settings(
            {
                "KEYBROKER_ENV": "production",
                "KEYBROKER_SECRET_KEY": "s" * 40,
                "KEYBROKER_MASTER_KEYS": GOOD_RING,
                "KEYBROKER_PUBLIC_URL": "http://broker.example",
            },
            env_file=None,
        )


def test_production_with_real_secrets_loads(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "KEYBROKER_ENV": "production",
            "KEYBROKER_SECRET_KEY": "s" * 40,
            "KEYBROKER_MASTER_KEYS": GOOD_RING,
            "KEYBROKER_PUBLIC_URL": "https://broker.example",
            "KEYBROKER_DATA_DIR": str(tmp_path),
        },
        env_file=None,
    )
    assert settings.production
    assert settings.secure_cookies
    assert settings.rp_id == "broker.example"
    assert settings.base_url == "https://broker.example/v1"


def test_production_serve_exits_non_zero_naming_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")}
    env["KEYBROKER_ENV"] = "production"
    result = subprocess.run(
        [sys.executable, "-m", "keybroker", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "KEYBROKER_SECRET_KEY" in result.stderr
    assert "KEYBROKER_MASTER_KEYS" in result.stderr


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://localhost:9000"),
        ("0.0.0.0", "http://localhost:9000"),
        ("::1", "http://localhost:9000"),
        ("localhost", "http://localhost:9000"),
        ("broker.lan", "http://broker.lan:9000"),
        ("fd00::5", "http://[fd00::5]:9000"),
    ],
)
def test_development_public_url_follows_the_listening_address(
    tmp_path: Path, host: str, url: str
) -> None:
    settings = load_settings({"KEYBROKER_DATA_DIR": str(tmp_path)}, env_file=None)
    served = settings.served_at(host, 9000)
    assert served.public_url == url
    assert served.origin == url
    assert served.rp_id == url.split("//")[1].rsplit(":", 1)[0].strip("[]")
    assert served.base_url == f"{url}/v1"


def test_a_configured_public_url_does_not_follow_the_port(tmp_path: Path) -> None:
    development = load_settings(
        {"KEYBROKER_DATA_DIR": str(tmp_path), "KEYBROKER_PUBLIC_URL": "http://localhost:8000"},
        env_file=None,
    )
    assert development.served_at("127.0.0.1", 9000).public_url == "http://localhost:8000"
    production = load_settings(
        {
            "KEYBROKER_ENV": "production",
            "KEYBROKER_SECRET_KEY": "s" * 40,
            "KEYBROKER_MASTER_KEYS": GOOD_RING,
            "KEYBROKER_PUBLIC_URL": "https://broker.example",
        },
        env_file=None,
    )
    assert production.served_at("0.0.0.0", 9000).public_url == "https://broker.example"


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"HTTPS_PROXY": "http://proxy:3128"}, True),
        ({"https_proxy": "http://proxy:3128"}, True),
        ({"ALL_PROXY": "http://proxy:3128"}, True),
        ({"HTTP_PROXY": "http://proxy:3128"}, False),  # the upstream is https
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "openai.com"}, False),
        ({"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "*"}, False),
        ({"HTTPS_PROXY": "http://proxy:3128", "KEYBROKER_UPSTREAM_CLIENT": "aiohttp"}, False),
    ],
)
def test_a_proxy_setting_the_upstream_client_cannot_honour_stops_the_start(
    tmp_path: Path, env: dict[str, str], refused: bool
) -> None:
    environ = {"KEYBROKER_DATA_DIR": str(tmp_path), **env}
    if refused:
        with pytest.raises(SettingsError, match="KEYBROKER_UPSTREAM_CLIENT=aiohttp"):
            load_settings(environ, env_file=None)
    else:
        load_settings(environ, env_file=None)


def test_upstream_and_server_limits_are_settings(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "KEYBROKER_DATA_DIR": str(tmp_path),
            "KEYBROKER_UPSTREAM_CONNECT_TIMEOUT": "2.5",
            "KEYBROKER_UPSTREAM_MAX_CONNECTIONS": "7",
            "KEYBROKER_UPSTREAM_POOL_TIMEOUT": "3",
            "KEYBROKER_UPSTREAM_GZIP_LIMIT": "1000",
            "KEYBROKER_HEADER_TIMEOUT": "4",
            "KEYBROKER_SERVER_PROTOCOL": "stock",
        },
        env_file=None,
    )
    assert settings.upstream_connect_timeout == 2.5
    assert settings.upstream_max_connections == 7
    assert settings.upstream_pool_timeout == 3
    assert settings.upstream_gzip_limit == 1000
    assert settings.header_timeout == 4
    assert settings.server_protocol == "stock"
    with pytest.raises(SettingsError, match="KEYBROKER_SERVER_PROTOCOL"):
        load_settings(
            {"KEYBROKER_DATA_DIR": str(tmp_path), "KEYBROKER_SERVER_PROTOCOL": "fastest"},
            env_file=None,
        )


def test_usage_retention_days(tmp_path: Path) -> None:
    env = {"KEYBROKER_DATA_DIR": str(tmp_path)}
    assert load_settings(env, env_file=None).usage_retention_days == 90
    for value, days in (("30", 30), ("0", 0), (" 365 ", 365)):
        settings = load_settings({**env, "KEYBROKER_USAGE_RETENTION_DAYS": value}, env_file=None)
        assert settings.usage_retention_days == days
    for bad in ("-1", "1.5", "ninety", "99999"):
        with pytest.raises(SettingsError, match="KEYBROKER_USAGE_RETENTION_DAYS"):
            load_settings({**env, "KEYBROKER_USAGE_RETENTION_DAYS": bad}, env_file=None)
