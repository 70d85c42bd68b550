import pytest
from pydantic import ValidationError

from services.settings import Settings


def test_settings_read_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AR_RUN_WALL_CLOCK_S", "120")
    monkeypatch.setenv("AR_REDIS_URL", "redis://redis:6379/1")
    settings = Settings()
    assert settings.run_wall_clock_s == 120
    assert settings.redis_url == "redis://redis:6379/1"


def test_the_accept_rule_is_paired_z_unless_seq_bayes_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().accept_rule == "paired-z/v1"
    monkeypatch.setenv("AR_ACCEPT_RULE", "seq-bayes/v1")
    assert Settings().accept_rule == "seq-bayes/v1"


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
