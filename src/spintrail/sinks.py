"""Forwarding sinks: format audit records for a SIEM and deliver batches of them over the wire.

Three kinds: Splunk HTTP Event Collector (:class:`HecSink`), syslog RFC 5424 over TCP, TLS or UDP
(:class:`SyslogSink`) and an NDJSON webhook (:class:`WebhookSink`). Each takes a batch of
:class:`Delivery` and either returns (the whole batch is delivered) or raises one of::

    SinkError                 base; ``delivered`` = how many leading deliveries of the batch were accepted
    ├── SinkUnavailable       transient (network, busy, timeout): retry the rest later
    ├── SinkRejected          the data was refused: dead-letter it (``reason``, ``seq`` of the culprit)
    └── SinkAuthError         the sink is misconfigured (credentials, index, channel): pause it and report

Each sink's ``payload`` option picks what is sent: ``record`` (the audit record as the API shows it),
``event`` (the original echo event, already redacted) or ``both`` (``{"record": ..., "event": ...}``).
"""

from __future__ import annotations

import abc
import gzip
import json
import logging
import os
import select
import socket
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, field_validator

from spintrail import splunk
from spintrail.record import format_time

log = logging.getLogger(__name__)

PayloadKind = Literal["record", "event", "both"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One audit record waiting in the outbox: its position, ids, both shapes of it, and its time."""

    seq: int
    event_id: str
    record: dict[str, Any]
    event: dict[str, Any]
    time_ms: int


class SinkError(Exception):
    """A batch was not (fully) delivered. ``delivered`` leading deliveries of it were accepted."""

    def __init__(self, message: str, *, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class SinkUnavailable(SinkError):
    """The target could not take the batch now (network, timeout, busy): retry later."""


class SinkRejected(SinkError):
    """The target refused the data itself: dead-letter it. ``seq`` names the refused delivery when known."""

    def __init__(self, reason: str, *, delivered: int = 0, seq: int | None = None) -> None:
        super().__init__(reason, delivered=delivered)
        self.reason = reason
        self.seq = seq


class SinkAuthError(SinkError):
    """The sink's configuration was refused (credentials, index, channel): pause the sink and report."""


def payload_of(delivery: Delivery, kind: PayloadKind) -> dict[str, Any]:
    """The JSON object a sink sends for ``delivery`` under the ``payload`` option ``kind``."""
    if kind == "record":
        return delivery.record
    if kind == "event":
        return delivery.event
    return {"record": delivery.record, "event": delivery.event}


# --------------------------------------------------------------------------------------------- configuration

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _SinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_PATTERN, description="Unique sink name (letters, digits, `_.-`).")
    payload: PayloadKind = Field("record", description="What is sent: record, event or both.")
    start: Literal["now", "beginning"] = Field(
        "now",
        description="Where a new sink starts: events stored from now on, or every event already stored.",
    )
    checkpoints: bool = Field(
        False,
        description="Also send each new signed checkpoint to this sink, as one `spintrail:checkpoint` "
        "message (best effort).",
    )


def _check_http_url(value: str) -> str:
    url = httpx.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


