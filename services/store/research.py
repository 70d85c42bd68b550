"""The research record the committer writes and the controller reads: the branch's commits and
their train.py, the best, the lineage, the repository bundle, fingerprints and noise calibration.
"""

import json
from collections.abc import Mapping
from typing import cast

import redis

from services.models import Best, Fingerprint, LineageEntry
from services.store.base import (
    COMMIT_FILES_CACHED,
    StoreBase,
    optimistic,
    translate_errors,
)


class ResearchStore(StoreBase):
    @translate_errors
    def add_commit(self, commit: str, train_py: str) -> None:
        self.r.hset("ar:commits", commit, train_py)
        self._commit_files.pop(commit, None)

    @translate_errors
    def commit_train_py(self, commit: str) -> str | None:
        """The commit's train.py (kept in this process once read: a commit's file never changes)."""
        cached = self._commit_files.get(commit)
        if cached is not None:
            return cached
        raw = self.r.hget("ar:commits", commit)
        if raw is None:
            return None
        while len(self._commit_files) >= COMMIT_FILES_CACHED:
            del self._commit_files[next(iter(self._commit_files))]
        self._commit_files[commit] = raw.decode()
        return self._commit_files[commit]

    @translate_errors
    def resolve_commit(self, prefix: str) -> str | None:
        """Full id of the commit starting with `prefix` (≥ 7 hex digits), if exactly one does."""
        if self.r.hexists("ar:commits", prefix):
            return prefix
        matches = [c.decode() for c in self.r.hkeys("ar:commits") if c.decode().startswith(prefix)]
        return matches[0] if len(matches) == 1 else None

    @translate_errors
    def get_best(self) -> Best | None:
        raw = self.r.get("ar:best")
        return None if raw is None else Best.model_validate_json(raw)

    @translate_errors
    def set_best(self, best: Best) -> None:
        self.r.set("ar:best", best.model_dump_json())

    @translate_errors
    def add_lineage(self, entry: LineageEntry) -> None:
        """Record (or replace) a branch commit's lineage entry; idempotent, so a backfill or a retried
        merge writes the same entry again."""
        self.r.hset("ar:lineage", entry.commit, entry.model_dump_json())

    @translate_errors
    def lineage_entry(self, commit: str) -> LineageEntry | None:
        raw = self.r.hget("ar:lineage", commit)
        return None if raw is None else LineageEntry.model_validate_json(raw)

    @translate_errors
    def lineage(self) -> list[LineageEntry]:
        """Every recorded commit of the research branch, oldest first."""
        entries = [LineageEntry.model_validate_json(raw) for raw in self.r.hvals("ar:lineage")]
        return sorted(entries, key=lambda e: e.position)

    @translate_errors
    def set_repo_bundle(self, head: str, bundle: bytes) -> None:
        """The committer's latest bundle of the research branch (its head, and the bundle's bytes)."""
        self.r.hset("ar:repo-bundle", mapping={"head": head, "bundle": bundle})

    @translate_errors
    def repo_bundle(self) -> tuple[str, bytes] | None:
        """(head, bundle bytes) of the latest bundle, or None before the committer wrote one."""
        head, bundle = self.r.hmget("ar:repo-bundle", ["head", "bundle"])
        return None if head is None or bundle is None else (head.decode(), bundle)

    # --- fingerprints: what each key stands for

    @translate_errors
    def add_fingerprint(self, fingerprint: Fingerprint) -> str:
        """Remember the fields behind a fingerprint key; returns the key."""
        key = fingerprint.key()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset("ar:fingerprint-fields", key, fingerprint.model_dump_json())
        pipe.sadd("ar:fingerprints", key)
        pipe.execute()
        return key

    @translate_errors
    def fingerprint_fields(self) -> dict[str, Fingerprint]:
        raw = self.r.hgetall("ar:fingerprint-fields")
        return {k.decode(): Fingerprint.model_validate_json(v) for k, v in raw.items()}

    @translate_errors
    def leaderboard_size(self, fingerprint_key: str | None = None) -> int:
        return int(self.r.zcard("ar:scores" if fingerprint_key is None else f"ar:scores:{fingerprint_key}"))

    # --- noise calibration: every scored run of a commit on the branch, per fingerprint

    @translate_errors
    def add_calibration_runs(self, fingerprint_key: str, commit: str, scores: Mapping[str, float]) -> None:
        """Record the val_bpb of runs of a branch commit (run id → score). A run already recorded is
        skipped, so a retried or duplicated decision job counts each run once."""
        self._append_runs(f"ar:calibration:{fingerprint_key}", fingerprint_key, commit, scores)

    @translate_errors
    def calibration_runs(self, fingerprint_key: str) -> dict[str, list[float]]:
        return self._runs_by_commit(f"ar:calibration:{fingerprint_key}")

    @translate_errors
    def add_gap_calibration_runs(self, fingerprint_key: str, commit: str, gaps: Mapping[str, float]) -> None:
        """Record test_bpb − val_bpb of runs of a branch commit (run id → gap; the tripwire's noise
        calibration), each run once like `add_calibration_runs`."""
        if gaps:
            self._append_runs(f"ar:calibration-gap:{fingerprint_key}", fingerprint_key, commit, gaps)

    @translate_errors
    def gap_calibration_runs(self, fingerprint_key: str) -> dict[str, list[float]]:
        return self._runs_by_commit(f"ar:calibration-gap:{fingerprint_key}")

    @translate_errors
    def add_pair_calibration_runs(self, fingerprint_key: str, group: str, diffs: Mapping[str, float]) -> None:
        """Record the paired differences (candidate − best on one seed) of a confirmation (`group`: the
        proposal against one best; run id → difference), each run once like `add_calibration_runs`:
        what seq-bayes/v4 estimates the same-seed correlation from."""
        if diffs:
            self._append_runs(f"ar:calibration-pair:{fingerprint_key}", fingerprint_key, group, diffs)

    @translate_errors
    def pair_calibration_runs(self, fingerprint_key: str) -> dict[str, list[float]]:
        return self._runs_by_commit(f"ar:calibration-pair:{fingerprint_key}")

    def _append_runs(self, key: str, fingerprint_key: str, commit: str, scores: Mapping[str, float]) -> None:
        """Append the scores of runs not yet counted under `key` (their ids kept in `key:run-ids`), in
        one transaction."""
        counted = f"{key}:run-ids"
        run_ids = list(scores)
        if not run_ids:
            return

        def attempt(pipe: "redis.client.Pipeline[bytes]") -> None:
            seen = cast("list[int]", pipe.smismember(counted, run_ids))  # type: ignore[no-untyped-call]
            fresh = [run_id for run_id, known in zip(run_ids, seen, strict=True) if not known]
            if not fresh:
                pipe.unwatch()
                return
            raw = cast("bytes | None", pipe.hget(key, commit))
            runs = [*(json.loads(raw) if raw else []), *(scores[run_id] for run_id in fresh)]
            pipe.multi()
            pipe.hset(key, commit, json.dumps(runs))
            pipe.sadd(counted, *fresh)
            pipe.sadd("ar:fingerprints", fingerprint_key)
            pipe.execute()
            return

        return optimistic(self.r, [key, counted], attempt)

    def _runs_by_commit(self, key: str) -> dict[str, list[float]]:
        raw = self.r.hgetall(key)
        return {k.decode(): [float(x) for x in json.loads(v)] for k, v in raw.items()}
