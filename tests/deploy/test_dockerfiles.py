"""The two Dockerfiles, parsed with dockerfile-parse and linted with hadolint.

No Docker engine runs here, so what the images do at run time is checked
through the rules their Dockerfiles must follow: multi-stage, slim Python
3.11, the repository's own package from the hash-locked dependencies, a
compiler in the build stage only, a numeric non-root user and nothing
written outside /tmp. The wheel that stage builds is built here too.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.render import HADOLINT, REPO

# image -> (Dockerfile, default command, port the HEALTHCHECK calls, EXPOSE)
IMAGES = {
    "trackgate-ingest": (
        "Dockerfile.ingest",
        "ingest",
        "9464",
        {"5027/tcp", "5027/udp", "9464/tcp"},
    ),
    "trackgate-api": ("Dockerfile.api", "api", "8080", {"8080/tcp"}),
}
BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|yum|dnf|gcc|g\+\+|cc|make|build-essential|python3-dev|"
    r"libc6-dev|cargo|rustc)\b"
)


@dataclass(frozen=True)
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]]

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


def _stages(dockerfile: str) -> list[Stage]:
    with (REPO / dockerfile).open("rb") as f:
        parser = DockerfileParser(fileobj=f)
        structure = parser.structure
        parents = parser.parent_images
    stages: list[Stage] = []
    for item in structure:
        if item["instruction"] == "FROM":
            words = item["value"].split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(parents[len(stages)], name, []))
        elif stages and item["instruction"] != "COMMENT":
            stages[-1].instructions.append((item["instruction"], item["value"]))
    return stages


def _json_list(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list)
    return [str(v) for v in parsed]


@pytest.mark.parametrize("image", IMAGES)
def test_image_is_multi_stage_on_slim_python_311(image: str) -> None:
    stages = _stages(IMAGES[image][0])

    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(
            r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.base
        )
    assert stages[-1].name == "runtime"


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_runs_as_a_numeric_non_root_user(image: str) -> None:
    final = _stages(IMAGES[image][0])[-1]

    users = final.values("USER")

    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert gid == "" or (gid.isdigit() and int(gid) != 0)
    assert final.instructions.index(("USER", users[0])) > max(
        i for i, (kind, _) in enumerate(final.instructions) if kind in ("RUN", "COPY")
    )


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_copies_the_built_environment_and_compiles_nothing(
    image: str,
) -> None:
    stages = _stages(IMAGES[image][0])
    final = stages[-1]

    copies = final.values("COPY")
    runs = final.values("RUN")

    assert copies and all(c.startswith(f"--from={stages[0].name} ") for c in copies)
    assert not any(BUILD_TOOLS.search(r) for r in runs), runs
    assert not any("pip install" in r for r in runs)


@pytest.mark.parametrize("image", IMAGES)
def test_build_stage_compiles_the_extensions_and_proves_they_import(
    image: str,
) -> None:
    build = _stages(IMAGES[image][0])[0]
    runs = " && ".join(build.values("RUN"))
    copied = {w for c in build.values("COPY") for w in shlex.split(c)[:-1]}

    assert re.search(
        r"apt-get install [^&]*--no-install-recommends gcc libc6-dev", runs
    )
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert "setup.py" in copied
    # optional=True in setup.py: only this import stops a slow image.
    imports = 'python -c "import trackgate.protocol._speedups, trackgate.core._resp"'
    assert imports in runs
    assert runs.index("pip wheel") < runs.index(imports)


def test_the_wheel_carries_both_compiled_extensions(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--wheel-dir", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("trackgate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert [
        n for n in names if re.fullmatch(r"trackgate/protocol/_speedups\..*\.so", n)
    ]


@pytest.mark.parametrize("image", IMAGES)
def test_build_installs_this_repository_from_the_hash_locked_dependencies(
    image: str,
) -> None:
    build = _stages(IMAGES[image][0])[0]
    runs = " && ".join(build.values("RUN"))
    copies = [shlex.split(c) for c in build.values("COPY")]

    copied = {src for words in copies for src in words[:-1]}

    assert {"requirements.lock", "pyproject.toml", "services/"} <= copied
    assert "--require-hashes" in runs and "-r requirements.lock" in runs
    assert "--only-binary=:all:" in runs
    assert re.search(r"pip wheel [^&]*--no-deps[^&]* \.(\s|$)", runs)
    assert re.search(r"pip install [^&]*--no-deps [^&]*trackgate-\*\.whl", runs)
    assert "pip check" in runs


@pytest.mark.parametrize("image", IMAGES)
def test_runtime_writes_no_bytecode_and_keeps_home_in_tmp(image: str) -> None:
    with (REPO / IMAGES[image][0]).open("rb") as f:
        envs = DockerfileParser(fileobj=f).envs

    assert envs["PYTHONDONTWRITEBYTECODE"] == "1"
    assert envs["HOME"] == "/tmp"
    assert envs["TMPDIR"] == "/tmp"


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_health_check_and_ports_follow_the_runtime_contract(
    image: str,
) -> None:
    dockerfile, command, health_port, exposed = IMAGES[image]
    final = _stages(dockerfile)[-1]

    healthcheck = final.values("HEALTHCHECK")

    assert _json_list(final.values("ENTRYPOINT")[0]) == ["trackgate"]
    assert _json_list(final.values("CMD")[0]) == [command]
    assert len(healthcheck) == 1
    assert "/healthz" in healthcheck[0] and f"'{health_port}'" in healthcheck[0]
    assert set(" ".join(final.values("EXPOSE")).split()) == exposed


# -- .dockerignore -----------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = _pattern_regex(pattern)
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_build_context_holds_what_the_dockerfiles_copy() -> None:
    patterns = _dockerignore()
    sources = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "services").rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and not any(part.endswith(".egg-info") for part in p.parts)
    ]

    sources = [s for s in sources if not s.endswith(".so")]
    for needed in [
        "pyproject.toml",
        "setup.py",
        "README.md",
        "requirements.lock",
        *sources,
    ]:
        assert not _ignored(needed, patterns), needed


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/config",
        ".tools/bin/helm",
        "tests/conftest.py",
        "charts/trackgate/values.yaml",
        "services/trackgate/__pycache__/cli.cpython-311.pyc",
        "services/trackgate/core/keys.pyc",
        "trackgate.egg-info/PKG-INFO",
        "services/trackgate/protocol/_speedups.cpython-311-x86_64-linux-gnu.so",
    ],
)
def test_build_context_leaves_out_local_state(path: str) -> None:
    assert _ignored(path, _dockerignore())


# -- the lock ------------------------------------------------------------------


def _locked(lock: str = "requirements.lock") -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / lock).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    text = (REPO / "requirements.lock").read_text()

    pins = _locked()
    missing = wanted - pins.keys()
    unhashed = re.findall(r"^\S+==\S+(?: ;[^\\\n]*)?\n(?!\s+--hash)", text, re.M)

    assert missing == set(), (
        f"requirements.lock lacks {sorted(missing)}; refresh it as docs/deploy.md says"
    )
    assert unhashed == []


def test_locked_versions_satisfy_the_project_requirements() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _locked()

    for dep in project["dependencies"]:
        req = Requirement(dep)
        version = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(version, prereleases=True), (dep, version)


# -- hadolint ---------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_finds_nothing(image: str) -> None:
    if not HADOLINT.is_file():
        pytest.skip(f"{HADOLINT} is absent: run .ci/install-tools.sh")

    proc = subprocess.run(
        [str(HADOLINT), "--no-color", str(REPO / IMAGES[image][0])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_test_lock_pins_the_shipped_versions_and_the_test_tools() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    tools = {
        canonicalize_name(Requirement(d).name)
        for d in project["optional-dependencies"]["test"]
    }
    shipped, tested = _locked(), _locked("requirements-test.lock")

    differing = {
        name: (version, tested.get(name))
        for name, version in shipped.items()
        if tested.get(name) != version
    }
    assert differing == {}, "refresh both locks together, as docs/deploy.md says"
    assert tools - tested.keys() == set()
