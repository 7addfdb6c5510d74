"""The docs are true: every setting and CLI command is documented, and the generated parts are current."""

from __future__ import annotations

from spintrail import docgen
from spintrail.settings import ENV_PREFIX, Settings

README = (docgen.ROOT / "README.md").read_text()
CLI_MD = (docgen.ROOT / "docs" / "cli.md").read_text()


def test_cli_reference_is_current() -> None:
    assert docgen.cli_markdown() == CLI_MD, "docs/cli.md is stale: run `python -m spintrail.docgen`"


def test_readme_settings_table_is_current() -> None:
    assert docgen.readme_with_table(README) == README, (
        "README settings table is stale: run `python -m spintrail.docgen`"
    )


def test_every_setting_has_help_and_is_in_the_readme() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no help text"
        assert f"`{ENV_PREFIX}{name.upper()}`" in README


def test_every_command_is_documented_with_help() -> None:
    import typer

    from spintrail.cli import app

    root = typer.main.get_command(app)
    for name, cmd in docgen._commands(root, "spintrail"):
        assert cmd.help, f"{name} has no help text"
        assert f"## `{name}`" in CLI_MD
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":
                assert p.help, f"{name} {p.opts[0]} has no help text"


def test_readme_names_the_two_commands() -> None:
    assert ".venv/bin/pip install . && .venv/bin/spintrail serve" in README
    assert "bash scripts/test" in README
    assert "bash scripts/test" in (docgen.ROOT / ".ci" / "run").read_text()
