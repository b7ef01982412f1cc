"""The ``mailjet-bridge`` command line: help texts and start-up errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from bridge.cli import main


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_bad_configuration_stops_with_one_line_per_problem(command: str) -> None:
    result = CliRunner().invoke(
        main, [command], env={"SEGMENT_REGION": "mars", "MAILJET_ACTION": "subscribe"}
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [
        "configuration error: SEGMENT_REGION='mars' is not valid: use one of us, eu",
        "configuration error: MAILJET_ACTION='subscribe' is not valid: use one of "
        "addnoforce, addforce, unsub, remove",
    ]


def test_unusable_database_is_one_clear_line(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(
        main, ["worker"], env={"BRIDGE_DATABASE_URL": f"sqlite:///{blocker}/sub/b.db"}
    )
    assert result.exit_code == 3
    assert result.output.startswith("storage error: cannot open SQLite database")


def test_every_command_has_a_one_line_help() -> None:
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for command in ("serve", "worker"):
        assert command in top.output
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0


def test_python_dash_m_bridge_is_the_same_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "bridge", "--help"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0 and "serve" in result.stdout
