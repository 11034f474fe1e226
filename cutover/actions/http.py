"""HTTP checks: expected status, a header, a body substring, with retries and a timeout.

One declaration (`HttpCheck`), two ways to carry it out:

- `check()` performs it here with urllib (gates the engine decides itself, e.g. a platform's
  health page before a wave);
- `uri_tasks()` renders it as Ansible `uri` tasks, so that a smoke gate guarding a unit runs
  per unit, on the unit's connection, inside the batch's ansible-runner invocation (the URL may
  use the unit's inventory variables, `{{ cutover_unit }}`).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class HttpCheck(BaseModel):
    """What a healthy answer looks like. `expect_header` is `{name: substring}` or "Name: value"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    method: str = "GET"
    expect_status: int = 200
    expect_header: dict[str, str] = Field(default_factory=dict)
    expect_body: str | None = None
    retries: int = Field(default=0, ge=0)
    delay: float = Field(default=1.0, ge=0)
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("expect_header", mode="before")
    @classmethod
    def _header_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            name, sep, expected = value.partition(":")
            if not sep or not name.strip():
                raise ValueError("expect_header must be 'Name: value' or a mapping")
            return {name.strip(): expected.strip()}
        return value or {}


@dataclass(frozen=True)
class HttpResult:
    ok: bool
    url: str
    status: int | None
    attempts: int
    elapsed: float
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def as_evidence(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "attempts": self.attempts, "elapsed": round(self.elapsed, 3), "message": self.message}


def _judge(spec: HttpCheck, status: int | None, headers: dict[str, str], body: str) -> str | None:
    """Why the answer is not healthy, or None."""
    if status != spec.expect_status:
        return f"status {status}, expected {spec.expect_status}"
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, expected in spec.expect_header.items():
        got = lowered.get(name.lower())
        if got is None:
            return f"header {name} missing"
        if expected not in got:
            return f"header {name}: {got!r} does not contain {expected!r}"
    if spec.expect_body is not None and spec.expect_body not in body:
        return f"body does not contain {spec.expect_body!r}"
    return None


def check(spec: HttpCheck, *, url: str | None = None, sleep=time.sleep) -> HttpResult:
    """Try the check up to 1 + retries times; never raises for an unhealthy or absent service."""
    target = url or spec.url
    started = time.monotonic()
    attempts = 0
    status: int | None = None
    headers: dict[str, str] = {}
    message = ""
    while True:
        attempts += 1
        body = ""
        try:
            request = urllib.request.Request(target, method=spec.method)
            with urllib.request.urlopen(request, timeout=spec.timeout) as response:  # noqa: S310 - URLs come from the runbook
                status, headers = response.status, dict(response.headers.items())
                body = response.read(1 << 20).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            status, headers = exc.code, dict(exc.headers.items()) if exc.headers else {}
            body = exc.read(1 << 20).decode("utf-8", "replace") if exc.fp else ""
        except (urllib.error.URLError, OSError, ValueError) as exc:
            status, headers = None, {}
            message = f"no answer: {getattr(exc, 'reason', exc)}"
        if status is not None:
            problem = _judge(spec, status, headers, body)
            if problem is None:
                return HttpResult(True, target, status, attempts, time.monotonic() - started, "healthy", headers)
            message = problem
        if attempts > spec.retries:
            return HttpResult(False, target, status, attempts, time.monotonic() - started, message, headers)
        sleep(spec.delay)


def uri_tasks(spec: HttpCheck, *, name: str) -> list[dict[str, Any]]:
    """The check as Ansible tasks: one `uri` call retried until healthy, failing the unit if not."""
    conditions = [f"(cutover_http.status | default(-1)) == {spec.expect_status}"]
    for header, expected in spec.expect_header.items():
        key = header.lower().replace("-", "_")
        conditions.append(f"({expected!r} in (cutover_http[{key!r}] | default('') | string))")
    if spec.expect_body is not None:
        conditions.append(f"({spec.expect_body!r} in (cutover_http.content | default('')))")
    healthy = " and ".join(conditions)
    task: dict[str, Any] = {
        "name": name,
        "ansible.builtin.uri": {
            "url": spec.url,
            "method": spec.method,
            "status_code": [spec.expect_status],
            "return_content": spec.expect_body is not None,
            "timeout": int(max(1, spec.timeout)),
            "follow_redirects": "none",
        },
        "register": "cutover_http",
        "failed_when": f"not ({healthy})",
    }
    if spec.retries:
        task.update({"retries": spec.retries, "delay": spec.delay, "until": healthy})
    return [task]
