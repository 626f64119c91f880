"""A merchant's YAML file -> MerchantConfig. Every mistake is a ConfigError that names the
file, the key path and the problem (the CLI turns it into exit status 2)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from loopsync.configkit import Secret, Section
from loopsync.connectors import KINDS, available_kinds, connector_class
from loopsync.connectors.base import WarehouseSettings
from loopsync.errors import ConfigError
from loopsync.http import DEFAULT_MAX_BODY
from loopsync.loop_facts import LOOP_DISPOSITIONS, LOOP_GRADES, LOOP_STATES, MAX_WINDOW
from loopsync.rules import GradingRules, StatusRules

MIB = 1024 * 1024
MAX_TIMEOUT = timedelta(minutes=10)  # one read; longer is a typo, not a need
MAX_DEADLINE = timedelta(hours=1)  # one whole request
# Where relative state paths live when set (the container sets /state, its volume).
STATE_DIR_ENV = "LOOPSYNC_STATE_DIR"


@dataclass(frozen=True)
class LoopSettings:
    base_url: str
    api_key: Secret
    start_at: datetime
    lookback: timedelta
    window: timedelta
    page_size: int
    states: tuple[str, ...]
    asn_enabled: bool
    asn_window: timedelta
    requests_per_minute: int
    timeout: float
    deadline: float | None = None  # whole request; None: the HTTP layer's default
    max_body: int = DEFAULT_MAX_BODY  # bytes, after decompression


@dataclass(frozen=True)
class PushSettings:
    """`push:` how a backlog is worked through. A batch ends after `batch` returns or
    `batch_time`, whichever comes first; poll and act run between batches, so a return the
    warehouse received is not held up behind the push of a whole backfill."""

    batch: int = 200
    batch_time: timedelta = timedelta(seconds=60)


@dataclass(frozen=True)
class WebhookSettings:
    """`webhooks:` the secrets each sender signs with (a sender without one is refused
    with 401) and how webhook health changes polling (loopsync.webhooks)."""

    loop_secret: Secret | None = None
    shiphero_secret: Secret | None = None
    generic_secret: Secret | None = None
    max_age: timedelta = timedelta(hours=24)  # a Loop event older than this is a replay
    healthy_within: timedelta = timedelta(hours=1)  # healthy: an event accepted within this
    poll_every: timedelta | None = None  # the cycle's interval while healthy (None: every)

    def secrets(self) -> list[Secret]:
        return [s for s in (self.loop_secret, self.shiphero_secret, self.generic_secret) if s]

    def senders(self) -> list[str]:
        """The senders (webhooks.Source values) this merchant has a secret for."""
        named = (
            ("loop", self.loop_secret),
            ("shiphero", self.shiphero_secret),
            ("generic", self.generic_secret),
        )
        return [name for name, secret in named if secret is not None]


@dataclass(frozen=True)
class MerchantConfig:
    file: str
    merchant: str
    state_path: Path
    every: timedelta
    loop: LoopSettings
    warehouse: WarehouseSettings
    push: PushSettings = PushSettings()
    progress_every: timedelta = timedelta(seconds=10)  # a progress line at most this often
    # No fully successful cycle for this long: `status` says STALLED (None: 3 x every).
    stalled_after: timedelta | None = None
    webhooks: WebhookSettings = WebhookSettings()

    @property
    def stall_limit(self) -> timedelta:
        # While webhooks are healthy a cycle may run only every `poll_every`.
        longest = max(self.every, self.webhooks.poll_every or self.every)
        return self.stalled_after or 3 * longest

    def secrets(self) -> list[str]:
        """Every secret value this config holds (for log redaction)."""
        conn = self.warehouse.connector
        held = list(vars(conn).values()) if hasattr(conn, "__dict__") else []
        hooks = [s.value for s in self.webhooks.secrets()]
        return [self.loop.api_key.value] + [v.value for v in held if isinstance(v, Secret)] + hooks


class _StringTimestampLoader(yaml.SafeLoader):
    """Keeps timestamps as text so a missing timezone is reported, not guessed."""


_StringTimestampLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# Limits no real merchant file comes near; beyond them a file is a mistake or an attack.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000  # counted with every alias and merge expanded ("billion laughs")


class _StrictLoader(_StringTimestampLoader):
    """Refuses duplicate keys (the last one would silently win), documents nested deeper
    than MAX_YAML_DEPTH, and alias graphs that expand beyond MAX_YAML_NODES."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_YAML_DEPTH} levels",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]  # types-PyYAML leaves peek_event untyped
            )
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node

    def flatten_mapping(self, node: Any) -> None:
        # Checked here, before merges are flattened into node.value (flattening a parent
        # mutates an anchored child, and the child may be constructed only afterwards).
        checked: set[int] = self.__dict__.setdefault("_dup_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` overrides by design
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                    seen.setdefault(key, key_node.start_mark.line)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {_short(key)} (first at line {first + 1})",
                        key_node.start_mark,
                    )
        super().flatten_mapping(node)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_expanded_size(root: Any) -> None:
    """Count the nodes of the document with aliases expanded, without expanding them
    (memoised per node, iterative), and refuse a recursive alias."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        nid = id(node)
        if children_done:
            open_nodes.discard(nid)
            total = 1 + sum(sizes[id(c)] for c in _children(node))
            if total > MAX_YAML_NODES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"expands to more than {MAX_YAML_NODES} values "
                    "(aliases or merges repeated too often)",
                    node.start_mark,
                )
            sizes[nid] = total
            continue
        if nid in sizes:
            continue
        if nid in open_nodes:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to itself", node.start_mark
            )
        open_nodes.add(nid)
        stack.append((node, True))
        for child in _children(node):
            cid = id(child)
            if cid in open_nodes:
                raise yaml.composer.ComposerError(
                    None, None, "an alias refers to itself", child.start_mark
                )
            if cid not in sizes:
                stack.append((child, False))


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(str(path), "", f"larger than {MAX_CONFIG_BYTES} bytes")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), "", f"invalid YAML{where}: {problem}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. an int of 5000 digits, a RecursionError
        raise ConfigError(
            str(path), "", f"invalid YAML: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> MerchantConfig:
    path = Path(path)
    data = load_yaml(path)
    try:
        return parse_config(data, file=str(path), env=env, base_dir=path.parent)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a value no getter foresaw: still exit 2
        raise ConfigError(
            str(path), "", f"cannot be read as a configuration: {type(exc).__name__}"
        ) from None


def parse_config(
    data: Any, *, file: str, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> MerchantConfig:
    root = Section(data, file=file, env=env)
    merchant = root.str("merchant", pattern=r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
    state_raw = root.str("state_path", None)
    if state_raw is not None and "\0" in state_raw:
        raise root.error("state_path", "contains a NUL character")
    environ = os.environ if env is None else env
    state_path = resolve_state_path(
        state_raw, merchant, base_dir, environ.get(STATE_DIR_ENV) or None
    )
    schedule = root.section("schedule")
    every = schedule.duration("every", "15m", min=timedelta(seconds=10))
    # Absent: timedelta(0), returned as is, which stands for "3 x every" (stall_limit).
    stalled_after = (
        schedule.duration("stalled_after", timedelta(0), min=timedelta(seconds=10)) or None
    )
    if stalled_after is not None and stalled_after <= every:
        # A merchant whose every cycle succeeds would read STALLED between its cycles.
        raise schedule.error(
            "stalled_after", f"must be longer than schedule.every ({every}), got {stalled_after}"
        )
    schedule.done()
    loop = parse_loop(root.section("loop", required=True))
    warehouse = parse_warehouse(root.section("warehouse", required=True))
    push = parse_push(root.section("push"))
    webhooks = parse_webhooks(root.section("webhooks"), every)
    progress_every = root.duration(
        "progress_every", "10s", min=timedelta(seconds=1), max=timedelta(hours=1)
    )
    root.done()
    cfg = MerchantConfig(
        file=file,
        merchant=merchant,
        state_path=state_path,
        every=every,
        loop=loop,
        warehouse=warehouse,
        push=push,
        progress_every=progress_every,
        stalled_after=stalled_after,
        webhooks=webhooks,
    )
    _refuse_secrets_in_ordinary_keys(root, data, cfg.secrets())
    return cfg


def _refuse_secrets_in_ordinary_keys(root: Section, data: Any, secrets: list[str]) -> None:
    """A ${VAR} holding a secret, used in an ordinary key (`merchant`, `state_path`, a URL)
    would put the secret in a file name, a Host header or a status line: refused."""
    for expanded, form in root._expanded.items():
        if any(root.env.get(name) is None for name in _ENV_NAME.findall(form)):
            continue  # `status` stands a placeholder in for a variable it does not need
        if any(secret in expanded for secret in secrets):
            raise ConfigError(
                root.file,
                _path_of(data, form) or "",
                f"{form} holds the value of a credential; credentials belong "
                "only in credential keys",
            )


_ENV_NAME = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _path_of(data: Any, form: str, path: str = "") -> str | None:
    """The key path of the first string value that contains `form`."""
    if isinstance(data, str):
        return path if form in data else None
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    for key, value in items:
        found = _path_of(value, form, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def resolve_state_path(
    raw: str | None, merchant: str, base_dir: Path | None, state_dir: str | None
) -> Path:
    """The absolute state file path. Never relative to the working directory, which
    differs between cron, a shell and a container (a second state file would start empty
    and push every open return again): a relative `state_path` lives under
    LOOPSYNC_STATE_DIR when that is set, else beside the configuration file. Unset, it
    is `<merchant>.sqlite` in LOOPSYNC_STATE_DIR, else `state/<merchant>.sqlite` beside
    the configuration file."""
    if raw is not None and Path(raw).expanduser().is_absolute():
        # abspath, not resolve(): a state folder reached through a link keeps its name.
        return Path(os.path.abspath(Path(raw).expanduser()))  # noqa: PTH100 - see above
    if state_dir is not None:
        root, default = Path(state_dir).expanduser(), Path(f"{merchant}.sqlite")
    else:
        root, default = (base_dir or Path.cwd()), Path("state") / f"{merchant}.sqlite"
    return Path(os.path.abspath(root / (raw if raw is not None else default)))  # noqa: PTH100


def parse_loop(sec: Section) -> LoopSettings:
    base_url = sec.url("base_url", "https://api.loopreturns.com/api/v1")
    api_key = sec.secret("api_key")
    start_at = sec.timestamp("start_at")
    lookback = sec.duration("lookback", "15m", max=timedelta(days=7))
    window = sec.duration("window", "120d", min=timedelta(minutes=1), max=MAX_WINDOW)
    if lookback >= window:
        raise sec.error("lookback", "must be shorter than loop.window")
    page_size = sec.int("page_size", 250, min=1, max=750)
    states = sec.str_list("states", list(LOOP_STATES))
    for i, s in enumerate(states):
        if s not in LOOP_STATES:
            raise sec.error(f"states[{i}]", f"{s!r} is not a Loop state ({', '.join(LOOP_STATES)})")
    asn = sec.section("asn")
    asn_enabled = asn.bool("enabled", True)
    asn_window = asn.duration("window", "1d", min=timedelta(minutes=1), max=MAX_WINDOW)
    asn.done()
    rpm = sec.int("requests_per_minute", 280, min=1, max=300)
    timeout = sec.duration(
        "timeout", "30s", min=timedelta(seconds=1), max=MAX_TIMEOUT
    ).total_seconds()
    deadline, max_body = parse_http_limits(sec)
    sec.done()
    return LoopSettings(
        base_url,
        api_key,
        start_at,
        lookback,
        window,
        page_size,
        tuple(dict.fromkeys(states)),
        asn_enabled,
        asn_window,
        rpm,
        timeout,
        deadline,
        max_body,
    )


def parse_push(sec: Section) -> PushSettings:
    """`push: {batch: 200, batch_time: 60s}`: the bounds of one push batch."""
    batch = sec.int("batch", PushSettings.batch, min=1, max=1_000_000)
    batch_time = sec.duration(
        "batch_time", PushSettings.batch_time, min=timedelta(seconds=1), max=timedelta(days=1)
    )
    sec.done()
    return PushSettings(batch, batch_time)


def parse_webhooks(sec: Section, every: timedelta) -> WebhookSettings:
    """`webhooks: {loop_secret, shiphero_secret, generic_secret, max_age, healthy_within,
    poll_every}`; every key optional (no secret: that sender's webhooks are refused)."""
    hour = timedelta(hours=1)
    settings = WebhookSettings(
        sec.secret("loop_secret", None),
        sec.secret("shiphero_secret", None),
        sec.secret("generic_secret", None),
        sec.duration("max_age", "24h", min=timedelta(minutes=1), max=timedelta(days=30)),
        sec.duration("healthy_within", hour, min=timedelta(minutes=1), max=timedelta(days=7)),
        sec.duration("poll_every", timedelta(0), min=every, max=timedelta(days=1)) or None,
    )
    sec.done()
    return settings


def parse_http_limits(sec: Section) -> tuple[float | None, int]:
    """`deadline` (a whole request: connect, headers and body; default the connect timeout
    plus three read timeouts) and `max_response_mb` (after decompression)."""
    deadline = sec.duration("deadline", timedelta(0), min=timedelta(seconds=1), max=MAX_DEADLINE)
    max_mb = sec.int("max_response_mb", DEFAULT_MAX_BODY // MIB, min=1, max=1024)
    return (deadline.total_seconds() or None), max_mb * MIB


def parse_warehouse(sec: Section) -> WarehouseSettings:
    kind = sec.str("kind")
    if kind not in KINDS:
        raise sec.error("kind", f"{kind!r} is not a warehouse kind ({', '.join(KINDS)})")
    if kind not in available_kinds():
        raise sec.error("kind", f"the {kind} connector is not available in this build")
    cls = connector_class(kind)
    base_url = sec.url("base_url", cls.default_base_url)
    destinations = sec.str_map("destinations", {})
    statuses = parse_statuses(sec, cls.default_statuses, cls.default_flag_conditions)
    grading = parse_grading(sec.section("grading"))
    order_wait = sec.duration("order_wait", "7d")
    poll_batch = sec.int("poll_batch", 50, min=1, max=200)
    timeout = sec.duration(
        "timeout", "30s", min=timedelta(seconds=1), max=MAX_TIMEOUT
    ).total_seconds()
    deadline, max_body = parse_http_limits(sec)
    connector = cls.parse_settings(sec)
    sec.done()
    return WarehouseSettings(
        kind=kind,
        base_url=base_url,
        destinations=destinations,
        statuses=statuses,
        grading=grading,
        order_wait=order_wait,
        poll_batch=poll_batch,
        timeout=timeout,
        connector=connector,
        deadline=deadline,
        max_body=max_body,
    )


def parse_statuses(
    sec: Section, defaults: dict[str, list[str]], default_conditions: list[str]
) -> StatusRules:
    st = sec.section("statuses")
    lists = {
        a: st.str_list(a, list(defaults.get(a, [])))
        for a in ("process", "flag", "ignore", "report")
    }
    st.done()
    rules = StatusRules.build(
        lists["process"],
        lists["flag"],
        lists["ignore"],
        lists["report"],
        sec.str_list("flag_conditions", list(default_conditions)),
        sec.bool("require_full_receipt", True),
    )
    seen: dict[str, str] = {}
    for action in ("process", "flag", "ignore", "report"):
        for word in getattr(rules, action):
            if word in seen:
                raise st.error(action, f"status {word!r} is also listed under {seen[word]}")
            seen[word] = action
    return rules


def parse_grading(sec: Section) -> GradingRules:
    def member(allowed: tuple[str, ...]) -> Callable[[str, Any], str]:
        def check(key: str, value: Any) -> str:
            if value not in allowed:
                raise sec.error(key, f"{value!r} is not one of {', '.join(allowed)}")
            return str(value)

        return check

    conditions = sec.str_map("conditions", {}, value=member(LOOP_GRADES))
    dispositions = sec.str_map("dispositions", {}, value=member(LOOP_DISPOSITIONS))
    processor = sec.str("return_processor", None)
    sec.done()
    from loopsync.rules import normalize_status

    return GradingRules(
        {normalize_status(k): v for k, v in conditions.items()},
        {normalize_status(k): v for k, v in dispositions.items()},
        processor,
    )


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given; a directory stands for its *.yaml / *.yml files, sorted."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            # A link that leads nowhere, or a folder, named *.yaml is listed too (and then
            # reported as unreadable): skipped silently, its merchant would never run and
            # nothing would say so. Hidden ones (an editor's `.#x.yaml` lock) are not, nor
            # a pipe or device (opening one could wait forever).
            out.extend(
                sorted(
                    x
                    for x in path.iterdir()
                    if x.suffix in (".yaml", ".yml")
                    and (
                        x.is_file()
                        or (not x.name.startswith(".") and (x.is_dir() or not x.exists()))
                    )
                )
            )
        else:
            out.append(path)
    return out


def load_all(paths: list[str], env: Mapping[str, str] | None = None) -> list[MerchantConfig]:
    try:
        files = expand_paths(paths)
    except OSError as exc:  # a name too long, a folder that cannot be listed: exit 2, not 70
        where = ", ".join(paths) or "-c"
        raise ConfigError(where, "", f"cannot list: {exc.strerror or exc}") from None
    if not files:
        raise ConfigError(", ".join(paths) or "-c", "", "no configuration files found")
    configs = [load_config(f, env) for f in files]
    seen: dict[str, str] = {}
    for c in configs:
        if c.merchant in seen:
            raise ConfigError(
                c.file, "merchant", f"{c.merchant!r} is also used by {seen[c.merchant]}"
            )
        seen[c.merchant] = c.file
    return configs


@dataclass(frozen=True)
class ConfigFailure:
    """A configuration file (or a -c argument) that could not be loaded, and why."""

    file: str
    error: ConfigError


def load_each(
    paths: list[str], env: Mapping[str, str] | None = None
) -> list[MerchantConfig | ConfigFailure]:
    """Every file `paths` stands for (directories give their *.yaml/*.yml files), each
    loaded on its own: one bad file never hides the others. Results keep the order of the
    arguments and, within a directory, of `expand_paths`; a file whose merchant name an
    earlier file already uses is a failure, and so is an argument that names no file."""
    out: list[MerchantConfig | ConfigFailure] = []
    seen: dict[str, str] = {}
    states: dict[str, str] = {}
    for p in paths:
        try:
            files = expand_paths([p])
        except OSError as exc:
            out.append(ConfigFailure(p, ConfigError(p, "", f"cannot list: {exc.strerror}")))
            continue
        if not files:
            out.append(ConfigFailure(p, ConfigError(p, "", "no configuration files found")))
        for f in files:
            try:
                cfg = load_config(f, env)
            except ConfigError as exc:
                out.append(ConfigFailure(str(f), exc))
                continue
            if cfg.merchant in seen:
                out.append(
                    ConfigFailure(
                        cfg.file,
                        ConfigError(
                            cfg.file,
                            "merchant",
                            f"{cfg.merchant!r} is also used by {seen[cfg.merchant]}",
                        ),
                    )
                )
                continue
            # A copied file whose state_path was left as it was: two merchants in one
            # database would share cursors, so the second would skip its own returns.
            state = os.path.realpath(cfg.state_path)
            if state in states:
                out.append(
                    ConfigFailure(
                        cfg.file,
                        ConfigError(
                            cfg.file,
                            "state_path",
                            f"{cfg.state_path} is also the state of "
                            f"{states[state]}; give each merchant its own",
                        ),
                    )
                )
                continue
            seen[cfg.merchant] = cfg.file
            states[state] = f"merchant {cfg.merchant!r} ({cfg.file})"
            out.append(cfg)
    return out
