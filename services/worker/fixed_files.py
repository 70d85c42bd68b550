"""The expected hashes of the evaluation's fixed files, pinned once in Redis for all workers
(docs/evaluation.md, "Fixed files").

The fixed files are what the score depends on besides the candidate: `prepare.py`, `protocol.py`,
`channel.py`, `evaluate.py` and `model_server.py` in the trainer image (`FIXED_FILES` in
trainer/evaluate.py), the tokenizer and its byte table, the
validation files and their manifest, and the held-out test split's files and manifest (`test/...`)
where the worker has one (a run that does not score the test split is compared without those). Every
scored run's result.json lists their hashes as the scorer saw them; a run whose hashes differ from
the expected ones is voided, naming the files.

Where the expected values come from. A candidate controls its `train.py` and whatever its processes
can write inside their own containers (the training container's /out and /cache, each container's
/tmp); it cannot write the trainer image (read-only root, root-owned files) or the data (read-only
mounts). Still, the expected values never come from a run: each worker, before its first run, asks
the sandbox for the hashes as the trusted scorer computes them in a container with the data and no
candidate (`Sandbox.fixed_files`, `evaluate.py --hash-only`). The first worker to do so for a scope records
them in Redis (`SET NX`), and from then on every worker on every host compares with that record,
whatever its own copy says: a host that prepared other data, or runs an image with another
evaluate.py, has its runs voided instead of scoring on its own terms.

Scope: the evaluator version and the trainer image's environment hash (its software, the same on
every host for one build). Runs are compared within one fingerprint, and a fingerprint fixes both,
so every fingerprint of a scope holds the same fixed files.

Changing the data or the image on purpose (same scope): stop the workers, delete the key (its name is
in the voided runs' reason and the worker's start-up log), start them; the first one pins anew.

Redis: `ar:fixed-files:<scope>` → JSON {"evaluator_version", "hashes", "pinned_by", "pinned_at"}.
"""

import datetime
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from services.store import keys
from services.worker.sandbox import FixedFiles


@dataclass(frozen=True)
class Pin:
    """The pinned expected hashes of one scope, and who pinned them when."""

    key: str
    evaluator_version: str
    hashes: Mapping[str, str] = field(default_factory=dict)
    pinned_by: str = ""
    pinned_at: str = ""


def scope(environment_hash: str, evaluator_version: str) -> str:
    return hashlib.sha256(f"{evaluator_version}\n{environment_hash}".encode()).hexdigest()[:16]


def pin(conn: "redis.Redis[bytes]", local: FixedFiles, environment_hash: str, by: str) -> Pin:
    """The pin of this worker's scope: `local` if no worker pinned that scope before, else the
    existing record (never overwritten)."""
    key = keys.FIXED_FILES.of(scope(environment_hash, local.evaluator_version))
    record: dict[str, Any] = {
        "evaluator_version": local.evaluator_version,
        "hashes": dict(local.hashes),
        "pinned_by": by,
        "pinned_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    conn.set(key, json.dumps(record, sort_keys=True), nx=True)
    raw = conn.get(key)
    stored: dict[str, Any] = json.loads(raw) if raw is not None else record  # deleted in between: ours holds
    return Pin(
        key=key,
        evaluator_version=str(stored["evaluator_version"]),
        hashes={str(k): str(v) for k, v in dict(stored["hashes"]).items()},
        pinned_by=str(stored.get("pinned_by", "")),
        pinned_at=str(stored.get("pinned_at", "")),
    )


TEST_PREFIX = "test/"  # the held-out test split's files: hashed only by runs that score it


def expected(pinned: Pin, score_test: bool) -> Mapping[str, str]:
    """What a run's `fixed_hashes` must be: the pin, without the test split's files unless the run
    scored it (the probe hashes them whenever the worker has a test split)."""
    if score_test:
        return pinned.hashes
    return {name: digest for name, digest in pinned.hashes.items() if not name.startswith(TEST_PREFIX)}


def differing(expected: Mapping[str, str], actual: object) -> list[str]:
    """Names of the fixed files whose hashes differ, are missing or are extra in `actual` (a run's
    `fixed_hashes`, as read from its result.json: anything that is not a mapping differs in all)."""
    hashes = {str(k): str(v) for k, v in actual.items()} if isinstance(actual, Mapping) else {}
    return sorted(name for name in expected.keys() | hashes.keys() if expected.get(name) != hashes.get(name))
