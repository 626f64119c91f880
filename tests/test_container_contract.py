"""The image's contract, without a container engine (this machine has only the docker
client): the Dockerfile and the lock are read and checked, and the installed wheel is run
the way the image runs it.

The run reproduces the image's runtime: the wheel built from the files the build context
holds (.dockerignore), installed NON-editable into a fresh venv; the Dockerfile's own ENV
(paths moved to the test's folders); working directory `/`; user and group 10001 with no
other group; a root filesystem remounted read-only in a private mount namespace
(`unshare -m`), so the only writable place is the state folder, on another filesystem
(/dev/shm) like a volume; HOME a folder that does not exist; secrets from files
(`*_FILE`); `run --once` and `serve` against the sandbox on 127.0.0.1; SIGTERM and the
exit code; the HEALTHCHECK's command; a missing, unmounted or unwritable state volume.

Not covered (needs an engine): the image build itself (the base image, the lock's hashes
against PyPI's files), Docker's volume ownership copy, the HEALTHCHECK's scheduling.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from loopsync.sandbox import Sandbox
from loopsync.timeutil import SystemClock

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements" / "loopsync.lock"
BUILD_LOCK = ROOT / "requirements" / "build.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
UID = GID = 10001


# -- the Dockerfile, read ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    name: str  # upper case: FROM, RUN, ...
    args: str  # continuation lines joined, comments dropped


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order: `\\` continuations joined, comment lines dropped (within a
    continuation too, as Docker does), the `# syntax=` directive ignored."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}".strip() if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        name, _, args = pending.partition(" ")
        out.append(Instruction(name.upper(), args.strip()))
        pending = ""
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions per build stage (the global ARGs before the first FROM are stage 0)."""
    out: list[list[Instruction]] = [[]]
    for ins in instructions:
        if ins.name == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def env_of(stage: list[Instruction]) -> dict[str, str]:
    """The stage's ENV, as `KEY=value` pairs (the form this Dockerfile uses)."""
    env: dict[str, str] = {}
    for ins in stage:
        if ins.name == "ENV":
            for pair in ins.args.split():
                key, _, value = pair.partition("=")
                env[key] = value.strip('"')
    return env


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)[-1]


