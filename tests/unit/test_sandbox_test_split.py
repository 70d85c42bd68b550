"""Where the held-out test split is mounted (docs/sandbox.md): in the scorer's container of an
evaluation that asks for it, read-only, with --test-dir; never in a model container, never in an
evaluation that does not ask, never in the in-process evaluation (where the candidate runs beside
the scorer). The container configurations are built without starting anything."""

from pathlib import Path

import pytest

from services.errors import SandboxUnavailable
from services.settings import Settings
from services.worker.collect import prepare_run_dir
from services.worker.docker_sandbox import DockerSandbox
from services.worker.sandbox import EvalRequest


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    folders = {name: tmp_path / name for name in ("train", "val", "test")}
    for folder in folders.values():
        folder.mkdir()
    return Settings(
        runs_dir=tmp_path / "runs", train_data=str(folders["train"]), val_data=str(folders["val"]),
        test_data=str(folders["test"]),
    )  # fmt: skip


def request(settings: Settings, score_test: bool) -> EvalRequest:
    paths = prepare_run_dir(settings.sandbox.runs_dir, f"run-{score_test}", "print('hi')\n")
    (paths.root / "channel").mkdir(exist_ok=True)
    return EvalRequest(
        run_id=f"run-{score_test}", proposal_id="p", paths=paths, seed=1, timeout_s=10, device="cpu",
        score_test=score_test,
    )  # fmt: skip


def targets(mounts: list) -> dict[str, dict]:  # type: ignore[type-arg]
    return {mount["Target"]: mount for mount in mounts}


def test_the_scorer_mounts_the_test_split_read_only_only_when_asked(settings: Settings) -> None:
    sandbox = DockerSandbox(settings.sandbox, None)
    asked = request(settings, True)
    mounts = targets(sandbox._scorer_mounts(asked))
    assert mounts["/test"]["Source"] == settings.sandbox.test_data and mounts["/test"]["ReadOnly"]
    command = sandbox._scorer_command(asked)
    assert command[command.index("--test-dir") + 1] == "/test"
    plain = request(settings, False)
    assert "/test" not in targets(sandbox._scorer_mounts(plain))
    assert "--test-dir" not in sandbox._scorer_command(plain)


def test_no_model_container_sees_the_test_split(settings: Settings) -> None:
    sandbox = DockerSandbox(settings.sandbox, None)
    asked = request(settings, True)
    for name in ("a", "b"):
        step = sandbox._model_step(asked, name, asked.paths.root / "channel", 0.0)
        assert set(targets(step.mounts)) == {"/code", "/data", "/ckpt", "/channel"}
        assert "--test-dir" not in step.command and settings.sandbox.test_data not in " ".join(step.command)


def test_asking_without_a_configured_test_split_is_an_infrastructure_error(settings: Settings) -> None:
    sandbox = DockerSandbox(settings.sandbox.model_copy(update={"test_data": ""}), None)
    with pytest.raises(SandboxUnavailable, match="no test_data is configured"):
        sandbox._scorer_mounts(request(settings, True))
