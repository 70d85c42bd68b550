"""GPU trainer benchmark: prepare the Gutenberg corpus, train under the 300 s all-in budget,
score with the evaluation protocol, write figures and raw logs.

Written for a GPU host without network (64 MiB sent along per call, /root kept while the host is held),
so the corpus arrives in two parts:

  call 1:  python bench/trainer_gpu.py --stage .gpudata/b --stage-only      (train-04..07)
  call 2:  python bench/trainer_gpu.py --stage .gpudata/a --shards 8 --variant main:300 --results $OUT
           (train-00..03, val.jsonl.xz, tokenizer.json; within 30 s of call 1, while /root is kept)

`--stage DIR` copies DIR's *.jsonl.xz (and tokenizer.json, made on a CPU machine by prepare.py, since
rustbpe is not installed there) into the work folder; prepare.py then tokenizes the first `--shards`
training shards with that tokenizer (idempotent: a second call with the same shards does nothing).
Each `--variant LABEL:BUDGET_S[:NAME=VALUE,...]` runs a copy of trainer/train.py with those UPPER_CASE
constants replaced (as a proposal would patch it), as a subprocess with the trainer contract's
environment, then evaluate.py on the full validation set. A variant's compile cache is its own
(cold start, as a proposal's first run) unless `--shared-cache` is given.

Writes RESULTS/NAME.json for the first variant (the headline), RESULTS/NAME-LABEL.json for the
others (or all variants in RESULTS/NAME-variants.json with --label-all, for tuning), and
RESULTS/logs/NAME-LABEL.log; NAME is --name (default trainer-h100). With `--seeds 0,1,2` every
variant first runs with the first seed, then the best of them (lowest val_bpb) with the other seeds:
RESULTS/NAME.json then holds that variant's runs and their summary (val_bpb_seeds, val_bpb_mean,
val_bpb_std, startup_s_max, mfu_percent as the mean over seeds), RESULTS/NAME-screen.json every
variant's first-seed result, and the logs are RESULTS/logs/NAME-LABEL-seedS.log. MFU is counted
as for the upstream anchor (bench/README.md): FLOPs per token = 6 x (parameters except the token,
value and bigram embeddings and scalar gains) + sum over layers of 12 x d_model x min(window, T),
against a 989.5 TFLOP/s dense bf16 peak (train.py reports it; this script copies its inputs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINER = REPO / "trainer"
PEAK_FLOPS = 989.5e12


def stage(sources: list[Path], work: Path) -> None:
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    for folder in sources:
        for path in sorted(folder.iterdir()):
            if path.name.endswith(".jsonl.xz") or path.name == "tokenizer.json":
                target = (work / path.name) if path.name == "tokenizer.json" else (src / path.name)
                if not target.exists() or target.stat().st_size != path.stat().st_size:
                    shutil.copy(path, target)
    print(f"staged: {sorted(p.name for p in src.iterdir())}", flush=True)


def prepare(work: Path, shards: int) -> tuple[Path, Path, float]:
    train_dir, val_dir = work / f"train{shards}", work / "val"
    started = time.time()
    subprocess.run(
        [sys.executable, str(TRAINER / "prepare.py"), "--source", str(work / "src"), "--train-dir", str(train_dir),
         "--val-dir", str(val_dir), "--max-train-shards", str(shards), "--tokenizer", str(work / "tokenizer.json")],
        check=True,
    )  # fmt: skip
    return train_dir, val_dir, time.time() - started


def patched_train_py(overrides: dict[str, str], dest: Path) -> Path:
    text = (TRAINER / "train.py").read_text()
    for name, value in overrides.items():
        text, count = re.subn(rf"^{name} = .*?(  #.*)?$", rf"{name} = {value}\1", text, count=1, flags=re.M)
        if count != 1:
            raise SystemExit(f"no constant {name} in train.py")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    return dest


def run_variant(label: str, budget: float, overrides: dict[str, str], train_dir: Path, val_dir: Path,
                work: Path, seed: int, shared_cache: bool, run_name: str | None = None) -> dict:  # fmt: skip
    run_name = run_name or label
    run_dir = work / "runs" / run_name
    shutil.rmtree(run_dir, ignore_errors=True)
    train_py = patched_train_py(overrides, run_dir / "train.py")
    cache = work / "cache" / ("shared" if shared_cache else run_name)
    if not shared_cache:
        shutil.rmtree(cache, ignore_errors=True)
    env = {
        **os.environ,
        "AR_WALL_CLOCK_S": str(budget),
        "AR_SEED": str(seed),
        "AR_DATA_DIR": str(train_dir),
        "AR_OUT_DIR": str(run_dir / "out"),
        "AR_DEVICE": "cuda",
        "AR_PRESET": "full",
        "TORCHINDUCTOR_CACHE_DIR": str(cache),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "PYTHONUNBUFFERED": "1",
    }
    started = time.time()
    env["AR_DEADLINE_UNIX"] = str(started + budget)
    with open(run_dir / "train.log", "w") as log:
        train = subprocess.run([sys.executable, str(train_py)], env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - started
    result: dict = {"label": label, "budget_s": budget, "overrides": overrides, "seed": seed,
                    "train_exit_code": train.returncode, "wall_s": round(wall, 2),
                    "within_deadline": wall <= budget}  # fmt: skip
    if train.returncode == 0:
        eval_started = time.time()
        with open(run_dir / "eval.log", "w") as log:
            scored = subprocess.run(
                [sys.executable, str(TRAINER / "evaluate.py"), "--train-py", str(train_py), "--checkpoint",
                 str(run_dir / "out"), "--data-dir", str(train_dir), "--val-dir", str(val_dir), "--out",
                 str(run_dir / "result.json"), "--device", "cuda"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        result["eval_exit_code"] = scored.returncode
        result["eval_wall_s"] = round(time.time() - eval_started, 2)
        run = json.loads((run_dir / "out" / "run.json").read_text())
        if scored.returncode == 0:
            scores = json.loads((run_dir / "result.json").read_text())
            scores["eval_seed"], scores["eval_device"] = scores.pop("seed"), scores.pop("device")
            result.update(scores)  # the training seed stays under "seed"
        result.update(summarize(run))
    print(f"variant {run_name}: {json.dumps({k: result.get(k) for k in HEADLINE})}", flush=True)
    return result


HEADLINE = ("val_bpb", "mfu_percent", "tokens_per_s", "startup_s", "training_s", "wall_s", "num_steps",
            "num_params", "peak_memory_bytes", "train_exit_code", "eval_s")  # fmt: skip


def summarize(run: dict) -> dict:
    config = run["config"]
    seq_len = run["hyperparameters"]["seq_len"]
    return {
        "tokens_per_s": run["steady_tokens_per_s"],
        "mfu_percent": run["mfu_percent"],
        "startup_s": run["startup_s"],
        "training_s": run["training_s"],
        "num_params": run["num_params"],
        "num_steps": run["steps"],
        "tokens": run["tokens"],
        "epochs": run["epochs"],
        "peak_memory_bytes": run["peak_memory_bytes"],
        "final_train_loss": run["final_loss"],
        "gpu": run["device"],
        "torch": run["torch"],
        "config": config,
        "hyperparameters": run["hyperparameters"],
        "mfu_formula": {
            "flops_per_token": run["flops_per_token"],
            "params_counted": run["mfu_params"],
            "attention_term": config["depth"] * 12 * config["model_dim"] * seq_len,
            "depth": config["depth"],
            "d_model": config["model_dim"],
            "window": seq_len,
            "seq_len": seq_len,
            "peak_flops": PEAK_FLOPS,
            "formula": "6*params_counted + depth*12*d_model*min(window,T); mfu = tokens_per_s*flops/peak",
        },
    }


def summarize_seeds(runs: list[dict]) -> dict:
    """One variant run with several seeds: the figures that are compared, over the scored runs."""
    scored = [r for r in runs if r.get("val_bpb") is not None]
    bpb = [r["val_bpb"] for r in scored]
    summary = {
        "label": runs[0]["label"],
        "overrides": runs[0]["overrides"],
        "seeds": [r["seed"] for r in runs],
        "scored_runs": len(scored),
        "val_bpb_seeds": bpb,
        "val_bpb_mean": statistics.fmean(bpb) if bpb else None,
        "val_bpb_std": statistics.stdev(bpb) if len(bpb) > 1 else None,
        "startup_s_seeds": [r.get("startup_s") for r in runs],
        "startup_s_max": max((r["startup_s"] for r in scored), default=None),
        "mfu_percent_seeds": [r.get("mfu_percent") for r in runs],
        "mfu_percent": statistics.fmean(r["mfu_percent"] for r in scored) if scored else None,
        "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in scored) if scored else None,
        "num_steps_seeds": [r.get("num_steps") for r in runs],
        "wall_s_max": max(r["wall_s"] for r in runs),
        "all_within_deadline": all(r["within_deadline"] for r in runs),
    }
    for key in ("gpu", "gpu_smi", "device", "torch", "config", "hyperparameters", "mfu_formula", "num_params",
                "train_shards", "prepare_s", "budget_s"):  # fmt: skip
        summary[key] = next((r[key] for r in scored if key in r), runs[0].get(key))
    return summary


def parse_variant(text: str) -> tuple[str, float, dict[str, str]]:
    label, budget, *rest = text.split(":", 2)
    overrides = dict(item.split("=", 1) for item in rest[0].split(",")) if rest and rest[0] else {}
    return label, float(budget), overrides


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/root/arbench"), help="kept between calls")
    parser.add_argument("--stage", type=Path, action="append", default=[], help="folder of carried data")
    parser.add_argument("--stage-only", action="store_true", help="stage the carried data and stop")
    parser.add_argument("--shards", type=int, default=8, help="training shards to tokenize and use")
    parser.add_argument("--variant", action="append", default=[], help="LABEL:BUDGET_S[:NAME=VALUE,...]")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--shared-cache", action="store_true", help="variants share one compile cache")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--label-all", action="store_true", help="name every results file by its label")
    parser.add_argument("--device", default="nvidia-h100-x1", help="the device kind, for the record")
    parser.add_argument("--name", default="trainer-h100", help="results file name (without .json)")
    parser.add_argument(
        "--seeds", help="comma-separated seeds: all variants with the first, the best with all"
    )
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    stage(args.stage, args.work)
    if args.stage_only:
        return 0
    train_dir, val_dir, prepare_s = prepare(args.work, args.shards)
    (args.results / "logs").mkdir(parents=True, exist_ok=True)
    gpu = gpu_name()
    variants = [parse_variant(text) for text in args.variant]

    def run(label: str, budget: float, overrides: dict[str, str], seed: int, run_name: str) -> dict:
        result = run_variant(
            label, budget, overrides, train_dir, val_dir, args.work, seed, args.shared_cache, run_name
        )
        result.update({
            "gpu_smi": gpu,
            "device": args.device,
            "train_shards": args.shards,
            "prepare_s": round(prepare_s, 1),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python", "bench/trainer_gpu.py", *sys.argv[1:]]),
        })  # fmt: skip
        run_dir = args.work / "runs" / run_name
        with open(args.results / "logs" / f"{args.name}-{run_name}.log", "w") as log:
            for part in ("train.log", "eval.log"):
                if (run_dir / part).exists():
                    log.write(f"==> {part} <==\n{(run_dir / part).read_text()}\n")
        return result

    if args.seeds:
        run_seeds(args, variants, run)
        return 0
    results = []
    for index, (label, budget, overrides) in enumerate(variants):
        result = run(label, budget, overrides, args.seed, label)
        results.append(result)
        if args.label_all:  # tuning: one file for all variants (the device returns few files)
            (args.results / f"{args.name}-variants.json").write_text(json.dumps(results, indent=1) + "\n")
        else:
            name = args.name if index == 0 else f"{args.name}-{label}"
            (args.results / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


def run_seeds(args: argparse.Namespace, variants: list, run) -> None:
    """Every variant with the first seed, then the best (lowest val_bpb) with the others."""
    seeds = [int(seed) for seed in args.seeds.split(",")]
    first = [
        run(label, budget, overrides, seeds[0], f"{label}-seed{seeds[0]}")
        for label, budget, overrides in variants
    ]
    if len(variants) > 1:
        (args.results / f"{args.name}-screen.json").write_text(json.dumps(first, indent=1) + "\n")
    scored = [(r["val_bpb"], index) for index, r in enumerate(first) if r.get("val_bpb") is not None]
    if not scored:
        raise SystemExit("no variant was scored; see the logs")
    best = min(scored)[1]
    label, budget, overrides = variants[best]
    runs = [first[best]]
    for seed in seeds[1:]:
        runs.append(run(label, budget, overrides, seed, f"{label}-seed{seed}"))
        summary = {**summarize_seeds(runs), "runs": runs}
        (args.results / f"{args.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    summary = {**summarize_seeds(runs), "runs": runs}
    (args.results / f"{args.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    keys = ("val_bpb_seeds", "val_bpb_mean", "startup_s_max", "mfu_percent")
    print(f"best {label}: {json.dumps({k: summary[k] for k in keys})}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
