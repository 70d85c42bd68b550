"""The research record over HTTP: lineage, results.tsv, calibration, fingerprints, per-fingerprint
leaderboards and GPU cost, read through the controller (TestClient) from what a real committer (real
git, real Redis, in-process RQ, the fake sandbox) recorded."""

import json
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from services.committer import rules
from services.controller.auth import Role, bootstrap_admin, create_token
from services.models import Proposal, new_id
from services.settings import Settings
from services.states import State
from tests.support.api import api_client, assert_problem
from tests.support.service import BASELINE, Service, running_service

ADMIN = "admin-token-for-research-tests-0123"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"


@pytest.fixture
def service(tmp_path: Path, redis_url: str, redis_client: "redis.Redis[bytes]") -> Iterator[Service]:
    settings = Settings(
        redis_url=redis_url,
        admin_token=SecretStr(ADMIN),
        runs_dir=tmp_path / "runs",
        repo_dir=tmp_path / "repo",
    )
    with running_service(settings, redis_client) as service:
        yield service


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with api_client(service.settings, service.store, None) as test_client:
        yield test_client


def get(client: TestClient, path: str, **params: str) -> Any:
    answer = client.get(path, headers=HEADERS, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture
def history(service: Service) -> dict[str, Proposal]:
    """One merge, one rejection, one crash, in that order."""
    better = service.submit(BASELINE.replace("1.5", "1.4"), title="Lower the score")
    service.drain()
    worse = service.submit(BASELINE.replace("1.5", "1.6"), title="Raise\tthe score")
    crash = service.submit(BASELINE + "FAKE_EXIT = 1\n", title="Crash it")
    service.drain()
    found = {
        name: service.store.get(p.id) for name, p in (("better", better), ("worse", worse), ("crash", crash))
    }
    assert [p.state for p in found.values()] == [State.MERGED, State.REJECTED, State.CRASHED]
    return found


# ---------------------------------------------------------------------------- lineage


def test_lineage_lists_the_branch_oldest_first_with_decision_numbers(
    service: Service, client: TestClient, history: dict[str, Proposal]
) -> None:
    entries = get(client, "/v1/lineage")
    shas = service.git("rev-list", "--reverse", "research").split()
    assert [e["commit"] for e in entries] == shas
    root, merge = entries
    assert root["parent"] is None and root["proposal_id"] is None and root["position"] == 0
    assert root["val_bpb"] == pytest.approx(
        service.store.calibration_runs(_fp(service))[shas[0]][0], abs=1e-3
    )
    better = history["better"]
    assert merge["parent"] == shas[0] and merge["position"] == 1
    assert merge["proposal_id"] == better.id and merge["title"] == "Lower the score"
    assert merge["agent"] == "test-agent"
    assert better.decision is not None
    assert merge["val_bpb"] == pytest.approx(better.decision.candidate_bpb)
    assert merge["delta_bpb"] == pytest.approx(-0.1, abs=1e-3)
    assert merge["decision"]["rule"] == "paired-z/v1" and len(merge["decision"]["seeds"]) == 3
    assert merge["merged_at"] >= better.created_at


def test_lineage_is_rebuilt_from_git_when_redis_is_lost(
    service: Service, client: TestClient, history: dict[str, Proposal]
) -> None:
    before = get(client, "/v1/lineage")
    service.conn.flushdb()
    service.committer.bootstrap(BASELINE)
    bootstrap_admin(service.store, service.settings.admin_token)  # the flush took the tokens too
    after = get(client, "/v1/lineage")
    same = (
        "commit",
        "parent",
        "position",
        "proposal_id",
        "title",
        "agent",
        "val_bpb",
        "delta_bpb",
        "decision",
    )
    assert [{k: e[k] for k in same} for e in after] == [{k: e[k] for k in same} for e in before]
    assert after[1]["peak_memory_bytes"] == 10**9
    commit_time = int(service.git("log", "-1", "--format=%ct", "research"))
    assert after[1]["merged_at"] == commit_time
    assert after[0]["val_bpb"] is not None and after[0]["peak_memory_bytes"] == 10**9  # from the root's note
    root_note = json.loads(service.repo.note(after[0]["commit"]) or "{}")
    assert root_note["val_bpb"] == after[0]["val_bpb"] and len(root_note["results"]) == 1
    tsv = client.get("/v1/results.tsv", headers=HEADERS).text.splitlines()
    assert tsv[1].split("\t")[3:] == ["keep", "baseline"]


# ---------------------------------------------------------------------------- results.tsv


def test_results_tsv_has_upstreams_columns_keep_discard_and_crash(
    service: Service, client: TestClient, history: dict[str, Proposal]
) -> None:
    answer = client.get("/v1/results.tsv", headers=HEADERS)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/tab-separated-values")
    lines = answer.text.splitlines()
    assert lines[0] == TSV_HEADER
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 5 for row in rows)
    root = service.git("rev-list", "--max-parents=0", "research").strip()
    worse = history["worse"]
    assert worse.tried_ref is not None and worse.tried_ref == service.repo.tried_refs()[worse.id]
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        (root[:7], "1.0", "keep", "baseline"),
        (service.repo.head()[:7], "1.0", "keep", "Lower the score"),
        (worse.tried_ref[:7], "1.0", "discard", "Raise the score"),
        ("", "0.0", "crash", "Crash it"),
    ]
    assert float(rows[1][1]) == pytest.approx(1.4, abs=1e-3) and float(rows[2][1]) == pytest.approx(
        1.6, abs=1e-3
    )
    assert rows[3][1] == "0.000000" and len(rows[1][1].split(".")[1]) == 6


