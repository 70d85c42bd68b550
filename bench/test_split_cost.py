"""What scoring the held-out test split adds to an evaluation on the CPU (docs/evaluation.md, "The
held-out test split"): the trusted scorer with its two model servers (the real evaluate.py --channel
and model_server.py as subprocesses, no Docker), the tiny preset's checkpoint, the same validation
documents with and without --test-dir, alternately, `--repeats` times each, one torch thread per
process.

    .venv/bin/python bench/test_split_cost.py --corpus <gutenberg folder> [--docs 200] [--repeats 3]

The corpus's val.jsonl.xz and heldout/test.jsonl.xz are scored (their first `--docs` documents each,
--max-docs) with the tokenizer of the synthetic corpus the tiny checkpoint is trained on here (any
text tokenizes; the figures are of the work, not of the score). Results: bench/results/test-split-cost.json
and its raw log.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import write_results  # noqa: E402
from tests.support.trainer import TRAINER, run_prepare, run_train, write_corpus  # noqa: E402

# Wall-clock seconds from result.json, and cpu_s: the CPU time of the scorer and both model servers
# (user + system). Each process runs one torch thread (OMP_NUM_THREADS=1): CPU time is then the work
# done, which other load on a shared machine disturbs far less than the wall clock (several threads
# spin while they wait for each other, and a busy machine makes them wait longer).
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FIGURES = ("eval_s", "data_s", "hash_s", "passes_s", "scored_pass_s", "probe_pass_s", "cpu_s")


def model_server(channel: Path, name: str, checkpoint: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable, str(TRAINER / "model_server.py"), "--socket", str(channel / name / "model.sock"),
        "--train-py", str(TRAINER / "train.py"), "--checkpoint", str(checkpoint), "--device", "cpu",
        "--connect-timeout", "300",
    ]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=SINGLE_THREAD
    )


def evaluate_once(
    work: Path, data: Path, checkpoint: Path, val: Path, test: Path | None, docs: int, log: list[str]
) -> dict[str, float]:
    channel = work / "channel"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    servers = [model_server(channel, name, checkpoint) for name in ("a", "b")]
    out = work / "result.json"
    command = [
        sys.executable, str(TRAINER / "evaluate.py"), "--channel", str(channel),
        "--train-py", str(TRAINER / "train.py"), "--checkpoint", str(checkpoint), "--data-dir", str(data),
        "--val-dir", str(val), "--out", str(out), "--device", "cpu", "--max-docs", str(docs),
        "--connect-timeout", "300", "--reply-timeout", "300", *(["--test-dir", str(test)] if test else []),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=SINGLE_THREAD)
    finally:
        for server in servers:
            log.append(server.communicate(timeout=60)[0])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # all three processes ended and were waited for
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    log += [" ".join(command), done.stdout, done.stderr]
    if done.returncode != 0:
        raise SystemExit(f"evaluate.py failed: {done.stderr[-2000:]}")
    result = json.loads(out.read_text())
    figures = {"eval_s": result["eval_s"], **{k: result["timings"].get(k, 0.0) for k in FIGURES[1:-1]}}
    figures["cpu_s"] = round(cpu_s, 3)
    figures |= {"val_rows": result["num_rows"], "test_rows": result.get("test_rows", 0)}
    return figures


def redact(text: str, places: dict[str, str]) -> str:
    """The machine's paths replaced by names, longest first (results carry no machine paths)."""
    for path in sorted(places, key=len, reverse=True):
        text = text.replace(path, places[path])
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200, help="documents of each split (--max-docs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--corpus", type=Path, required=True, help="folder with val.jsonl.xz and heldout/test.jsonl.xz"
    )
    args = parser.parse_args()
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="test-split-cost-") as tmp:
        work = Path(tmp)
        data, _ = run_prepare(write_corpus(work / "source"), work / "prepared")
        checkpoint = work / "checkpoint"
        trained = run_train(TRAINER / "train.py", data, checkpoint, timeout=1800)
        if trained.returncode != 0:
            raise SystemExit(f"train.py failed: {trained.stderr[-2000:]}")
        val = work / "val"
        val.mkdir()
        (val / "val.jsonl.xz").symlink_to(args.corpus / "val.jsonl.xz")
        test = args.corpus / "heldout"
        runs: dict[str, list[dict]] = {"val_only": [], "val_and_test": []}
        for _ in range(args.repeats):
            runs["val_only"].append(evaluate_once(work, data, checkpoint, val, None, args.docs, log))
            runs["val_and_test"].append(evaluate_once(work, data, checkpoint, val, test, args.docs, log))
    medians = {
        name: {k: statistics.median(r[k] for r in results) for k in results[0]}
        for name, results in runs.items()
    }
    added = {k: medians["val_and_test"][k] - medians["val_only"][k] for k in FIGURES}
    rows = medians["val_only"]["val_rows"]
    figures = {
        "docs_per_split": args.docs,
        "runs": runs,
        "medians": medians,
        "added_s": added,
        "added_share_of_eval": added["eval_s"] / medians["val_only"]["eval_s"],
        "added_share_of_cpu": added["cpu_s"] / medians["val_only"]["cpu_s"],
        "test_rows_per_val_row": medians["val_and_test"]["test_rows"] / rows if rows else None,
    }
    places = {
        str(work): "<work>",
        str(args.corpus): "<corpus>",
        str(ROOT): "<repo>",
        sys.executable: "python",
    }
    path = write_results("test-split-cost", figures, redact("\n".join(log), places))
    path.write_text(redact(path.read_text(), places))  # the command line names the corpus folder
    print(
        json.dumps({"medians": medians, "added_s": added, "share": figures["added_share_of_eval"]}, indent=1)
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