class HecSinkConfig(_SinkConfig):
    """A Splunk HTTP Event Collector target."""

    kind: Literal["splunk_hec"] = "splunk_hec"
    url: str = Field(description="HEC base URL, e.g. https://splunk.example.com:8088.")
    token: SecretStr = Field(description="HEC token (a GUID), sent as `Authorization: Splunk <token>`.")
    index: str | None = Field(None, description="Target index; the token's default index when unset.")
    source: str = "spintrail"
    sourcetype: str = "spintrail:audit"
    host: str | None = Field(None, description="Splunk `host` of every event; this machine's name if unset.")
    max_events: int = Field(100, ge=1, description="Most events in one request.")
    max_bytes: int = Field(1_000_000, ge=256, description="Largest request body before compression.")
    gzip: bool = Field(False, description="Compress request bodies (`Content-Encoding: gzip`).")
    ca_file: Path | None = Field(None, description="CA bundle that signs the HEC server certificate.")
    insecure: bool = Field(False, description="Do not verify the server certificate.")
    timeout: float = Field(10.0, gt=0, description="Seconds to connect, and to wait for each answer.")
    ack: bool = Field(False, description="Wait for indexer acknowledgement before counting a batch sent.")
    ack_timeout: float = Field(300.0, gt=0, description="Seconds to wait for acknowledgement.")
    ack_poll_interval: float = Field(10.0, gt=0, description="Seconds between acknowledgement queries.")
    channel: uuid.UUID | None = Field(None, description="Request channel GUID; a random one if unset.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_http_url(value)


class WebhookSinkConfig(_SinkConfig):
    """An HTTP(S) endpoint that takes NDJSON batches."""

    kind: Literal["webhook"] = "webhook"
    url: str = Field(description="Where batches are POSTed.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    max_events: int = Field(100, ge=1, description="Most records in one request.")
    max_bytes: int = Field(1_000_000, ge=256, description="Largest request body.")
    ca_file: Path | None = None
    insecure: bool = False
    timeout: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_http_url(value)


#: Syslog facility names (RFC 5424 table 1, with the names syslog daemons use).
FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13, "alert": 14, "clock": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}  # fmt: skip

SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5


class SyslogSinkConfig(_SinkConfig):
    """A syslog receiver speaking RFC 5424 over TCP (RFC 6587), TLS (RFC 5425) or UDP (RFC 5426)."""

    kind: Literal["syslog"] = "syslog"
    host: str = Field(description="Receiver host name or address.")
    port: int | None = Field(None, ge=1, le=65535, description="Receiver port; 514, or 6514 for TLS.")
    transport: Literal["tcp", "tls", "udp"] = "tcp"
    framing: Literal["octet-counting", "newline"] = Field(
        "octet-counting", description="Stream framing (RFC 6587): octet counting, or a trailing newline."
    )
    ca_file: Path | None = Field(None, description="CA bundle that signs the receiver certificate (TLS).")
    client_cert: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    client_key: Path | None = Field(None, description="Key of the client certificate, if not in it.")
    insecure: bool = Field(False, description="Do not verify the receiver certificate (TLS).")
    server_name: str | None = Field(None, description="Name expected in the receiver certificate.")
    facility: int = Field(FACILITIES["local0"], ge=0, le=23, description="Facility, by number or name.")
    app_name: str = Field("spintrail", pattern=r"^[!-~]{1,48}$")
    hostname: str | None = Field(None, description="HOSTNAME field; this machine's name if unset.")
    sd_name: str = Field("spintrail", pattern=r"^[!-~]{1,20}$", description="SD-ID name before the @.")
    enterprise_id: str = Field(
        "32473", pattern=r"^[0-9]+(\.[0-9]+)*$", description="Private enterprise number of the SD-ID."
    )
    max_udp_bytes: int = Field(2048, ge=480, le=65507, description="Largest datagram sent over UDP.")
    udp_oversize: Literal["reject", "truncate"] = Field(
        "reject", description="What to do with a message larger than max_udp_bytes over UDP."
    )
    timeout: float = Field(10.0, gt=0, description="Seconds to connect and to write.")

    @field_validator("facility", mode="before")
    @classmethod
    def _facility_name(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.isdigit():
            try:
                return FACILITIES[value.lower()]
            except KeyError:
                raise ValueError(f"unknown facility {value!r}; one of {', '.join(FACILITIES)}") from None
        return value

    @field_validator("sd_name")
    @classmethod
    def _sd_name(cls, value: str) -> str:
        if any(c in value for c in '=]"@'):
            raise ValueError("an SD-ID name cannot contain '=', ']', '\"' or '@'")
        return value

    @property
    def effective_port(self) -> int:
        return self.port or (6514 if self.transport == "tls" else 514)


SinkConfig = Annotated[HecSinkConfig | SyslogSinkConfig | WebhookSinkConfig, Field(discriminator="kind")]
_SINK_CONFIG: TypeAdapter[HecSinkConfig | SyslogSinkConfig | WebhookSinkConfig] = TypeAdapter(SinkConfig)


# --------------------------------------------------------------------------------------------------- sinks


class Sink(abc.ABC):
    """A forwarding target. ``send`` delivers a whole batch or raises a :class:`SinkError`."""

    config: HecSinkConfig | SyslogSinkConfig | WebhookSinkConfig

    @property
    def name(self) -> str:
        return self.config.name

    @abc.abstractmethod
    def send(self, batch: Sequence[Delivery]) -> None:
        """Deliver ``batch`` in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON; text with lone surrogates (not encodable as UTF-8) falls back to escaped ASCII."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def _chunks(items: Sequence[bytes], max_events: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """Split encoded items into ``[start, end)`` runs of at most ``max_events`` items and ``max_bytes``
    bytes; an item bigger than ``max_bytes`` on its own goes alone."""
    start, size = 0, 0
    for i, item in enumerate(items):
        if i > start and (i - start >= max_events or size + len(item) > max_bytes):
            yield start, i
            start, size = i, 0
        size += len(item)
    if start < len(items):
        yield start, len(items)


def _ssl_context(ca_file: Path | None, insecure: bool) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load CA file {ca_file}: {exc}") from exc
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _http_client(
    config: HecSinkConfig | WebhookSinkConfig, transport: httpx.BaseTransport | None
) -> httpx.Client:
    return httpx.Client(
        verify=_ssl_context(config.ca_file, config.insecure),
        timeout=httpx.Timeout(config.timeout),
        transport=transport,
        headers={"User-Agent": "spintrail"},
    )


def _transport_error(name: str, url: str, timeout: float, exc: httpx.HTTPError) -> SinkError:
    """A failed HTTP exchange as a sink error: an unverifiable certificate pauses, the rest is retried."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return SinkAuthError(f"{name}: TLS certificate of {url} not accepted: {cause.verify_message}")
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return SinkUnavailable(f"{name}: no answer from {url} within {timeout} s")
    return SinkUnavailable(f"{name}: cannot reach {url}: {exc}")


def _culprit(batch: Sequence[Delivery], start: int, end: int, number: int | None) -> int | None:
    """The seq of the refused delivery: the numbered one, or the only one in the request."""
    if number is not None and 0 <= number < end - start:
        return batch[start + number].seq
    return batch[start].seq if end - start == 1 else None


class HecSink(Sink):
    """Splunk HTTP Event Collector: concatenated JSON events POSTed to ``/services/collector/event``.

    Every event carries ``fields`` ``event_id``, ``spinnaker_instance`` and ``application`` (indexed,
    for dedupe and search). With ``ack`` on, each request goes on the sink's channel and the batch counts
    as delivered only once every request is acknowledged by the indexers.
    """

    def __init__(self, config: HecSinkConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        base = config.url.rstrip("/")
        for suffix in ("/services/collector/event", "/services/collector"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
                break
        self.event_url = base + "/services/collector/event"
        self.ack_url = base + "/services/collector/ack"
        self.channel = str(config.channel or uuid.uuid4())
        self.ack_active = config.ack
        self._host = config.host or socket.gethostname()
        self._client = _http_client(config, transport)

    def close(self) -> None:
        self._client.close()

    def envelope(self, delivery: Delivery) -> dict[str, Any]:
        """The HEC event object sent for ``delivery``."""
        out: dict[str, Any] = {
            "time": delivery.time_ms / 1000,
            "host": self._host,
            "source": self.config.source,
            "sourcetype": self.config.sourcetype,
        }
        if self.config.index:
            out["index"] = self.config.index
        out["event"] = payload_of(delivery, self.config.payload)
        fields = {"event_id": delivery.event_id}
        for key in ("spinnaker_instance", "application"):
            value = delivery.record.get(key)
            if isinstance(value, str) and value:
                fields[key] = value
        out["fields"] = fields
        return out

    def _headers(self) -> dict[str, str]:
        headers = {
            "Authorization": f"Splunk {self.config.token.get_secret_value()}",
            "Content-Type": "application/json",
        }
        if self.ack_active:
            headers["X-Splunk-Request-Channel"] = self.channel
        return headers

    def _post(self, url: str, body: bytes, *, compress: bool) -> httpx.Response:
        headers = self._headers()
        if compress:
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        try:
            return self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _transport_error(self.name, url, self.config.timeout, exc) from exc

    def send(self, batch: Sequence[Delivery]) -> None:
        encoded = [_json_bytes(self.envelope(d)) + b"\n" for d in batch]
        pending: dict[int, int] = {}  # ackId -> end of the run it confirms
        confirmed = 0
        for start, end in _chunks(encoded, self.config.max_events, self.config.max_bytes):
            # In ack mode nothing counts as delivered until acknowledged.
            done = confirmed if self.ack_active else start
            try:
                response = self._post(self.event_url, b"".join(encoded[start:end]), compress=self.config.gzip)
            except SinkError as exc:
                exc.delivered = done
                raise
            self._raise_for(response, batch, start, end, done)
            if self.ack_active:
                ack_id = _ack_id(response.content)
                if ack_id is None:
                    log.warning(
                        "%s: HEC gave no ackId; indexer acknowledgement is off for the token", self.name
                    )
                    self.ack_active = False
                    confirmed = end
                else:
                    pending[ack_id] = end
            else:
                confirmed = end
        if pending:
            self._wait_for_acks(pending)

    def _raise_for(
        self, response: httpx.Response, batch: Sequence[Delivery], start: int, end: int, done: int
    ) -> None:
        outcome = splunk.classify_response(response.status_code, response.content)
        if outcome is splunk.Outcome.DELIVERED:
            return
        what = f"{self.name}: {splunk.describe_response(response.status_code, response.content)}"
        if outcome is splunk.Outcome.RETRY:
            raise SinkUnavailable(what, delivered=done)
        if outcome is splunk.Outcome.PAUSE:
            raise SinkAuthError(what, delivered=done)
        _, _, number = splunk.response_code(response.content)
        raise SinkRejected(what, delivered=done, seq=_culprit(batch, start, end, number))

    def _wait_for_acks(self, pending: dict[int, int]) -> None:
        deadline = time.monotonic() + self.config.ack_timeout
        waiting = dict(pending)
        last_problem = "not acknowledged yet"
        while True:
            try:
                response = self._post(self.ack_url, _json_bytes({"acks": sorted(waiting)}), compress=False)
            except SinkUnavailable as exc:
                last_problem = str(exc)
            else:
                code, _, _ = splunk.response_code(response.content)
                if code == 14:
                    log.warning("%s: indexer acknowledgement is disabled for the token", self.name)
                    self.ack_active = False
                    return
                outcome = splunk.classify_response(response.status_code, response.content)
                if outcome is splunk.Outcome.DELIVERED:
                    for ack_id in _acked(response.content):
                        waiting.pop(ack_id, None)
                    if not waiting:
                        return
                elif outcome is splunk.Outcome.RETRY:
                    last_problem = splunk.describe_response(response.status_code, response.content)
                else:
                    what = splunk.describe_response(response.status_code, response.content)
                    raise SinkAuthError(f"{self.name}: acknowledgement query refused: {what}")
            if time.monotonic() + self.config.ack_poll_interval > deadline:
                raise SinkUnavailable(
                    f"{self.name}: {len(waiting)} of {len(pending)} HEC requests not acknowledged within "
                    f"{self.config.ack_timeout} s ({last_problem})",
                    delivered=_confirmed_prefix(pending, waiting),
                )
            time.sleep(self.config.ack_poll_interval)


def _confirmed_prefix(pending: Mapping[int, int], waiting: Mapping[int, int]) -> int:
    """How many leading deliveries are covered by acknowledged requests with nothing unconfirmed before."""
    done = 0
    for ack_id in sorted(pending, key=lambda a: pending[a]):
        if ack_id in waiting:
            break
        done = pending[ack_id]
    return done


def _ack_id(body: bytes) -> int | None:
    try:
        value = json.loads(body).get("ackId")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _acked(body: bytes) -> list[int]:
    try:
        acks = json.loads(body).get("acks")
    except (ValueError, AttributeError):
        return []
    if not isinstance(acks, dict):
        return []
    return [int(k) for k, v in acks.items() if v is True and k.isdigit()]


class WebhookSink(Sink):
    """POSTs batches as NDJSON (one payload per line, ``application/x-ndjson``).

    2xx: delivered. 429, 5xx, timeouts and network errors: :class:`SinkUnavailable`. 401/403:
    :class:`SinkAuthError`. Any other 4xx: :class:`SinkRejected`. Redirects are not followed and count
    as unavailable.
    """

    def __init__(self, config: WebhookSinkConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self._client = _http_client(config, transport)

    def close(self) -> None:
        self._client.close()

    def send(self, batch: Sequence[Delivery]) -> None:
        lines = [_json_bytes(payload_of(d, self.config.payload)) + b"\n" for d in batch]
        headers = {"Content-Type": "application/x-ndjson", **self.config.headers}
        for start, end in _chunks(lines, self.config.max_events, self.config.max_bytes):
            try:
                response = self._client.post(
                    self.config.url, content=b"".join(lines[start:end]), headers=headers
                )
            except httpx.HTTPError as exc:
                error = _transport_error(self.name, self.config.url, self.config.timeout, exc)
                error.delivered = start
                raise error from exc
            status = response.status_code
            if 200 <= status < 300:
                continue
            snippet = response.content[:200].decode("utf-8", "replace").strip()
            what = f"{self.name}: HTTP {status}" + (f": {snippet}" if snippet else "")
            if status in (401, 403):
                raise SinkAuthError(what, delivered=start)
            if 400 <= status < 500 and status not in (408, 429):
                raise SinkRejected(what, delivered=start, seq=_culprit(batch, start, end, None))
            raise SinkUnavailable(what, delivered=start)


# -------------------------------------------------------------------------------------------------- syslog

#: Record statuses that make a syslog message a warning rather than a notice.
FAILURE_STATUSES = frozenset(
    {"failed", "failed_continue", "terminal", "canceled", "cancelled", "failure", "aborted", "error"}
)

#: Record fields carried as SD-PARAMs, by PARAM-NAME; list fields are joined with commas.
SD_PARAMS: tuple[tuple[str, str], ...] = (
    ("event_id", "event_id"),
    ("source", "source"),
    ("type", "type"),
    ("status", "status"),
    ("spinnaker_instance", "spinnaker_instance"),
    ("application", "application"),
    ("pipeline", "pipeline"),
    ("execution_id", "execution_id"),
    ("stage", "stage"),
    ("task", "task"),
    ("user", "user"),
    ("run_as_user", "run_as_user"),
    ("trigger_type", "trigger_type"),
    ("account", "accounts"),
    ("region", "regions"),
    ("cluster", "clusters"),
    ("namespace", "namespaces"),
    ("ticket", "tickets"),
)

_BOM = "\ufeff".encode()


def _header_field(value: str | None, limit: int) -> str:
    """A HEADER field: printable US-ASCII without spaces, cut to ``limit``, or the NILVALUE ``-``."""
    if not value:
        return "-"
    cleaned = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return cleaned or "-"


def sd_escape(value: str) -> str:
    """Escape a PARAM-VALUE: ``"``, ``\\`` and ``]`` get a backslash (RFC 5424 section 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_severity(record: Mapping[str, Any]) -> int:
    """Warning (4) for failed, terminal or canceled work; notice (5) for everything else."""
    status = record.get("status")
    kind = record.get("type")
    if isinstance(status, str) and status.lower() in FAILURE_STATUSES:
        return SEVERITY_WARNING
    if isinstance(kind, str) and kind.lower().endswith(":failed"):
        return SEVERITY_WARNING
    return SEVERITY_NOTICE


class SyslogSink(Sink):
    """RFC 5424 messages with a ``[spintrail@32473 ...]`` SD-ELEMENT and the JSON payload as MSG.

    TCP and TLS frame each message by octet counting (``LEN SP MSG``) or with a trailing newline; UDP sends
    one datagram per message and rejects (or truncates) those over ``max_udp_bytes``.
    """

    def __init__(self, config: SyslogSinkConfig) -> None:
        self.config = config
        self._hostname = _header_field(config.hostname or socket.gethostname(), 255)
        self._procid = _header_field(str(os.getpid()), 128)
        self._sd_id = f"{config.sd_name}@{config.enterprise_id}"
        if len(self._sd_id) > 32:
            raise ValueError(f"SD-ID {self._sd_id!r} is longer than 32 characters")
        self._sock: socket.socket | None = None
        self._ssl: ssl.SSLContext | None = None
        if config.transport == "tls":
            ctx = _ssl_context(config.ca_file, config.insecure)
            if config.client_cert:
                key = str(config.client_key) if config.client_key else None
                try:
                    ctx.load_cert_chain(str(config.client_cert), key)
                except (OSError, ssl.SSLError) as exc:
                    raise ValueError(f"cannot load client certificate {config.client_cert}: {exc}") from exc
            self._ssl = ctx

    def format(self, delivery: Delivery) -> bytes:
        """The RFC 5424 SYSLOG-MSG for ``delivery`` (unframed)."""
        record = delivery.record
        pri = self.config.facility * 8 + syslog_severity(record)
        header = " ".join(
            (
                f"<{pri}>1",
                format_time(delivery.time_ms) or "-",
                self._hostname,
                _header_field(self.config.app_name, 48),
                self._procid,
                _header_field(record.get("type"), 32),
            )
        )
        return (
            (header + " " + self.structured_data(delivery)).encode("utf-8", "replace")
            + b" "
            + self._msg(delivery)
        )

    def structured_data(self, delivery: Delivery) -> str:
        """The STRUCTURED-DATA field: one SD-ELEMENT with the record's identifying fields."""
        newline_safe = self.config.transport != "udp" and self.config.framing == "newline"
        params = []
        for name, key in SD_PARAMS:
            value = delivery.event_id if key == "event_id" else delivery.record.get(key)
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            if value is None or value == "":
                continue
            text = str(value)
            if newline_safe:
                text = text.replace("\r", " ").replace("\n", " ")
            params.append(f'{name}="{sd_escape(text)}"')
        return "[" + " ".join((self._sd_id, *params)) + "]"

    def _msg(self, delivery: Delivery) -> bytes:
        payload = payload_of(delivery, self.config.payload)
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: fall back to escaped ASCII JSON
            return json.dumps(payload, separators=(",", ":")).encode("ascii")
        # RFC 5424 section 6.4: MSG encoded in UTF-8 starts with a BOM; pure ASCII is sent as is.
        return _BOM + data if not text.isascii() else data

    # ---------------------------------------------------------------------------------------- transport

    def _open(self) -> socket.socket:
        cfg = self.config
        address = (cfg.host, cfg.effective_port)
        if cfg.transport == "udp":
            family = socket.getaddrinfo(cfg.host, cfg.effective_port, type=socket.SOCK_DGRAM)[0][0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.settimeout(cfg.timeout)
            sock.connect(address)
            return sock
        sock = socket.create_connection(address, timeout=cfg.timeout)
        if self._ssl is not None:
            try:
                sock = self._ssl.wrap_socket(sock, server_hostname=cfg.server_name or cfg.host)
            except (OSError, ssl.SSLError):
                sock.close()
                raise
        sock.settimeout(cfg.timeout)
        return sock

    def _socket(self) -> socket.socket:
        if self._sock is not None and self.config.transport != "udp" and _peer_closed(self._sock):
            self.close()
        if self._sock is None:
            self._sock = self._open()
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def frame(self, message: bytes) -> bytes:
        """``message`` framed for a stream transport (RFC 6587)."""
        if self.config.framing == "octet-counting":
            return str(len(message)).encode("ascii") + b" " + message
        return message + b"\n"

    def send(self, batch: Sequence[Delivery]) -> None:
        messages = [self.format(d) for d in batch]
        where = f"{self.config.transport}://{self.config.host}:{self.config.effective_port}"
        if self.config.transport == "udp":
            self._send_datagrams(batch, messages, where)
            return
        data = b"".join(self.frame(m) for m in messages)
        try:
            self._socket().sendall(data)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            self.close()
            raise SinkUnavailable(f"{self.name}: {where} closed the TLS connection: {exc}") from exc
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise SinkAuthError(
                f"{self.name}: TLS certificate of {where} not accepted: {exc.verify_message}"
            ) from exc
        except ssl.SSLError as exc:
            self.close()
            raise SinkAuthError(f"{self.name}: TLS handshake with {where} failed: {exc}") from exc
        except OSError as exc:
            self.close()
            raise SinkUnavailable(f"{self.name}: cannot write to {where}: {exc}") from exc

    def _send_datagrams(self, batch: Sequence[Delivery], messages: list[bytes], where: str) -> None:
        limit = self.config.max_udp_bytes
        for i, message in enumerate(messages):
            if len(message) > limit:
                if self.config.udp_oversize == "reject":
                    raise SinkRejected(
                        f"{self.name}: syslog message of {len(message)} bytes exceeds the UDP limit of "
                        f"{limit} bytes (raise max_udp_bytes, send payload=record, or use TCP)",
                        delivered=i,
                        seq=batch[i].seq,
                    )
                message = _truncate_utf8(message, limit)
            try:
                self._socket().send(message)
            except OSError as exc:
                self.close()
                raise SinkUnavailable(f"{self.name}: cannot send to {where}: {exc}", delivered=i) from exc


def _truncate_utf8(data: bytes, limit: int) -> bytes:
    """Cut ``data`` to at most ``limit`` bytes without splitting a UTF-8 sequence."""
    cut = data[:limit]
    return cut.decode("utf-8", "ignore").encode("utf-8") if cut else cut


def _peer_closed(sock: socket.socket) -> bool:
    """True when the receiver has closed the connection (a syslog receiver never sends data otherwise)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            data = sock.recv(1) if isinstance(sock, ssl.SSLSocket) else sock.recv(1, socket.MSG_PEEK)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # TLS housekeeping (e.g. a session ticket), no application data
        finally:
            sock.settimeout(timeout)
        return not data
    except (OSError, ValueError):
        return True


# ------------------------------------------------------------------------------------------------- factory


def build_sink(
    config: HecSinkConfig | SyslogSinkConfig | WebhookSinkConfig | Mapping[str, Any],
    *,
    transport: httpx.BaseTransport | None = None,
) -> Sink:
    """Make the sink a configuration describes (a config model, or a mapping with a ``kind`` key).

    ``transport`` replaces the HTTP transport of the HTTP sinks.
    """
    if isinstance(config, Mapping):
        config = _SINK_CONFIG.validate_python(dict(config))
    if isinstance(config, HecSinkConfig):
        return HecSink(config, transport=transport)
    if isinstance(config, WebhookSinkConfig):
        return WebhookSink(config, transport=transport)
    return SyslogSink(config)
