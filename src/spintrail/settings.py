"""Settings: every option declared once, with its help text, read from flags, environment or a config file.

Precedence, highest first: command-line flags, ``SPINTRAIL_*`` environment variables, the TOML config file
(``--config`` or ``SPINTRAIL_CONFIG``), then the defaults below. ``docs/configuration.md`` is checked against
this declaration by the test suite.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "SPINTRAIL_"


class Settings(BaseSettings):
    """All of spintrail's settings. Environment names are ``SPINTRAIL_`` + the upper-cased field name."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="Address the HTTP server listens on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port the HTTP server listens on.")
    database: str = Field(
        "./spintrail.db",
        description="Where events are stored: a SQLite file path (or `sqlite:///path`), "
        "or a `postgresql://` URL.",
    )
    default_instance: str | None = Field(
        None,
        description="Spinnaker instance recorded for events that name none (no `X-Spinnaker-Instance` "
        "header, no `?instance=` parameter, no `instance` field in a template).",
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, in bytes, after gzip decompression; larger bodies "
        "get 413.",
    )
    ticket_pattern: str = Field(
        r"[A-Z][A-Z0-9]+-\d+",
        description="Regular expression that finds change tickets (Jira keys) in parameters, "
        "descriptions, reasons, judgment input and build info.",
    )
    commit_batch_max: int = Field(
        2000,
        ge=1,
        description="Most events written in one group commit. Larger batches raise throughput and latency.",
    )
    write_queue_max: int = Field(
        20000,
        ge=1,
        description="Most events waiting to be committed. When the queue is full, ingest answers 503 "
        "with Retry-After so echo retries later.",
    )
    raw_compression_level: int = Field(
        7,
        ge=1,
        le=19,
        description="zstd level of the SQLite store's raw event streams. Higher levels store less and cost "
        "more CPU per event (docs/benchmarks.md).",
    )
    raw_compression_memory: int = Field(
        128 * 1024 * 1024,
        ge=2 * 1024 * 1024,
        description="Bytes of memory for the SQLite store's open compression streams (about 1.25 MiB each, "
        "one per pipeline recently active). Fewer streams store more bytes per event.",
    )
    log_level: str = Field("info", description="Log level: debug, info, warning or error.")
    access_log: bool = Field(
        False,
        description="Log every HTTP request (uvicorn's access log). Off by default: at high event rates "
        "the log line costs more than receiving a small event.",
    )

    @field_validator("ticket_pattern")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls))


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by ``SPINTRAIL_CONFIG`` (set by ``--config``)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = os.environ.get(ENV_PREFIX + "CONFIG")
        self._data: dict[str, Any] = load_config_file(path) if path else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML config file whose keys are setting names; errors name the file and the problem."""
    p = Path(path)
    try:
        with p.open("rb") as fp:
            data = tomllib.load(fp)
    except FileNotFoundError:
        raise SystemExit(f"config file {p} does not exist: check --config / SPINTRAIL_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"config file {p} is not valid TOML: {exc}") from None
    section = data.get("spintrail", data)
    unknown = sorted(set(section) - set(Settings.model_fields))
    if unknown:
        raise SystemExit(
            f"config file {p} has unknown settings: {', '.join(unknown)}. "
            "See docs/configuration.md for the list."
        )
    return dict(section)


def load_settings(**overrides: Any) -> Settings:
    """Settings from flags (``overrides`` with ``None`` meaning "not given"), env and config file."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def store_options(settings: Settings) -> dict[str, int]:
    """The SQLite store's tuning settings as ``open_store`` keyword arguments (none for PostgreSQL)."""
    if settings.database.startswith(("postgresql://", "postgres://")):
        return {}
    return {
        "compression_level": settings.raw_compression_level,
        "compression_memory": settings.raw_compression_memory,
    }
