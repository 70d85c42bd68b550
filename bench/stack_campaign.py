"""A research campaign through the whole service on the CPU, once per acceptance rule.

For each rule, a fresh stack: a private redis-server, the controller (`autoresearch-controller`, a
real HTTP server), several workers (`autoresearch-worker`: RQ workers with the Docker sandbox, tiny
preset, CPU), the committer (`autoresearch-committer`) and its git research repo, each the
production entry point in its own process, on the shipped sample corpus (data/sample, prepared as
the CPU compose stack prepares it). The built-in random-search arm (`autoresearch-search`) runs as a
user would run it, with an agent token minted through the API and the same search seed for every
rule, and the script waits until every proposal is final. Then the best and the baseline are run
again on fresh seeds through the same path (`POST /v1/runs`) to judge the true gain.

    nice -n 10 .venv/bin/python bench/stack_campaign.py [--proposals 60] [--search-seed 1] \\
        [--workers 2] [--rules paired-z/v1 seq-bayes/v3] [--remeasure-seeds 4] [--wall-clock-s 600] \\
        [--paired-z-from bench/results/NAME.json]

Per rule it reports proposals by final state, runs (screening, confirmation, runs of commits), merges
and, for each, whether its decision is in the git note of its commit on the research branch (read
with git), the baseline's and the final best's val_bpb as recorded and as re-measured, container-
seconds and wall time, and the gain per run-hour, beside the simulator's ratio between the rules
(bench/results/campaign.json). Needs a Docker engine, the images (`make images`) and redis-server.
Writes bench/results/stack-campaign.json and its raw log (this script's progress, the agent's log,
and every warning or error line of the services). Exits non-zero when a proposal is left non-final,
a proposal the agent was answered with is missing from the store, a service process died, a merge's
decision is missing from git, or a scored run stopped before the tiny preset's fixed step count.

The tiny preset trains a fixed number of steps, so its score does not depend on the machine's load,
unless a run reaches its wall clock first: then the trainer stops early and the shorter run is
scored. On a 2-core machine shared with other work, runs at compose.cpu.yaml's 120 s did (38-40 of
60 steps, ~0.09 bpb worse); the wall clock here is 600 s, and the script checks every run's steps.

Workers share this host, so each gets a name of its own (AR_WORKER_NAME), which labels its
containers and holds its leases; two live workers with one name would refuse to start.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import free_port, private_redis, write_results  # noqa: E402
from services.agent.search import hyperparameters  # noqa: E402
from services.cli.client import ApiClient, ClientError  # noqa: E402
from services.committer.repo import TRAIN_PY_PATH  # noqa: E402
from services.settings import GIB  # noqa: E402
from services.states import ACTIVE, TERMINAL  # noqa: E402
from tests.support.trainer import run_prepare  # noqa: E402

RULES = ("paired-z/v1", "seq-bayes/v3", "seq-bayes/v4")
DEFAULT_RULES = ("paired-z/v1", "seq-bayes/v3")
SIMULATION = {"seq-bayes/v3": "campaign.json", "seq-bayes/v4": "campaign-v4.json"}  # each rule's grid
TRAINER_IMAGE = "autoresearch/trainer:cpu"
VOCAB_SIZE = 512  # as compose.cpu.yaml prepares the sample corpus
# AR_RUN_WALL_CLOCK_S. compose.cpu.yaml has 120; the tiny preset takes ~4 s of it on a quiet machine,
# but on a loaded one its runs reached the deadline and stopped early, scored (see --wall-clock-s).
WALL_CLOCK_S = 600
REMEASURE_FIRST_SEED = 1001  # fresh seeds for the re-runs (the campaign uses 42 and random ones)
ACTIVE_STATES = sorted(state.value for state in ACTIVE)
TERMINAL_STATES = {state.value for state in TERMINAL}
PROGRESS_EVERY_S = 60.0
POLL_S = 2.0
LOG_LEVELS_KEPT = {"warning", "error", "critical"}


def say(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


# --------------------------------------------------------------------------------------------------
# The stack


@dataclass
class Stack:
    """The service's processes for one rule: committer, workers and controller, logs in `logs`."""

    work: Path
    env: dict[str, str]
    workers: int
    owners: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    deaths: dict[str, int] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['AR_PORT']}"

    def start(self, tag: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._start("committer", [sys.executable, "-m", "services.committer.main"], self.env)
        for i in range(1, self.workers + 1):
            name = f"{tag}-w{i}"
            runs = self.work / f"runs-w{i}"
            runs.mkdir()
            self.owners.append(name)
            env = {**self.env, "AR_RUNS_DIR": str(runs), "AR_WORKER_NAME": name}
            self._start(f"worker{i}", [sys.executable, "-m", "services.worker.main"], env)
        self._start("controller", [sys.executable, "-m", "services.controller.main"], self.env)

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        self.procs[name] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def check(self) -> list[str]:
        """Names of processes that died since the last check (each reported once)."""
        died = []
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None and name not in self.deaths:
                self.deaths[name] = code
                died.append(name)
        return died

    def stop(self) -> dict[str, int | None]:
        """SIGTERM (RQ's warm shutdown: a running job finishes), then SIGKILL after a grace."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(10)
        return codes

    def log_tail(self, name: str, chars: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]


def service_env(
    redis_url: str, admin: str, rule: str, work: Path, data: Path, wall_clock_s: int
) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AR_")}
    return {
        **inherited,
        "PYTHONPATH": str(ROOT),  # this checkout's services, whatever the environment has installed
        "AR_REDIS_URL": redis_url,
        "AR_ADMIN_TOKEN": admin,
        "AR_ACCEPT_RULE": rule,
        "AR_PRESET": "tiny",
        "AR_DEVICE": "cpu",
        "AR_GPU_MODE": "none",
        "AR_TRAINER_IMAGE": TRAINER_IMAGE,
        "AR_CONTAINER_MEMORY_BYTES": str(4 * GIB),
        "AR_RUN_WALL_CLOCK_S": str(wall_clock_s),
        "AR_TRAIN_DATA": str(data / "train"),
        "AR_VAL_DATA": str(data / "val"),
        "AR_TEST_DATA": str(data / "test"),
        "AR_REPO_DIR": str(work / "repo"),
        "AR_BASELINE_TRAIN_PY": str(ROOT / "trainer" / "train.py"),
        "AR_PROGRAM_PATH": str(ROOT / "program.md"),
        "AR_HOST": "127.0.0.1",
        "AR_PORT": str(free_port()),
    }


def agent_env(stack: Stack, token: str, args: argparse.Namespace) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AR_")}
    return {
        **inherited,
        "PYTHONPATH": str(ROOT),
        "AR_AGENT_CONTROLLER_URL": stack.url,
        "AR_AGENT_TOKEN": token,
        "AR_AGENT_MAX_ITERATIONS": str(args.proposals),
        "AR_AGENT_SEARCH_SEED": str(args.search_seed),
        "AR_AGENT_POLL_S": str(args.poll_s),
    }


def prepare_data(work: Path) -> Path:
    """The sample corpus prepared as the CPU compose stack's `prepare` does (vocabulary 512, test split)."""
    data = work / "data"
    run_prepare(ROOT / "data" / "sample", data, VOCAB_SIZE, "--test-dir", str(data / "test"))
    for path in [data, *data.rglob("*")]:  # readable by the sandbox's user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return data


# --------------------------------------------------------------------------------------------------
# Reading the service


def wait_until(what: str, predicate: Any, timeout_s: float, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        died = stack.check()
        if died:
            raise RuntimeError(f"{', '.join(died)} died while waiting for {what}")
        try:
            value = predicate()
        except ClientError as exc:  # the controller not up yet
            value, last = None, str(exc)
        if value:
            return value
        time.sleep(POLL_S)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what} {last}")


def all_proposals(api: ApiClient) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        page = api.get("/v1/proposals", offset=len(rows), limit=200)
        rows.extend(page["items"])
        if not page["items"] or len(rows) >= page["total"]:
            return rows


def active_proposals(api: ApiClient) -> list[dict[str, Any]]:
    return [
        row for state in ACTIVE_STATES for row in api.get("/v1/proposals", state=state, limit=200)["items"]
    ]


def run_seconds(result: dict[str, Any]) -> float:
    timings = result.get("timings") or {}
    return float(timings.get("train_container_s", 0.0)) + float(timings.get("eval_container_s", 0.0))


def git(repo: Path, *argv: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True, check=True).stdout


def note_evidence(repo: Path, branch: str, proposal: dict[str, Any], rule: str) -> dict[str, Any]:
    """What git itself says of a merge: its commit on the branch, and its note's decision."""
    sha = str(proposal.get("merged_commit") or "")
    on_branch = sha in git(repo, "rev-list", f"refs/heads/{branch}").split()
    found = subprocess.run(
        ["git", "-C", str(repo), "notes", "--ref=refs/notes/commits", "show", sha],
        capture_output=True, text=True,
    )  # fmt: skip
    note: dict[str, Any] = {}
    if found.returncode == 0:
        try:
            note = json.loads(found.stdout)
        except json.JSONDecodeError:
            note = {}
    decision = note.get("decision") or {}
    checks = {
        "on_branch": on_branch,
        "note": found.returncode == 0,
        "note_names_proposal": note.get("proposal_id") == proposal["id"],
        "note_rule": decision.get("rule") == rule,
        "note_accepted": decision.get("accepted") is True and decision.get("stage") == "confirm",
        "note_paired_runs": len(decision.get("candidate_runs") or []) >= 1
        and len(decision.get("best_runs") or []) == len(decision.get("candidate_runs") or []),
    }
    return {
        "proposal_id": proposal["id"],
        "commit": sha,
        "title": proposal["title"],
        **checks,
        "ok": all(checks.values()),
        "note_delta_bpb": decision.get("delta_bpb"),
        "note_pairs": len(decision.get("candidate_runs") or []),
    }


def tiny_steps(train_py: str) -> int | None:
    """The tiny preset's fixed step count in a train.py (the search may change it)."""
    found = {c.name: c.value for c in hyperparameters(train_py)}
    value = found.get("TINY_STEPS")
    return int(value) if value is not None else None


def cut_short(repo: Path, details: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Scored runs with fewer steps than the tiny preset's fixed count: stopped by the wall clock, so
    their score depends on the machine's load. The best's halves ran the base commit's train.py."""
    steps_of: dict[str, int | None] = {}

    def commit_steps(sha: str) -> int | None:
        if sha not in steps_of:
            steps_of[sha] = tiny_steps(git(repo, "show", f"{sha}:{TRAIN_PY_PATH}"))
        return steps_of[sha]

    found = []
    for p in details.values():
        own = tiny_steps(p["train_py"])
        runs = [(r, own) for r in p["results"]] + [
            (r, commit_steps(p["base_commit"])) for r in p["baseline_results"]
        ]
        for run, expected in runs:
            if run["val_bpb"] is not None and expected is not None and (run["steps"] or 0) < expected:
                found.append(
                    {"proposal_id": p["id"], "run_id": run["run_id"], "subject": run["subject"], "seed": run["seed"],
                     "steps": run["steps"], "expected_steps": expected, "val_bpb": run["val_bpb"],
                     "train_container_s": (run.get("timings") or {}).get("train_container_s")}
                )  # fmt: skip
    return found


def request_runs(api: ApiClient, commit: str, seeds: list[int], title: str) -> str:
    body = {"commit": commit, "count": len(seeds), "seeds": seeds, "title": title}
    return str(api.post("/v1/runs", body)["id"])


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


# --------------------------------------------------------------------------------------------------
# One rule's campaign


@dataclass
class Campaign:
    rule: str
    args: argparse.Namespace
    data: Path
    root: Path
    faults: list[dict[str, Any]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def fault(self, kind: str, **details: Any) -> None:
        self.faults.append({"kind": kind, **details})
        say(f"[{self.rule}] FAULT {kind}: {json.dumps(details, default=str)[:2000]}")

    def mark(self, name: str, t0: float) -> None:
        self.marks[name] = round(time.monotonic() - t0, 1)

    def run(self) -> dict[str, Any]:
        slug = self.rule.replace("/", "-")
        work = self.root / slug
        work.mkdir()
        admin = f"bench-admin-{secrets.token_hex(16)}"
        t0 = time.monotonic()
        with private_redis() as redis_url:
            env = service_env(redis_url, admin, self.rule, work, self.data, self.args.wall_clock_s)
            stack = Stack(work, env, self.args.workers)
            stack.start(f"stack-{slug}")
            report: dict[str, Any] = {"rule": self.rule}
            try:
                report = self._drive(stack, admin, t0)
            except Exception as exc:  # recorded with the logs: a finding about the service, not a crash here
                self.fault("campaign aborted", error=f"{type(exc).__name__}: {exc}")
                report["aborted"] = f"{type(exc).__name__}: {exc}"
            finally:
                codes = stack.stop()
                self.mark("stopped", t0)
                self._after_stop(stack, codes)
        report["faults"] = self.faults
        report["marks_s"] = self.marks
        report["service_log_lines"] = self._service_lines(stack)
        return report

    def _drive(self, stack: Stack, admin: str, t0: float) -> dict[str, Any]:
        with ApiClient(stack.url, admin) as api:
            wait_until("the controller", lambda: api.get("/v1/status"), 120, stack)
            self.mark("controller_up", t0)
            token = str(api.post("/v1/tokens", {"name": "random-search", "role": "agent"})["token"])
            agent_log = stack.logs / "agent.log"
            search = Path(sys.executable).with_name("autoresearch-search")
            with open(agent_log, "wb") as out:
                agent = subprocess.Popen(
                    [str(search)], env=agent_env(stack, token, self.args), stdout=out,
                    stderr=subprocess.STDOUT, cwd=ROOT,
                )  # fmt: skip
                t_agent = time.monotonic()
                say(f"[{self.rule}] stack up at {stack.url}; autoresearch-search started")
                try:
                    self._follow(stack, api, agent, t0)
                finally:
                    if agent.poll() is None:
                        agent.terminate()
                        agent.wait(30)
            agent_code = agent.returncode
            self.mark("agent_done", t0)
            if agent_code != 0:
                self.fault("agent exited non-zero", code=agent_code, tail=agent_log.read_text()[-2000:])
            self._drain(stack, api)
            self.mark("all_final", t0)
            campaign_wall_s = time.monotonic() - t_agent
            report = self._report(stack, api, agent_log)
            report["wall_s"] = {"campaign": round(campaign_wall_s, 1)}
            report["remeasure"] = self._remeasure(stack, api, report)
            self.mark("remeasured", t0)
            report["wall_s"]["total_with_setup_and_remeasure"] = round(time.monotonic() - t0, 1)
            return report

    def _follow(self, stack: Stack, api: ApiClient, agent: subprocess.Popen[bytes], t0: float) -> None:
        """Until the agent exits: watch for dead processes, print progress, catch a stalled stack."""
        last_change, last_seen, last_print = time.monotonic(), "", 0.0
        baseline_marked = False
        while agent.poll() is None:
            for name in stack.check():
                self.fault("process died", process=name, code=stack.deaths[name], log=stack.log_tail(name))
            if "controller" in stack.deaths or "committer" in stack.deaths:
                raise RuntimeError("the controller or the committer died")
            try:
                status = api.get("/v1/status")
            except ClientError as exc:
                say(f"[{self.rule}] status unavailable: {exc}")
                time.sleep(POLL_S)
                continue
            if not baseline_marked and status.get("best_val_bpb") is not None:
                self.mark("baseline_scored", t0)
                baseline_marked = True
            seen = json.dumps([status.get("states"), status.get("gpu_seconds_total")], sort_keys=True)
            now = time.monotonic()
            if seen != last_seen:
                last_seen, last_change = seen, now
            elif now - last_change > self.args.stall_s:
                active = active_proposals(api)
                self.fault(
                    "stalled: nothing changed",
                    seconds=round(now - last_change),
                    active=[
                        {k: p[k] for k in ("id", "kind", "state", "reason", "updated_at")} for p in active
                    ],
                    logs={name: stack.log_tail(name, 1500) for name in stack.procs},
                )
                raise RuntimeError(f"the stack stalled for {self.args.stall_s:.0f} s")
            if now - last_print > PROGRESS_EVERY_S:
                last_print = now
                states = {k: v for k, v in (status.get("states") or {}).items() if v}
                say(f"[{self.rule}] {now - t0:6.0f} s  best {status.get('best_val_bpb')}  states {states}")
            time.sleep(POLL_S)

    def _drain(self, stack: Stack, api: ApiClient) -> None:
        """After the agent: until no proposal is active, or a stall; what is left is a fault."""
        deadline = time.monotonic() + self.args.stall_s
        while time.monotonic() < deadline:
            if not active_proposals(api):
                return
            time.sleep(POLL_S)
        active = active_proposals(api)
        self.fault(
            "proposals left non-final",
            ids=[p["id"] for p in active],
            states={p["id"]: p["state"] for p in active},
            details=[api.get(f"/v1/proposals/{p['id']}").get("events") for p in active],
            logs={name: stack.log_tail(name, 1500) for name in stack.procs},
        )

    def _report(self, stack: Stack, api: ApiClient, agent_log: Path) -> dict[str, Any]:
        rows = all_proposals(api)
        details = {row["id"]: api.get(f"/v1/proposals/{row['id']}") for row in rows}
        proposals = [d for d in details.values() if d["kind"] == "proposal"]
        commit_runs = [d for d in details.values() if d["kind"] == "run"]
        outcomes, submitted = agent_outcomes(agent_log)
        self._check_agent(outcomes, details)

        states = Counter(str(p["state"]) for p in proposals)
        non_final = {p["id"]: p["state"] for p in details.values() if p["state"] not in TERMINAL_STATES}
        screening = sum(min(len(p["results"]), len(p["seeds"])) for p in proposals)
        candidate_confirm = sum(max(0, len(p["results"]) - len(p["seeds"])) for p in proposals)
        best_halves = sum(len(p["baseline_results"]) for p in proposals)
        commit_run_count = sum(len(p["results"]) for p in commit_runs)
        every_run = [
            r for p in details.values() for r in [*p["results"], *p["baseline_results"]]
        ]  # fmt: skip
        container_s = sum(run_seconds(r) for r in every_run)
        api_gpu_s = sum(float(row["gpu_seconds"]) for row in rows)

        lineage = api.get("/v1/lineage")
        best = api.get("/v1/best")
        calibration = api.get("/v1/calibration")
        status = api.get("/v1/status")
        merged = [p for p in proposals if p["state"] == "merged"]
        repo = stack.work / "repo"
        branch = "research"
        notes = [note_evidence(repo, branch, p, self.rule) for p in merged]
        for evidence in notes:
            if not evidence["ok"]:
                self.fault("merge without its decision in git", **evidence)
        branch_commits = len(git(repo, "rev-list", f"refs/heads/{branch}").split())
        if branch_commits != len(merged) + 1:
            self.fault("branch commits differ from merges", commits=branch_commits, merged=len(merged))
        short = cut_short(repo, details)
        if short:
            self.fault("runs cut short by the wall clock, scored", runs=short)
        for p in proposals:
            if p["state"] in ("infra_error", "voided"):
                self.fault(f"proposal {p['state']}", id=p["id"], title=p["title"], reason=p["reason"])
        if non_final:
            say(f"[{self.rule}] non-final: {non_final}")

        root = lineage[0]
        return {
            "rule": self.rule,
            "agent": {
                "outcomes": len(outcomes),
                "submitted_new": sum(1 for s in submitted if s.get("duplicate") is False),
                "submitted_duplicate": sum(1 for s in submitted if s.get("duplicate") is True),
                "refused": sum(1 for o in outcomes if o.get("state") == "refused"),
            },
            "proposals": len(proposals),
            "by_state": dict(sorted(states.items())),
            "non_final": non_final,
            "runs": {
                "screening": screening,
                "confirmation_candidate": candidate_confirm,
                "confirmation_best": best_halves,
                "confirmation": candidate_confirm + best_halves,
                "of_commits": commit_run_count,
                "total": len(every_run),
            },
            "runs_cut_short": len(short),
            "container_s": round(container_s, 1),
            "api_gpu_seconds": round(api_gpu_s, 1),
            "status_gpu_seconds_total": status.get("gpu_seconds_total"),
            "merges": len(merged),
            "merge_notes": notes,
            "merge_notes_ok": all(n["ok"] for n in notes),
            "branch_commits": branch_commits,
            "root_commit": root["commit"],
            "baseline_recorded_bpb": root.get("val_bpb"),
            "best_commit": best["commit"],
            "best_recorded_bpb": best.get("val_bpb"),
            "best_remeasured_runs_before": best.get("best_runs"),
            "calibration": [
                {k: row.get(k) for k in ("key", "sigma_bpb", "source", "runs", "dof", "commits")}
                for row in calibration
            ],
            "seeds_used": sorted({int(r["seed"]) for r in every_run}),
            "rows": [proposal_row(p) for p in sorted(details.values(), key=lambda d: d["created_at"])],
        }

    def _check_agent(self, outcomes: list[dict[str, Any]], details: dict[str, dict[str, Any]]) -> None:
        """Every proposal the agent was answered with is in the store, in the state it was told."""
        if len(outcomes) != self.args.proposals:
            self.fault("agent outcomes missing", expected=self.args.proposals, got=len(outcomes))
        for o in outcomes:
            pid = o.get("proposal_id")
            if pid is None:
                continue
            if pid not in details:
                self.fault("proposal lost", id=pid, outcome=o)
            elif o.get("state") != details[pid]["state"]:
                self.fault(
                    "agent saw another state", id=pid, agent=o.get("state"), store=details[pid]["state"]
                )
            if o.get("state") not in TERMINAL_STATES:
                self.fault("agent gave up on a proposal", id=pid, outcome=o)

    def _remeasure(self, stack: Stack, api: ApiClient, report: dict[str, Any]) -> dict[str, Any]:
        """The final best and the baseline, each on the same fresh seeds, through POST /v1/runs."""
        k = self.args.remeasure_seeds
        root, best = report["root_commit"], report["best_commit"]
        if k == 0 or best == root:
            return {
                "skipped": "no re-runs asked for" if k == 0 else "nothing merged: the best is the baseline"
            }
        seeds = [REMEASURE_FIRST_SEED + i for i in range(k)]
        if set(seeds) & set(report["seeds_used"]):
            raise RuntimeError(f"re-run seeds {seeds} were used by the campaign")
        t0 = time.monotonic()
        ids: dict[str, str] = {}
        done: dict[str, dict[str, Any]] = {}
        # One after the other: two runs at once on two cores would slow both (each trains on 2 threads).
        for name, commit in (("best", best), ("baseline", root)):
            ids[name] = request_runs(api, commit, seeds, f"Re-run of the {name} on fresh seeds")

            def finished(pid: str = ids[name]) -> dict[str, Any] | None:
                got: dict[str, Any] = api.get(f"/v1/proposals/{pid}")
                return got if got["state"] in TERMINAL_STATES else None

            done[name] = wait_until(
                f"the re-runs of the {name}", finished, k * self.args.wall_clock_s + 600, stack
            )
        short = cut_short(stack.work / "repo", {p["id"]: p for p in done.values()})
        if short:
            self.fault("runs cut short by the wall clock, scored", runs=short)
        scores: dict[str, dict[int, float]] = {}
        for name, proposal in done.items():
            if proposal["state"] != "merged":
                self.fault(
                    "re-run failed", id=proposal["id"], state=proposal["state"], reason=proposal["reason"]
                )
            scores[name] = {
                int(r["seed"]): r["val_bpb"] for r in proposal["results"] if r["val_bpb"] is not None
            }
        paired = [
            scores["baseline"][s] - scores["best"][s]
            for s in seeds
            if s in scores["best"] and s in scores["baseline"]
        ]
        gain, sd = mean_sd(paired)
        return {
            "seeds": seeds,
            "ids": ids,
            "best_bpb": [scores["best"].get(s) for s in seeds],
            "baseline_bpb": [scores["baseline"].get(s) for s in seeds],
            "best_mean_bpb": mean_sd(list(scores["best"].values()))[0],
            "baseline_mean_bpb": mean_sd(list(scores["baseline"].values()))[0],
            "gain_bpb": gain,
            "gain_se_bpb": sd / math.sqrt(len(paired)) if sd is not None else None,
            "container_s": round(sum(run_seconds(r) for p in done.values() for r in p["results"]), 1),
            "wall_s": round(time.monotonic() - t0, 1),
        }

    def _after_stop(self, stack: Stack, codes: dict[str, int | None]) -> None:
        """Containers the workers left behind are a fault (the sandbox removes its own in `finally`)."""
        from docker.client import DockerClient

        from services.worker.reaper import reap

        client = DockerClient.from_env()
        try:
            for owner in stack.owners:
                left = reap(client, labels={"autoresearch.owner": owner})
                if left:
                    self.fault("containers left behind", owner=owner, names=[r.name for r in left])
        finally:
            client.close()
        for name, code in codes.items():
            if code not in (0, -signal.SIGTERM) and name not in stack.deaths:
                say(f"[{self.rule}] {name} stopped with exit code {code}")

    def _service_lines(self, stack: Stack) -> dict[str, list[str]]:
        """Every warning or error line the services logged (JSON lines; tracebacks kept whole)."""
        kept: dict[str, list[str]] = {}
        for name in stack.procs:
            lines = []
            for line in (stack.logs / f"{name}.log").read_text(errors="replace").splitlines():
                try:
                    level = json.loads(line).get("level")
                except (json.JSONDecodeError, AttributeError):
                    level = None
                if level in LOG_LEVELS_KEPT or (level is None and line.strip()):
                    lines.append(line[:1500])
            kept[name] = lines
        return kept


def agent_outcomes(agent_log: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The agent's `outcome` and `submitted` log lines (services/agent/loop.py)."""
    outcomes, submitted = [], []
    for line in agent_log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(entry, dict):
            continue
        if entry.get("msg") == "outcome":
            outcomes.append(entry)
        elif entry.get("msg") == "submitted":
            submitted.append(entry)
    return outcomes, submitted


def proposal_row(p: dict[str, Any]) -> dict[str, Any]:
    decision = p.get("decision") or {}
    runs = [*p["results"], *p["baseline_results"]]
    return {
        "id": p["id"],
        "kind": p["kind"],
        "title": p["title"],
        "state": p["state"],
        "runs": len(runs),
        "steps": [r["steps"] for r in runs],
        "container_s": round(sum(run_seconds(r) for r in runs), 1),
        "screen_bpb": p["results"][0]["val_bpb"] if p["results"] else None,
        "delta_bpb": decision.get("delta_bpb"),
        "stopped": decision.get("stopped") or None,
        "stage": decision.get("stage"),
        "merged_commit": p.get("merged_commit"),
        "reason": str(p.get("reason", ""))[:200],
    }


# --------------------------------------------------------------------------------------------------
# Figures


def velocity(report: dict[str, Any]) -> dict[str, Any]:
    """Gain per run-hour, recorded and (where re-measured) true, in mbpb (milli-bits per byte)."""
    hours = report["container_s"] / 3600
    recorded = None
    if report["baseline_recorded_bpb"] is not None and report["best_recorded_bpb"] is not None:
        recorded = report["baseline_recorded_bpb"] - report["best_recorded_bpb"]
    remeasure = report["remeasure"]
    true_gain = remeasure.get("gain_bpb") if "skipped" not in remeasure else 0.0
    return {
        "run_hours": round(hours, 4),
        "recorded_gain_bpb": recorded,
        "true_gain_bpb": true_gain,
        "recorded_mbpb_per_run_hour": round(1000 * recorded / hours, 3) if recorded is not None else None,
        "true_mbpb_per_run_hour": round(1000 * true_gain / hours, 3) if true_gain is not None else None,
    }


def simulator_ratio(sigma: float | None, rule: str = "seq-bayes/v3") -> dict[str, Any]:
    """A sequential rule's gain per GPU-hour over paired-z/v1's in bench/campaign.py's grid (the file
    where it is the candidate): the median over every scenario, and over the scenarios at the grid's σ
    nearest the one measured here."""
    path = ROOT / "bench" / "results" / SIMULATION[rule]
    sim = json.loads(path.read_text())
    per = sim["ratios"]["per_scenario"]
    out: dict[str, Any] = {
        "source": str(path.relative_to(ROOT)),
        "candidate_rule": sim["candidate_rule"],
        "gain_vs_paired_z_median": statistics.median(v["gain_vs_paired_z"] for v in per.values()),
        "gain_vs_paired_z_min": min(v["gain_vs_paired_z"] for v in per.values()),
        "gain_vs_paired_z_max": max(v["gain_vs_paired_z"] for v in per.values()),
        "scenarios": len(per),
    }
    if sigma is not None:
        grid = sim["grid"]["sigma_bpb"]
        nearest = min(grid, key=lambda s: abs(math.log(s / sigma)))
        near = [v["gain_vs_paired_z"] for k, v in per.items() if k.startswith(f"sigma={nearest}/")]
        out.update(
            nearest_sigma_bpb=nearest,
            nearest_sigma_median=statistics.median(near),
            nearest_sigma_min=min(near),
            nearest_sigma_max=max(near),
        )
    return out


def summary_table(reports: list[dict[str, Any]]) -> str:
    lines = [
        "| rule | proposals by state | runs: screen · confirm · of commits | merges (notes ok) "
        "| baseline → best, recorded | re-measured gain (± se) | container-s · wall-s "
        "| mbpb per run-hour, recorded · true |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        v, m, runs = r["velocity"], r["remeasure"], r["runs"]
        states = ", ".join(f"{k} {n}" for k, n in r["by_state"].items())
        gain = (
            "—"
            if "skipped" in m
            else f"{1000 * m['gain_bpb']:.2f} ± {1000 * (m['gain_se_bpb'] or 0):.2f} mbpb"
        )
        lines.append(
            f"| {r['rule']} | {states} | {runs['screening']} · {runs['confirmation']} · {runs['of_commits']} "
            f"| {r['merges']} ({sum(n['ok'] for n in r['merge_notes'])}) "
            f"| {r['baseline_recorded_bpb']:.4f} → {r['best_recorded_bpb']:.4f} | {gain} "
            f"| {r['container_s']:.0f} · {r['wall_s']['campaign']:.0f} "
            f"| {v['recorded_mbpb_per_run_hour']} · {v['true_mbpb_per_run_hour']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", type=int, default=60, help="the search arm's proposals per rule")
    parser.add_argument(
        "--search-seed", type=int, default=1, help="AR_AGENT_SEARCH_SEED, the same for each rule"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES), choices=RULES)
    parser.add_argument(
        "--paired-z-from", type=Path,
        help="an earlier results file whose paired-z/v1 campaign the ratio uses, when --rules has none",
    )  # fmt: skip
    parser.add_argument(
        "--remeasure-seeds", type=int, default=4, help="fresh seeds for the best and the baseline"
    )
    parser.add_argument("--poll-s", type=float, default=1.0, help="AR_AGENT_POLL_S of the search arm")
    parser.add_argument(
        "--wall-clock-s",
        type=int,
        default=WALL_CLOCK_S,
        help="AR_RUN_WALL_CLOCK_S: long enough for every step",
    )
    parser.add_argument("--stall-s", type=float, default=600.0, help="no progress this long is a fault")
    parser.add_argument(
        "--name", default="stack-campaign", help="results file name (bench/results/NAME.json)"
    )
    args = parser.parse_args()
    log = io.StringIO()
    t0 = time.monotonic()
    reports: list[dict[str, Any]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp, redirect_stdout(Tee(log)):
        root = Path(tmp)
        root.chmod(0o755)
        say(f"preparing the sample corpus (vocabulary {VOCAB_SIZE}, test split)")
        data = prepare_data(root)
        for rule in args.rules:
            campaign = Campaign(rule, args, data, root)
            report = campaign.run()
            agent_log = root / rule.replace("/", "-") / "logs" / "agent.log"
            agent_text = agent_log.read_text(errors="replace") if agent_log.exists() else ""
            print(
                f"---- {rule}: autoresearch-search log\n{agent_text}---- end of the agent's log", flush=True
            )
            for name, lines in report["service_log_lines"].items():
                if lines:
                    print(f"---- {rule}: {name}, warning and error lines\n" + "\n".join(lines), flush=True)
            reports.append(report)
            if (
                "aborted" in report
                or report["non_final"]
                or any(f["kind"] in FAILING for f in campaign.faults)
            ):
                failed = True
            if "aborted" not in report:
                report["velocity"] = velocity(report)
                say(f"[{rule}] done: {json.dumps({k: report[k] for k in ('by_state', 'runs', 'merges')})}")
    done = [r for r in reports if "aborted" not in r]
    sigmas = [c["sigma_bpb"] for r in done for c in r["calibration"] if c["source"] == "calibrated"]
    figures: dict[str, Any] = {
        "device": "cpu (2 cores, shared with other work), tiny preset, Docker sandbox",
        "settings": {
            "proposals_per_rule": args.proposals,
            "search_seed": args.search_seed,
            "workers": args.workers,
            "remeasure_seeds": args.remeasure_seeds,
            "agent_poll_s": args.poll_s,
            "corpus": f"data/sample, vocabulary {VOCAB_SIZE}, test split",
            "run_wall_clock_s": args.wall_clock_s,
        },
        "wall_s": round(time.monotonic() - t0, 1),
        "rules": {r["rule"]: r for r in reports},
        "simulator": {
            rule: simulator_ratio(statistics.median(sigmas) if sigmas else None, rule)
            for rule in SIMULATION
            if rule in {r["rule"] for r in done}
        },
        "failed": failed,
    }
    by_rule = {r["rule"]: r for r in done}
    pz_velocity = by_rule["paired-z/v1"]["velocity"] if "paired-z/v1" in by_rule else None
    if pz_velocity is None and args.paired_z_from is not None:
        earlier = json.loads(args.paired_z_from.read_text())
        pz_velocity = earlier["rules"]["paired-z/v1"]["velocity"]
        figures["paired_z_from"] = str(args.paired_z_from)
    for rule in SIMULATION:
        if rule in by_rule and pz_velocity is not None:
            seq = by_rule[rule]["velocity"]
            figures[f"measured_ratio_{rule.split('/')[-1]}_over_paired_z"] = {
                key: (seq[key] / pz_velocity[key] if pz_velocity[key] else None)
                for key in ("recorded_mbpb_per_run_hour", "true_mbpb_per_run_hour")
                if seq[key] is not None and pz_velocity[key] is not None
            }
    for r in reports:
        r.pop("service_log_lines", None)  # in the raw log
    table = summary_table(done) if done else ""
    figures["table"] = table
    path = write_results(args.name, figures, log.getvalue())
    print(table)
    print(f"wall {figures['wall_s']:.0f} s, failed: {failed} -> {path}")
    return 1 if failed else 0


FAILING = {
    "process died",
    "stalled: nothing changed",
    "proposals left non-final",
    "proposal lost",
    "agent outcomes missing",
    "agent exited non-zero",
    "agent gave up on a proposal",
    "merge without its decision in git",
    "branch commits differ from merges",
    "re-run failed",
    "runs cut short by the wall clock, scored",
}


class Tee(io.TextIOBase):
    """Both the raw log and the terminal."""

    def __init__(self, log: io.StringIO) -> None:
        self.log = log
        self.terminal = sys.stdout

    def write(self, text: str) -> int:
        self.log.write(text)
        self.terminal.write(text)
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()


if __name__ == "__main__":
    raise SystemExit(main())
