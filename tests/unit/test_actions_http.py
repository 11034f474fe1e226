"""HTTP checks with urllib against a real server on loopback."""

from __future__ import annotations

import http.server
import threading

import pytest

from cutover.actions.http import HttpCheck, check, uri_tasks


class _Flaky(http.server.BaseHTTPRequestHandler):
    calls = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).calls += 1
        if self.path == "/warming" and type(self).calls < 3:
            self.send_response(503)
            self.end_headers()
            return
        body = b"portal: documents ok"
        self.send_response(200)
        self.send_header("X-Served-By", "unified-proxy")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def base_url():
    _Flaky.calls = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_healthy_answer(base_url: str) -> None:
    result = check(HttpCheck(url=base_url + "/", expect_body="documents ok", expect_header={"x-served-by": "unified"}))
    assert result.ok and result.status == 200 and result.attempts == 1


def test_retries_until_healthy(base_url: str) -> None:
    waits: list[float] = []
    result = check(HttpCheck(url=base_url + "/warming", retries=3, delay=0.5), sleep=waits.append)
    assert result.ok and result.attempts == 3 and waits == [0.5, 0.5]


def test_each_expectation_can_fail(base_url: str) -> None:
    assert check(HttpCheck(url=base_url + "/", expect_status=204)).message == "status 200, expected 204"
    assert "does not contain 'legacy'" in check(HttpCheck(url=base_url + "/", expect_header="X-Served-By: legacy")).message
    assert check(HttpCheck(url=base_url + "/", expect_header={"X-Missing": ""})).message == "header X-Missing missing"
    assert "body does not contain" in check(HttpCheck(url=base_url + "/", expect_body="quarantine")).message


def test_no_server_is_a_failed_check_not_an_exception() -> None:
    result = check(HttpCheck(url="http://127.0.0.1:9/", retries=1, delay=0, timeout=1))
    assert not result.ok and result.status is None and result.attempts == 2 and result.message.startswith("no answer")


def test_uri_tasks_carry_the_same_expectations() -> None:
    [task] = uri_tasks(HttpCheck(url="http://x/{{ inventory_hostname }}", expect_body="ok", expect_header={"X-Site": "unified"}, retries=2), name="smoke")
    assert task["ansible.builtin.uri"]["url"].endswith("{{ inventory_hostname }}")
    assert "'ok' in (cutover_http.content" in task["failed_when"] and "cutover_http['x_site']" in task["failed_when"]
    assert task["retries"] == 2 and task["until"] in task["failed_when"]
