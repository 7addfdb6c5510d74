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
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from spintrail.sinks import SinkConfig

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
    commit_wait_ms: float = Field(
        10.0,
        ge=0,
        le=1000,
        description="Most milliseconds a group commit waits for events that requests are still preparing "
        "(their bodies read, decoded, redacted). A commit costs the CPU of several events, so under load "
        "larger groups raise throughput; with no request in progress the commit starts at once. 0: never "
        "wait.",
    )
    write_queue_max: int = Field(
        20000,
        ge=1,
        description="Most events waiting to be committed. When the queue is full, ingest answers 503 "
        "with Retry-After so echo retries later.",
    )
    max_events_per_request: int = Field(
        10000,
        ge=1,
        description="Most events one ingest request may hold (on both ingest routes); more get 413. Each "
        "event is also counted in memory (about 2 KiB plus twice its size) against twice `max_body_bytes`, "
        "so a body of countless tiny events is refused (413) before it is all decoded. `write_queue_max` "
        "bounds it too: a request never holds more events than the write queue.",
    )
    log_level: str = Field("info", description="Log level: debug, info, warning or error.")
    access_log: bool = Field(
        False,
        description="Log every HTTP request (uvicorn's access log). Off by default: at high event rates "
        "the log line costs more than receiving a small event.",
    )
    hec_tokens: Annotated[list[str], NoDecode] = Field(
        [],
        description="Tokens accepted by the Splunk-compatible endpoint (`/services/collector/event`) in "
        "`Authorization: Splunk <token>` (or as the Basic password), besides API tokens with the ingest "
        "role; comma separated in the environment. With some set, that endpoint always needs a token; with "
        "none, it follows `auth` like every other route.",
    )
    sinks: list[SinkConfig] = Field(
        [],
        description="Where stored records are forwarded: `[[sinks]]` tables in the config file, or a JSON "
        "array in the environment; each has `name`, `kind` (`splunk_hec`, `syslog`, `webhook`), `payload` "
        "(`record`, `event`, `both`) and the kind's options. See docs/forwarding.md.",
    )
    forward_batch_max: int = Field(
        500, ge=1, description="Most events a sink worker reads from the outbox and sends in one round."
    )
    forward_poll_interval: float = Field(
        1.0,
        gt=0,
        description="Seconds an idle sink worker waits before looking for events written by other "
        "processes (events this process stores wake it at once).",
    )
    forward_retry_initial: float = Field(
        1.0, gt=0, description="Seconds before the first retry of a sink that is down; doubles each time."
    )
    forward_retry_max: float = Field(
        60.0, gt=0, description="Longest wait between retries of a sink that is down (jitter is added)."
    )
    forward_auth_pause: float = Field(
        300.0,
        ge=0,
        description="Seconds a sink stays paused after its credentials, index or certificate were refused; "
        "0 keeps it paused until `spintrail sinks resume NAME`.",
    )
    forward_lease_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a replica owns a sink's delivery without renewing; another replica takes "
        "over a sink whose owner stopped renewing.",
    )
    postgres_pool_size: int = Field(
        10,
        ge=1,
        description="Most PostgreSQL connections each process opens for reads (plus one for its writer).",
    )
    retention_task_days: int = Field(
        90,
        ge=0,
        description="Days `orca:task:*` events are kept by `spintrail retention`; 0 keeps them forever.",
    )
    retention_stage_days: int = Field(
        365, ge=0, description="Days `orca:stage:*` events are kept; 0 keeps them forever."
    )
    retention_pipeline_days: int = Field(
        2555,
        ge=0,
        description="Days `orca:pipeline:*` and `orca:orchestration:*` events are kept (7 years); "
        "0 keeps them forever.",
    )
    retention_other_days: int = Field(
        365,
        ge=0,
        description="Days every other event (builds, git, docker, manual triggers, webhooks) is kept; "
        "0 keeps them forever.",
    )
    retention_interval_hours: float = Field(
        0,
        ge=0,
        description="Run retention inside the server every this many hours; 0 (the default) never does "
        "(run `spintrail retention` from cron instead).",
    )
    # -- trust: authentication, redaction, tamper evidence (docs/security.md) ----------------------------
    auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Authentication: `auto` requires a token as soon as one exists (in the database or "
        "the token settings) or a proxy user header is set, and from then on for good, also once every "
        "token is revoked (the store remembers it; `spintrail auth off` forgets it); before that the store "
        "is open, for a try-out on one's own machine (`serve` then listens only on a loopback address). `on` "
        "always requires a token; `off` never does (everyone is admin).",
    )
    public_url: str | None = Field(
        None,
        description="The URL browsers use to reach spintrail (e.g. `https://audit.example.com`), when it "
        "is behind a reverse proxy under another name or scheme: requests with an effect (ingest, reads "
        "that write the access log) are accepted from browser pages of this origin only. Default: the "
        "request's `Host`.",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="An admin API token given by the environment (e.g. a Kubernetes Secret), used as "
        "`Authorization: Bearer <token>`; recorded as `settings:admin`.",
    )
    ingest_tokens: SecretStr | None = Field(
        None,
        description="Ingest tokens given by the environment: comma-separated `name=secret` (or bare "
        "secrets, named `settings:ingest-1`, ...). echo sends one as `Authorization: Bearer <secret>` or as "
        "the Basic password.",
    )
    token_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="How long a token look-up is cached; a revoked token stops working within this time.",
    )
    proxy_user_header: str | None = Field(
        None,
        description="Header carrying the signed-in user set by a trusted reverse proxy (e.g. "
        "`X-Forwarded-User`); honoured only from `trusted_proxies`.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses or networks (comma-separated, e.g. `10.0.0.5,10.1.0.0/16`) of reverse "
        "proxies whose `proxy_user_header` is believed.",
    )
    proxy_default_role: Literal["none", "viewer", "auditor", "admin"] = Field(
        "viewer", description="Role of a user named by the proxy header who is not in `proxy_user_roles`."
    )
    proxy_user_roles: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Roles of proxy users, comma-separated `user=role` (e.g. `alice@example.com=admin`).",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) for HTTPS; with `tls_key_file`, `serve` speaks TLS itself."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of `tls_cert_file`.")
    raw_events: Literal["keep", "redact", "drop"] = Field(
        "redact",
        description="What is kept of each event's original bytes: `keep` (exact evidence, but secrets at "
        "rest), `redact` (no secrets at rest: the bytes as received when nothing in them is secret, else the "
        "redacted event re-serialized) or `drop` (only the "
        "record and the hash).",
    )
    redaction_key_file: Path | None = Field(
        None,
        description="File holding the secret key of the `hmac-sha256:` hashes that replace secrets "
        "(created on first start). Default: a key generated and kept in the database.",
    )
    secret_key_patterns: list[str] = Field(
        default_factory=list,
        description="Extra regular expressions of key names whose values are secrets (a JSON list in the "
        "environment), on top of the built-in ones.",
    )
    signing_key_file: Path | None = Field(
        None,
        description="Ed25519 key that signs checkpoints (created on first start, mode 0600). Default: "
        "beside the SQLite file (`<database>.signing-key`), or `./spintrail-signing.key`.",
    )
    signer_state_dir: Path | None = Field(
        None,
        description="Directory where the signer keeps the last tree head it signed, outside the database, "
        "so it never signs a log that does not extend it. It must persist across restarts (in Kubernetes a "
        "volume). Default: the directory of `signing_key_file`.",
    )
    signer_join: bool = Field(
        False,
        description="Let a replica whose signer state is missing (a replica added to a PostgreSQL "
        "installation, with a new state volume) start its state from the newest checkpoint in the database "
        "that the installation's key signed, once the log is checked to extend it. Off: such a replica "
        "refuses to start, as a single server always does. Leaves after that checkpoint are unsigned, so "
        "exported checkpoints (`checkpoint_dir`, forwarding) are what proves them.",
    )
    gate_url: str | None = Field(
        None, description="Gate's base URL for `spintrail backfill` (e.g. `https://gate.example.com`)."
    )
    gate_token: SecretStr | None = Field(
        None, description="Bearer token `spintrail backfill` sends to Gate (`Authorization: Bearer`)."
    )
    gate_cookie: SecretStr | None = Field(
        None, description="Session cookie `spintrail backfill` sends to Gate, e.g. `SESSION=...`."
    )
    gate_username: str | None = Field(None, description="HTTP Basic user name for Gate (LDAP logins).")
    gate_password: SecretStr | None = Field(None, description="HTTP Basic password for Gate.")
    gate_client_cert: Path | None = Field(
        None, description="PEM client certificate for Gate's X.509 port (with `gate_client_key`)."
    )
    gate_client_key: Path | None = Field(None, description="PEM private key of `gate_client_cert`.")
    gate_ca_bundle: Path | None = Field(None, description="PEM CA bundle that signs Gate's certificate.")
    gate_rate: float = Field(
        5.0, ge=0, description="Most requests a second `spintrail backfill` sends to Gate (0: no limit)."
    )
    log_origin: str | None = Field(
        None,
        description="Name of this log in signed checkpoints. Default: `spintrail/<installation id>`.",
    )
    checkpoint_events: int = Field(
        1000, ge=1, description="Sign a checkpoint once this many events arrived since the last one."
    )
    checkpoint_seconds: float = Field(
        300.0,
        gt=0,
        description="Sign a checkpoint at least this often, also when idle (proves the log was alive).",
    )
    checkpoint_dir: Path | None = Field(
        None,
        description="Directory where every signed checkpoint is also written as a file, so a copy lives "
        "outside the database (mount it from elsewhere, or ship it off the machine).",
    )

    @field_validator("trusted_proxies", "proxy_user_roles", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    production_accounts: str = Field(
        "*prod*,!*nonprod*,!*non-prod*,!*preprod*,!*pre-prod*",
        description="Which cloud accounts are production, for the production change and separation of "
        "duties reports: comma-separated glob patterns, case-insensitive; a pattern starting with `!` "
        "excludes.",
    )
    max_inflight_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Most request bytes (after gzip decompression) being read, decoded or waiting for their "
        "commit at once, across all ingest requests. Beyond it ingest answers 503 with Retry-After at once, "
        "so memory stays bounded under a flood; a single request is always admitted when none is in flight.",
    )
    body_read_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest time to receive a request body, from the end of its headers to its last byte. "
        "A body that trickles in slower gets 408 and the connection is closed.",
    )
    header_read_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest time a client may take to send a request's headers (from connecting, or from "
        "the first byte of a following request on a kept-alive connection); slower connections are closed.",
    )
    max_header_bytes: int = Field(
        65536,
        ge=1024,
        description="Largest request line plus headers accepted, in bytes; larger ones get 400 and the "
        "connection is closed.",
    )
    keep_alive_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="How long an idle kept-alive connection stays open waiting for the next request.",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Most open connections (and running requests) at once; beyond it new requests get "
        "503 at once.",
    )
    shutdown_grace_seconds: float = Field(
        10.0,
        ge=2,
        description="After SIGTERM the server stops accepting connections and exits within this many "
        "seconds: requests in flight get all but the last second to finish and be committed, then shutdown "
        "hooks flush and the store closes. Work still running at the deadline is abandoned, never "
        "acknowledged.",
    )

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL with a host name")
        return value.strip()

    @field_validator("ticket_pattern")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @field_validator("hec_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            items = [t.strip() if isinstance(t, str) else t for t in value]
            return [t for t in items if t not in ("", None)]
        return value

    @field_validator("sinks", mode="before")
    @classmethod
    def _sink_options(cls, value: Any) -> Any:
        """Accept a sink's options inline or in an ``options`` sub-table (``[sinks.options]``)."""
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("options"), dict):
                item = {**{k: v for k, v in item.items() if k != "options"}, **item["options"]}
            out.append(item)
        return out

    @field_validator("sinks")
    @classmethod
    def _unique_sink_names(cls, value: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for sink in value:
            if sink.name in seen:
                raise ValueError(f"two sinks are named {sink.name!r}: give each sink its own name")
            seen.add(sink.name)
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
