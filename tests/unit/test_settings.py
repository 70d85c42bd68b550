import pytest
from pydantic import ValidationError

from services.agent.loop import agent_token
from services.committer import rules
from services.settings import MIB, AcceptanceSettings, AgentSettings, SandboxSettings, Settings


def test_settings_read_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AR_RUN_WALL_CLOCK_S", "120")
    monkeypatch.setenv("AR_REDIS_URL", "redis://redis:6379/1")
    settings = Settings()
    assert settings.runs.run_wall_clock_s == 120
    assert settings.redis_url == "redis://redis:6379/1"


def test_the_accept_rule_is_paired_z_unless_seq_bayes_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().acceptance.accept_rule == "paired-z/v1"
    monkeypatch.setenv("AR_ACCEPT_RULE", "seq-bayes/v1")
    assert Settings().acceptance.accept_rule == "seq-bayes/v1"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AR_RUN_WALL_CLOCK_S", "0", "greater than 0"),
        ("AR_RUN_WALL_CLOCK_S", "five", "valid integer"),
        ("AR_REDIS_URL", "http://redis", "must start with redis://"),
        ("AR_RESEARCH_BRANCH", "bad..name", "not a valid git branch"),
        ("AR_PRESET", "huge", "'full' or 'tiny'"),
        ("AR_GPU_MODE", "amd", "'none', 'nvidia' or 'devices'"),
        (
            "AR_ACCEPT_RULE",
            "greedy",
            "'paired-z/v1', 'seq-bayes/v1', 'seq-bayes/v2', 'seq-bayes/v3' or 'seq-bayes/v4'",
        ),
    ],
)
def test_bad_values_fail_fast_naming_the_problem(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_admin_token_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AR_ADMIN_TOKEN", "s3cret-value")
    settings = Settings()
    assert settings.admin_token is not None
    assert "s3cret-value" not in repr(settings)
    assert settings.admin_token.get_secret_value() == "s3cret-value"


def test_flat_names_land_in_their_groups_and_the_rest_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AR_CONTAINER_PIDS_LIMIT", "99")
    monkeypatch.setenv("AR_CONFIRM_RUNS", "5")
    settings = Settings(trainer_image="img:1", accept_z=3.0, repo_dir="/srv/repo")
    assert settings.sandbox.trainer_image == "img:1" and settings.sandbox.container_pids_limit == 99
    assert settings.acceptance.accept_z == 3.0 and settings.acceptance.confirm_runs == 5
    assert str(settings.repo.repo_dir) == "/srv/repo"
    # A group given whole, with a flat name beside it: the flat name wins, the rest is the group's.
    group = SandboxSettings(trainer_image="img:2", tmpfs_bytes=2 * MIB)
    mixed = Settings(sandbox=group, trainer_image="img:3")
    assert mixed.sandbox.trainer_image == "img:3" and mixed.sandbox.tmpfs_bytes == 2 * MIB


def test_an_unknown_name_is_refused_not_ignored() -> None:
    with pytest.raises(ValidationError, match="trainer_imag\n"):
        Settings(trainer_imag="typo:1")
    with pytest.raises(ValidationError, match="agent_name"):  # an agent setting is not the service's
        Settings(agent_name="x")


def test_a_bad_value_names_its_variable_whatever_its_group() -> None:
    with pytest.raises(ValidationError, match="tmpfs_bytes"):
        Settings(tmpfs_bytes=1)


def test_replace_validates_again_and_keeps_the_rest() -> None:
    settings = Settings(redis_url="redis://r:1/0", trainer_image="img:1", accept_z=3.0)
    changed = settings.replace(test_data="", accept_z=2.0)
    assert changed.redis_url == "redis://r:1/0" and changed.sandbox.trainer_image == "img:1"
    assert changed.acceptance.accept_z == 2.0 and settings.acceptance.accept_z == 3.0
    with pytest.raises(ValidationError, match="accept_z"):
        settings.replace(accept_z=-1.0)


def test_the_rules_defaults_are_the_settings_defaults_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AR_CONFIRM_RUNS", "7")
    assert AcceptanceSettings().confirm_runs == 7
    shipped = AcceptanceSettings.defaults()
    assert shipped.confirm_runs == AcceptanceSettings.model_fields["confirm_runs"].default == 3
    assert rules.Policy().paired == rules.params_from(shipped)
    assert rules.Policy().seq == rules.seq_params_from(shipped)


def test_agents_read_their_own_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AR_AGENT_MAX_ITERATIONS", "3")
    monkeypatch.setenv("AR_ADMIN_TOKEN", "fallback")
    agent = AgentSettings()
    assert agent.agent_max_iterations == 3 and agent_token(agent) == "fallback"
    assert "agent_max_iterations" not in Settings.model_fields


def test_model_copy_refuses_a_flat_name_it_would_silently_ignore() -> None:
    with pytest.raises(TypeError, match=r"use Settings\.replace"):
        Settings().model_copy(update={"test_data": ""})
