"""The Dockerfile, checked without a container engine (hadolint lints it in scripts/test).

What can be known from the file and the checkout: the stages, what is copied (and that it exists and is not
ignored), who the image runs as, that the entrypoint and both services' commands exist, the ports, the
labels, and that the HEALTHCHECK script tells a healthy service from a dead one.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from aiohttp import web

from bridge.config import DEFAULT_LISTEN_ADDRESS
from certpager.cli import COMMANDS
from certpager.web import add_lifecycle_routes, application, text
from exporter.cli import DEFAULT_LISTEN
from tests.deploy.dockerfile import arg_defaults, labels, stages
from tests.webclient import listening

ROOT = Path(__file__).resolve().parents[2]
GLOBAL_ARGS, STAGES = stages(ROOT / "Dockerfile")
FINAL = STAGES[-1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "python3-dev", "libffi-dev", "libssl-dev", "rustc", "cargo")


def _copies(stage):
    """(sources, destination, from-stage) of each COPY."""
    for instruction in stage.all("COPY"):
        words = instruction.value.split()
        source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        paths = [w for w in words if not w.startswith("--")]
        yield paths[:-1], paths[-1], source_stage


def _ignored(path: str) -> bool:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    return any(
        fnmatch.fnmatch(path, p) or fnmatch.fnmatch(parts[0], p) or (p.startswith("**/") and p[3:] in parts)
        for p in patterns
    )


def test_multi_stage_on_a_slim_python_base():
    assert len(STAGES) >= 2
    assert {stage.base for stage in STAGES} == {GLOBAL_ARGS["PYTHON_IMAGE"]}
    assert GLOBAL_ARGS["PYTHON_IMAGE"].startswith("python:3.11-slim")
    names = {stage.name for stage in STAGES[:-1]}
    assert all(source in names for _, _, source in _copies(FINAL) if source), "COPY --from an unknown stage"


def test_copied_files_exist_and_are_not_ignored():
    for stage in STAGES:
        for sources, _, from_stage in _copies(stage):
            if from_stage:
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the checkout"
                assert not _ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_final_stage_has_no_build_tools_and_no_installer():
    runs = " ".join(i.value for i in FINAL.all("RUN"))
    assert not any(tool in runs.split() for tool in BUILD_TOOLS), runs
    assert "pip install" not in runs and "apt-get install" not in runs, "the final stage installs nothing"
    assert "pip uninstall --yes pip setuptools" in runs, "the base image's pip is removed from the final image"
    build_runs = " ".join(i.value for s in STAGES[:-1] for i in s.all("RUN"))
    assert "--only-binary=:all:" in build_runs, "dependencies come as wheels, never compiled"
    assert "/opt/certpager/bin/pip uninstall --yes pip setuptools" in build_runs
    assert [(s, d) for s, d, f in _copies(FINAL) if f] == [(["/opt/certpager"], "/opt/certpager")]


def test_runs_as_a_non_root_user_that_owns_its_data_directory():
    user = FINAL.all("USER")[-1].value
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, "numeric, non-root (runAsNonRoot)"
    keywords = [i.keyword for i in FINAL.instructions]
    assert "RUN" not in keywords[keywords.index("USER"):], "nothing runs as root after USER"
    runs = " ".join(i.value for i in FINAL.all("RUN"))
    assert f"--uid {uid}" in runs
    workdir = FINAL.all("WORKDIR")[-1].value
    assert f"chown {uid}:{gid} {workdir}" in runs, "the working directory (SQLite store) is writable"


def test_entrypoint_runs_both_services():
    assert FINAL.all("ENTRYPOINT")[-1].exec_form() == ["certpager"]
    assert "certpager" in PYPROJECT["project"]["scripts"]
    assert {"exporter", "bridge"} <= set(COMMANDS)
    command = FINAL.all("CMD")[-1].exec_form()
    assert command[0] in COMMANDS
    config = command[command.index("--config.file") + 1]
    destinations = {d: s for s, d, f in _copies(FINAL) if not f}
    assert config in destinations, f"CMD's {config} is not copied into the image"


@pytest.mark.parametrize("service", ["exporter", "bridge"])
def test_shipped_configs_pass_config_check(service):
    destinations = {d: s[0] for s, d, f in _copies(FINAL) if not f}
    source = destinations[f"/etc/certpager/{service}.yml"]
    result = subprocess.run(
        [sys.executable, "-m", "certpager", service, "--config.check", "--config.file", str(ROOT / source)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr


def test_exposes_the_default_ports():
    exposed = {int(p) for i in FINAL.all("EXPOSE") for p in i.value.split()}
    assert exposed == {int(DEFAULT_LISTEN.rpartition(":")[2]), int(DEFAULT_LISTEN_ADDRESS.rpartition(":")[2])}


def test_oci_labels():
    found = labels(FINAL)
    args = arg_defaults(FINAL)
    prefix = "org.opencontainers.image."
    for key in ("title", "description", "version", "revision", "licenses", "source"):
        assert found.get(prefix + key), f"label {prefix}{key} missing"
    assert found[prefix + "licenses"] == PYPROJECT["project"]["license"]
    assert found[prefix + "version"] == "${VERSION}" and args["VERSION"] == PYPROJECT["project"]["version"]


def _healthcheck_script() -> Path:
    command = FINAL.all("HEALTHCHECK")[-1].value.split("CMD", 1)[1]
    name = json.loads(command)[0]
    copied = {d: s[0] for s, d, f in _copies(FINAL) if not f}
    return ROOT / copied[f"/usr/local/bin/{name}"]


async def _run_healthcheck(env: dict[str, str]) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(_healthcheck_script()), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), 30)


def test_healthcheck_script_is_executable():
    """COPY keeps the file's mode: the HEALTHCHECK runs it by name, so it must be executable in the checkout."""
    assert os.access(_healthcheck_script(), os.X_OK)


async def test_healthcheck_passes_on_a_healthy_service_and_fails_otherwise():
    app = application()
    add_lifecycle_routes(app, unready=list, reload=lambda: asyncio.sleep(0))
    broken = application()

    async def unhealthy(_: web.Request) -> web.Response:
        return text("down\n", 503)

    broken.router.add_get("/-/healthy", unhealthy)
    async with listening(app) as port, listening(broken) as broken_port:
        assert await _run_healthcheck({"CERTPAGER_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/-/healthy"}) == 0
        assert await _run_healthcheck({"CERTPAGER_HEALTHCHECK_URL": f"http://127.0.0.1:{broken_port}/-/healthy"}) == 1
    # Nothing listens there any more: a refused connection is unhealthy, not a crash.
    assert await _run_healthcheck({"CERTPAGER_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/-/healthy"}) == 1
