"""The image's HEALTHCHECK (loopsync.healthcheck): /healthz when serve's listener is on,
`status --check` otherwise; exit 0 or 1 with one line, whatever a server answers."""

import contextlib
import socket
import threading
from collections.abc import Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopsync import web
from loopsync.errors import UsageError
from loopsync.healthcheck import (
    ADDRESS_ENV,
    DEFAULT_CONFIG,
    HttpProbe,
    StatusProbe,
    choose,
    listener_address,
    main,
    probe_http,
)


def test_the_listener_is_probed_over_loopback_when_it_listens_everywhere():
    assert choose({"LOOPSYNC_HTTP": "0.0.0.0:9108"}, []) == HttpProbe("127.0.0.1", 9108)
    assert choose({"LOOPSYNC_HTTP": ":9108"}, []) == HttpProbe("127.0.0.1", 9108)
    assert choose({"LOOPSYNC_HTTP": "[::]:9108"}, []) == HttpProbe("::1", 9108)
    assert choose({"LOOPSYNC_HTTP": "10.1.2.3:80"}, []) == HttpProbe("10.1.2.3", 80)


def test_without_a_listener_status_check_reads_the_image_config_folder_by_default():
    assert choose({}, []) == StatusProbe((DEFAULT_CONFIG,))
    assert choose({"LOOPSYNC_HTTP": " "}, ["a.yaml"]) == StatusProbe(("a.yaml",))
    # A malformed address is serve's to refuse at start; the probe falls back to status.
    assert choose({"LOOPSYNC_HTTP": "nonsense"}, []) == StatusProbe((DEFAULT_CONFIG,))


@given(st.text(alphabet="0123456789:[]abf.x ", max_size=24) | st.text(max_size=24))
def test_the_listener_address_is_read_as_serve_reads_it(text):
    assert ADDRESS_ENV == web.ADDRESS_ENV
    try:
        expected = web.parse_address(text)
    except UsageError:
        assert listener_address(text) is None
    else:
        assert listener_address(text) == (expected.host, expected.port)


@contextlib.contextmanager
def answering(answer: bytes) -> Iterator[int]:
    """A one-connection server on 127.0.0.1 that reads the request and sends `answer`."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        thread.join(5)
        server.close()


def test_healthz_200_is_healthy_and_503_unhealthy():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
    with answering(ok) as port:
        assert probe_http(HttpProbe("127.0.0.1", port)) == (0, "healthy: /healthz 200")
    down = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    with answering(down) as port:
        assert probe_http(HttpProbe("127.0.0.1", port)) == (1, "unhealthy: /healthz 503")


def test_nothing_listening_is_unhealthy_not_a_crash():
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as s:
        port = s.getsockname()[1]
    code, why = probe_http(HttpProbe("127.0.0.1", port), timeout=1)
    assert code == 1 and why.startswith("unhealthy: /healthz did not answer")


def test_a_silent_listener_is_unhealthy_after_the_timeout():
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as s:
        code, why = probe_http(HttpProbe("127.0.0.1", s.getsockname()[1]), timeout=0.2)
    assert (code, why) == (1, "unhealthy: /healthz did not answer (TimeoutError)")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.builds(lambda b: b"HTTP/1.1 " + b, st.binary(max_size=80)))
def test_any_answer_is_healthy_only_as_a_200_and_never_raises(answer):
    with answering(answer) as port:
        code, why = probe_http(HttpProbe("127.0.0.1", port), timeout=2)
    assert code in (0, 1) and "\n" not in why
    if code == 0:
        assert answer.startswith(b"HTTP/1.1 200")


def test_status_probe_is_healthy_for_a_merchant_that_never_ran(tmp_path, capsys):
    cfg = tmp_path / "acme.yaml"
    cfg.write_text(
        "merchant: acme\n"
        "loop: {api_key: '${LOOP_API_KEY}', start_at: '2026-01-01T00:00:00Z'}\n"
        "warehouse: {kind: shiphero, refresh_token: '${SHIPHERO_REFRESH_TOKEN}'}\n"
    )
    assert main(["-c", str(cfg)], environ={}) == 0
    assert capsys.readouterr().out.endswith("healthy: status --check 0\n")
    assert main(["-c", str(tmp_path / "missing.yaml")], environ={}) == 1
    assert capsys.readouterr().out.endswith(
        "unhealthy: status --check exited 2 (see loopsync status)\n"
    )
