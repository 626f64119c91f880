"""The `loopsync` command.

Exit status: 0 all went well; 1 some merchant had errors (`status --return`: no such
return); 2 configuration or usage error; 3 `status --check`: a merchant is STALLED or BLOCKED;
65 (EX_DATAERR) a state file is corrupt, truncated or from a newer loopsync; 70
(EX_SOFTWARE) an unexpected internal error; 73 (EX_CANTCREAT) a state file or its folder
cannot be created or written; 74 (EX_IOERR) disk full or an I/O error on a state file;
75 (EX_TEMPFAIL) another process holds a merchant's lock, so cron can treat it as a skip;
77 (EX_NOPERM) `check-config --connect` or `discover`: an API refused a credential;
`state import`: 65 for a file that is not a loopsync export (another merchant's, or a
state copied by hand), 73 when the existing state is newer than the file (`state export`:
when --to exists), 74 when the file is missing;
130 / 143 `run` or `import` stopped by SIGINT / SIGTERM (128 + the signal).

With several merchants, one merchant's failure never stops the others; the status is
then 2 if a configuration file was bad, else 1 if any merchant failed (each is named on
stderr), a state file's own code (65/73/74) being kept when it was the only merchant.

`serve --http HOST:PORT` (or $LOOPSYNC_HTTP) exits 2 at start, one line, when the address
is malformed, cannot be bound, or is not loopback while $LOOPSYNC_HTTP_TOKEN is unset.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from loopsync import __version__, logs, resharding
from loopsync.config import MerchantConfig, load_all
from loopsync.connectors import connector_class, kind_names
from loopsync.errors import (
    ConfigError,
    LockHeld,
    StateError,
    UnknownReturn,
    Unreadable,
    UsageError,
)
from loopsync.redaction import install_excepthooks, mask_personal, public_obj, redact, redact_obj
from loopsync.shutdown import PROCESS
from loopsync.timeutil import parse_timestamp

EXIT_OK, EXIT_ERRORS, EXIT_CONFIG, EXIT_LOCKED = 0, 1, 2, 75
EXIT_ALERT = 3  # `status --check`: some merchant is STALLED or BLOCKED
EXIT_SOFTWARE = 70  # sysexits EX_SOFTWARE: anything unexpected, one line, no traceback
# Commands that do work and honour SIGTERM/SIGINT (the others keep Python's defaults).
SIGNAL_COMMANDS = ("run", "import", "serve")

if TYPE_CHECKING:  # serve's listener is imported only when asked for
    from loopsync import peers, web
    from loopsync.inbox import WebhookService

log = structlog.get_logger("loopsync.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="loopsync", description="Keeps Loop Returns and your warehouse in step.")
    p.add_argument("--version", action="version", version=f"loopsync {__version__}")
    _global_options(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def configs(sp: argparse.ArgumentParser, help_text: str = "merchant YAML file(s)") -> None:
        # `-c a.yaml b.yaml dir/` and `-c a.yaml -c b.yaml` both work (extend).
        sp.add_argument(
            "-c",
            "--config",
            action="extend",
            nargs="+",
            required=True,
            metavar="FILE",
            help=help_text + " or folders of them",
        )

    run = sub.add_parser("run", help="one cycle for each merchant, then exit (for cron)")
    configs(run)
    run.add_argument("--once", action="store_true", help="run one cycle and exit (the default)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="read and decide, write nothing anywhere; print what would be done",
    )

    serve = sub.add_parser("serve", help="run every merchant on its schedule until stopped")
    configs(serve, "merchant YAML file(s) or directories of them")
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help="serve /healthz, /readyz, /metrics and the status page here (default: "
        "$LOOPSYNC_HTTP, else off); off loopback the page needs "
        "$LOOPSYNC_HTTP_TOKEN",
    )
    resharding.add_shard_option(serve)
    serve.add_argument(
        "--workers",
        metavar="N",
        default=None,
        help="cycles run at once, 1-256 (default: $LOOPSYNC_WORKERS, else 16)",
    )

    imp = sub.add_parser(
        "import", help="import returns by id or date range (live cursor untouched)"
    )
    configs(imp)
    imp.add_argument("--return-id", help="one Loop return id")
    imp.add_argument("--from", dest="start", help="range start, ISO-8601 with timezone")
    imp.add_argument("--to", dest="end", help="range end, ISO-8601 with timezone")
    imp.add_argument("--dry-run", action="store_true")

    status = sub.add_parser("status", help="where each merchant's sync stands")
    configs(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--check",
        action="store_true",
        help=f"exit {EXIT_ALERT} when any merchant is STALLED or BLOCKED",
    )
    status.add_argument(
        "--return",
        dest="return_id",
        metavar="ID",
        help="the story of one return (Loop return id, RMA id or number)",
    )

    check = sub.add_parser("check-config", help="validate configuration files")
    configs(check)
    _check_config_options(check)

    discover = sub.add_parser(
        "discover",
        help="list Loop destinations and warehouse ids, and print a ready `destinations:` block",
    )
    configs(discover)

    demo = sub.add_parser("demo", help="the whole flow against the built-in sandbox")
    demo.add_argument("--warehouse", default="shiphero", choices=kind_names())
    demo.add_argument(
        "--returns", type=int, help="how many returns to seed (default 12; 4 with --webhooks)"
    )
    demo.add_argument(
        "--webhooks",
        action="store_true",
        help="the worker with webhooks and polling only, side by side: how long returns wait",
    )

    sandbox = sub.add_parser("sandbox", help="serve the emulated APIs until stopped")
    sandbox.add_argument(
        "--port",
        type=int,
        default=8900,
        help="Loop on PORT, the warehouse on PORT+1; 0 picks free ports",
    )
    sandbox.add_argument("--warehouse", default="shiphero", choices=kind_names())
    sandbox.add_argument("--returns", type=int, default=25)
    _webhook_options(sandbox)
    resharding.add_commands(sub)  # shards plan, state export|import
    _webhooks_parser(sub, configs)
    for command in sub.choices.values():  # `loopsync run --log-level debug -c x` works too
        _global_options(command, after_command=True)
    return p


def _webhooks_parser(sub: Any, configs: Callable[..., None]) -> None:
    """`webhooks print` and `webhooks register` (loopsync.webhook_setup)."""
    hooks = sub.add_parser("webhooks", help="what to register where for webhooks")
    verbs = hooks.add_subparsers(dest="webhooks_command", required=True, parser_class=_Parser)
    shown = verbs.add_parser("print", help="URLs, topics and where each secret goes")
    register = verbs.add_parser(
        "register", help="create ShipHero's Return Update webhook and store its secret"
    )
    for verb in (shown, register):
        configs(verb)
        verb.add_argument(
            "--public-url", required=True, help="where senders reach `serve --http` (https://...)"
        )
    register.add_argument("--yes", action="store_true", help="really call webhook_create")
    register.add_argument("--replace", action="store_true", help="overwrite the secret file")


def _global_options(p: argparse.ArgumentParser, *, after_command: bool = False) -> None:
    """--log-format and --log-level; after the subcommand they default to nothing, so
    they override the value given before it only when given."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    p.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        **(default or {"default": "auto"}),
        help="log lines as JSON or readable text (auto: JSON unless on a terminal)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        **(default or {"default": "info"}),
    )


