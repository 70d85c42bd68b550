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
(cold start, as a proposal's first run) unless `--shared-cache` is given. `--warm-imports` imports
torch once beforehand, so that start-up counts compilation, not the disk (recorded as warm_imports_s).

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

Noise of the trainer (`--plan`, `--noop-edit`, `--merge`): `--plan A:0,B:0,A:1,B:1,A:2` runs those
variant labels with those training seeds in that order, each written as soon as it is scored to
RESULTS/runs/NAME-LABEL-seedS.json (its log to RESULTS/logs/NAME-LABEL-seedS.log), so a run cut short
keeps the pairs already made. `--noop-edit B` gives variant B a train.py whose only change is a
trailing comment: the file hash differs (a new commit to the service), the code does not. Then, on
any machine, `--merge A,B` reads those run files and writes RESULTS/NAME.json (arm A over its seeds,
as --seeds writes it) and RESULTS/gpu-noise.json: the run-to-run sigma of val_bpb over A's seeds, each
seed's A - B difference, their RMS against the sqrt(2) sigma that two independent runs would give,
and the same-seed correlation that ratio implies (rho = 1 - rms^2 / (2 sigma^2)), with chi-square
95% intervals for both spreads. `--merge A` (one label) writes RESULTS/NAME.json alone: one seed per
call, when a call cannot hold several 300 s runs.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
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


NOOP_EDIT = "\n# no-op edit ({label}): this comment changes the file's hash, not its code\n"


def patched_train_py(overrides: dict[str, str], dest: Path, noop_label: str | None = None) -> Path:
    text = (TRAINER / "train.py").read_text()
    for name, value in overrides.items():
        text, count = re.subn(rf"^{name} = .*?(  #.*)?$", rf"{name} = {value}\1", text, count=1, flags=re.M)
        if count != 1:
            raise SystemExit(f"no constant {name} in train.py")
    if noop_label is not None:
        text += NOOP_EDIT.format(label=noop_label)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    return dest


def run_variant(label: str, budget: float, overrides: dict[str, str], train_dir: Path, val_dir: Path,
                work: Path, seed: int, shared_cache: bool, run_name: str | None = None,
                noop_edit: bool = False) -> dict:  # fmt: skip
    run_name = run_name or label
    run_dir = work / "runs" / run_name
    shutil.rmtree(run_dir, ignore_errors=True)
    train_py = patched_train_py(overrides, run_dir / "train.py", label if noop_edit else None)
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
                    "noop_edit": noop_edit, "train_py_sha256": hashlib.sha256(train_py.read_bytes()).hexdigest(),
                    "train_exit_code": train.returncode, "wall_s": round(wall, 2),
                    "within_deadline": wall <= budget}  # fmt: skip
    if train.returncode == 0:
        eval_started = time.time()
        with open(run_dir / "eval.log", "w") as log:
            scored = subprocess.run(
                [sys.executable, str(TRAINER / "evaluate.py"), "--in-process", "--train-py", str(train_py),
                 "--checkpoint", str(run_dir / "out"), "--data-dir", str(train_dir), "--val-dir", str(val_dir), "--out",
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
                "train_shards", "prepare_s", "budget_s", "warm_imports_s"):  # fmt: skip
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


WARM_IMPORTS = "import torch, torch._inductor.async_compile, triton"


def warm_imports() -> float:
    """Import what train.py imports once, in a throwaway process, so that the runs' start-up measures
    compilation rather than the first read of torch's files from disk (a worker's page cache holds them
    after its first run). The compile caches stay cold. Returns the seconds it took."""
    started = time.time()
    subprocess.run([sys.executable, "-c", WARM_IMPORTS], check=True)
    took = time.time() - started
    print(f"warm imports: {took:.1f} s ({WARM_IMPORTS})", flush=True)
    return round(took, 2)


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
    parser.add_argument("--plan", help="LABEL:SEED,... runs in this order, each saved when scored")
    parser.add_argument("--noop-edit", action="append", default=[], help="a variant label: comment-only edit")
    parser.add_argument("--commit", default="", help="the commit of trainer/train.py, for the record")
    parser.add_argument(
        "--warm-imports", action="store_true",
        help="import torch, inductor and triton once before the runs (page cache, as on a worker that has run before)",
    )  # fmt: skip
    parser.add_argument("--merge", help="ARM_A,ARM_B: write NAME.json and gpu-noise.json from the run files")
    parser.add_argument(
        "--noise-file", default="gpu-noise.json", help="with --merge A,B: the noise file's name"
    )
    args = parser.parse_args()

    if args.merge:
        arm_a, _, arm_b = args.merge.partition(",")
        command = " ".join(["python", "bench/trainer_gpu.py", *sys.argv[1:]])
        merge_noise(args.results, args.name, arm_a, arm_b or None, command, args.noise_file)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    stage(args.stage, args.work)
    if args.stage_only:
        return 0
    train_dir, val_dir, prepare_s = prepare(args.work, args.shards)
    (args.results / "logs").mkdir(parents=True, exist_ok=True)
    gpu = gpu_name()
    variants = [parse_variant(text) for text in args.variant]
    warm_imports_s = warm_imports() if args.warm_imports else None

    def run(label: str, budget: float, overrides: dict[str, str], seed: int, run_name: str) -> dict:
        noop = label in args.noop_edit
        result = run_variant(
            label, budget, overrides, train_dir, val_dir, args.work, seed, args.shared_cache, run_name, noop
        )
        result.update({
            "commit": args.commit,
            "gpu_smi": gpu,
            "device": args.device,
            "train_shards": args.shards,
            "prepare_s": round(prepare_s, 1),
            "warm_imports_s": warm_imports_s,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python", "bench/trainer_gpu.py", *sys.argv[1:]]),
        })  # fmt: skip
        run_dir = args.work / "runs" / run_name
        with open(args.results / "logs" / f"{args.name}-{run_name}.log", "w") as log:
            for part in ("train.log", "eval.log"):
                if (run_dir / part).exists():
                    log.write(f"==> {part} <==\n{(run_dir / part).read_text()}\n")
        return result

    if args.plan:
        run_plan(args, variants, run)
        return 0
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


def parse_plan(text: str, labels: list[str]) -> list[tuple[str, int]]:
    plan = []
    for item in text.split(","):
        label, _, seed = item.partition(":")
        if label not in labels or not seed.lstrip("-").isdigit():
            raise SystemExit(f"--plan item {item!r}: want LABEL:SEED with LABEL one of {labels}")
        plan.append((label, int(seed)))
    return plan


def run_plan(args: argparse.Namespace, variants: list, run) -> None:
    """The planned (label, seed) runs in order; each run's result file is written as soon as it is scored."""
    by_label = {label: (label, budget, overrides) for label, budget, overrides in variants}
    (args.results / "runs").mkdir(parents=True, exist_ok=True)
    for label, seed in parse_plan(args.plan, list(by_label)):
        _, budget, overrides = by_label[label]
        run_name = f"{label}-seed{seed}"
        result = run(label, budget, overrides, seed, run_name)
        saved = args.results / "runs" / f"{args.name}-{run_name}.json"
        saved.write_text(json.dumps(result, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------
# Noise: arm A's seeds, and same-seed pairs of A and a comment-only edit B


def chi2_cdf(x: float, dof: int) -> float:
    """Regularized lower incomplete gamma P(dof/2, x/2), by its power series (converges for all x)."""
    if x <= 0:
        return 0.0
    a, z = dof / 2, x / 2
    term = total = 1 / a
    n = 0
    while term > total * 1e-15:
        n += 1
        term *= z / (a + n)
        total += term
    return min(1.0, total * math.exp(a * math.log(z) - z - math.lgamma(a)))


def chi2_quantile(p: float, dof: int) -> float:
    low, high = 0.0, 1.0
    while chi2_cdf(high, dof) < p:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if chi2_cdf(mid, dof) < p else (low, mid)
    return (low + high) / 2


def spread_interval(spread: float, dof: int) -> list[float]:
    """95% interval of a standard deviation estimated with `dof` degrees of freedom (normal data)."""
    return [
        spread * math.sqrt(dof / chi2_quantile(0.975, dof)),
        spread * math.sqrt(dof / chi2_quantile(0.025, dof)),
    ]


PAIR_KEYS = ("val_bpb", "num_steps", "startup_s", "tokens_per_s", "mfu_percent", "wall_s", "train_py_sha256")


def pair(run_a: dict, run_b: dict) -> dict:
    return {
        "seed": run_a["seed"],
        "a": {key: run_a.get(key) for key in PAIR_KEYS},
        "b": {key: run_b.get(key) for key in PAIR_KEYS},
        "diff_bpb": run_a["val_bpb"] - run_b["val_bpb"],
        "diff_steps": run_a["num_steps"] - run_b["num_steps"],
    }


def noise_summary(arm_a: list[dict], arm_b: list[dict]) -> dict:
    """Sigma over arm A's seeds and what pairing B with A on the same seed gains, from scored runs."""
    a = {r["seed"]: r for r in arm_a if r.get("val_bpb") is not None}
    b = {r["seed"]: r for r in arm_b if r.get("val_bpb") is not None}
    if len(a) < 2:
        raise SystemExit(f"arm A has {len(a)} scored runs; sigma needs at least 2")
    a_bpb = [a[seed]["val_bpb"] for seed in sorted(a)]
    sigma, sigma_dof = statistics.stdev(a_bpb), len(a_bpb) - 1
    groups = [[r["val_bpb"] for r in arm.values()] for arm in (a, b) if len(arm) > 1]
    pooled_dof = sum(len(g) - 1 for g in groups)
    pooled = math.sqrt(sum((x - statistics.fmean(g)) ** 2 for g in groups for x in g) / pooled_dof)
    pairs = [pair(a[seed], b[seed]) for seed in sorted(a.keys() & b.keys())]
    summary: dict = {
        "sigma_bpb": sigma,
        "sigma_dof": sigma_dof,
        "sigma_ci95_bpb": spread_interval(sigma, sigma_dof),
        "sigma_pooled_bpb": pooled,
        "sigma_pooled_dof": pooled_dof,
        "sigma_pooled_note": "within-arm spread over seeds, A and B pooled (same math, each arm's mean removed)",
        "pairs": pairs,
        "unpaired_diff_sd_bpb": math.sqrt(2) * sigma,
    }
    if pairs:
        diffs = [p["diff_bpb"] for p in pairs]
        rms = math.sqrt(
            statistics.fmean(d * d for d in diffs)
        )  # the expected difference is 0: no mean removed
        summary.update({
            "diff_mean_bpb": statistics.fmean(diffs),
            "diff_rms_bpb": rms,
            "diff_rms_dof": len(diffs),
            "diff_rms_ci95_bpb": spread_interval(rms, len(diffs)) if rms > 0 else [0.0, 0.0],
            "diff_sd_bpb": statistics.stdev(diffs) if len(diffs) > 1 else None,
            "paired_over_unpaired": rms / (math.sqrt(2) * sigma),
            "correlation_estimate": 1 - rms**2 / (2 * sigma**2),
        })  # fmt: skip
    return summary


def arm_record(runs: list[dict]) -> dict:
    return {
        "noop_edit": bool(runs and runs[0].get("noop_edit")),
        "train_py_sha256": sorted({r.get("train_py_sha256") for r in runs}),
        "seeds": [r["seed"] for r in runs],
        "val_bpb_seeds": [r.get("val_bpb") for r in runs],
    }


def merge_noise(
    results: Path, name: str, arm_a: str, arm_b: str | None, command: str, noise_file: str = "gpu-noise.json"
) -> None:
    """RESULTS/runs/NAME-LABEL-seedS.json -> RESULTS/NAME.json (arm A) and, given arm B, RESULTS/NOISE_FILE
    (gpu-noise.json unless --noise-file names another, so that each trainer and GPU keeps its own)."""

    def arm(label: str) -> list[dict]:
        runs = [
            json.loads(path.read_text()) for path in (results / "runs").glob(f"{name}-{label}-seed*.json")
        ]
        return sorted((r for r in runs if r["label"] == label), key=lambda r: r["seed"])

    runs_a, runs_b = arm(arm_a), arm(arm_b) if arm_b else []
    if not runs_a:
        raise SystemExit(f"no runs of {arm_a} under {results / 'runs'}")
    commits = {r.get("commit") for r in runs_a + runs_b}
    headline = {**summarize_seeds(runs_a), "commit": ",".join(sorted(c for c in commits if c)),
                "command": runs_a[0]["command"], "merge_command": command, "runs": runs_a}  # fmt: skip
    (results / f"{name}.json").write_text(json.dumps(headline, indent=1) + "\n")
    if arm_b is None:
        keys = ("val_bpb_seeds", "val_bpb_mean", "startup_s_max", "mfu_percent")
        print(json.dumps({k: headline[k] for k in keys}), flush=True)
        return
    noise = {
        "commit": headline["commit"],
        "gpu": headline["gpu"],
        "device": headline["device"],
        "budget_s": headline["budget_s"],
        "arms": {arm_a: arm_record(runs_a), arm_b: arm_record(runs_b)},
        **noise_summary(runs_a, runs_b),
        "commands": [
            *dict.fromkeys(r["command"] for r in sorted(runs_a + runs_b, key=lambda r: r["date"])),
            command,
        ],
    }
    (results / noise_file).write_text(json.dumps(noise, indent=1) + "\n")
    keys = ("sigma_bpb", "diff_rms_bpb", "paired_over_unpaired", "correlation_estimate")
    print(json.dumps({k: noise.get(k) for k in keys}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
