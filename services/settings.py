"""The settings, read from the environment (prefix `AR_`) by each entry point and passed in; nothing
reads the environment at import time.

They come in groups, one class each, so that a part is built from its own group alone:
`Settings` holds the connections and the service's groups (`controller`, `runs`, `sandbox`,
`acceptance`, `repo`); the built-in agents read `AgentSettings`, apart. A variable keeps its flat name
whatever its group (`AR_TRAINER_IMAGE` is `settings.sandbox.trainer_image`), and `Settings(...)` takes
flat names too (`Settings(trainer_image=...)`), so a caller need not know the groups.

docs/configuration.md is generated from these classes: each field's comment (the lines right above
it and the end of its line) is its meaning there, and `# --- name` lines are its sections. After a
change, run `python -m services.settings_doc > docs/configuration.md`."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self, cast

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.faults import PAUSE_POINTS, PausePoints

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


class _Group(BaseSettings):
    """A group of settings: flat `AR_*` variables, validated, frozen; an unknown name is an error."""

    model_config = SettingsConfigDict(env_prefix="AR_", frozen=True, extra="forbid")

    @classmethod
    def defaults(cls) -> Self:
        """The group as written here, whatever the environment says (simulations, unit tests)."""
        return cast(Self, cls.model_construct())


class ControllerSettings(_Group):
    # --- proposals
    max_patch_bytes: int = Field(512 * KIB, gt=0, le=16 * MIB)  # a train.py or diff, UTF-8 bytes
    max_title_chars: int = Field(200, gt=0)  # a proposal's or a run's title, one line
    max_description_chars: int = Field(20_000, gt=0)  # a proposal's or a run's description
    max_queued_per_token: int = Field(20, ge=1)  # an agent token's proposals waiting in `queued`
    submits_per_minute: int = Field(30, ge=1)  # an agent token's submits per minute (429 beyond)

    # --- controller
    program_path: Path = Path("program.md")  # version 1 of the agents' instructions
    host: str = "0.0.0.0"  # the address the API listens on
    port: int = Field(8000, gt=0, lt=65536)  # the port the API listens on
    # API processes (uvicorn workers) on that port: each holds its own Redis connections and event
    # subscription, and nothing in the controller assumes one process, so the API scales over cores
    controller_workers: int = Field(1, ge=1, le=64)
    page_size_max: int = Field(200, gt=0)  # the largest `limit` a list accepts (default 50)
    # Decimals of the scores agents see (admins see full precision; services/controller/disclosure.py).
    # 4 (0.0001 bpb) is a tenth of σ or less at the 300 s budget (seed σ 0.0005-0.0009 on an H200,
    # 0.0020 on an H100).
    agent_score_decimals: int = Field(4, ge=1, le=9)


class RunSettings(_Group):
    # --- runs
    # The training container's whole budget; the trainer sees its deadline as AR_WALL_CLOCK_S and
    # AR_DEADLINE_UNIX (docs/architecture.md).
    run_wall_clock_s: int = Field(300, gt=0, le=24 * 3600)
    eval_timeout_s: int = Field(600, gt=0, le=24 * 3600)  # the evaluation container's budget
    preset: Literal["full", "tiny"] = "full"  # AR_PRESET passed to the trainer
    device: Literal["cpu", "cuda"] = "cpu"  # AR_DEVICE passed to the trainer
    infra_retries: int = Field(2, ge=0, le=10)  # re-runs after an infrastructure failure
    # After an infrastructure failure the worker waits up to this long for its sandbox (the Docker
    # daemon) to answer again before taking more work, so a daemon restart does not use up retries.
    sandbox_ready_wait_s: float = Field(120.0, ge=0.0, le=3600.0)
    # A worker renews a lease on the proposal it runs; one not renewed for this long is re-queued.
    worker_lease_ttl_s: int = Field(30, ge=1, le=3600)
    # The worker's name: it labels the worker's containers and holds its leases. Unset: the host's
    # name, with -gpuN for a GPU worker. Two live workers may not share one (the second refuses to
    # start), so give each CPU worker on one host its own.
    worker_name: str = Field("", max_length=100, pattern=r"^[A-Za-z0-9._-]*$")
    first_seed: int = 42  # harness seed of a proposal's screening run
    log_tail_bytes: int = Field(16 * KIB, ge=KIB)  # what the API shows of a failed run
    # How long a finished proposal keeps its runs' log tails (the workers' sweep then replaces them
    # with a note; every number of every run, and each decision, is kept whatever its age).
    run_log_retention_s: int = Field(30 * 24 * 3600, ge=3600)
    max_checkpoint_bytes: int = Field(4 * GIB, ge=KIB)  # model.safetensors; a larger one is not collected
    keep_checkpoints: bool = False  # keep each run's weights; otherwise removed once scored

    @property
    def run_budget_s(self) -> int:
        """What one run (training, then evaluation) may take; RQ jobs get this per run plus slack."""
        return self.run_wall_clock_s + self.eval_timeout_s


class SandboxSettings(_Group):
    # --- sandbox
    trainer_image: str = "autoresearch/trainer:cpu"  # the image every run step starts from
    # The interpreter inside the trainer image (an absolute in-container path): the image's venv, or on
    # a host-runtime image (gpu_mode "devices" with the host's /usr and Python mounted) the host's.
    trainer_python: str = Field("/opt/venv/bin/python", pattern=r"^/[A-Za-z0-9._/+-]+$")
    runs_dir: Path = Path("/var/lib/autoresearch/runs")  # the worker's path; per-run folders live here
    # Where runs_dir lies on the Docker host, if not at the same path: a worker in a container finds
    # it itself (docker_sandbox.resolve_for_host); run containers' bind mounts are translated to it.
    runs_host_dir: Path | None = None
    # A volume name, an absolute host path, or (a worker in a compose stack) a volume key of its
    # compose file ("train-data"), resolved to that project's own volume.
    train_data: str = "autoresearch-train-data"
    val_data: str = "autoresearch-val-data"  # the validation text, like train_data; mounted into scorers only
    # The held-out test split (prepare.py --test-dir): like train_data, mounted into the scorer of the
    # runs that can decide a merge; "" = none (the tripwire does not run).
    test_data: str = ""
    container_memory_bytes: int = Field(64 * GIB, ge=32 * MIB)  # each container's memory limit (swap off)
    container_pids_limit: int = Field(1024, ge=16)  # processes and threads per container
    container_cpus: float = Field(0.0, ge=0.0)  # 0 = no CPU limit
    tmpfs_bytes: int = Field(2 * GIB, ge=MIB)  # size of each container's /tmp (scratch_mode tmpfs)
    max_log_bytes: int = Field(8 * MIB, ge=KIB)  # the log kept per step; the rest is cut
    max_output_bytes: int = Field(8 * GIB, ge=KIB)  # whole output folder; the run is killed beyond
    # After the deadline, when the in-container backstop kills a step whose worker died mid-step.
    kill_grace_s: float = Field(5.0, ge=0.0)
    # RLIMIT_MEMLOCK of the evaluation containers (scorer and model servers), for hosts where page-locking
    # the logits slots (cudaHostRegister; 4 float32 batches ≈ 8.6 GB on the scorer's side) needs it; still
    # inside the containers' memory limit. 0 (default) keeps the engine's limit: an engine whose runtime
    # may not raise it refuses to start such containers (seen with Debian's docker.io 20.10: "error
    # setting rlimits").
    eval_memlock_bytes: int = Field(0, ge=0)
    # "tmpfs": /tmp is a size-capped tmpfs; "bind": the run's own scratch folder (mode 1777), for
    # hosts where a tmpfs is not writable by the unprivileged user (seen with a Docker engine started
    # from a static bundle on a GPU host).
    scratch_mode: Literal["tmpfs", "bind"] = "tmpfs"
    sandbox_extra_env: dict[str, str] = {}  # operator settings for every container (LD_LIBRARY_PATH)
    eval_max_docs: int | None = Field(None, gt=0)  # evaluate on the first N documents only (tests)

    # --- GPU
    # How the GPU reaches a container: "nvidia" uses device_requests (NVIDIA container toolkit),
    # "devices" passes device nodes and read-only runtime mounts (hosts without the toolkit).
    gpu_mode: Literal["none", "nvidia", "devices"] = "none"
    gpu_id: str = "0"  # the one GPU this worker owns
    # The device nodes passed to containers with gpu_mode=devices.
    gpu_device_nodes: list[str] = [
        "/dev/nvidia0",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
    ]
    gpu_host_mounts: list[str] = []  # "host:container" read-only binds for gpu_mode=devices


class AcceptanceSettings(_Group):
    """The merge rule and its parameters: what services/committer/rules.py decides with
    (`rules.policy_from`); bench/campaign.py simulates the rules."""

    # --- acceptance
    # paired-z/v1 (the default): the strict fixed-size paired test. seq-bayes/v2 (opt-in): a posterior
    # over the candidate's effect against the best's shared reference, one paired run at a time while a
    # run is worth what it would buy screening a fresh proposal. seq-bayes/v3 (opt-in): v2 guarded against
    # one outlier run. seq-bayes/v4 (opt-in): v3 crediting the same-seed correlation of paired runs that
    # the confirmations on the fingerprint show. seq-bayes/v1 (opt-in): v2's predecessor. None meets its
    # goals in the simulation (docs/evaluation.md), so paired-z/v1 stays the default.
    accept_rule: Literal["paired-z/v1", "seq-bayes/v1", "seq-bayes/v2", "seq-bayes/v3", "seq-bayes/v4"] = (
        "paired-z/v1"
    )
    # (seq-bayes/v1, opt-in)
    seq_p_accept: float = Field(0.97, gt=0.5, lt=1.0)  # accept when P(Δ < 0) reaches this
    seq_run_cost_bpb: float = Field(0.00002, ge=0.0, le=1.0)  # expected gain one run must buy to be run
    seq_max_pairs: int = Field(8, ge=1, le=32)  # paired runs after which an unconvinced rule rejects
    seq_screen_extra_sigma: float = Field(0.5, ge=0.0, le=10.0)  # extra σ on a screen against the best
    # (paired-z/v1, the default)
    confirm_runs: int = Field(3, ge=1, le=32)  # paired confirmation runs, candidate and best each
    screen_margin_sigma: float = Field(0.5, ge=0.0, le=10.0)  # confirm screens up to this many σ worse
    accept_z: float = Field(2.6, gt=0.0, le=10.0)  # one-sided z of the bound; 2.6 keeps false accepts < 1%
    noise_sigma_prior_bpb: float = Field(0.001, gt=0.0, le=1.0)  # σ until calibration has 3 dof
    # Runs of the best commit asked for once on each new fingerprint (a new evaluator version, image,
    # GPU model or data): its score and the noise calibrations there. 0: none.
    new_fingerprint_runs: int = Field(3, ge=0, le=32)

    # --- held-out test tripwire (rule test-gap/v1, services/committer/rules.py; docs/evaluation.md)
    # A merge is blocked when the candidate's val gain over the best, in the paired confirmation runs,
    # is not matched on the held-out test split beyond z · its noise plus a slack share of the gain.

    tripwire_z: float = Field(3.0, gt=0.0, le=10.0)  # one-sided z of the gap's noise bound
    # σ of one run's (test_bpb − val_bpb) around its commit's mean, in bpb, until the best's runs on a
    # fingerprint give 3 degrees of freedom; a paired gap has √2 times it.
    tripwire_sigma_prior_bpb: float = Field(0.001, gt=0.0, le=1.0)
    # The share of a val gain that may go unmatched on test (0 ≤ slack < 1): honest changes do not gain
    # exactly as much on other books; a model that memorised the validation text gains nothing there.
    tripwire_gain_slack: float = Field(0.5, ge=0.0, lt=1.0)


class RepoSettings(_Group):
    # --- research repo (committer)
    repo_dir: Path = Path("/var/lib/autoresearch/repo")  # the bare research repository (committer)
    research_branch: str = "research"  # the branch winners are committed to
    baseline_train_py: Path = Path("trainer/train.py")  # the branch's first commit, in an empty repository
    git_author: str = "autoresearch committer <committer@autoresearch.invalid>"  # commits' author

    @field_validator("research_branch")
    @classmethod
    def _branch_name(cls, value: str) -> str:
        if not value or any(c in value for c in " ~^:?*[\\") or value.startswith("-") or ".." in value:
            raise ValueError(f"AR_RESEARCH_BRANCH {value!r} is not a valid git branch name")
        return value


GROUPS: dict[str, type[_Group]] = {
    "controller": ControllerSettings,
    "runs": RunSettings,
    "sandbox": SandboxSettings,
    "acceptance": AcceptanceSettings,
    "repo": RepoSettings,
}


class Settings(_Group):
    """The service's settings: its connections, then one group per part."""

    # --- connections
    redis_url: str = "redis://localhost:6379/0"  # the queues and the store: redis://, rediss:// or unix://
    # First admin token; if unset the controller makes one on first start and logs it once.
    admin_token: SecretStr | None = None

    # --- fault injection (tests only; services/faults.py): empty in production, nothing pauses
    fault_pause_at: str = ""  # a point of faults.PAUSE_POINTS where the process sleeps until killed
    fault_pause_marker: Path | None = None  # created when the process pauses there

    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    runs: RunSettings = Field(default_factory=RunSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    acceptance: AcceptanceSettings = Field(default_factory=AcceptanceSettings)
    repo: RepoSettings = Field(default_factory=RepoSettings)

    @model_validator(mode="before")
    @classmethod
    def _into_groups(cls, data: Any) -> Any:
        """Flat names (`trainer_image=...`) go to their group; each group is built by its own class,
        so what is not given comes from the environment, then the defaults."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, group in GROUPS.items():
            flat = {key: data.pop(key) for key in list(data) if key in group.model_fields}
            given = data.get(name)
            if isinstance(given, group):
                given = given.model_dump() if flat else given
            if isinstance(given, dict):
                data[name] = group(**{**given, **flat})
            elif flat:
                data[name] = group(**flat)
        return data

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """As pydantic's, but a name that is not a field here (a group's, such as `test_data`) is an
        error instead of an attribute nothing reads: `replace` changes settings by their flat names."""
        unknown = sorted(set(update or ()) - set(type(self).model_fields))
        if unknown:
            raise TypeError(f"Settings.model_copy cannot set {unknown}; use Settings.replace(...)")
        return super().model_copy(update=update, deep=deep)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some settings changed, by their flat names, validated again."""
        flat: dict[str, Any] = {
            key: getattr(self, key) for key in type(self).model_fields if key not in GROUPS
        }
        for name in GROUPS:
            flat.update(getattr(self, name).model_dump())
        return Settings(**{**flat, **changes})

    @property
    def pauses(self) -> PausePoints:
        """The test-only pause point, inert unless fault_pause_at is set."""
        return PausePoints(self.fault_pause_at, self.fault_pause_marker)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("AR_REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @field_validator("fault_pause_at")
    @classmethod
    def _pause_point(cls, value: str) -> str:
        if value and value not in PAUSE_POINTS:
            raise ValueError(f"AR_FAULT_PAUSE_AT {value!r} is not one of {', '.join(PAUSE_POINTS)}")
        return value


class AgentSettings(_Group):
    """The built-in agents' settings (services/agent/): clients of the API, apart from the service."""

    # --- built-in agents (services/agent/: autoresearch-agent, autoresearch-search)
    agent_controller_url: str = "http://controller:8000"  # the API the agents use, as any client would
    agent_token: SecretStr | None = None  # an agent token (POST /v1/tokens); falls back to admin_token
    agent_name: str = Field("", max_length=100)  # the `agent` of its proposals; default per arm
    agent_max_iterations: int = Field(100, ge=1)  # proposals submitted before the agent stops
    agent_poll_s: float = Field(5.0, gt=0.0)  # between reads of a submitted proposal's state
    agent_outcome_timeout_s: float = Field(24 * 3600.0, gt=0.0)  # waiting for one proposal's outcome
    agent_recent_results: int = Field(15, ge=0, le=200)  # other proposals' results shown in the prompt
    agent_llm_base_url: str = "https://api.openai.com/v1"  # any OpenAI-compatible chat-completions API
    agent_llm_model: str = ""  # required by autoresearch-agent
    agent_llm_api_key: SecretStr | None = None  # sent as a bearer token when set
    agent_llm_temperature: float = Field(0.7, ge=0.0, le=2.0)  # sampling temperature of each completion
    agent_llm_max_tokens: int | None = Field(None, gt=0)  # the answer's cap; unset: the server's default
    agent_llm_timeout_s: float = Field(600.0, gt=0.0)  # one completion; reasoning models think long
    agent_search_seed: int | None = None  # random search: unset draws a fresh seed per process
    agent_search_step: float = Field(0.3, gt=0.0, le=3.0)  # σ of the log-normal factor applied to a value
    # Constants the search arm never touches: hardware facts and limits, not hyperparameters.
    agent_search_exclude: list[str] = [
        "PEAK_FLOPS",
        "SEQ_LEN",
        "ROPE_MAX_LEN",
        "SAVE_RESERVE_S",
        "STEADY_AFTER_STEPS",
        "TINY_THREADS",
    ]
    # The admin token, the agent's fallback when AR_AGENT_TOKEN is unset (documented with the
    # connections above).
    admin_token: SecretStr | None = None
