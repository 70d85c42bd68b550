"""What an operator sees: the first admin token in a box that stands out among JSON log lines, and no
access-log line for a successful healthcheck."""

import json
import logging

from services.controller.auth import first_admin_banner
from services.logs import HealthcheckFilter, JsonFormatter


def access_record(path: str, status: int) -> logging.LogRecord:
    args = ("172.18.0.1:40000", "GET", path, "1.1", status)
    return logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', args, None)


def test_a_banner_follows_its_json_line_as_plain_text() -> None:
    token = "ar_" + "x" * 43
    record = logging.LogRecord(
        "services.controller.auth", logging.WARNING, "", 0, "created admin token", None, None
    )
    record.banner = first_admin_banner(token)
    first, *box = JsonFormatter().format(record).splitlines()
    assert json.loads(first)["msg"] == "created admin token"
    assert "banner" not in json.loads(first)
    assert box[0] == box[-1] and set(box[0]) == {"#"}  # a frame above and below
    assert any(line.strip("# ").strip() == token for line in box)  # the token alone on its line
    assert any("autoresearch-admin token" in line for line in box)
    assert len({len(line) for line in box}) == 1


def test_successful_healthchecks_leave_no_access_log_line() -> None:
    health = HealthcheckFilter()
    assert not health.filter(access_record("/healthz", 200))
    assert health.filter(access_record("/healthz", 500))
    assert health.filter(access_record("/v1/status", 200))
