"""The state folder, checked before a worker writes (`run`, `import`, `serve`).

A merchant whose state folder cannot take its state file is refused before the lock or
the database touches anything: one line naming the file, the folder and the fix, raised
as `StateUnwritable` (exit 73, EX_CANTCREAT, like every state file that cannot be created
or written). `serve` checks every merchant at start (cli) and each cycle again (runner):
one merchant's bad folder never stops the others, and a folder fixed later is used.

- A folder the operator named must already exist: LOOPSYNC_STATE_DIR, or the folder of
  an absolute `state_path`. It is meant to be a volume; creating it would put the state
  on the container's own filesystem, lost with the container, and lost state costs a
  look-up before every effect (README, "Lost-state protection"). loopsync still creates
  the folders below it, and folders beside the configuration file (the default
  `state/`), which live with the configuration.
- The folder that will hold the file (or, not there yet, the nearest one that exists)
  must be a folder this process can write and search; an existing state file must be
  writable.
- With LOOPSYNC_REQUIRE_STATE_MOUNT set (the image sets it to 1; `0`, `false`, `no` or
  empty leave it off) that folder must be on another filesystem than `/`: a container
  started without its state volume refuses to run instead of writing state that
  `docker rm` loses. Any other value counts as set: refusing is the safe reading.

`observe` gathers the facts (stat and access calls, nothing written); `problem` decides
from them alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loopsync.config import STATE_DIR_ENV
from loopsync.errors import StateUnwritable

MOUNT_ENV = "LOOPSYNC_REQUIRE_STATE_MOUNT"
_OFF = ("", "0", "false", "no")


@dataclass(frozen=True)
class FolderFacts:
    """What the file system says about one state file's folders."""

    state_path: Path
    root: Path  # the folder the operator named (must exist), or where creation may start
    named_by: str | None  # LOOPSYNC_STATE_DIR / "state_path": must exist; None: may be created
    nearest: Path | None  # the state file's folder, or its nearest existing ancestor
    nearest_is_dir: bool
    nearest_writable: bool  # write and search (W_OK | X_OK) for this process
    file_exists: bool
    file_writable: bool
    on_root_filesystem: bool  # nearest is on the same device as `/`
    mount_required: bool
    uid: int


def problem(facts: FolderFacts) -> str | None:
    """Why this state file cannot be created or written there, or None. Pure."""
    if facts.nearest is None:
        return (
            f"its folder {facts.root} ({facts.named_by}) does not exist; mount the state "
            "volume there (loopsync does not create a folder it was told to use)"
        )
    if not facts.nearest_is_dir:
        return f"{facts.nearest} is not a folder"
    # Before writability: on a read-only root the fix is the volume, not the rights.
    if facts.mount_required and facts.on_root_filesystem:
        return (
            f"folder {facts.nearest} is not on a mounted volume ({MOUNT_ENV} is set); "
            f"state written there would be lost with the container; mount a volume at "
            f"{facts.root}"
        )
    if not facts.nearest_writable:
        return (
            f"folder {facts.nearest} is not writable by uid {facts.uid}; mount it writable "
            f"and owned by (or group-writable for) uid {facts.uid}"
        )
    if facts.file_exists and not facts.file_writable:
        return f"is not writable by uid {facts.uid}"
    return None


def mount_required(environ: Mapping[str, str]) -> bool:
    return environ.get(MOUNT_ENV, "").strip().lower() not in _OFF


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _root(
    state_path: Path, config_file: str, environ: Mapping[str, str]
) -> tuple[Path, str | None]:
    """The folder that must exist (and who named it), or the configuration's folder, below
    which folders may be created (named_by None)."""
    state_dir = environ.get(STATE_DIR_ENV) or None
    if state_dir is not None:
        root = Path(os.path.abspath(Path(state_dir).expanduser()))  # noqa: PTH100 - as config
        if _within(state_path, root):
            return root, STATE_DIR_ENV
    beside = Path(os.path.abspath(Path(config_file).parent))  # noqa: PTH100 - no link resolved
    if config_file and _within(state_path, beside):
        return beside, None
    return state_path.parent, "state_path"


def _nearest(state_path: Path, root: Path, must_exist: bool) -> Path | None:
    """The state file's folder if it exists, else its nearest existing ancestor (no
    higher than `root` when the root must exist)."""
    for folder in (state_path.parent, *state_path.parent.parents):
        if os.path.lexists(folder):  # a dangling link is "there" (and not a folder)
            return folder
        if must_exist and folder == root:
            return None
    return None


def observe(
    state_path: Path, config_file: str, environ: Mapping[str, str] | None = None
) -> FolderFacts:
    """The facts about `state_path`'s folders, by stat and access calls only."""
    env = os.environ if environ is None else environ
    root, named_by = _root(state_path, config_file, env)
    nearest = _nearest(state_path, root, must_exist=named_by is not None)
    is_dir = nearest is not None and nearest.is_dir()
    file_exists = os.path.lexists(state_path)
    return FolderFacts(
        state_path=state_path,
        root=root,
        named_by=named_by,
        nearest=nearest,
        nearest_is_dir=is_dir,
        nearest_writable=is_dir and os.access(str(nearest), os.W_OK | os.X_OK),
        file_exists=file_exists,
        file_writable=file_exists and os.access(state_path, os.W_OK),
        on_root_filesystem=is_dir and _same_device(str(nearest), "/"),
        mount_required=mount_required(env),
        uid=os.geteuid(),
    )


def _same_device(a: str, b: str) -> bool:
    return Path(a).stat().st_dev == Path(b).stat().st_dev


def check_state_folder(
    state_path: Path, config_file: str, environ: Mapping[str, str] | None = None
) -> None:
    """Raise StateUnwritable (73) when this state file cannot be created or written in
    its folder (see the module docstring); nothing is created or written."""
    try:
        found = problem(observe(state_path, config_file, environ))
    except OSError as exc:  # a folder that vanished between two looks, an I/O error
        found = f"its folder cannot be examined ({exc.strerror or exc})"
    if found is not None:
        raise StateUnwritable(str(state_path), f"cannot be created or written: {found}")
