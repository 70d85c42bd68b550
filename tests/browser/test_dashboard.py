"""The dashboard in headless Chromium against the whole service (tests/support/stack.py): sign in, watch a
real submission move through its states on its page, then find it on the leaderboard and the plot."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.cli.client import ApiClient
from tests.support.stack import BASELINE, Stack, running_stack

pytestmark = pytest.mark.browser

UI_TIMEOUT_MS = (
    120_000  # a hang guard: the fake pipeline decides in under a second idle, far slower beside a CPU hog
)
LIFECYCLE = ["queued", "running", "evaluating", "confirming", "accepted", "merged"]


@pytest.fixture
def stack(
    request: pytest.FixtureRequest, tmp_path: Path, redis_client: "redis.Redis[bytes]", redis_url: str
) -> Iterator[Stack]:
    # indirect parametrization: settings of the stack (the acceptance rule)
    with running_stack(tmp_path, redis_url, **getattr(request, "param", {})) as running:
        yield running


def sign_in(page: Any, stack: Stack) -> None:
    page.goto(stack.url + "/")
    page.fill("#token", stack.token("dashboard-user"))
    page.click("#login-form button")
    page.wait_for_selector("#progress-plot circle.kept")  # the baseline run


@pytest.fixture
def page(chromium: Any, stack: Stack) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1400, "height": 1200})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def submit(client: ApiClient, score: str, title: str) -> str:
    train_py = BASELINE.replace("FAKE_SCORE = 1.5", f"FAKE_SCORE = {score}")
    proposal, created = client.submit({"title": title, "agent": "browser-test", "train_py": train_py})
    assert created
    return str(proposal["id"])


def test_page_and_assets_are_served_without_a_token(stack: Stack) -> None:
    for path in ("/", "/ui/", "/ui/anything", "/ui/static/app.js", "/ui/static/style.css"):
        answer = httpx.get(stack.url + path)
        assert answer.status_code == 200, path
        assert "Content-Security-Policy" in answer.headers
    for other in ("app.py", "index.html.bak", "..%2Froutes%2Fui.py"):
        answer = httpx.get(f"{stack.url}/ui/static/{other}")  # 404, or the page for a path with a slash
        assert answer.status_code == 404 or answer.text.startswith("<!doctype html>"), other
    assert httpx.get(stack.url + "/v1/status").status_code == 401  # the data still needs a token


def test_a_submission_moves_through_its_states_and_lands_on_the_plot(
    stack: Stack, page: Any, output_dir: Path
) -> None:
    page.goto(stack.url + "/")
    page.fill("#token", "not-a-token")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:has-text('refused')")

    page.fill("#token", stack.token("dashboard-user"))
    page.click("#login-form button")
    page.wait_for_selector("#progress-plot circle.kept")  # the baseline run
    assert float(page.text_content("#best-bpb")) == pytest.approx(1.5, abs=2e-4)
    page.wait_for_selector("#live.on")

    with ApiClient(stack.url, stack.token("browser-agent")) as client:
        with stack.paused():
            better = submit(client, "1.4", "Lower the fake score")
            page.wait_for_selector(f"#recent tr[data-id='{better}'] [data-state='queued']")
            page.click(f"#recent tr[data-id='{better}'] a")
            page.wait_for_selector("#p-state[data-state='queued']")
            assert "FAKE_SCORE = 1.4" in page.text_content("#p-diff")
        page.wait_for_selector("#p-state[data-state='merged']")
        shown = page.locator("#p-events [data-state]").all_text_contents()
        assert shown == LIFECYCLE
        decision = page.text_content("#p-decision")
        assert "paired-z/v1" in decision and "accepted" in decision
        assert re.search(r"−?-?0\.1000\d\d", decision), decision  # Δ of about -0.1
        assert "verdictaccepted and merged" in decision  # the cells, joined
        detail = client.get(f"/v1/proposals/{better}")
        runs = 1 + 2 * len(detail["confirm_seeds"])
        assert len(detail["results"]) + len(detail["baseline_results"]) == runs
        # a log section per run, paired runs best first, so the candidate's run and score end the log
        page.wait_for_function(f"document.querySelectorAll('#p-logs section.run-log').length === {runs}")
        sections = page.locator("#p-logs section.run-log")
        subjects = [sections.nth(i).get_attribute("data-subject") for i in range(runs)]
        assert subjects == ["candidate"] + ["best", "candidate"] * len(detail["confirm_seeds"])
        heads = page.locator("#p-logs .run-log-head").all_text_contents()
        assert all(" · scored · val_bpb " in head for head in heads) and "evaluating" not in " ".join(heads)
        assert (
            "candidate (confirmation 3/3)" in heads[-1] and f"best {detail['base_commit'][:10]}" in heads[-2]
        )
        assert all("step 1/10" in text for text in page.locator("#p-logs pre").all_text_contents())
        last = detail["results"][-1]
        assert page.inner_text("#p-logs").rstrip().endswith(f"scored, val_bpb {last['val_bpb']:.6f}")
        assert page.locator("#p-live").is_hidden()  # the run's over: its sections are the log
        outcomes = page.locator("#p-runs tbody [data-state]").all_text_contents()
        assert outcomes == ["scored"] * runs
        page.screenshot(path=str(output_dir / "proposal.png"), full_page=True)

        worse = submit(client, "1.6", "Raise the fake score")
        page.goto(stack.url + "/#/")
        page.wait_for_selector(f"#progress-plot circle.kept[data-id='{better}']")
        page.wait_for_selector(f"#progress-plot circle.discarded[data-id='{worse}']")
    # the baseline, the runs of it asked on its new fingerprint, the better and the worse proposal
    page.wait_for_selector("#progress-plot[data-points='4']")
    assert page.locator("#running-best").count() == 1
    page.wait_for_selector("#running-none")  # nothing left running
    assert page.locator(f"#leaderboard tr[data-id='{better}']").count() == 1
    with ApiClient(stack.url, stack.token("reader")) as reader:  # the dashboard user's role
        best, merged = reader.get("/v1/best"), reader.get(f"/v1/proposals/{better}")["merged_commit"]
    assert best["commit"] == merged and best["best_runs"]
    shown = f"re-measured {best['remeasured_bpb']:.6f} over {len(best['best_runs'])} runs"
    page.wait_for_selector(f"#best-remeasured:has-text('{shown}')")  # against the recorded score above
    page.wait_for_function("Math.abs(Number(document.getElementById('best-bpb').textContent) - 1.4) < 2e-4")
    page.screenshot(path=str(output_dir / "dashboard.png"), full_page=True)


@pytest.mark.parametrize("stack", [{"accept_rule": "seq-bayes/v2"}], indirect=True)
def test_a_sequential_decision_shows_its_posterior_and_what_it_waits_for(stack: Stack, page: Any) -> None:
    sign_in(page, stack)
    with ApiClient(stack.url, stack.token("browser-agent")) as client:
        better = submit(client, "1.4", "Lower the fake score")
        page.goto(f"{stack.url}/#/proposals/{better}")
        page.wait_for_selector("#p-state[data-state='merged']")
        decision = client.get(f"/v1/proposals/{better}")["decision"]
    rows = dict(
        zip(
            page.locator("#p-decision th").all_text_contents(),
            page.locator("#p-decision td").all_text_contents(),
            strict=True,
        )
    )
    assert rows["rule"] == f"{decision['rule']} (confirm)" and decision["rule"] == "seq-bayes/v2"
    assert rows["posterior P(Δ < 0)"] == f"{decision['posterior']['p_better']:.2f}"
    assert rows["posterior Δ"].startswith(f"{decision['posterior']['mean_bpb']:+.6f} ± ")
    assert rows["prior"] == decision["prior_version"] and rows["stopped"] == decision["stopped"] == "accept"
    assert rows["waiting for"] == "nothing"
