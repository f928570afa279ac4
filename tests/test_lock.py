"""The lock `make venv` installs from: exact, hashed, in step with pyproject.toml and environment.yml."""

import re
import tomllib

from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = (ROOT / "requirements.lock").read_text()


def locked() -> dict[str, str]:
    """{canonical name: version} of every pin in requirements.lock."""
    return {canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", LOCK, flags=re.M)}


def test_every_requirement_of_pyproject_is_locked_at_a_version_it_allows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name == "torch":  # installed first by the Makefile ($(TORCH)), so left out of the lock
            assert name not in pins
            continue
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}: " \
            "run `make lock`"


def test_every_pin_is_exact_and_hashed():
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.split("\n", 1)[1])
    entries = [b for b in blocks if re.match(r"[A-Za-z0-9_.\-]+==", b)]
    assert len(entries) == len(locked()) > 100
    for block in entries:
        assert "--hash=sha256:" in block, block.splitlines()[0]


def test_environment_yml_pins_the_same_versions():
    env = (ROOT / "environment.yml").read_text()
    pinned = {canonicalize_name(n): v for n, v in re.findall(r"^\s+- ([A-Za-z0-9_.\-]+)==(\S+)$", env, flags=re.M)}
    assert pinned == locked(), "environment.yml and requirements.lock disagree: run `make lock`"


def test_make_venv_installs_from_the_lock_with_hashes():
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in makefile
    assert "$(STAMP): pyproject.toml requirements.lock" in makefile
