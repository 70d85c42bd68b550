"""Schemathesis by hand: every phase (examples, coverage, fuzzing, stateful) with `--checks all`
against a live controller, as an admin and as an agent.

    .venv/bin/python bench/fuzz_api.py [--seed N] [--max-examples 50] [--phases examples,coverage,...]

Starts its own redis-server on a free port and the controller (uvicorn, real HTTP) over it, seeded
with a best commit, then runs the schemathesis CLI once per caller (tests/integration/schemathesis_cli.py,
config schemathesis.toml). The event streams are left out (they never end while a proposal runs; the
suite's in-process fuzz reads them). Prints each run's summary (cases, failures, seed) and exits non-zero
if any run failed; reports (JUnit, NDJSON) go to test-output/schemathesis-cli/. The suite runs the
stateful phase alone with a seed from the git HEAD; pick another seed here to look elsewhere.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import private_redis  # noqa: E402
from services.store import Store, connect  # noqa: E402
from tests.integration.schemathesis_cli import PHASES, default_seed, run_schemathesis  # noqa: E402
from tests.support.live_server import ADMIN, agent_token, seed, serve, settings_for  # noqa: E402

RUN_TIMEOUT_S = 3600  # one caller's whole run
REPORTS = ROOT / "test-output" / "schemathesis-cli"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=None, help="default: from the git HEAD")
    parser.add_argument("--max-examples", type=int, default=50, help="test cases per operation and phase")
    parser.add_argument("--phases", default=",".join(PHASES))
    args = parser.parse_args()
    fuzz_seed = default_seed() if args.seed is None else args.seed
    failed = False
    with private_redis() as url:
        store = seed(Store(connect(url)))
        with serve(settings_for(url), store) as base:
            for caller, token in (("admin", ADMIN), ("agent", agent_token(store))):
                run = run_schemathesis(
                    base,
                    token,
                    phases=tuple(args.phases.split(",")),
                    seed=fuzz_seed,
                    max_examples=args.max_examples,
                    report_dir=REPORTS / caller,
                    timeout_s=RUN_TIMEOUT_S,
                )
                print(f"== {caller}: exit {run.returncode}\n{run.output[run.output.find('SUMMARY') :]}")
                failed |= run.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
