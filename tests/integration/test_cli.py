"""The `autoresearch` CLI against a running controller (uvicorn in a thread, real Redis): each command
through `main(argv)` with its output captured, the installed entry point in a subprocess, and the
friendly errors (a problem's detail, a server that is down, no token)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

import pytest

from services.cli.main import looks_like_diff, main
from services.models import Decision
from services.patches import canonical_diff
from services.states import State
from services.store import Store
from tests.conftest import free_port, wait_for
from tests.integration.live_server import (
    ADMIN,
    BASE,
    COMMIT,
    REPO_PROGRAM,
    agent_token,
    stored_proposal,
    with_lr,
)

REPO = Path(__file__).resolve().parents[2]


class Cli(Protocol):
    def __call__(self, *argv: str, admin: bool = False) -> tuple[int, str, str]: ...


@pytest.fixture
def cli(url: str, store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run the CLI as an agent (or with `admin=True`); returns (exit code, stdout, stderr)."""
    token = agent_token(store)
    monkeypatch.setenv("AUTORESEARCH_URL", url)

    def invoke(*argv: str, admin: bool = False) -> tuple[int, str, str]:
        code = main(["--token", ADMIN if admin else token, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


# ---------------------------------------------------------------------------- submit, status, list


def test_submit_a_file_then_again(cli: Cli, tmp_path: Path, store: Store) -> None:
    path = tmp_path / "train.py"
    path.write_text(with_lr("0.002"))
    code, out, err = cli(
        "submit", str(path), "--title", "lr 0.002", "--agent", "cli-test", "--program-version", "1"
    )
    assert code == 0, err
    assert out.startswith("submitted: p_")
    proposal_id = out.split()[1]
    assert f"autoresearch watch {proposal_id}" in err
    stored = store.get(proposal_id)
    assert (stored.agent, stored.program_version, stored.train_py) == ("cli-test", 1, with_lr("0.002"))
    code, out, _ = cli("submit", str(path), "--title", "lr 0.002 again", "--agent", "cli-test")
    assert (code, out.split()[:2]) == (0, ["already", "submitted"])
    assert proposal_id in out


def test_submit_a_diff_from_stdin(cli: Cli, monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    diff = canonical_diff(BASE, with_lr("0.007"))
    assert looks_like_diff(diff) and not looks_like_diff(BASE)
    monkeypatch.setattr(sys, "stdin", _Stdin(diff))
    code, out, err = cli("--json", "submit", "-", "--title", "lr 0.007")
    assert code == 0, err
    assert '"diff": "--- a/trainer/train.py' in out
    assert [p.train_py for p in store.page()[0]] == [with_lr("0.007")]


def test_bad_submission_shows_the_detail_plainly(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "train.py"
    path.write_text("def broken(:\n")
    code, out, err = cli("submit", str(path), "--title", "broken")
    assert (code, out) == (1, "")
    assert err.startswith(
        "autoresearch: error: Candidate is not valid Python (422): the candidate train.py does not"
    )
    assert "Traceback" not in err
    path.write_bytes(b"\xff\xfe")
    code, _, err = cli("submit", str(path), "--title", "binary")
    assert code == 1 and "is not UTF-8 text" in err
    code, _, err = cli("submit", str(tmp_path / "missing.py"), "--title", "t")
    assert code == 1 and "missing.py: No such file or directory" in err


def test_status_and_list(cli: Cli, store: Store) -> None:
    proposal = stored_proposal(store)
    store.transition(proposal.id, State.RUNNING, "worker-0 started training")
    code, out, _ = cli("status")
    assert code == 0
    assert f"best     {COMMIT[:12]}  val_bpb 1.500000" in out
    assert "runs 0" in out and "running 1" in out
    code, out, _ = cli("status", proposal.id)
    assert code == 0
    assert out.startswith(f"{proposal.id}  running  learning rate 0.002")
    assert "worker-0 started training" in out
    code, out, err = cli("list", "--state", "running")
    assert code == 0
    assert proposal.id in out and "1 of 1" in err
    code, _, err = cli("status", "p_nope")
    assert code == 1
    assert err == "autoresearch: error: Not found (404): no proposal with id 'p_nope'\n"


# ---------------------------------------------------------------------------- watch and logs


def _drive(
    store: Store, proposal_id: str, steps: list[tuple[State, str, dict[str, object]]]
) -> threading.Thread:
    """Transitions in the background once `watch` has subscribed (one Redis subscriber)."""

    def go() -> None:
        wait_for(lambda: store.r.pubsub_numsub("ar:events")[0][1] >= 1, 10, "the watch to subscribe")
        time.sleep(0.2)  # the stream has sent its snapshot
        for state, reason, changes in steps:
            store.transition(proposal_id, state, reason, **changes)

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_watch_follows_to_merged(cli: Cli, store: Store) -> None:
    proposal = stored_proposal(store)
    decision = Decision(
        accepted=True,
        rule="t",
        candidate_bpb=1.49,
        best_bpb=1.5,
        best_commit=COMMIT,
        delta_bpb=-0.01,
        reason="won",
    )
    driver = _drive(
        store,
        proposal.id,
        [
            (State.RUNNING, "worker-0 started training", {}),
            (State.EVALUATING, "trained 10 steps; evaluating", {}),
            (State.MERGED, "merged as abcdef", {"decision": decision, "merged_commit": "ab" * 20}),
        ],
    )
    code, out, err = cli("watch", proposal.id)
    driver.join()
    assert code == 0, err
    states = [line.split()[1] for line in err.splitlines() if line.startswith("[")]
    assert states == ["queued", "running", "evaluating", "merged"]
    assert out == f"{proposal.id} merged as {'ab' * 6}: val_bpb 1.490000 (delta -0.010000)\n"


def test_watch_of_a_failure_exits_4(cli: Cli, store: Store) -> None:
    proposal = stored_proposal(store)
    driver = _drive(store, proposal.id, [(State.OOM, "CUDA out of memory", {})])
    code, out, _ = cli("watch", proposal.id)
    driver.join()
    assert code == 4
    assert out.startswith(f"{proposal.id} ended oom: CUDA out of memory")


def test_logs_and_follow(cli: Cli, store: Store) -> None:
    proposal = stored_proposal(store)
    code, out, _ = cli("logs", proposal.id)
    assert (code, out) == (0, f"# no finished runs yet; proposal {proposal.id} is queued\n")
    store.transition(proposal.id, State.RUNNING, "started")
    store.append_live_log(proposal.id, "step 1\n")

    def finish() -> None:
        time.sleep(0.3)
        store.append_live_log(proposal.id, "step 2\n")
        store.transition(proposal.id, State.CRASHED, "exit code 1")

    thread = threading.Thread(target=finish)
    thread.start()
    code, out, err = cli("logs", proposal.id, "--follow")
    thread.join()
    assert (code, out) == (0, "step 1\nstep 2\n")
    assert err == f"# {proposal.id} is crashed\n"


# ---------------------------------------------------------------------------- results and program


def test_leaderboard_and_best(cli: Cli, store: Store, tmp_path: Path) -> None:
    proposal = stored_proposal(store)
    decision = Decision(
        accepted=False,
        rule="t",
        candidate_bpb=1.52,
        best_bpb=1.5,
        best_commit=COMMIT,
        delta_bpb=0.02,
        reason="worse",
    )
    store.transition(proposal.id, State.REJECTED, "worse", decision=decision)
    store.record_score(proposal.id, 1.52)
    code, out, _ = cli("leaderboard")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["#", "val_bpb", "delta", "state", "agent", "id", "title"]
    assert row.split()[:6] == ["1", "1.520000", "+0.020000", "rejected", "tester", proposal.id]
    target = tmp_path / "best.py"
    code, out, _ = cli("best", "--output", str(target))
    assert code == 0
    assert target.read_text() == BASE
    assert f"best {COMMIT[:12]}  val_bpb 1.500000" in out


def test_program_get_set_versions_stats(cli: Cli, tmp_path: Path) -> None:
    code, out, err = cli("program", "get")
    assert (code, out) == (0, REPO_PROGRAM.read_text())
    assert "version 1 by repo" in err
    new = tmp_path / "program.md"
    new.write_text("# Be bold\n")
    code, _, err = cli("program", "set", str(new), "-m", "bolder")
    assert code == 1 and "Forbidden (403)" in err  # an agent token may not
    code, out, _ = cli("program", "set", str(new), "-m", "bolder", admin=True)
    assert (code, out) == (0, "program.md version 2 stored\n")
    code, out, _ = cli("program", "set", str(new), "-m", "same", admin=True)
    assert (code, out) == (0, "unchanged: the text equals version 2\n")
    code, out, _ = cli("program", "get", "--diff")
    assert code == 0 and "+# Be bold\n" in out
    code, out, _ = cli("program", "get", "--version", "1")
    assert out == REPO_PROGRAM.read_text()
    code, out, _ = cli("program", "versions")
    assert [line.split()[0] for line in out.splitlines()] == ["version", "1", "2"]
    code, out, _ = cli("program", "stats")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["version", "proposals", "scored"]


# ---------------------------------------------------------------------------- when things are wrong


def test_no_token_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AUTORESEARCH_TOKEN", raising=False)
    assert main(["status"]) == 2
    assert "no token: pass --token or set AUTORESEARCH_TOKEN" in capsys.readouterr().err


def test_entry_point_with_the_server_down() -> None:
    """The installed `autoresearch` script (or `python -m services.cli` where it is not installed)."""
    script = Path(sys.executable).with_name("autoresearch")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]
    env = {**os.environ, "AUTORESEARCH_URL": f"http://127.0.0.1:{free_port()}", "AUTORESEARCH_TOKEN": "t"}
    proc = subprocess.run(
        [*command, "status"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == ""
    assert "cannot reach the autoresearch controller at http://127.0.0.1:" in proc.stderr
    assert "connection refused (nothing listens there). Is it running?" in proc.stderr
    assert "Traceback" not in proc.stderr


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def read(self) -> str:
        return self.text
