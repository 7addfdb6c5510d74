"""Reference docs generated from the code: the CLI reference and the settings table.

``python -m spintrail.docgen`` rewrites ``docs/cli.md`` and the settings table in ``README.md``; the test
suite fails when either is out of date, so the docs stay true.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from spintrail.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
TABLE_START = "<!-- settings-table -->"
TABLE_END = "<!-- /settings-table -->"


def settings_table() -> str:
    """The Markdown table of every setting: name, environment variable, default, meaning."""
    lines = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "none" if field.default is None else f"`{field.default}`"
        lines.append(f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | {default} | {field.description} |")
    return "\n".join(lines)


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    ctx = group.context_class(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        full = f"{prefix} {name}"
        out.append((full, cmd))
        if hasattr(cmd, "list_commands"):
            out += _commands(cmd, full)
    return out


def cli_markdown() -> str:
    """``docs/cli.md``: every command with its help and options."""
    from spintrail.cli import app

    root = typer.main.get_command(app)
    parts = [
        "# Command line reference",
        "",
        "Generated from the code by `python -m spintrail.docgen`; do not edit by hand.",
        "Every command reads settings from flags, `SPINTRAIL_*` environment variables and `--config FILE`",
        "(see the configuration reference in the README). Commands that print rows take",
        "`--format table|json|csv`.",
        "",
    ]
    for name, cmd in _commands(root, "spintrail"):
        parts += [f"## `{name}`", "", (cmd.help or "").strip(), ""]
        args = [p for p in cmd.params if p.param_type_name == "argument"]
        if args:
            usage = " ".join(
                (a.metavar or a.name or "").upper() + ("..." if a.nargs != 1 else "") for a in args
            )
            parts += [f"Usage: `{name} [OPTIONS] {usage}`", ""]
        opts = [p for p in cmd.params if p.param_type_name == "option" and p.name != "help"]
        if opts:
            parts += ["| option | default | meaning |", "|---|---|---|"]
            for o in opts:
                flags = ", ".join(f"`{f}`" for f in [*o.opts, *o.secondary_opts])
                default = o.default
                shown = "" if default in (None, (), []) or callable(default) else f"`{_default(default)}`"
                text = (o.help or "").replace("|", "\\|")
                parts.append(f"| {flags} | {shown} | {text} |")
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _default(value: object) -> str:
    return str(getattr(value, "value", value))


def readme_with_table(readme: str) -> str:
    start = readme.index(TABLE_START) + len(TABLE_START)
    end = readme.index(TABLE_END)
    return readme[:start] + "\n" + settings_table() + "\n" + readme[end:]


def main() -> int:
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "cli.md").write_text(cli_markdown())
    readme = ROOT / "README.md"
    readme.write_text(readme_with_table(readme.read_text()))
    print("wrote docs/cli.md and the README settings table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
