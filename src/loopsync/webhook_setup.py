"""`loopsync webhooks print` and `loopsync webhooks register`: what to register where.

`print -c FILE --public-url URL` reads each merchant's file without its secrets (the
reference form only) and shows, per sender: the URL, the topics, and where the secret
goes (the key and the variable or file it is read from). It never shows a secret.

`register -c FILE --public-url URL --yes` (one ShipHero merchant, on explicit request
only) calls ShipHero's `webhook_create` for "Return Update" and stores the
`shared_signature_secret` it is shown once into the file `webhooks.shiphero_secret` names
(`${file:PATH}`, or `${VAR}` with `VAR_FILE` set): created 0600 in that folder before the
call (so a folder that cannot be written fails before anything is registered), written,
fsynced, then linked into place (never over an existing file unless `--replace`, never
through a symbolic link). The secret goes nowhere else: not to the output, a log or the
state. Exit: 0 registered; 2 usage (no --yes, not ShipHero, no file reference, the file
exists); 1 ShipHero refused or answered without a secret; 77 a credential refused; 73
the folder cannot be written.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from loopsync.config import MerchantConfig, load_yaml, parse_config
from loopsync.configkit import FILE_SUFFIX, Secret
from loopsync.errors import AuthError, RemoteError, StateUnwritable, Unreadable, UsageError
from loopsync.redaction import redact, register
from loopsync.webhooks import Source

EXIT_OK, EXIT_ERRORS, EXIT_REFUSED, EXIT_CANTCREAT = 0, 1, 77, 73
SHIPHERO_HOOK = "Return Update"
LOOP_TOPICS = "return (triggers return.created, return.updated, return.closed)"
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?")
_FILE_REF = re.compile(r"\$\{file:([^}]+)\}")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def public_url(text: str) -> str:
    """The base URL senders reach the listener at: http(s), a host, an optional path; no
    query, fragment or user name (they would be sent to every sender)."""
    url = text.strip().rstrip("/")
    if not _URL.fullmatch(url):
        raise UsageError(
            f"--public-url {text[:80]!r}: expected http(s)://HOST[:PORT][/PATH] "
            "(no query, fragment or user name)"
        )
    return url


def hook_url(base: str, source: Source, merchant: str) -> str:
    return f"{base}/webhooks/{source}/{merchant}"


@dataclass(frozen=True)
class Registration:
    """One line of `webhooks print`: a sender, its URL, what to pick, where the secret goes."""

    sender: str
    url: str
    what: str
    secret: str


def _where(secret: Secret | None, key: str) -> str:
    if secret is None:
        return f"not configured: set webhooks.{key} (until then this sender gets 401)"
    name = secret.name.removeprefix("${").removesuffix("}")  # linted: the reference as written
    if name.startswith("file:"):
        return f"webhooks.{key} reads the file {name.removeprefix('file:')}"
    return f"webhooks.{key} reads ${{{name}}} (or the file named by {name}{FILE_SUFFIX})"


# Per sender: who to register with, what to pick, where its secret comes from, and the
# warehouse kind it belongs to (None: every merchant, Loop).
_SENDERS: tuple[tuple[Source, str | None, str, str, str], ...] = (
    (
        Source.LOOP,
        None,
        "Loop (Admin > Developer Tools > Webhooks)",
        f"topic {LOOP_TOPICS}",
        "Loop shows it in Developer Tools; ",
    ),
    (
        Source.SHIPHERO,
        "shiphero",
        "ShipHero (`loopsync webhooks register --yes`, or Settings > Webhooks)",
        f'webhook "{SHIPHERO_HOOK}" on the account loopsync uses (a 3PL: the child account)',
        "shown once by webhook_create; ",
    ),
    (
        Source.GENERIC,
        "generic",
        "the 3PL (receipt webhook, see docs/api/generic.md)",
        'POST {"event_id", "rma_number"} signed X-Loopsync-Signature/-Timestamp',
        "agree one with the 3PL; ",
    ),
)


def registrations(cfg: MerchantConfig, base: str) -> list[Registration]:
    """What to register where for one merchant (pure)."""
    secrets = {
        Source.LOOP: cfg.webhooks.loop_secret,
        Source.SHIPHERO: cfg.webhooks.shiphero_secret,
        Source.GENERIC: cfg.webhooks.generic_secret,
    }
    return [
        Registration(
            sender,
            hook_url(base, source, cfg.merchant),
            what,
            how + _where(secrets[source], f"{source}_secret"),
        )
        for source, kind, sender, what, how in _SENDERS
        if kind is None or kind == cfg.warehouse.kind
    ]


def print_lines(cfg: MerchantConfig, base: str) -> list[str]:
    lines = [f"{cfg.merchant} ({cfg.warehouse.kind})"]
    for r in registrations(cfg, base):
        lines += [f"  {r.sender}", f"    URL     {r.url}", f"    what    {r.what}"]
        lines.append(f"    secret  {r.secret}")
    return lines


def cmd_print(configs: list[MerchantConfig], base_text: str, out: TextIO) -> int:
    """`configs` read with `NoSecrets` (the reference form only: no secret is read)."""
    base = public_url(base_text)
    for cfg in configs:
        out.write(redact("\n".join(print_lines(cfg, base))) + "\n")
    return EXIT_OK


# -- register --------------------------------------------------------------------------------


def secret_target(file: Path, raw: Any, env: Mapping[str, str]) -> Path:
    """Where webhooks.shiphero_secret is read from: the file the secret must go into."""
    ref = raw.strip() if isinstance(raw, str) else ""
    if m := _FILE_REF.fullmatch(ref):
        path = Path(os.path.expanduser(m.group(1)))  # noqa: PTH111 - as configkit reads it
    elif (m := _ENV_REF.fullmatch(ref)) and env.get(m.group(1) + FILE_SUFFIX, "").strip():
        if m.group(1) in env:
            raise UsageError(
                f"{m.group(1)} is set: the secret would be read from it, not from "
                f"{m.group(1)}{FILE_SUFFIX}; unset it to register"
            )
        path = Path(os.path.expanduser(env[m.group(1) + FILE_SUFFIX]))  # noqa: PTH111
    else:
        raise UsageError(
            f"{file}: webhooks.shiphero_secret must name a file to store the secret in: "
            "${file:PATH}, or ${VAR} with VAR_FILE set"
        )
    return path if path.is_absolute() else file.parent / path


def load_for_register(file: Path, env: Mapping[str, str]) -> tuple[MerchantConfig, Path]:
    """The merchant's config without webhooks.shiphero_secret (its file does not exist
    yet) and the path that secret goes to."""
    data = load_yaml(file)
    hooks = data.get("webhooks") if isinstance(data, dict) else None
    if not isinstance(hooks, dict) or "shiphero_secret" not in hooks:
        raise UsageError(f"{file}: set webhooks.shiphero_secret: ${{file:PATH}} first")
    target = secret_target(file, hooks["shiphero_secret"], env)
    data = copy.deepcopy(data)
    del data["webhooks"]["shiphero_secret"]
    cfg = parse_config(data, file=str(file), env=env, base_dir=file.parent)
    if cfg.warehouse.kind != "shiphero":
        raise UsageError(
            f"{file}: register is for ShipHero (this merchant uses {cfg.warehouse.kind})"
        )
    return cfg, target


@contextlib.contextmanager
def pending_secret_file(target: Path, *, replace: bool) -> Iterator[int]:
    """A private temporary file beside `target` (0600, never through a link), yielded
    for writing; on a clean exit it is fsynced and linked (or, with `replace`, renamed)
    into place, then the folder is fsynced. Refused before anything when `target` exists
    (without `replace`) or the folder cannot be written."""
    if not replace and (target.exists() or target.is_symlink()):
        raise UsageError(f"{target} exists; --replace overwrites it")
    if target.is_symlink():
        raise UsageError(f"{target} is a symbolic link; loopsync will not write through it")
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StateUnwritable(str(target.parent), f"cannot be written: {exc.strerror}") from None
    try:
        yield fd
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if replace:
            tmp.replace(target)
        else:
            os.link(tmp, target)  # fails if the name was taken meanwhile: nothing replaced
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()


def cmd_register(paths: list[str], base_text: str, *, yes: bool, replace: bool, out: TextIO) -> int:
    base = public_url(base_text)
    if len(paths) != 1 or not Path(paths[0]).is_file():
        raise UsageError("register takes exactly one -c FILE (one merchant)")
    if not yes:
        raise UsageError(
            f'register creates a ShipHero webhook ("{SHIPHERO_HOOK}") and stores its secret; '
            "add --yes to do it"
        )
    file = Path(paths[0])
    cfg, target = load_for_register(file, os.environ)
    url = hook_url(base, Source.SHIPHERO, cfg.merchant)
    try:
        with pending_secret_file(target, replace=replace) as fd:
            secret = _create(cfg, url)
            register(secret)  # masked at every exit from here on
            os.write(fd, secret.encode("utf-8") + b"\n")
    except (RemoteError, Unreadable) as exc:
        _error(f"{cfg.merchant}: webhook_create: {redact(str(exc))}")
        return EXIT_REFUSED if isinstance(exc, AuthError) else EXIT_ERRORS
    except StateUnwritable as exc:
        _error(str(exc))
        return EXIT_CANTCREAT
    except OSError as exc:  # the secret exists only at ShipHero now: say what to do
        _error(
            f"{cfg.merchant}: webhook registered but {target} could not be written "
            f"({exc.strerror}); delete the webhook in ShipHero and register again"
        )
        return EXIT_CANTCREAT
    out.write(
        f'{cfg.merchant}: ShipHero webhook "{SHIPHERO_HOOK}" registered for {url}; '
        f"its secret is in {target} (0600); a running serve refuses ShipHero's events "
        "(401, and ShipHero disables a failing webhook) until it is reloaded (SIGHUP) "
        "or restarted\n"
    )
    return EXIT_OK


def _error(text: str) -> None:
    sys.stderr.write(f"loopsync: {redact(text)}\n")


def _create(cfg: MerchantConfig, url: str) -> str:
    from loopsync.connectors import connector_class
    from loopsync.connectors.base import ConnectorContext
    from loopsync.connectors.shiphero.connector import ShipHeroConnector
    from loopsync.http import RetryPolicy
    from loopsync.timeutil import SystemClock

    policy = RetryPolicy(attempts=2, cap=5.0, retry_after_cap=10.0)
    ctx = ConnectorContext(merchant=cfg.merchant, clock=SystemClock(), policy=policy)
    connector = connector_class(cfg.warehouse.kind)(cfg.warehouse, ctx)
    try:
        assert isinstance(connector, ShipHeroConnector)
        return connector.create_webhook(SHIPHERO_HOOK, url)
    finally:
        connector.close()
