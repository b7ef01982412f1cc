"""deploy/ (systemd units and their environment file) and a README that stands on its own (#12)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import load_settings
from tests.processes import ROOT, missing

DEPLOY = ROOT / "deploy"
INSTALLED = "/opt/mailjet-bridge/.venv/bin/mailjet-bridge"


@pytest.mark.slow  # starts systemd-analyze
def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """The units as shipped, with ExecStart pointed at this checkout's console script (verify checks
    that the command exists)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze is not installed here, so the units in deploy/ are not verified")
    units = sorted(DEPLOY.glob("*.service"))
    assert {unit.name for unit in units} == {"mailjet-bridge-web.service", "mailjet-bridge-worker.service"}
    here = str(Path(sys.executable).parent / "mailjet-bridge")
    for unit in units:
        text = unit.read_text()
        assert INSTALLED in text
        (tmp_path / unit.name).write_text(text.replace(INSTALLED, here))
    result = subprocess.run([analyze, "verify", *sorted(map(str, tmp_path.glob("*.service")))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_units_run_the_web_alone_and_the_worker() -> None:
    web = (DEPLOY / "mailjet-bridge-web.service").read_text()
    worker = (DEPLOY / "mailjet-bridge-worker.service").read_text()
    assert f"ExecStart={INSTALLED} serve --web-only" in web
    assert f"ExecStart={INSTALLED} worker" in worker
    assert "KillMode=mixed" in web  # serve stops its own processes, in order
    for unit in (web, worker):
        assert "EnvironmentFile=/etc/mailjet-bridge/bridge.env" in unit
        assert "KillSignal=SIGTERM" in unit and "Restart=always" in unit


def test_the_environment_example_is_a_valid_configuration() -> None:
    environ = {}
    for line in (DEPLOY / "bridge.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            environ[name] = value
    settings = load_settings(environ)
    assert settings.database_url == "sqlite:////var/lib/mailjet-bridge/bridge.db"
    assert settings.public_url == "https://bridge.example.com" and settings.proxy_count == 1


def test_the_readme_stands_on_its_own() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)", readme):
        if target.startswith(("http://", "https://")):
            continue
        assert not target.startswith(("/", "..")), target
        assert (ROOT / target).resolve().is_relative_to(ROOT) and (ROOT / target).exists(), target
    for section in ("## Try it locally", "## Deploy", "mailjet-bridge demo", "make demo"):
        assert section in readme
