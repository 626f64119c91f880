"""The commands that spread merchants over shards and move them: `serve --shard I/N`'s
filter, `shards plan`, `state export` and `state import` (registered in `cli`; the
hashing is `shards`, the copying `state.backup`).

Each command says one line per merchant on `out` and a fault as one line on stderr with
the exit code `cli` documents (2 usage, 65 not a loopsync state or another merchant's,
73 newer state in the way, the target exists or the state folder is missing or not
writable (`state import`, as `run`'s), 74 no such file, 75 a worker holds the
merchant). Resharding, step by step, is in the README ("Kubernetes").
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import structlog

from loopsync.config import ConfigFailure, MerchantConfig, load_all, load_each
from loopsync.configkit import NoSecrets, Secret, env_reference
from loopsync.errors import UsageError
from loopsync.redaction import redact, register
from loopsync.shards import Shard, parse_count, plan, resolve

log = structlog.get_logger("loopsync.shards")


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """`shards plan` and `state export|import` under the CLI's subcommands."""
    shards = sub.add_parser("shards", help="how merchants are spread over serve --shard I/N")
    shards_sub = shards.add_subparsers(dest="shards_command", required=True)
    plan_p = shards_sub.add_parser("plan", help="which merchants move when N shards become M")
    _configs(plan_p, "merchant YAML files or folders")
    plan_p.add_argument("--from", dest="old", required=True, metavar="N", help="shards now")
    plan_p.add_argument("--to", dest="new", required=True, metavar="M", help="shards after")

    state = sub.add_parser("state", help="move a merchant's state file between machines")
    state_sub = state.add_subparsers(dest="state_command", required=True)
    exp = state_sub.add_parser("export", help="copy the merchant's state into one new file")
    _configs(exp, "the merchant's YAML file")
    exp.add_argument("--to", dest="path", required=True, metavar="PATH", help="a new file")
    imp = state_sub.add_parser("import", help="make an exported file the merchant's state")
    _configs(imp, "the merchant's YAML file")
    imp.add_argument("--from", dest="path", required=True, metavar="PATH", help="the export")


def _configs(sp: argparse.ArgumentParser, what: str) -> None:
    sp.add_argument("-c", "--config", action="extend", nargs="+", required=True, help=what)


def add_shard_option(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--shard",
        metavar="I/N",
        default=None,
        help="run only the merchants rendezvous-hashed to shard I of N (default: "
        "$LOOPSYNC_SHARD, `I/N` or `auto` for a StatefulSet pod; else every merchant)",
    )


def shard_of(asked: str | None) -> Shard | None:
    """`--shard`, else the environment, which must agree (shards.resolve); a bad value or a
    disagreement is a UsageError (exit 2) at start."""
    return resolve(asked, os.environ)


def own(shard: Shard | None, configs: Sequence[MerchantConfig]) -> list[MerchantConfig]:
    """The merchants this process runs: all of them without a shard."""
    mine = [c for c in configs if shard is None or shard.owns(c.merchant)]
    if shard is not None:
        log.info(
            "serve.shard",
            shard=str(shard),
            merchants=[c.merchant for c in mine],
            others=len(configs) - len(mine),
        )
    return mine


def cmd_shards(args: argparse.Namespace, out: TextIO) -> int:
    """`shards plan`: one line per merchant that moves, then a count; 0 even when none
    moves. Reads names only: no secret needs to be set. A bad file among good ones is one
    `config error:` line on stderr and exit 2, the good ones' plan still printed (as
    `serve` runs them): one broken file must not hide where 500 others go."""
    old, new = parse_count(args.old, "--from"), parse_count(args.new, "--to")
    names: list[str] = []
    bad: list[ConfigFailure] = []
    for item in load_each(args.config, NoSecrets()):
        if isinstance(item, ConfigFailure):
            bad.append(item)
        else:
            names.append(item.merchant)
    moves = plan(names, old, new)
    for move in moves:
        out.write(f"{move.merchant}: shard {move.source} -> shard {move.target}\n")
    out.write(f"{len(moves)} of {len(names)} merchant(s) move from {old} to {new} shards\n")
    for failure in bad:
        sys.stderr.write(f"config error: {redact(str(failure.error))}\n")
    return 2 if bad else 0


def cmd_state(args: argparse.Namespace, out: TextIO) -> int:
    """`state export|import`: one merchant (-c FILE), one line saying what was done."""
    from loopsync.state.backup import export, import_state  # SQLite only when asked for
    from loopsync.state.folder import check_state_folder
    from loopsync.timeutil import SystemClock

    cfg = _one_merchant(args.config)
    _mask_set_secrets(cfg)
    path = Path(args.path)
    if args.state_command == "export":
        done = export(cfg.merchant, Path(cfg.state_path), path, SystemClock())
        said = f"{cfg.merchant}: state {cfg.state_path} exported to {done.path}\n"
    else:
        # Importing writes the merchant's state: the folder is checked as every writer's
        # is (a missing volume is refused, never created on the container's own disk).
        check_state_folder(Path(cfg.state_path), cfg.file)
        got = import_state(cfg.merchant, Path(cfg.state_path), path)
        verb = "replaced by" if got.replaced else "created from"
        said = f"{cfg.merchant}: state {cfg.state_path} {verb} {path}\n"
    out.write(redact(said))
    return 0


def _mask_set_secrets(cfg: MerchantConfig) -> None:
    """The merchant's ${VAR} secrets that are set here, registered for masking: the
    commands need none (NoSecrets) and read no secret file, but a path typed with a
    secret in it (`--to /state/$LOOP_API_KEY.db`) must not be echoed on any line."""
    conn = cfg.warehouse.connector
    held = [cfg.loop.api_key, *cfg.webhooks.secrets()]
    held += [
        v
        for v in (vars(conn).values() if hasattr(conn, "__dict__") else ())
        if isinstance(v, Secret)
    ]
    for secret in held:
        name = env_reference(secret.name)
        if name is not None:
            register(os.environ.get(name))


def _one_merchant(paths: list[str]) -> MerchantConfig:
    loaded = load_all(paths, env=NoSecrets())  # names and paths only: no secret is read
    if len(loaded) != 1:
        raise UsageError("state export/import takes exactly one merchant (-c FILE)")
    return loaded[0]
