"""Print the app's dependencies from ``pyproject.toml``, one per line, for the image build.

    python requirements.py PYPROJECT torch [TORCH_VERSION TORCHVISION_VERSION]
    python requirements.py PYPROJECT rest

``torch``: the torch and torchvision requirements (pyproject's pins, or the given versions, e.g.
``2.13.0+cpu 0.28.0`` from an offline wheelhouse); ``rest``: every other dependency. The image
installs torch first (from the torch index) and the rest in a second layer, both before the code
is copied, so a code change rebuilds in seconds.
"""

from __future__ import annotations

import re
import sys
import tomllib

TORCH = ("torch", "torchvision")


def requirements(pyproject: str, part: str, versions: list[str]) -> list[str]:
    """The requirement strings of ``part`` (``torch`` or ``rest``)."""
    with open(pyproject, "rb") as fh:
        deps: list[str] = tomllib.load(fh)["project"]["dependencies"]
    named = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower(): d for d in deps}
    if part == "rest":
        return [d for name, d in named.items() if name not in TORCH]
    pins = [v for v in versions if v]
    if pins:
        return [f"{name}=={version}" for name, version in zip(TORCH, pins, strict=True)]
    return [named[name] for name in TORCH]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2], sys.argv[3:])))
