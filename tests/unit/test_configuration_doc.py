"""docs/configuration.md is generated from the settings classes (services/settings_doc.py) and kept
in step with them: every `AR_*` variable, with a meaning written beside its field and the group code
reads it from."""

from pathlib import Path

from services import settings_doc
from services.settings import GROUPS, AcceptanceSettings, AgentSettings, Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_page_is_what_the_generator_writes() -> None:
    fresh = settings_doc.render(settings_doc.variables(), settings_doc.introductions())
    assert DOC.read_text(encoding="utf-8") == fresh, (
        f"docs/configuration.md is stale: regenerate it with `{settings_doc.COMMAND}`"
    )


def test_every_setting_is_listed_with_its_meaning() -> None:
    listed = {variable.name: variable for variable in settings_doc.variables()}
    fields = {name for cls in (Settings, *GROUPS.values(), AgentSettings) for name in cls.model_fields}
    assert set(listed) == {f"AR_{name.upper()}" for name in fields - set(GROUPS)}
    assert len(listed) == len(settings_doc.variables()), "a variable is listed twice"
    unexplained = sorted(name for name, variable in listed.items() if not variable.meaning)
    assert not unexplained, f"give these fields a comment in services/settings.py: {unexplained}"
    ungrouped = sorted(name for name, variable in listed.items() if not variable.group)
    assert not ungrouped, f"these fields sit above every `# --- group` line: {ungrouped}"


def test_a_field_s_meaning_is_its_comments_and_a_group_s_introduction_is_its_own() -> None:
    group, meaning = settings_doc.read_comments(Settings).fields["admin_token"]  # a comment line above it
    assert group == "connections" and meaning.startswith("First admin token; if unset")
    comments = settings_doc.read_comments(AcceptanceSettings)
    group, meaning = comments.fields["tripwire_z"]  # a trailing comment, below the group's introduction
    assert group.startswith("held-out test tripwire") and meaning == "one-sided z of the gap's noise bound"
    assert comments.groups[group].startswith("A merge is blocked when")


def test_types_defaults_and_bounds_read_as_a_user_writes_them() -> None:
    listed = {variable.name: variable for variable in settings_doc.variables()}
    assert listed["AR_PRESET"].type == "`full` \\| `tiny`"
    assert listed["AR_MAX_PATCH_BYTES"].default == "`524288` (512 KiB)"
    assert listed["AR_MAX_PATCH_BYTES"].bounds == "> 0, ≤ 16777216"
    assert listed["AR_CONTAINER_PIDS_LIMIT"].default == "`1024`"
    assert listed["AR_ADMIN_TOKEN"].type == "secret or unset" and listed["AR_ADMIN_TOKEN"].default == "unset"
    assert listed["AR_SANDBOX_EXTRA_ENV"].type == "JSON object of str"
    assert listed["AR_KEEP_CHECKPOINTS"].default == "`false`"


def test_each_variable_names_the_group_code_reads_it_from() -> None:
    listed = {variable.name: variable for variable in settings_doc.variables()}
    assert listed["AR_REDIS_URL"].where == "settings"
    assert listed["AR_TRAINER_IMAGE"].where == "settings.sandbox"
    assert listed["AR_ACCEPT_RULE"].where == "settings.acceptance"
    assert listed["AR_AGENT_NAME"].where == "AgentSettings()"
    assert listed["AR_ADMIN_TOKEN"].where == "settings"  # the agents' fallback is not listed twice