# ---------------------------------------------------------------------------- calibration, fingerprints


def _fp(service: Service) -> str:
    best = service.store.get_best()
    assert best is not None and best.fingerprint_key is not None
    return best.fingerprint_key


def test_calibration_shows_sigma_source_runs_and_fingerprint_fields(
    service: Service, client: TestClient, history: dict[str, Proposal]
) -> None:
    key = _fp(service)
    runs = service.store.calibration_runs(key)
    expected = rules.calibrate(runs, rules.params_from(service.settings.acceptance))
    (row,) = get(client, "/v1/calibration")
    assert row["key"] == key and row["fingerprint"]["gpu"] == "cpu"
    assert row["fingerprint"]["environment_hash"] == "fake-env"
    assert row["sigma_bpb"] == pytest.approx(expected.sigma_bpb) and row["source"] == "calibrated"
    # the baseline, the 3 runs of it asked on its new fingerprint, and 3 paired runs of it
    assert row["runs"] == sum(len(r) for r in runs.values()) == 7 and row["commits"] == len(runs)
    assert row["dof"] == rules.degrees_of_freedom(runs) >= 3
    (fingerprint,) = get(client, "/v1/fingerprints")
    # scored there: the baseline, the runs asked on the new fingerprint, and the proposals
    assert fingerprint == {"key": key, "fingerprint": row["fingerprint"], "scored": 4, "best": True}


def test_calibration_uses_the_prior_until_runs_give_three_degrees_of_freedom(
    service: Service, client: TestClient
) -> None:
    (row,) = get(client, "/v1/calibration")
    assert row["source"] == "prior" and row["sigma_bpb"] == service.settings.acceptance.noise_sigma_prior_bpb
    assert row["runs"] == 1 and row["dof"] == 0


# ---------------------------------------------------------------------------- leaderboards


def _scored_elsewhere(service: Service, val_bpb: float, key: str) -> Proposal:
    """A proposal scored on another fingerprint (another GPU), recorded as the committer would."""
    best = service.store.get_best()
    assert best is not None
    proposal = Proposal(
        id=new_id("p"), title="on another GPU", agent="other", base_commit=best.commit, base_train_py="",
        train_py="x = 1\n", diff="", content_hash=new_id("h"), seeds=[1],
    )  # fmt: skip
    service.store.create(proposal, dedupe=False)
    service.store.record_score(proposal.id, val_bpb, key)
    return proposal


def test_leaderboard_never_mixes_fingerprints(
    service: Service, client: TestClient, history: dict[str, Proposal]
) -> None:
    other_key = "f" * 16
    elsewhere = _scored_elsewhere(service, 0.5, other_key)  # far better, but not comparable
    default = get(client, "/v1/leaderboard")
    # the top is the merged change or a run of its commit (the runs asked on the fingerprint after the
    # merge): which of the two scored lower depends on the confirmation's random seeds
    top = service.store.get(default[0]["id"])
    assert top.id == history["better"].id or top.base_commit == history["better"].merged_commit
    assert default[0]["val_bpb"] == pytest.approx(1.4, abs=2e-4)
    assert history["better"].id in {r["id"] for r in default}
    assert elsewhere.id not in {r["id"] for r in default}
    assert {r["fingerprint"] for r in default} == {_fp(service)}
    other = get(client, "/v1/leaderboard", fingerprint=other_key)
    assert [r["id"] for r in other] == [elsewhere.id] and other[0]["fingerprint"] == other_key
    keys = {f["key"]: f for f in get(client, "/v1/fingerprints")}
    assert keys[other_key] == {"key": other_key, "fingerprint": None, "scored": 1, "best": False}


def test_leaderboard_rejects_bad_and_unknown_fingerprints(client: TestClient) -> None:
    bad = client.get("/v1/leaderboard", headers=HEADERS, params={"fingerprint": "not-a-key"})
    assert_problem(bad, 422, "validation-error", "query.fingerprint")
    unknown = client.get("/v1/leaderboard", headers=HEADERS, params={"fingerprint": "0" * 16})
    assert_problem(unknown, 404, "not-found", "GET /v1/fingerprints")


# ---------------------------------------------------------------------------- cost


