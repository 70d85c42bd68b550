"""The `autoresearch` CLI against a running controller (uvicorn in a thread, real Redis): each command
through `main(argv)` with its output captured, the installed entry point in a subprocess, and the
friendly errors (a problem's detail, a server that is down, no token)."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

import pytest

from services.cli.main import looks_like_diff, main
from services.committer import rules
from services.committer.build import build_committer
from services.committer.repo import GitResearchRepo
from services.controller.auth import hash_token
from services.models import Decision, RunResult
from services.patches import canonical_diff
from services.settings import AcceptanceSettings, Settings
from services.states import State
from services.store import Store
from tests.support.live_server import ADMIN, BASE, COMMIT, REPO_PROGRAM, agent_token, stored_proposal, with_lr
from tests.support.net import free_port, wait_for
from tests.support.walk import walk

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
    walk(store, proposal.id, State.RUNNING, "worker-0 started training")
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


def test_submit_without_a_program_version_names_the_current_one(
    cli: Cli, tmp_path: Path, store: Store
) -> None:
    path = tmp_path / "train.py"
    path.write_text(with_lr("0.003"))
    code, out, err = cli("submit", str(path), "--title", "lr 0.003")
    assert code == 0, err
    assert store.get(out.split()[1]).program_version == 1
    program = tmp_path / "program.md"
    program.write_text("# Be bold\n")
    assert cli("program", "set", str(program), "-m", "bolder", admin=True)[0] == 0
    path.write_text(with_lr("0.004"))
    code, out, _ = cli("submit", str(path), "--title", "lr 0.004")
    assert store.get(out.split()[1]).program_version == 2
    code, out, _ = cli("program", "stats", "--json")
    assert {row["version"] for row in json.loads(out)} == {1, 2}  # none under "-"


def test_status_of_a_proposal_in_confirmation_is_not_a_rejection(cli: Cli, store: Store) -> None:
    proposal = stored_proposal(store)
    noise, params = rules.Noise(0.001, "calibrated", 8), rules.params_from(AcceptanceSettings.defaults())
    screening = rules.screen(1.256, 1.5, COMMIT, noise, params)  # 244 σ better than the best
    walk(store, proposal.id, State.RUNNING, "started")
    walk(store, proposal.id, State.EVALUATING, "trained 10 steps; evaluating")
    walk(
        store,
        proposal.id, State.CONFIRMING, screening.reason, decision=screening, screening=screening,
        confirm_seeds=[11, 12, 13],
    )  # fmt: skip
    code, out, _ = cli("status", proposal.id)
    assert code == 0
    decision_line = next(line for line in out.splitlines() if "decision:" in line)
    assert "decision: screening passed; confirming: 0 of 3 paired runs done, waiting for 3;" in decision_line
    assert "rejected" not in out and "within" not in decision_line
    assert "beats the best 1.5000 by 0.2440 (244.0 σ;" in decision_line  # an agent reads 4 decimals
    rejected = rules.screen(1.6, 1.5, COMMIT, noise, params)
    walk(store, proposal.id, State.REJECTED, rejected.reason, decision=rejected)
    assert "decision: rejected at screening;" in cli("status", proposal.id)[1]


def test_json_goes_before_or_after_the_command(cli: Cli, store: Store) -> None:
    proposal = stored_proposal(store)
    for argv in (("--json", "status", proposal.id), ("status", proposal.id, "--json")):
        code, out, _ = cli(*argv)
        assert code == 0 and json.loads(out)["id"] == proposal.id
    code, out, _ = cli("program", "versions", "--json")
    assert [v["version"] for v in json.loads(out)] == [1]
    code, out, _ = cli("status", proposal.id)
    assert not out.startswith("{")


def test_results_tsv_and_token_create(cli: Cli, store: Store) -> None:
    code, out, _ = cli("results", "--tsv")
    assert code == 0 and out.splitlines()[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    code, out, _ = cli("results")
    assert code == 0 and out.split() == ["commit", "val_bpb", "memory_gb", "status", "description"]
    code, _, err = cli("token", "create", "bob")
    assert code == 1 and "Forbidden (403)" in err  # an agent token may not
    code, out, err = cli("token", "create", "bob", "--role", "agent", admin=True)
    assert code == 0, err
    token = out.strip()
    assert store.token(hash_token(token)) == {"name": "bob", "role": "agent"}
    assert "shown only now" in err
    assert main(["--token", token, "status"]) == 0  # the new token works


def test_repo_clone_gets_the_branch_with_its_notes(
    cli: Cli, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = GitResearchRepo(tmp_path / "repo", "research", "t <t@example.invalid>")
    try:
        root = repo.ensure(BASE)
        repo.set_note(root, json.dumps({"val_bpb": 1.23456789, "results": []}))
        committer = build_committer(Settings(), store=store, repo=repo)
        committer.publish_bundle()
    finally:
        repo.close()
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("repo", "clone")
    assert code == 0, err
    assert (
        out
        == f"cloned the research branch (research at {root[:12]}) into research; `git log` shows each result\n"
    )
    log = subprocess.run(
        ["git", "-C", "research", "log", "--format=%H %s%n%N"], capture_output=True, text=True, check=True
    ).stdout
    assert log.startswith(f"{root} Baseline trainer\n") and '"val_bpb": 1.2346' in log
    assert (tmp_path / "research" / "trainer" / "train.py").read_text() == BASE
    code, _, err = cli("repo", "clone")
    assert code == 1 and "research exists and is not empty" in err
    code, out, _ = cli("repo", "bundle", "-o", "r.bundle")
    assert code == 0 and (tmp_path / "r.bundle").read_bytes().startswith(b"# v2 git bundle")


# ---------------------------------------------------------------------------- watch and logs


def _drive(
    store: Store, proposal_id: str, steps: list[tuple[State, str, dict[str, object]]]
) -> threading.Thread:
    """Transitions in the background once `watch` has subscribed (one Redis subscriber)."""

    def go() -> None:
        wait_for(lambda: store.r.pubsub_numsub("ar:events")[0][1] >= 1, 10, "the watch to subscribe")
        time.sleep(0.2)  # the stream has sent its snapshot
        for state, reason, changes in steps:
            walk(store, proposal_id, state, reason, **changes)

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
    walk(store, proposal.id, State.RUNNING, "started")
    store.append_live_log(proposal.id, "step 1\n")

    def finish() -> None:
        time.sleep(0.3)
        store.append_live_log(proposal.id, "step 2\n")
        walk(store, proposal.id, State.CRASHED, "exit code 1")

    thread = threading.Thread(target=finish)
    thread.start()
    code, out, err = cli("logs", proposal.id, "--follow")
    thread.join()
    assert (code, out) == (0, "step 1\nstep 2\n")
    assert err == f"# {proposal.id} is crashed\n"


def test_logs_headers_give_each_runs_final_state_and_score(cli: Cli, store: Store) -> None:
    proposal = stored_proposal(store)
    runs = [
        RunResult(run_id="run_a", proposal_id=proposal.id, seed=42, state=State.EVALUATING,
                  val_bpb=1.41234567, log_tail="step 1\n"),
        RunResult(run_id="run_b", proposal_id=proposal.id, seed=7, state=State.EVALUATING,
                  val_bpb=1.40987654, log_tail="step 1\n"),
    ]  # fmt: skip
    best = RunResult(run_id="run_c", proposal_id=proposal.id, seed=7, subject="best", state=State.EVALUATING,
                     val_bpb=1.5012345, log_tail="step 1\n")  # fmt: skip
    store.update(proposal.id, results=runs, baseline_results=[best], confirm_seeds=[7])
    code, out, _ = cli("logs", proposal.id)
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("# ---- run ")]
    assert headers == [
        "# ---- run run_a · candidate (screening) · seed 42 · scored · val_bpb 1.4123",
        f"# ---- run run_c · best {COMMIT[:10]} (paired, confirmation 1/1) · seed 7 · scored · val_bpb 1.5012",
        "# ---- run run_b · candidate (confirmation 1/1) · seed 7 · scored · val_bpb 1.4099",
    ]  # an agent's precision
    assert out.endswith("# ---- end of run run_b (candidate (confirmation 1/1)): scored, val_bpb 1.4099\n")
    assert "evaluating" not in out
    assert cli("logs", proposal.id, admin=True)[1].endswith("scored, val_bpb 1.409877\n")


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
    walk(store, proposal.id, State.REJECTED, "worse", decision=decision)
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
