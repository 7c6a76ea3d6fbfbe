from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keybroker.cli import build_parser

COMMANDS = [["serve"], ["db", "upgrade"], ["doctor"]]


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
    assert "applied 1 migration" in upgraded.stdout
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
    assert "upstream: NOT reachable" in doctor.stdout
    assert doctor.returncode == 1


def test_malformed_master_keys_stop_the_start_without_showing_the_key(tmp_path: Path) -> None:
    secret_material = "c2VjcmV0LWJ1dC1zaG9ydA=="
    result = run(["doctor"], tmp_path, KEYBROKER_MASTER_KEYS=f"k1:{secret_material}")
    assert result.returncode == 2
    assert "must be 32 bytes" in result.stderr
    assert secret_material not in result.stderr + result.stdout
