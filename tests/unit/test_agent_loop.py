"""What both built-in agents do around an idea (services/agent/loop.py), against a stubbed API."""

import json
import logging

import httpx
import pytest

from services.agent.loop import Clock, submit_and_wait
from services.cli.client import ApiClient
from services.settings import Settings


def test_a_submit_is_logged_at_info_without_breaking_the_agent(caplog: pytest.LogCaptureFixture) -> None:
    """The agents' processes log at INFO (services.logs.configure_logging); an extra that names a
    LogRecord attribute (`created`) made logging raise KeyError at the first submit."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json={"id": "p_1", "state": "queued"})
        detail = {"id": "p_1", "title": "t", "state": "rejected", "reason": "not better", "decision": None}
        return httpx.Response(200, json=detail)

    caplog.set_level(logging.INFO, logger="services.agent.loop")
    with ApiClient("http://controller", "token", transport=httpx.MockTransport(answer)) as client:
        outcome = submit_and_wait(
            client, {"title": "t"}, Settings(agent_poll_s=0.01), Clock(sleep=lambda s: None)
        )
    assert (outcome.proposal_id, outcome.state, outcome.duplicate) == ("p_1", "rejected", False)
    (submitted,) = [r for r in caplog.records if r.getMessage() == "submitted"]
    assert json.loads(json.dumps(vars(submitted), default=str))["duplicate"] is False