def test_dockerfile_base_image_is_pinned_by_digest_in_every_stage(dockerfile):
    (pin,) = [i.args for i in stages(dockerfile)[0] if i.args.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim@sha256:[0-9a-f]{64}", pin)
    froms = [i.args.split()[0] for i in dockerfile if i.name == "FROM"]
    assert len(froms) == 2 and set(froms) == {"${PYTHON_IMAGE}"}
    assert "docker buildx imagetools inspect python:3.11-slim" in DOCKERFILE.read_text()


def test_dockerfile_installs_the_hashed_lock_before_copying_the_source(dockerfile):
    build = stages(dockerfile)[1]
    names = [(i.name, i.args) for i in build]
    lock_copy = next(n for n, (k, a) in enumerate(names) if k == "COPY" and "loopsync.lock" in a)
    install = next(n for n, (k, a) in enumerate(names) if k == "RUN" and "--require-hashes" in a)
    source = next(n for n, (k, a) in enumerate(names) if k == "COPY" and a.startswith("src "))
    assert lock_copy < install < source
    steps = " ".join(names[install][1].split())
    # The build backend from its own hashed lock, in a venv the image never copies; the
    # image's venv, made without pip, gets the runtime lock only.
    assert "/tmp/build/bin/pip install --require-hashes --no-deps -r /tmp/build.lock" in steps
    assert "python -m venv --without-pip /opt/loopsync" in steps
    assert "--require-hashes --no-deps -r /tmp/loopsync.lock" in steps
    wheel = " ".join(next(a for k, a in names[source:] if k == "RUN" and "pip wheel" in a).split())
    assert "/tmp/build/bin/pip wheel --no-deps --no-build-isolation" in wheel
    assert "install --no-deps --no-index /tmp/wheels/loopsync-" in wheel


def test_dockerfile_final_stage_copies_only_the_venv_and_runs_as_a_numeric_user(dockerfile):
    final = final_stage(dockerfile)
    copies = [i.args for i in final if i.name in ("COPY", "ADD")]
    assert copies == ["--from=build /opt/loopsync /opt/loopsync"]
    users = [i.args for i in final if i.name == "USER"]
    assert users == [f"{UID}:{GID}"]
    assert not any(i.name == "VOLUME" for i in dockerfile)  # an anonymous volume is lost
    assert [i.args for i in final if i.name == "STOPSIGNAL"] == ["SIGTERM"]
    assert [i.args for i in final if i.name == "WORKDIR"] == ["/"]
    (entry,) = [i.args for i in final if i.name == "ENTRYPOINT"]
    assert entry == '["python", "-m", "loopsync"]'  # exec form: loopsync is PID 1


def test_dockerfile_healthcheck_runs_the_python_probe_not_curl(dockerfile):
    (check,) = [i.args for i in final_stage(dockerfile) if i.name == "HEALTHCHECK"]
    assert check.endswith('CMD ["python", "-m", "loopsync.healthcheck", "-c", "/config"]')
    assert "curl" not in check and "wget" not in check


def test_dockerfile_labels_source_version_revision_from_build_args(dockerfile):
    final = final_stage(dockerfile)
    labels = " ".join(i.args for i in final if i.name == "LABEL")
    for key, arg in (("source", "SOURCE"), ("version", "VERSION"), ("revision", "REVISION")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in labels
    args = {a.partition("=")[0]: a.partition("=")[2] for i in final if i.name == "ARG"
            for a in [i.args]}  # fmt: skip
    assert args["VERSION"] == PYPROJECT["project"]["version"]


def test_dockerfile_env_suits_a_read_only_root_and_the_required_state_mount(dockerfile):
    env = env_of(final_stage(dockerfile))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/nonexistent"
    assert env["TMPDIR"] == env["LOOPSYNC_STATE_DIR"] == "/state"
    assert env["LOOPSYNC_REQUIRE_STATE_MOUNT"] == "1"
    assert env["PATH"].startswith("/opt/loopsync/bin:")


def test_dockerignore_lets_in_only_what_the_build_copies():
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {line for line in lines if line.startswith("!")} == {
        "!requirements/loopsync.lock",
        "!requirements/build.lock",
        "!pyproject.toml",
        "!README.md",
        "!src/",
    }


# -- the lock ---------------------------------------------------------------------------------


def lock_pins(lock: Path = LOCK) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes), from the lock's `name==version \\ --hash=...`."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in lock.read_text(encoding="utf-8").splitlines():
        pin = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if pin:
            current = canonicalize_name(pin[1])
            pins[current] = (pin[2], [])
        elif current and (found := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[current][1].append(found[1])
    return pins


def test_every_runtime_dependency_is_pinned_in_the_lock_with_a_hash():
    pins = lock_pins()
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in {LOCK.name}: run scripts/lock"
        version, hashes = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} vs {spec}"
        assert hashes, f"{name} has no hash"
    assert all(hashes for _, hashes in pins.values())  # --require-hashes needs every one


def test_build_lock_pins_the_build_backend_with_hashes():
    pins = lock_pins(BUILD_LOCK)
    for spec in PYPROJECT["build-system"]["requires"]:
        req = Requirement(spec)
        version, hashes = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(version) and hashes


def test_lock_holds_no_sandbox_or_test_dependency_and_names_its_command():
    pins = lock_pins()
    extras = PYPROJECT["project"]["optional-dependencies"]
    for spec in extras["sandbox"] + [s for s in extras["test"] if not s.startswith("loopsync")]:
        assert canonicalize_name(Requirement(spec).name) not in pins
    assert "#    scripts/lock\n" in LOCK.read_text(encoding="utf-8")


# -- the installed wheel, run as the image runs it -------------------------------------------


@dataclass(frozen=True)
class Image:
    """The wheel installed in a fresh venv, and how to start it as the image would."""

    venv: Path
    env: dict[str, str]  # the Dockerfile's ENV, paths moved to the test's folders
    read_only_root: bool  # unshare -m worked: `/` is read-only for the worker

    def argv(self, *args: str) -> list[str]:
        inner = [
            "setpriv",
            f"--reuid={UID}",
            f"--regid={GID}",
            "--clear-groups",
            "--",
            str(self.venv / "bin" / "python"),
            "-m",
            *args,
        ]
        if not self.read_only_root:
            return inner
        remount = 'mount -o remount,bind,ro / && exec "$@"'
        return ["unshare", "--mount", "--", "sh", "-c", remount, "sh", *inner]


def _can_remount_read_only() -> bool:
    probe = subprocess.run(
        ["unshare", "--mount", "--", "sh", "-c", "mount -o remount,bind,ro / && true"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def _build_wheel(into: Path) -> Path:
    """`pip wheel --no-deps` of exactly the build context (.dockerignore's files)."""
    context = into / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(
        ROOT / "src",
        context / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    wheels = into / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--wheel-dir", str(wheels), str(context)],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("loopsync-*.whl")
    return wheel


def _install(wheel: Path, venv: Path) -> None:
    """A fresh venv with the wheel installed non-editable. Its dependencies are the test
    venv's (a path line, not that venv's .pth files, so its editable loopsync stays out):
    nothing is downloaded; the lock's own install is the image build's to prove."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )  # fmt: skip
    (site,) = (venv / "lib").glob("python3*/site-packages")
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir())
    (site / "zz_test_dependencies.pth").write_text(f"{deps}\n")


@pytest.fixture(scope="session")
def image() -> Iterator[Image]:
    if os.geteuid() != 0:
        pytest.skip("running as user 10001 needs root (setpriv)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    top = Path(tempfile.mkdtemp(prefix="loopsync-image-"))
    top.chmod(0o755)  # the worker (uid 10001) reads the venv, nothing more
    try:
        venv = top / "opt-loopsync"
        _install(_build_wheel(top), venv)
        subprocess.run(["chmod", "-R", "a+rX,go-w", str(top)], check=True)
        env = env_of(final_stage(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))))
        env["PATH"] = (
            env["PATH"].replace("/opt/loopsync", str(venv)).replace("$PATH", "/usr/bin:/bin")
        )
        yield Image(venv, env, _can_remount_read_only())
    finally:
        shutil.rmtree(top, ignore_errors=True)


@dataclass
class Container:
    """One container's folders: /config, /run/secrets and the /state volume."""

    config: Path
    secrets: Path
    state: Path
    env: dict[str, str]


def _volume_parent() -> Path:
    """A folder on another filesystem than `/`, where a tmp state folder is a volume."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shm.stat().st_dev != Path("/").stat().st_dev:
        return shm
    pytest.skip("/dev/shm is not a filesystem of its own here: no stand-in for a volume")
    raise AssertionError  # unreachable: skip raises


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox("shiphero", clock=SystemClock(), rate_limits=False) as sb:
        sb.seed(3)  # three open returns, their orders in ShipHero
        yield sb


def rmas(sandbox: Sandbox) -> int:
    return sum(sandbox.warehouse.rma_count(str(40000001 + i)) for i in range(3))


@pytest.fixture
def container(image, sandbox, tmp_path) -> Iterator[Container]:
    top = Path(tempfile.mkdtemp(prefix="loopsync-container-"))
    top.chmod(0o755)
    state = Path(tempfile.mkdtemp(prefix="loopsync-state-", dir=_volume_parent()))
    try:
        config, secrets = top / "config", top / "secrets"
        config.mkdir(mode=0o755)
        secrets.mkdir(mode=0o755)
        data = sandbox.config_dict(merchant="acme")
        del data["state_path"]  # the image's way: <merchant>.sqlite in LOOPSYNC_STATE_DIR
        (config / "acme.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        env = dict(image.env)
        for name, value in sandbox.env().items():  # Docker / Kubernetes secrets: files
            (secrets / name.lower()).write_text(value + "\n")
            env[f"{name}_FILE"] = str(secrets / name.lower())
        subprocess.run(["chmod", "-R", "a+rX,go-w", str(top)], check=True)
        os.chown(state, UID, GID)
        state.chmod(0o700)
        env["TMPDIR"] = env["LOOPSYNC_STATE_DIR"] = str(state)
        yield Container(config, secrets, state, env)
    finally:
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def run(image: Image, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        image.argv(*args), env=env, cwd="/", capture_output=True, text=True, timeout=120
    )


def no_secret_or_traceback(text: str, sandbox: Sandbox) -> bool:
    return "Traceback" not in text and not any(v in text for v in sandbox.env().values())


@pytest.mark.slow
def test_run_once_as_the_image_pushes_and_writes_only_the_state_volume(image, container, sandbox):
    done = run(image, container.env, "loopsync", "run", "--once", "-c", str(container.config))
    assert done.returncode == 0, done.stderr[-2000:]
    assert rmas(sandbox) == 3  # one RMA per open return, from secrets in files
    state_file = container.state / "acme.sqlite"
    st = state_file.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (UID, 0o600)
    assert no_secret_or_traceback(done.stdout + done.stderr, sandbox)
    # A read-only `/` refused any other write: the run could not have passed with one.
    assert image.read_only_root, "unshare -m unavailable: only the user's rights were tested"


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition, what: str, limit: float = 60.0) -> None:
    """Poll a condition (no timing is asserted: `limit` only ends a hung test)."""
    give_up = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_serve_as_the_image_is_healthy_and_exits_0_on_sigterm(image, container, sandbox):
    env = container.env | {"LOOPSYNC_HTTP": f"127.0.0.1:{free_port()}"}
    worker = subprocess.Popen(
        image.argv("loopsync", "serve", "-c", str(container.config)),
        env=env,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: rmas(sandbox) == 3 or worker.poll() is not None, "a cycle")
        assert worker.poll() is None, worker.communicate()[1][-2000:]
        healthcheck = ("loopsync.healthcheck", "-c", str(container.config))
        by_http = run(image, env, *healthcheck)  # LOOPSYNC_HTTP: /healthz
        by_status = run(image, container.env, *healthcheck)  # no listener: status --check
        assert (by_http.returncode, by_http.stdout) == (0, "healthy: /healthz 200\n")
        assert (by_status.returncode, by_status.stdout) == (0, "healthy: status --check 0\n")
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=90)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err[-2000:]
    assert no_secret_or_traceback(out + err, sandbox)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["missing", "not mounted", "owned by root"])
def test_serve_without_a_usable_state_volume_is_one_line_and_exit_73(
    image, container, fault, tmp_path
):
    env = dict(container.env)
    if fault == "missing":
        env["LOOPSYNC_STATE_DIR"] = str(container.state / "not-mounted")
        expected = "(LOOPSYNC_STATE_DIR) does not exist; mount the state volume there"
    elif fault == "not mounted":  # on the container's own filesystem: lost on docker rm
        on_root = Path(tempfile.mkdtemp(prefix="loopsync-rootfs-"))
        os.chown(on_root, UID, GID)
        env["LOOPSYNC_STATE_DIR"] = str(on_root)
        expected = "is not on a mounted volume (LOOPSYNC_REQUIRE_STATE_MOUNT is set)"
    else:  # a fresh volume Docker made root's: the user cannot write it
        os.chown(container.state, 0, 0)
        container.state.chmod(0o755)
        expected = f"is not writable by uid {UID}"
    try:
        done = run(image, env, "loopsync", "serve", "-c", str(container.config))
    finally:
        if fault == "not mounted":
            shutil.rmtree(env["LOOPSYNC_STATE_DIR"], ignore_errors=True)
    assert done.returncode == 73, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("loopsync:")]
    assert len(lines) == 1 and "acme: state file" in lines[0] and expected in lines[0], lines
    assert "Traceback" not in done.stderr
    assert list(container.state.iterdir()) == []  # nothing created anywhere it looked
