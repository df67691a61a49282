"""The container recipes stay buildable and pinned like pyproject.toml.

These check what can be checked without building: the structure of both files, that every path
they copy exists, and that the torch/torchvision pins and the constraints agree with
pyproject.toml so they cannot drift. The real build (podman, from Debian's packages) is the
opt-in `container` test: HCLI_CONTAINER_TEST=1 (containers/README.md says how long it takes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "containers" / "Dockerfile"
APPTAINER = REPO / "containers" / "Apptainer.def"
CONSTRAINTS = REPO / "containers" / "constraints.txt"
PINNED = ("torch", "torchvision")
# Packages whose versions follow the torch build (CUDA or CPU), never the constraints file.
TORCH_BUILD = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")

DOCKER_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}
APPTAINER_SECTIONS = {
    "arguments", "setup", "files", "environment", "post", "runscript", "startscript", "test",
    "labels", "help",
}


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = (Requirement(r) for r in project["dependencies"])
    return {r.name.lower(): r for r in reqs}


def _pins() -> dict[str, str]:
    reqs = _requirements()
    pins = {}
    for name in PINNED:
        spec = list(reqs[name].specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{name} is not pinned: {spec}"
        pins[name] = spec[0].version
    return pins


def _python_minor() -> str:
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    return re.search(r">=\s*(3\.\d+)", requires).group(1)


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line."""
    # Hand-written: backslash continuations and comments are the whole grammar we rely on, and
    # this avoids a dependency for one test.
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in logical]


def _apptainer() -> tuple[dict[str, str], dict[str, list[str]]]:
    """(header keywords, section name -> lines) of the definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in APPTAINER.read_text().splitlines():
        line = raw.strip()
        if line.startswith("%"):
            name = line[1:].split()[0]
            assert name in APPTAINER_SECTIONS, f"unknown section %{name}"
            assert name not in sections, f"section %{name} twice"
            current = sections.setdefault(name, [])
        elif current is not None:
            if line and not line.startswith("#"):
                current.append(line)
        elif line and not line.startswith("#"):
            key, sep, value = line.partition(":")
            assert sep, f"header line without 'Key: value': {line!r}"
            header[key.strip()] = value.strip()
    return header, sections


def _pip_installs(commands: list[str]) -> list[str]:
    return [c for c in commands if re.search(r"\bpip install\b", c)]


def _assert_installs_pins(commands: list[str], where: str) -> None:
    installs = " ".join(_pip_installs(commands))
    for name, version in _pins().items():
        found = re.findall(rf"\b{name}==(\S+)", installs)
        assert found == [version], f"{where}: {name} pinned {found}, pyproject.toml says {version}"
    assert re.search(r"--constraint\s+\S*constraints\.txt\s+/opt/hcli\b", installs), (
        f"{where}: the project must be installed from /opt/hcli with containers/constraints.txt"
    )


def test_pyproject_pins_torch_exactly() -> None:
    pins = _pins()
    assert set(pins) == set(PINNED)
    assert all(Version(v) for v in pins.values())


def test_dockerfile_structure_and_pins() -> None:
    instructions = _dockerfile()
    assert instructions[0][0] == "FROM", "FROM must be the first instruction"
    unknown = {i for i, _ in instructions} - DOCKER_INSTRUCTIONS
    assert not unknown, f"unknown Dockerfile instructions {unknown}"
    assert re.match(rf"python:{re.escape(_python_minor())}\b", instructions[0][1])
    _assert_installs_pins([a for i, a in instructions if i == "RUN"], "Dockerfile")
    entry = [a for i, a in instructions if i == "ENTRYPOINT"]
    assert [json.loads(e) for e in entry] == [["hcli"]]
    for args in (a for i, a in instructions if i == "COPY"):
        *sources, _dest = args.split()
        for src in sources:
            assert (REPO / src).exists(), f"Dockerfile copies {src}, missing from the repository"


def test_apptainer_structure_and_pins() -> None:
    header, sections = _apptainer()
    assert next(iter(header)) == "Bootstrap", "Bootstrap: must be the first header line"
    assert header["Bootstrap"] == "docker"
    assert re.match(rf"python:{re.escape(_python_minor())}\b", header["From"])
    assert {"files", "post", "runscript"} <= set(sections)
    _assert_installs_pins(sections["post"], "Apptainer.def %post")
    assert any(re.match(r"exec hcli\b", line) for line in sections["runscript"])
    for line in sections["files"]:
        src = line.split()[0]
        assert (REPO / src).exists(), f"Apptainer.def copies {src}, missing from the repository"
    # Every {{ ARG }} used must have a default in %arguments, or the build stops to ask.
    defined = {ln.split("=", 1)[0].strip() for ln in sections.get("arguments", [])}
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", APPTAINER.read_text()))
    assert used <= defined, f"build arguments without default: {used - defined}"


def test_both_recipes_use_the_same_base_and_torch_index() -> None:
    docker = dict(_dockerfile())
    header, sections = _apptainer()
    assert docker["FROM"] == header["From"]
    docker_index = re.search(r"ARG TORCH_INDEX=(\S+)", DOCKERFILE.read_text()).group(1)
    assert f"TORCH_INDEX={docker_index}" in sections["arguments"]


@pytest.mark.parametrize("name", sorted(set(_requirements()) - set(PINNED)))
def test_constraints_pin_every_dependency_within_pyproject(name: str) -> None:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            spec = list(req.specifier)
            assert len(spec) == 1 and spec[0].operator == "==", f"not an exact pin: {line}"
            assert not TORCH_BUILD.match(req.name.lower()), f"{req.name} follows the torch build"
            pins[req.name.lower().replace("_", "-")] = spec[0].version
    assert name.replace("_", "-") in pins, f"{name} has no pin in {CONSTRAINTS.name}"
    version = pins[name.replace("_", "-")]
    assert _requirements()[name].specifier.contains(version), (
        f"constraints pin {name}=={version} outside pyproject's {_requirements()[name].specifier}"
    )


@pytest.mark.container
@pytest.mark.skipif(os.environ.get("HCLI_CONTAINER_TEST") != "1" or not shutil.which("podman"),
                    reason="builds the image (minutes, GBs of wheels): set HCLI_CONTAINER_TEST=1 "
                    "with podman installed (containers/README.md)")
def test_the_image_builds_and_runs_hcli() -> None:
    """The real build: .ci/container.sh builds containers/Dockerfile with podman (on a base made
    locally from Debian's packages) and runs `hcli --help` and the job imports inside it."""
    done = subprocess.run(["bash", str(REPO / ".ci" / "container.sh")], capture_output=True,
                          text=True, timeout=3600, env={**os.environ, "HCLI_IMAGE": "hcli:test"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Usage: hcli" in done.stdout
    assert re.search(r"^torch \S+ ok$", done.stdout, flags=re.M), done.stdout[-2000:]