def _check_config_options(check: argparse.ArgumentParser) -> None:
    mode = check.add_mutually_exclusive_group()
    mode.add_argument(
        "--connect",
        action="store_true",
        help="also check each credential with one read-only call to each API",
    )
    mode.add_argument(
        "--no-secrets",
        action="store_true",
        help="lint the file without its secrets set (nothing is read)",
    )


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    # First thing: a SIGTERM while configs load and state opens must not kill the process.
    early = PROCESS.installed
    PROCESS.install()
    try:
        return _main(argv, out or sys.stdout)
    finally:
        if not early:
            PROCESS.restore()


def _main(argv: Sequence[str] | None, out: TextIO) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.command not in SIGNAL_COMMANDS:
        if PROCESS.requested:
            return PROCESS.exit_code
        PROCESS.restore()  # status, demo, sandbox: Python's defaults (or their own)
    install_excepthooks()  # a crash's traceback is an exit too
    try:
        json_output = {"auto": None, "json": True, "console": False}[args.log_format]
        logs.configure(json_output=json_output, level=args.log_level)
        return COMMANDS[args.command](args, out)
    except ConfigError as exc:
        print(redact(f"config error: {exc}"), file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as exc:
        print(f"loopsync: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StateError as exc:
        print(f"loopsync: {_redacted(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # a command that keeps Python's SIGINT default
        return 130
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
        print(f"loopsync: internal error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_SOFTWARE


def _redacted(text: str) -> str:
    return str(logs.redact_secrets(None, "", {"text": text})["text"])


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return _redacted(text)[:500]


# -- commands ---------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    """One line per file, good (stdout) or bad (stderr, naming the key), then exit 2 if
    any was bad: one broken file never hides the state of the others. `--no-secrets`:
    secret references are checked for their form only. `--connect`: then one line per
    API per merchant; exit 77 when a credential was refused, 1 when an API could not be
    asked (unreachable, an error answer), 2 (config) before either."""
    from loopsync.config import ConfigFailure, load_each
    from loopsync.configkit import NoSecrets

    code = EXIT_OK
    checks: list[int] = []
    for item in load_each(args.config, NoSecrets() if args.no_secrets else None):
        if isinstance(item, ConfigFailure):
            print(redact(f"config error: {item.error}"), file=sys.stderr)
            code = EXIT_CONFIG
            continue
        print(
            redact(
                f"{item.file}: ok (merchant {item.merchant}, warehouse "
                f"{item.warehouse.kind}, every {item.every}, state {item.state_path})"
                + (" [secrets not checked]" if args.no_secrets else "")
            ),
            file=out,
        )
        if args.connect:
            checks.append(_connect_check(item, out))
    return code or max(checks, default=EXIT_OK)


EXIT_REFUSED = 77  # sysexits EX_NOPERM: `check-config --connect` saw a credential refused


def _connect_check(cfg: MerchantConfig, out: TextIO) -> int:
    from loopsync.discovery import check_loop, check_warehouse

    with _clients(cfg) as (loop, connector):
        results = [check_loop(loop, connector.ctx.clock.now()), check_warehouse(connector)]
    for r in results:
        print(redact(f"  {cfg.merchant}: {r.system}: {r.detail}"), file=out)
    if any(r.refused for r in results):
        return EXIT_REFUSED
    return EXIT_OK if all(r.ok for r in results) else EXIT_ERRORS


@contextlib.contextmanager
def _clients(cfg: MerchantConfig) -> Iterator[tuple[Any, Any]]:
    """A Loop client and the merchant's connector for read-only calls: few retries (a
    person is waiting), no state file (discover and check-config write nothing)."""
    from loopsync.connectors.base import ConnectorContext
    from loopsync.http import RetryPolicy
    from loopsync.runner import build_loop_client
    from loopsync.timeutil import SystemClock

    clock = SystemClock()
    for secret in cfg.secrets():
        logs.register_secret(secret)
    policy = RetryPolicy(attempts=2, cap=5.0, retry_after_cap=10.0)
    loop = build_loop_client(cfg, clock, policy=policy, dry_run=True)
    connector = connector_class(cfg.warehouse.kind)(
        cfg.warehouse,
        ConnectorContext(merchant=cfg.merchant, clock=clock, policy=policy, dry_run=True),
    )
    try:
        yield loop, connector
    finally:
        connector.close()


def cmd_discover(args: argparse.Namespace, out: TextIO) -> int:
    """Per merchant: Loop's destinations, the warehouse's ids, a `destinations:` block.
    Exit 0; 2 for a bad file (before either); 77 when a credential was refused; 1 when an
    API failed."""
    from loopsync.discovery import discover, render
    from loopsync.errors import AuthError, RemoteError

    configs, bad = load_each(args.config)
    _report_bad(bad)
    codes: list[int] = [EXIT_CONFIG] if bad else []
    for cfg in configs:
        try:
            with _clients(cfg) as (loop, connector):
                found = discover(cfg.merchant, loop, connector, cfg.warehouse.destinations)
        except (RemoteError, Unreadable) as exc:
            print(f"loopsync: {cfg.merchant}: {_redacted(str(exc))}", file=sys.stderr)
            codes.append(EXIT_REFUSED if isinstance(exc, AuthError) else EXIT_ERRORS)
            continue
        out.write(redact(render(found)))
        codes.append(EXIT_OK)
    # A bad file first, as every command and check-config --connect say it (not max: 77).
    return EXIT_CONFIG if bad else max(codes, default=EXIT_OK)


def load_each(paths: list[str], env: Any = None) -> tuple[list[MerchantConfig], list[ConfigError]]:
    """Every file on its own: the valid configs, and one ConfigError per bad file (a
    merchant name used twice is an error of the later file), each `-c` argument on its
    own too: one that names no file, or a folder that cannot be listed, is reported and
    the others still run. A bad file never stops the others; no file at all is a
    ConfigError."""
    from loopsync.config import ConfigFailure
    from loopsync.config import load_each as load_every

    configs: list[MerchantConfig] = []
    bad: list[ConfigError] = []
    for item in load_every(paths, env):
        if isinstance(item, ConfigFailure):
            bad.append(item.error)
        else:
            configs.append(item)
    if not configs and all(exc.problem in _NO_FILES for exc in bad):
        raise ConfigError(", ".join(paths) or "-c", "", "no configuration files found")
    return configs, bad


_NO_FILES = ("no configuration files found",)


def _report_bad(bad: list[ConfigError]) -> None:
    for exc in bad:
        print(f"config error: {_redacted(str(exc))}", file=sys.stderr)


def _run_one(cfg: MerchantConfig, out: TextIO, **kw: Any) -> tuple[int, str | None]:
    """One merchant's cycle, whatever happens to it: (exit code, why it failed)."""
    from loopsync.runner import run_merchant, summary_line

    try:
        result = run_merchant(cfg, **kw)
    except LockHeld as exc:
        log.warning("run.locked", merchant=cfg.merchant, error=str(exc))
        print(f"{cfg.merchant}: skipped, {exc}", file=out)
        return EXIT_LOCKED, None
    except StateError as exc:
        text = _redacted(str(exc))
        log.error("run.state_error", merchant=cfg.merchant, error=text)
        print(f"loopsync: {cfg.merchant}: {text}", file=sys.stderr)
        return exc.exit_code, exc.problem
    except UnknownReturn as exc:  # `import --return-id` of an id Loop does not have
        print(f"loopsync: {cfg.merchant}: {_redacted(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG, str(exc)
    except Unreadable as exc:  # `import` of one record Loop sends in a form loopsync refuses
        text = _redacted(str(exc))
        print(f"loopsync: {cfg.merchant}: unreadable record: {text}", file=sys.stderr)
        return EXIT_ERRORS, f"unreadable record: {text}"
    except Exception as exc:  # noqa: BLE001 - recorded as crashed; the next merchant goes on
        text = _one_line(exc)
        log.error("run.crashed", merchant=cfg.merchant, error=text)
        print(f"loopsync: {cfg.merchant}: crashed: {text}", file=sys.stderr)
        return EXIT_ERRORS, f"crashed: {text}"
    print(summary_line(result), file=out)
    refused = result.stage_errors.get("credentials")
    if refused:
        print(f"  {refused}", file=out)
    _print_planned(result, out)
    for line in result.attention:  # in doubt, loopsync asks a person: the exit says so too
        print(redact(f"  needs attention: {line}"), file=out)
    if result.needs_attention:
        return EXIT_ERRORS, f"{len(result.attention)} return(s) need a person (see loopsync status)"
    if result.ok or (result.stopped and not result.counts.errors):
        return EXIT_OK, None
    return EXIT_ERRORS, refused or "errors (see loopsync status)"


def _final_code(codes: dict[str, tuple[int, str | None]], bad: list[ConfigError]) -> int:
    """One exit status for a command over several merchants (see the module docstring)."""
    failed = {m: why for m, (code, why) in codes.items() if why is not None}
    if PROCESS.requested:
        return PROCESS.exit_code
    if bad:
        return EXIT_CONFIG
    if failed:
        if len(failed) > 1 or len(codes) > 1:
            print(
                "loopsync: failed: " + "; ".join(f"{m} ({why})" for m, why in failed.items()),
                file=sys.stderr,
            )
        if len(codes) == 1:
            return next(iter(codes.values()))[0]
        return EXIT_ERRORS
    if any(code == EXIT_LOCKED for code, _ in codes.values()):
        return EXIT_LOCKED
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    configs, bad = load_each(args.config)
    _report_bad(bad)
    codes: dict[str, tuple[int, str | None]] = {}

    def work(stop: threading.Event) -> None:
        from loopsync.inbox import finish_stored

        for cfg in configs:
            if stop.is_set():
                break
            codes[cfg.merchant] = _run_one(cfg, out, stop=stop, dry_run=args.dry_run, mode="run")
            if not args.dry_run and not stop.is_set():
                finish_stored(cfg, stop)  # webhook events a stopped serve left

    PROCESS.supervise(work, grace=stop_grace(configs))
    return _final_code(codes, bad)


def stop_grace(configs: list[MerchantConfig]) -> float:
    """How long a stopping cycle may take: its current request, at two read timeouts
    (a slow answer, then the checkpoint), and a little more."""
    longest = max([30.0] + [max(c.loop.timeout, c.warehouse.timeout) for c in configs])
    return 2 * longest + 5


def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    if bool(args.return_id) == bool(args.start or args.end):
        raise UsageError("import needs either --return-id or both --from and --to")
    if args.return_id and not _LOOP_ID.fullmatch(args.return_id):
        # Loop's ids are numbers: anything else is a typo, said before any request.
        raise UsageError(
            f"--return-id must be a Loop return id (digits), not {args.return_id[:40]!r}"
        )
    start, end = (None, None) if args.return_id else _import_range(args)
    if len(args.config) != 1:
        raise UsageError("import takes exactly one -c FILE")
    loaded = load_all(args.config)
    if len(loaded) != 1:
        raise UsageError("import takes exactly one merchant (-c FILE, not a folder of several)")
    (cfg,) = loaded
    codes: dict[str, tuple[int, str | None]] = {}

    def work(stop: threading.Event) -> None:
        if not stop.is_set():
            codes[cfg.merchant] = _run_one(
                cfg,
                out,
                stop=stop,
                dry_run=args.dry_run,
                mode="import",
                import_from=start,
                import_to=end,
                import_return_id=args.return_id,
            )

    PROCESS.supervise(work, grace=stop_grace([cfg]))
    code = _final_code(codes, [])
    if args.return_id and code == EXIT_OK and not args.dry_run:
        # What the import did to it, as `status --return` tells it.
        return _status_return([cfg], [], args.return_id, out, as_json=False)
    return code


_LOOP_ID = re.compile(r"[0-9]{1,20}")


def _import_range(args: argparse.Namespace) -> tuple[datetime, datetime]:
    """`import --from/--to` as two instants, or a UsageError."""
    if not (args.start and args.end):
        raise UsageError("import needs both --from and --to")
    try:
        start, end = parse_timestamp(args.start), parse_timestamp(args.end)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if end <= start:
        raise UsageError("--to must be after --from")
    return start, end


SKIPPED = "skipped"


@contextlib.contextmanager
def cycle_event(merchant: str) -> Iterator[list[str]]:
    """Times a serve cycle and emits its end (telemetry.CycleDone) with the stages the
    body appended to the yielded list (SKIPPED: no cycle ran, nothing emitted)."""
    from loopsync import telemetry
    from loopsync.timeutil import SystemClock

    clock = SystemClock()
    began, failed = clock.monotonic(), list[str]()
    try:
        yield failed
    finally:
        if SKIPPED not in failed:
            telemetry.emit(
                telemetry.CycleDone(
                    merchant,
                    clock.now().timestamp(),
                    clock.monotonic() - began,
                    not failed,
                    tuple(failed),
                )
            )


def http_address(address: str | None) -> tuple[web.Address, str | None] | None:
    """Where `serve --http` (or $LOOPSYNC_HTTP) listens and the page's token; None when
    off. Checked before anything starts: a bad address, or one off loopback without
    $LOOPSYNC_HTTP_TOKEN, is a UsageError (one line, exit 2)."""
    import os

    from loopsync import web

    text = address or os.environ.get(web.ADDRESS_ENV, "").strip()
    if not text:
        return None
    where = web.parse_address(text)
    return where, web.check_token(where, os.environ)


def http_listener(
    asked: tuple[web.Address, str | None] | None,
    configs: Callable[[], Sequence[MerchantConfig]],
    hooks: WebhookService | None = None,
    router: peers.Router | None = None,
) -> web.Listener | None:
    """The listener, bound now: a busy address fails at start with one line (exit 2)."""
    from loopsync import web

    if asked is None:
        return None
    where, token = asked
    try:
        return web.Listener(where, configs, token=token, hooks=hooks, router=router)
    except OSError as exc:
        raise UsageError(
            f"--http {where.host}:{where.port}: cannot listen there: {exc.strerror or exc}"
        ) from None


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    import os

    from loopsync import pacing, peers, telemetry
    from loopsync.inbox import WebhookService
    from loopsync.runner import run_merchant
    from loopsync.scheduling import serve

    asked = http_address(args.http)
    shard = resharding.shard_of(args.shard)
    workers = pacing.read_workers(args.workers, os.environ)
    configs, bad = load_each(args.config)
    _report_bad(bad)
    if PROCESS.requested:  # stopped during start-up: nothing is running yet
        log.info("serve.stopped", signal=PROCESS.name)
        return EXIT_OK
    owned = resharding.own(shard, configs)  # a shard owning none still serves its probes
    refused = serve_refused(configs, owned, bad)
    if refused is not None:
        return refused
    everyone = configs  # every pod knows every merchant: another shard's webhooks go there
    router = (
        peers.Router(shard, lambda: everyone, peers.template_from_env(os.environ))
        if shard is not None
        else None
    )
    configs = owned

    current = configs
    hooks = WebhookService(lambda: current)  # without --http it never receives an event

    def cycle(cfg: MerchantConfig, stop: threading.Event, next_due: Any = None) -> None:
        # One merchant's trouble is logged (and recorded in its run row when its state
        # opened); it never reaches the scheduler, and the next cycle tries again.
        with telemetry.merchant_scope(cfg.merchant), cycle_event(cfg.merchant) as failed:
            try:
                failed.extend(
                    sorted(
                        run_merchant(cfg, stop=stop, mode="serve", next_due=next_due).stage_errors
                    )
                )
            except LockHeld as exc:
                failed.append(SKIPPED)  # another process runs it: no cycle here
                log.warning("serve.locked", merchant=cfg.merchant, error=str(exc))
            except StateError as exc:
                failed.append("state")
                log.error(
                    "serve.state_error",
                    merchant=cfg.merchant,
                    file=exc.path,
                    error=_redacted(str(exc)),
                    next="retried on its schedule",
                )
            except Exception as exc:  # noqa: BLE001 - contained: the other merchants go on
                failed.append("crashed")
                log.error("serve.cycle_failed", merchant=cfg.merchant, error=_one_line(exc))

    def reload() -> list[MerchantConfig] | None:
        nonlocal everyone
        try:
            fresh, invalid = load_each(args.config)
        except ConfigError as exc:  # the folder emptied or vanished: keep what runs
            _report_bad([exc])
            return None
        _report_bad(invalid)
        everyone = fresh or everyone
        # nothing valid left (a folder gone unreadable): keep what runs
        return resharding.own(shard, fresh) if fresh else None

    listener = http_listener(asked, lambda: current, hooks, router)

    def reload_tracked() -> list[MerchantConfig] | None:
        nonlocal current
        fresh = reload()
        current = fresh if fresh is not None else current
        return fresh

    return serve(
        configs,
        hooks.scheduled(cycle),
        shutdown=PROCESS,
        reload=reload_tracked,
        grace=stop_grace(configs),
        listener=listener,
        workers=workers,
    )


EXIT_CANTCREAT = 73  # sysexits EX_CANTCREAT: StateUnwritable's exit_code


def serve_refused(
    configs: list[MerchantConfig], owned: list[MerchantConfig], bad: list[ConfigError]
) -> int | None:
    """`serve`'s exit status when nothing can run (no valid configuration, or none of this
    shard's merchants has a usable state folder: the volume is missing or read-only), else
    None. A shard that owns no merchant is not refused: it still answers its probes."""
    if not configs:
        print("loopsync: no valid merchant configuration to serve", file=sys.stderr)
        return EXIT_CONFIG
    if owned and not state_folders_usable(owned):
        return EXIT_CONFIG if bad else EXIT_CANTCREAT
    return None


def state_folders_usable(configs: list[MerchantConfig]) -> bool:
    """`serve` at start: one line per merchant whose state folder cannot be used
    (loopsync.state.folder); True when at least one can. Such a merchant stays scheduled:
    each of its cycles checks again, so a folder fixed later is used, and it never
    stops the others."""
    from loopsync.state.folder import check_state_folder

    usable = False
    for cfg in configs:
        try:
            check_state_folder(cfg.state_path, cfg.file)
        except StateError as exc:
            print(f"loopsync: {cfg.merchant}: {_redacted(str(exc))}", file=sys.stderr)
        else:
            usable = True
    return usable


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    from loopsync.report import ALERTING, view_lines
    from loopsync.status import merchant_status, merchant_view, render_status, status_env

    # Reads the state files only: no secret needs to be in the environment.
    configs, bad = load_each(args.config, env=status_env())
    _report_bad(bad)
    if args.return_id:
        return _status_return(configs, bad, args.return_id, out, as_json=args.json)
    reports = [merchant_status(cfg) for cfg in configs]
    views = [merchant_view(cfg) for cfg in configs]
    # Redacted here too: a state file written before redaction existed may hold secrets.
    if args.json:
        shown = [v.to_json() | {"detail": r} for v, r in zip(views, reports, strict=True)]
        out.write(redact(json.dumps(public_obj(shown), indent=2, default=str)))
        out.write("\n")
    else:
        for view, report in zip(views, reports, strict=True):
            # the details past their header line; none when there is no state to detail
            detail = (
                "\n"
                if "note" in report and "state_error" not in report
                else render_status(redact_obj(report)).split("\n", 1)[1]
            )
            out.write(mask_personal(redact("\n".join(view_lines(view)) + "\n" + detail)))
    codes: dict[str, tuple[int, str | None]] = {}
    for cfg, report in zip(configs, reports, strict=True):
        failure = report.get("state_error")
        if failure:
            print(f"loopsync: {cfg.merchant}: {failure['message']}", file=sys.stderr)
        codes[cfg.merchant] = (
            (failure["exit_code"], failure["message"]) if failure else (EXIT_OK, None)
        )
    if args.check and not bad and any(v.verdict in ALERTING for v in views):
        return EXIT_ALERT
    return _final_code(codes, bad)


def _status_return(
    configs: list[MerchantConfig],
    bad: list[ConfigError],
    query: str,
    out: TextIO,
    *,
    as_json: bool,
) -> int:
    """`status --return ID`: the story of one return, looked for in every merchant."""
    from loopsync.status import return_story

    codes: dict[str, tuple[int, str | None]] = {}
    for cfg in configs:
        try:
            story = return_story(cfg, query)
        except StateError as exc:
            print(f"loopsync: {cfg.merchant}: {exc}", file=sys.stderr)
            codes[cfg.merchant] = (exc.exit_code, str(exc))
            continue
        codes[cfg.merchant] = (EXIT_OK, None)
        if story is not None:
            if as_json:
                shown = {"merchant": cfg.merchant} | story.to_json()
                out.write(redact(json.dumps(public_obj(shown), indent=2)) + "\n")
            else:
                out.write(
                    mask_personal(redact("\n".join([f"{cfg.merchant}", *story.lines()]))) + "\n"
                )
            return EXIT_OK
    # Not found says so only of the states that were read: an unreadable one may hold it.
    read = [m for m, (_, why) in codes.items() if why is None]
    if read:
        print(
            f"loopsync: no return or RMA {_cut(query)!r} in the state of " + ", ".join(read),
            file=sys.stderr,
        )
    if bad or len(read) < len(codes):  # it may be in a state or a file not read
        return _final_code(codes, bad)
    return EXIT_ERRORS


def _cut(text: str, limit: int = 80) -> str:
    """A typed id as shown back: a pasted file or a script's bug stays one short line."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from loopsync.demo import run_demo, run_webhook_demo

    if args.webhooks:
        returns = 4 if args.returns is None else args.returns
        return run_webhook_demo(warehouse=args.warehouse, returns=returns, out=out)
    returns = 12 if args.returns is None else args.returns
    return run_demo(warehouse=args.warehouse, returns=returns, out=out)


def cmd_sandbox(args: argparse.Namespace, out: TextIO) -> int:
    from loopsync.demo import serve_sandbox

    return serve_sandbox(
        port=args.port,
        warehouse=args.warehouse,
        returns=args.returns,
        out=out,
        webhooks=args.webhooks,
        webhook_faults=args.webhook_faults,
        webhook_seed=args.webhook_seed,
    )


def _webhook_options(p: argparse.ArgumentParser) -> None:
    """`loopsync sandbox`'s webhook sender (sandbox/webhooks.py)."""
    from urllib.parse import urlsplit

    from loopsync.sandbox.webhooks import WebhookFaults

    def faults(text: str) -> WebhookFaults:
        try:
            return WebhookFaults.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def url(text: str) -> str:
        split = urlsplit(text)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise argparse.ArgumentTypeError(f"{text[:80]!r} is not an http(s)://host URL")
        return text

    p.add_argument(
        "--webhooks",
        type=url,
        metavar="URL",
        help="send Loop's and the warehouse's webhooks to a worker at URL "
        "(its serve --http address: URL/webhooks/<source>/sandbox)",
    )
    p.add_argument(
        "--webhook-faults",
        type=faults,
        default=WebhookFaults(),
        metavar="SPEC",
        help="e.g. lose=0.1,duplicate=0.1,delay=0.2,max_delay=3,forge=0.05",
    )
    p.add_argument("--webhook-seed", type=int, default=7, metavar="N", help="seeds the faults")


def _print_planned(result: Any, out: TextIO) -> None:
    for line in result.planned:
        print(redact(f"  dry run: {line}"), file=out)


def cmd_webhooks(args: argparse.Namespace, out: TextIO) -> int:
    from loopsync import webhook_setup

    if args.webhooks_command == "print":
        from loopsync.configkit import NoSecrets

        webhook_setup.public_url(args.public_url)  # a usage error before any file is read
        configs, bad = load_each(args.config, NoSecrets())
        _report_bad(bad)
        code = webhook_setup.cmd_print(configs, args.public_url, out)
        return EXIT_CONFIG if bad else code
    return webhook_setup.cmd_register(
        args.config, args.public_url, yes=args.yes, replace=args.replace, out=out
    )


COMMANDS = {
    "run": cmd_run,
    "serve": cmd_serve,
    "import": cmd_import,
    "status": cmd_status,
    "check-config": cmd_check_config,
    "demo": cmd_demo,
    "sandbox": cmd_sandbox,
    "discover": cmd_discover,
    "shards": resharding.cmd_shards,
    "state": resharding.cmd_state,
    "webhooks": cmd_webhooks,
}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
