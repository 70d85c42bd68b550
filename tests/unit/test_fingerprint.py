"""Fingerprints: the CPU model joins a CPU worker's fingerprint, GPU fingerprints keep their keys (the
calibration runs are filed under them), and the environment probe finds the CPU model."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from services.models import Fingerprint
from services.worker import docker_sandbox

FIELDS = {
    "gpu": "NVIDIA H100 80GB HBM3",
    "driver": "580.65.06",
    "environment_hash": "e" * 64,
    "fixed_hash": "f" * 16,
    "wall_clock_s": 300,
    "evaluator_version": "eval/3",
}


def test_a_gpu_fingerprint_keeps_the_key_it_had_before_cpu_models_were_recorded() -> None:
    before = hashlib.sha256(json.dumps(FIELDS, separators=(",", ":")).encode()).hexdigest()[:16]
    assert Fingerprint(**FIELDS).key() == before


def test_cpu_fingerprints_of_different_cpu_models_do_not_compare() -> None:
    cpu = {**FIELDS, "gpu": "cpu", "driver": "none"}
    epyc = Fingerprint(**cpu, cpu="AMD EPYC 7B13 64-Core Processor")
    xeon = Fingerprint(**cpu, cpu="Intel(R) Xeon(R) CPU @ 2.20GHz")
    assert len({epyc.key(), xeon.key(), Fingerprint(**cpu).key()}) == 3
    assert Fingerprint.model_validate_json(epyc.model_dump_json()).key() == epyc.key()
    assert Fingerprint.model_validate_json(json.dumps(cpu)).cpu == ""  # stored before: still reads


def test_the_environment_probe_reports_the_cpu_model() -> None:
    """The probe's own code, run here (it runs the same way in the trainer image's probe container)."""
    done = subprocess.run(
        [sys.executable, "-c", docker_sandbox._PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    reported = json.loads(done.stdout.strip().splitlines()[-1])["cpu"]
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.read_text().splitlines()
        if line.startswith("model name")
    ]
    if names:
        assert reported == " ".join(names[0].split())
    assert reported and len(reported) <= 200