def test_gpu_seconds_per_proposal_and_per_merged_improvement(
    service: Service, client: TestClient, history: dict[str, Proposal]
) -> None:
    better = get(client, f"/v1/proposals/{history['better'].id}")
    assert (
        better["gpu_seconds"] == pytest.approx(history["better"].gpu_seconds()) and better["gpu_seconds"] > 0
    )
    assert better["tried_ref"] == service.repo.tried_refs()[history["better"].id]
    listed = get(client, "/v1/proposals")["items"]
    assert all("gpu_seconds" in item for item in listed)
    everything = [service.store.get(item["id"]) for item in listed]
    total = sum(p.gpu_seconds() for p in everything)
    status = get(client, "/v1/status")
    assert status["gpu_seconds_total"] == pytest.approx(total)
    assert status["merged_improvements"] == 1
    assert status["gpu_seconds_per_improvement"] == pytest.approx(total)


def test_cost_per_improvement_is_null_before_the_first_merge(client: TestClient) -> None:
    status = get(client, "/v1/status")
    assert status["merged_improvements"] == 0 and status["gpu_seconds_per_improvement"] is None
    assert status["gpu_seconds_total"] > 0  # the baseline run


def test_git_trailers_match_the_lineage(service: Service, history: dict[str, Proposal]) -> None:
    message = subprocess.run(
        ["git", "-C", str(service.repo.path), "log", "-1", "--format=%B", "research"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    entry = service.store.lineage_entry(service.repo.head())
    assert entry is not None and f"Proposal-Id: {entry.proposal_id}" in message


# ---------------------------------------------------------------------------- the repository bundle


def test_repo_bundle_clones_the_branch_alone_with_notes_agents_may_read(
    service: Service, client: TestClient, history: dict[str, Proposal], tmp_path: Path
) -> None:
    merged = history["better"].merged_commit
    assert merged is not None
    full = json.loads(service.repo.note(merged) or "{}")
    # admin-only figures in the committer's own note: the bundle must leave them out
    full["results"][0] |= {"scorer_timings": {"forward_s": 1.234567}, "logits_slots": "gpu"}
    full["decision"] |= {"test_gap_bpb": 0.0123456789, "test_candidate_runs": [1.3123456789]}
    service.repo.set_note(merged, json.dumps(full))
    service.committer.publish_bundle()
    token = create_token(service.store, "reader", Role.AGENT)
    answer = client.get("/v1/repo.bundle", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-git-bundle"
    assert answer.headers["x-research-head"] == service.repo.head()
    bundle = tmp_path / "research.bundle"
    bundle.write_bytes(answer.content)

    heads = {line.split()[1] for line in _git(tmp_path, "bundle", "list-heads", str(bundle)).splitlines()}
    assert heads == {"HEAD", "refs/heads/research", "refs/notes/commits"}  # no tried or merged refs
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "--quiet", str(bundle), str(clone))
    _git(clone, "fetch", "--quiet", str(bundle), "refs/notes/commits:refs/notes/commits")
    assert _git(clone, "rev-parse", "--abbrev-ref", "HEAD").strip() == "research"
    assert _git(clone, "log", "--format=%H") == service.git("log", "--format=%H", "research")
    refs = set(_git(clone, "for-each-ref", "--format=%(refname)").split())
    assert refs == {
        "refs/heads/research",
        "refs/notes/commits",
        "refs/remotes/origin/HEAD",
        "refs/remotes/origin/research",
    }
    tried = history["worse"].tried_ref
    assert tried is not None and _git(clone, "cat-file", "-t", tried, check=False) == ""
    noted = _git(clone, "notes", "list").split()[1::2]
    assert sorted(noted) == sorted(service.git("rev-list", "research").split())  # tried notes stay out

    public = json.loads(_git(clone, "notes", "show", merged))
    assert public["proposal_id"] == history["better"].id and public["decision"]["params"]["confirm_runs"] == 3
    assert public["decision"]["candidate_bpb"] == round(full["decision"]["candidate_bpb"], 4)
    assert public["results"][0]["val_bpb"] == round(full["results"][0]["val_bpb"], 4)
    assert public["decision"]["candidate_bpb"] != full["decision"]["candidate_bpb"]  # it had more digits
    everything = _git(clone, "log", "--notes", "--format=%H%n%B%n%N")
    for secret in ("scorer_timings", "logits_slots", "test_", "1.234567", "0.0123456789", "1.3123456789"):
        assert secret not in everything, secret
    assert repr(full["decision"]["candidate_bpb"]) not in everything
    root = json.loads(_git(clone, "notes", "show", f"{merged}^"))
    assert root["results"] and root["val_bpb"] == round(root["val_bpb"], 4)


def test_repo_bundle_before_the_committer_wrote_one_is_503(service: Service, client: TestClient) -> None:
    service.conn.delete("ar:repo-bundle")
    assert_problem(
        client.get("/v1/repo.bundle", headers=HEADERS), 503, "not-ready", "no repository bundle yet"
    )
    assert client.get("/v1/repo.bundle").status_code == 401


def _git(cwd: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=check)
    return done.stdout
