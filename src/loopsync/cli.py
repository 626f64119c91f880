"""The `loopsync` command.

Exit status: 0 all went well; 1 some merchant had errors; 2 configuration or usage error;
75 (EX_TEMPFAIL) another process holds a merchant's lock, so cron can treat it as a skip.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

import structlog

from loopsync import __version__, logs
from loopsync.config import MerchantConfig, load_all
from loopsync.errors import ConfigError, LockHeld
from loopsync.redaction import install_excepthooks, redact, redact_obj
from loopsync.timeutil import parse_timestamp

EXIT_OK, EXIT_ERRORS, EXIT_CONFIG, EXIT_LOCKED = 0, 1, 2, 75

log = structlog.get_logger("loopsync.cli")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="loopsync", description="Keeps Loop Returns and your warehouse in step.")
    p.add_argument("--version", action="version", version=f"loopsync {__version__}")
    p.add_argument("--log-format", choices=["auto", "json", "console"], default="auto",
                   help="log lines as JSON or readable text (auto: JSON unless on a terminal)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def configs(sp: argparse.ArgumentParser, help_text: str = "merchant YAML file(s)") -> None:
        sp.add_argument("-c", "--config", action="append", required=True, metavar="FILE",
                        help=help_text)

    run = sub.add_parser("run", help="one cycle for each merchant, then exit (for cron)")
    configs(run)
    run.add_argument("--once", action="store_true", help="run one cycle and exit (the default)")
    run.add_argument("--dry-run", action="store_true",
                     help="read and decide, write nothing anywhere; print what would be done")

    serve = sub.add_parser("serve", help="run every merchant on its schedule until stopped")
    configs(serve, "merchant YAML file(s) or directories of them")

    imp = sub.add_parser("import", help="import returns by id or date range (live cursor untouched)")
    configs(imp)
    imp.add_argument("--return-id", help="one Loop return id")
    imp.add_argument("--from", dest="start", help="range start, ISO-8601 with timezone")
    imp.add_argument("--to", dest="end", help="range end, ISO-8601 with timezone")
    imp.add_argument("--dry-run", action="store_true")

    status = sub.add_parser("status", help="where each merchant's sync stands")
    configs(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    check = sub.add_parser("check-config", help="validate configuration files")
    configs(check)

    demo = sub.add_parser("demo", help="the whole flow against the built-in sandbox")
    demo.add_argument("--warehouse", default="shiphero",
                      choices=["shiphero", "peoplevox", "xoro", "generic"])
    demo.add_argument("--returns", type=int, default=12, help="how many returns to seed")

    sandbox = sub.add_parser("sandbox", help="serve the emulated APIs until stopped")
    sandbox.add_argument("--port", type=int, default=8900,
                         help="Loop on PORT, the warehouse on PORT+1; 0 picks free ports")
    sandbox.add_argument("--warehouse", default="shiphero",
                         choices=["shiphero", "peoplevox", "xoro", "generic"])
    sandbox.add_argument("--returns", type=int, default=25)
    return p


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    json_output = {"auto": None, "json": True, "console": False}[args.log_format]
    logs.configure(json_output=json_output, level=args.log_level)
    install_excepthooks()  # a crash's traceback is an exit too
    try:
        return COMMANDS[args.command](args, out)
    except ConfigError as exc:
        print(redact(f"config error: {exc}"), file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as exc:
        print(f"loopsync: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


# -- commands ---------------------------------------------------------------------------------

def cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    """One line per file, good (stdout) or bad (stderr, naming the key), then exit 2 if
    any was bad: one broken file never hides the state of the others."""
    from loopsync.config import ConfigFailure, load_each

    code = EXIT_OK
    for item in load_each(args.config):
        if isinstance(item, ConfigFailure):
            print(redact(f"config error: {item.error}"), file=sys.stderr)
            code = EXIT_CONFIG
            continue
        print(redact(f"{item.file}: ok (merchant {item.merchant}, warehouse "
                     f"{item.warehouse.kind}, every {item.every}, state {item.state_path})"),
              file=out)
    return code


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    from loopsync.runner import run_merchant, summary_line

    configs = load_all(args.config)
    stop = threading.Event()
    code = EXIT_OK
    locked = False
    for cfg in configs:
        try:
            result = run_merchant(cfg, stop=stop, dry_run=args.dry_run, mode="run")
        except LockHeld as exc:
            log.warning("run.locked", merchant=cfg.merchant, error=str(exc))
            print(f"{cfg.merchant}: skipped, {exc}", file=out)
            locked = True
            continue
        print(summary_line(result), file=out)
        _print_planned(result, out)
        if not result.ok:
            code = EXIT_ERRORS
    if code == EXIT_OK and locked:
        return EXIT_LOCKED
    return code


def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    from loopsync.runner import run_merchant, summary_line

    if bool(args.return_id) == bool(args.start or args.end):
        raise UsageError("import needs either --return-id or both --from and --to")
    start = end = None
    if not args.return_id:
        if not (args.start and args.end):
            raise UsageError("import needs both --from and --to")
        try:
            start, end = parse_timestamp(args.start), parse_timestamp(args.end)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if end <= start:
            raise UsageError("--to must be after --from")
    if len(args.config) != 1:
        raise UsageError("import takes exactly one -c FILE")
    (cfg,) = load_all(args.config)
    try:
        result = run_merchant(cfg, dry_run=args.dry_run, mode="import", import_from=start,
                              import_to=end, import_return_id=args.return_id)
    except LockHeld as exc:
        print(f"{cfg.merchant}: {exc}", file=out)
        return EXIT_LOCKED
    print(summary_line(result), file=out)
    _print_planned(result, out)
    return EXIT_OK if result.ok else EXIT_ERRORS


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from loopsync.runner import run_merchant
    from loopsync.scheduling import serve

    configs = load_all(args.config)

    def cycle(cfg: MerchantConfig, stop: threading.Event) -> None:
        try:
            run_merchant(cfg, stop=stop, mode="serve")
        except LockHeld as exc:
            log.warning("serve.locked", merchant=cfg.merchant, error=str(exc))

    return serve(configs, cycle)


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    from loopsync.status import merchant_status, render_status

    reports = [merchant_status(cfg) for cfg in load_all(args.config)]
    # Redacted here too: a state file written before redaction existed may hold secrets.
    if args.json:
        out.write(redact(json.dumps(redact_obj(reports), indent=2, default=str)))
        out.write("\n")
    else:
        for report in reports:
            out.write(redact(render_status(redact_obj(report))))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from loopsync.demo import run_demo

    return run_demo(warehouse=args.warehouse, returns=args.returns, out=out)


def cmd_sandbox(args: argparse.Namespace, out: TextIO) -> int:
    from loopsync.demo import serve_sandbox

    return serve_sandbox(port=args.port, warehouse=args.warehouse, returns=args.returns, out=out)


def _print_planned(result: Any, out: TextIO) -> None:
    for line in result.planned:
        print(redact(f"  dry run: {line}"), file=out)


COMMANDS = {"run": cmd_run, "serve": cmd_serve, "import": cmd_import, "status": cmd_status,
            "check-config": cmd_check_config, "demo": cmd_demo, "sandbox": cmd_sandbox}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


