"""Red team, credentials and secrets (issue 14 §1, §2): ways found past the first fixes.

- The environment must not route a credential elsewhere: requests honours HTTP(S)_PROXY
  (a plain-http request goes to the proxy's host with its headers) and ~/.netrc.
- A message cut to a length must be redacted before the cut: a cut through a secret
  leaves a prefix that no later redaction recognises.
- Echoes in the encodings remotes really use (XML escapes from a SOAP fault, PHP's `\\/`,
  lower-case %xx) are masked like the plain value.
- A Loop note never carries a secret (a hostile 3PL can choose the RMA number a note names).
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from loopsync import redaction
from loopsync.configkit import Secret
from loopsync.errors import RemoteError
from loopsync.http import HttpClient, RetryPolicy
from loopsync.loop_client import LoopClient
from loopsync.models import printable
from loopsync.testing import FakeClock
from tests.hostile import HostileServer, reply

POLICY = RetryPolicy(attempts=1, base=0.01, cap=0.02)
LOOP_KEY = "rt-loop-key-7f3a9c2e51b04d86"
# &, <, ', / and % all change under some encoding a remote may echo
ODD_SECRET = "rt-Pa&ss<w'or/d%41-9e8d7c6b"
Secret("RT_LOOP", LOOP_KEY)
Secret("RT_ODD", ODD_SECRET)


def pieces(secret: str, size: int = 8) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def leaks(text: str, secret: str) -> bool:
    """Any 8 consecutive characters of the secret (a prefix left by a cut, say)."""
    return any(piece in text for piece in pieces(secret))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock("2026-06-01T12:00:00Z")


@pytest.fixture
def sink() -> Iterator[HostileServer]:
    with HostileServer(reply(200, {"ok": True})) as server:
        yield server


@pytest.mark.parametrize("var", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
def test_a_proxy_from_the_environment_never_receives_the_loop_key(
    var: str, sink: HostileServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(var, sink.url)
    with HostileServer(reply(200, {"id": 1001, "state": "open"})) as real:
        client = LoopClient(f"{real.url}/api/v1", LOOP_KEY, clock=clock, policy=POLICY)
        try:
            client.return_details("1001")
        except RemoteError:
            pass
        assert real.received and real.received[0].contains(LOOP_KEY)
    assert sink.received == []


def test_a_netrc_file_adds_no_credential_loopsync_did_not_configure(
    tmp_path: object, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"  # type: ignore[operator]
    netrc.write_text("machine 127.0.0.1 login someone password netrc-secret-123456\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    with HostileServer(reply(200, {"ok": True})) as real:
        HttpClient("generic", real.url, clock=clock, policy=POLICY).request("GET", "/x")
        assert real.received and "authorization" not in real.received[0].headers


@pytest.mark.parametrize("pad", [0, 280, 290, 295, 299])
def test_a_long_error_body_cut_through_an_echoed_key_leaves_no_piece_of_it(
    pad: int, clock: FakeClock
) -> None:
    body = ("x" * pad + LOOP_KEY + " more").encode()
    with HostileServer(reply(500, body)) as bad:
        client = LoopClient(f"{bad.url}/api/v1", LOOP_KEY, clock=clock, policy=POLICY)
        with pytest.raises(RemoteError) as caught:
            client.return_details("1001")
    assert not leaks(str(caught.value), LOOP_KEY)


def test_a_non_json_answer_quoted_in_an_error_leaves_no_piece_of_the_key() -> None:
    from loopsync.connectors import xoro
    from loopsync.connectors.generic import wire_http as generic
    from loopsync.http import HttpResult

    text = "<html>" + "y" * 180 + LOOP_KEY + "</html>"
    result = HttpResult(200, {}, text, None)
    for check in (generic._json_object, xoro.check_envelope):
        with pytest.raises(RemoteError) as caught:
            check(result)
        assert not leaks(str(caught.value), LOOP_KEY)


@settings(max_examples=50, deadline=None)
@given(pad=hs.integers(0, 400), limit=hs.integers(1, 400))
def test_clip_never_leaves_a_piece_of_a_secret_at_any_cut(pad: int, limit: int) -> None:
    text = "p" * pad + LOOP_KEY + "q" * 30
    assert not leaks(redaction.clip(text, limit), LOOP_KEY)
    assert not leaks(printable(text, limit), LOOP_KEY)


@pytest.mark.parametrize(
    "echo",
    [
        html.escape(ODD_SECRET),  # SOAP/XML fault
        html.escape(ODD_SECRET, quote=False),
        html.escape(ODD_SECRET).replace("&#x27;", "&apos;"),
        html.escape(ODD_SECRET).replace("&#x27;", "&#39;"),
        ODD_SECRET.replace("/", "\\/"),  # PHP json_encode
        quote(ODD_SECRET, safe="").lower().replace("rt-pa", "rt-Pa"),  # lower-case %xx
    ],
)
def test_secrets_echoed_in_xml_php_json_or_lowercase_percent_forms_are_masked(echo: str) -> None:
    assert echo != ODD_SECRET
    line = f"<faultstring>Authenticate failed for {echo}</faultstring>"
    out = redaction.redact(line)
    assert echo not in out and "***" in out


def test_an_xml_escaped_password_in_a_server_error_never_reaches_the_message(
    clock: FakeClock,
) -> None:
    body = f"<Envelope><Fault>bad login {html.escape(ODD_SECRET)}</Fault></Envelope>".encode()
    with HostileServer(reply(500, body)) as bad:
        with pytest.raises(RemoteError) as caught:
            HttpClient("peoplevox", bad.url, clock=clock, policy=POLICY).request("GET", "/x")
    assert html.escape(ODD_SECRET) not in str(caught.value)
    assert not leaks(str(caught.value), ODD_SECRET)


def test_a_loop_note_never_carries_a_secret(clock: FakeClock) -> None:
    with HostileServer(reply(200, True)) as loop:
        client = LoopClient(f"{loop.url}/api/v1", LOOP_KEY, clock=clock, policy=POLICY)
        client.add_note("1001", f"loopsync: RMA {ODD_SECRET} created")
        assert loop.received
        assert not loop.received[0].contains(ODD_SECRET)
        assert b"loopsync: RMA" in loop.received[0].body


def test_a_token_still_in_use_stays_masked_however_many_other_tokens_arrive() -> None:
    live = "rt-live-shiphero-access-token-0001"
    redaction.register(live, transient=True)
    for round_ in range(3):
        for i in range(redaction.MAX_TRANSIENT - 1):  # other merchants' sessions
            redaction.register(f"rt-other-session-{round_}-{i:03d}", transient=True)
        redaction.register(live, transient=True)  # used again by its merchant
    for i in range(redaction.MAX_TRANSIENT - 1):  # its request is on its way meanwhile
        redaction.register(f"rt-other-session-last-{i:03d}", transient=True)
    assert redaction.redact(f"Bearer {live}") == "Bearer ***"


def test_shiphero_keeps_its_cached_access_token_masked_while_it_uses_it(
    tmp_path: object, clock: FakeClock
) -> None:
    import threading

    from loopsync.runner import build_connector, open_store
    from loopsync.testing import Sandbox

    sb = Sandbox("shiphero", clock=FakeClock("2026-06-01T12:00:00Z")).start()
    try:
        cfg = sb.merchant_config(tmp_path)
        store = open_store(cfg, clock, dry_run=True)
        connector = build_connector(cfg, clock, store, stop=threading.Event(), policy=POLICY)
        token = connector.client.bearer()
        for i in range(redaction.MAX_TRANSIENT * 2):  # e.g. PeopleVox logins meanwhile
            redaction.register(f"rt-pvx-session-{i:04d}-x", transient=True)
        assert connector.client.bearer() == token  # cached: no refresh, no new registration
        assert token not in redaction.redact(f"invalid token {token}")
    finally:
        sb.stop()


@pytest.mark.parametrize("form", [str.upper, str.swapcase, str.title])
def test_a_key_echoed_in_another_letter_case_is_masked(form: object) -> None:
    echoed = form(LOOP_KEY)  # type: ignore[operator]
    assert echoed != LOOP_KEY
    assert redaction.redact(f"INVALID API KEY {echoed}") == "INVALID API KEY ***"
    assert redaction.contains_secret(f"x{echoed}x")


# -- careless secrets: invisible or undecodable characters are configuration errors ----------


@pytest.mark.parametrize(
    "value, problem",
    [
        ("\ufeffrt-cfg-secret-0001", "invisible formatting character"),  # BOM from an editor
        ("rt-cfg-\u200bsecret-0001", "invisible formatting character"),  # zero-width space
        ("rt-cfg-\u2028secret-0001", "invisible formatting character"),  # line separator
        ("rt-cfg-secret-\udcff\udcfe01", "not valid UTF-8"),  # undecodable env bytes
    ],
)
def test_invisible_or_undecodable_secret_characters_are_config_errors_naming_the_key(
    tmp_path: object, value: str, problem: str
) -> None:
    from loopsync.config import load_config
    from loopsync.errors import ConfigError
    from tests.test_config import BASE, write

    env = {"LOOP_API_KEY": value, "SHIPHERO_REFRESH_TOKEN": "rt-cfg-refresh-0001"}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), env=env)
    assert info.value.key == "loop.api_key" and problem in info.value.problem
    assert "rt-cfg-" not in str(info.value)


def test_a_secret_file_starting_with_a_byte_order_mark_is_a_config_error(tmp_path: object) -> None:
    from loopsync.config import load_config
    from loopsync.errors import ConfigError
    from tests.test_config import BASE, write

    key_file = tmp_path / "loop_key"  # type: ignore[operator]
    key_file.write_bytes("\ufeffrt-file-secret-0001\r\n".encode())  # Notepad's BOM
    text = BASE.replace("${LOOP_API_KEY}", "${file:loop_key}")
    assert text != BASE
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={"SHIPHERO_REFRESH_TOKEN": "rt-cfg-refresh-0001"})
    assert info.value.key == "loop.api_key" and "rt-file-secret" not in str(info.value)


def test_a_redirect_whose_host_spells_the_key_leaves_it_in_no_message(clock: FakeClock) -> None:
    from loopsync.errors import ForeignOrigin
    from tests.hostile import redirect

    key = "Rt-Mixed-Case-Key-9F8E7D6C"  # a host name is lower-cased on the way
    Secret("RT_MIXED", key)
    with HostileServer(redirect(302, f"http://{key}.example/x")) as bad:
        client = LoopClient(f"{bad.url}/api/v1", key, clock=clock, policy=POLICY)
        with pytest.raises(ForeignOrigin) as caught:
            client.return_details("1001")
    shown = redaction.redact(str(caught.value))  # what every exit shows
    assert not leaks(shown.lower(), key.lower())


def test_loop_disposition_and_action_bodies_never_carry_a_secret(clock: FakeClock) -> None:
    answers = iter([[{"ok": True}], True])

    def respond(req: object, sock: object) -> None:
        reply(200, next(answers))(req, sock)  # type: ignore[arg-type]

    with HostileServer(respond) as loop:
        client = LoopClient(f"{loop.url}/api/v1", LOOP_KEY, clock=clock, policy=POLICY)
        client.grade([{"id": 1, "condition": f"3PL says {ODD_SECRET}"}])
        client._action("1001", "flag", {"reason": f"received as {ODD_SECRET}"})
        assert len(loop.received) == 2
        assert not any(r.contains(ODD_SECRET) for r in loop.received)


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:SINK\u2100/",
        "http://127.0.0.1:SINK\u00a0/",
        "http://\u2460\u2461\u2466.0.0.1:SINK/",
    ],
)
def test_a_redirect_location_that_breaks_url_parsing_sends_nothing_and_a_write_stays_unknown(
    location: str, sink: HostileServer, clock: FakeClock
) -> None:
    from loopsync.errors import OutcomeUnknown, PermanentError

    def respond(_req: object, sock: object) -> None:
        where = location.replace("SINK", str(sink.port)).encode("utf-8")
        sock.sendall(
            b"HTTP/1.1 307 Moved\r\nLocation: "
            + where  # type: ignore[attr-defined]
            + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )

    with HostileServer(respond) as bad:
        client = HttpClient(
            "generic", bad.url, clock=clock, policy=POLICY, headers={"X-Api-Key": LOOP_KEY}
        )
        with pytest.raises(RemoteError) as caught:
            client.request("POST", "/rmas", json_body={"rma_number": "R1"})
        assert bad.received  # the 3PL had the RMA: not a verdict, an unknown outcome
    assert sink.received == []
    exc = caught.value
    assert isinstance(exc, OutcomeUnknown) or (
        isinstance(exc, PermanentError) and "redirect" in str(exc)
    )


# -- every client: Xoro's Basic credentials and ShipHero's bearer token ----------------------


def _redirector(status: int, sink: HostileServer) -> HostileServer:
    from tests.hostile import redirect

    return HostileServer(redirect(status, lambda req: f"{sink.url}{req.target}"))


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_xoro_basic_credentials_never_follow_a_redirect_to_another_origin(
    status: int, sink: HostileServer, clock: FakeClock
) -> None:
    from datetime import timedelta

    from loopsync.configkit import Section
    from loopsync.connectors.base import ConnectorContext, WarehouseSettings
    from loopsync.rules import GradingRules, StatusRules
    from loopsync.connectors.xoro.connector import XoroConnector
    from loopsync.errors import ForeignOrigin

    env = {"XK": "rt-xoro-key-5a4b3c2d1e", "XS": "rt-xoro-secret-9z8y7x6w"}
    with _redirector(status, sink) as bad:
        section = Section(
            {"api_key": "${XK}", "api_secret": "${XS}"}, file="t.yaml", path="warehouse", env=env
        )
        conf = XoroConnector.parse_settings(section)
        settings = WarehouseSettings(
            kind="xoro",
            base_url=f"{bad.url}/api/xerp",
            destinations={},
            statuses=StatusRules.build(**XoroConnector.default_statuses),
            grading=GradingRules(),
            order_wait=timedelta(days=7),
            poll_batch=50,
            timeout=5.0,
            connector=conf,
        )
        xoro = XoroConnector(settings, ConnectorContext(merchant="t", clock=clock, policy=POLICY))
        with pytest.raises(ForeignOrigin):
            xoro.client.list_asns(clock.now() - timedelta(days=1))
        assert bad.received and "authorization" in bad.received[0].headers
    assert sink.received == []


@pytest.mark.parametrize("status", [302, 307, 308])
def test_shiphero_bearer_token_never_follows_a_graphql_redirect_to_another_origin(
    status: int, sink: HostileServer, clock: FakeClock, tmp_path: object
) -> None:
    import threading

    from loopsync.errors import ForeignOrigin
    from loopsync.runner import build_connector, open_store
    from loopsync.testing import Sandbox

    sb = Sandbox("shiphero", clock=FakeClock("2026-06-01T12:00:00Z")).start()
    try:
        with _redirector(status, sink) as bad:
            cfg = sb.merchant_config(tmp_path, warehouse_extra={"base_url": bad.url})
            store = open_store(cfg, clock, dry_run=True)
            shiphero = build_connector(cfg, clock, store, stop=threading.Event(), policy=POLICY)
            client = shiphero.client  # type: ignore[attr-defined]  # a ShipHeroConnector
            client._access_token, client._renew_at = "rt-bearer-token-0f1e2d3c", 1e18
            with pytest.raises(ForeignOrigin):
                client.graphql("poll", "query { account { data { id } } }", {})
            assert bad.received and bad.received[0].contains("rt-bearer-token-0f1e2d3c")
        assert sink.received == []
    finally:
        sb.stop()


@pytest.mark.parametrize(
    "line, replacement, key",
    [
        ("merchant: acme-us", "merchant: ${RT_LOOP_KEY}", "merchant"),
        (
            "merchant: acme-us",
            "merchant: acme-us\nstate_path: /tmp/${RT_LOOP_KEY}.sqlite",
            "state_path",
        ),
    ],
)
def test_a_secret_used_in_an_ordinary_key_is_a_config_error_even_when_the_value_is_valid(
    tmp_path: object, line: str, replacement: str, key: str
) -> None:
    from loopsync.config import load_config
    from loopsync.errors import ConfigError
    from tests.test_config import BASE, write

    secret = "7f3a9c2e51b04d86a1b2c3d4"  # a valid merchant name: lower-case hex
    env = {
        "LOOP_API_KEY": secret,
        "RT_LOOP_KEY": secret,
        "SHIPHERO_REFRESH_TOKEN": "rt-cfg-refresh-0001",
    }
    text = BASE.replace(line, replacement)
    assert text != BASE
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    assert info.value.key == key and "${RT_LOOP_KEY}" in str(info.value)
    assert secret not in str(info.value)


def test_status_placeholders_for_unset_variables_are_not_taken_for_a_credential(
    tmp_path: object,
) -> None:
    from loopsync.config import load_config
    from loopsync.status import status_env
    from tests.test_config import BASE, write

    text = BASE.replace("merchant: acme-us", "merchant: ${RT_UNSET_MERCHANT}")
    cfg = load_config(write(tmp_path, text), env=status_env({}))  # nothing set at all
    assert cfg.merchant


@pytest.mark.parametrize("var", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_an_https_egress_proxy_only_ever_sees_a_tunnel_request_never_a_credential(
    var: str, sink: HostileServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sites that reach the internet through a proxy keep working for https APIs (all the
    real ones): the proxy gets `CONNECT host:port` and an encrypted tunnel, nothing else."""
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(var, sink.url)
    client = LoopClient("https://loop.invalid/api/v1", LOOP_KEY, clock=clock, policy=POLICY)
    with pytest.raises(RemoteError):  # the sink is no proxy: the tunnel never opens
        client.return_details("1001")
    assert sink.received, "the https request did not go through the configured proxy"
    for req in sink.received:
        assert req.method == "CONNECT" and not req.contains(LOOP_KEY)


def test_no_proxy_excludes_a_host_from_the_egress_proxy(
    sink: HostileServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loopsync.http import _proxies_for

    monkeypatch.setenv("HTTPS_PROXY", sink.url)
    monkeypatch.setenv("NO_PROXY", "loop.invalid")
    assert _proxies_for("https://loop.invalid/api/v1/x") == {}
    assert _proxies_for("https://other.invalid/x") == {"https": sink.url}
    assert _proxies_for("http://other.invalid/x") == {}
