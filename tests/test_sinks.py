"""Forwarding sinks against real peers: the HEC stand-in, a local webhook receiver and a real rsyslogd."""

from __future__ import annotations

import gzip
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from spintrail.record import AuditRecord
from spintrail.sinks import (
    Delivery,
    HecSink,
    HecSinkConfig,
    SinkAuthError,
    SinkError,
    SinkRejected,
    SinkUnavailable,
    SyslogSink,
    SyslogSinkConfig,
    WebhookSink,
    WebhookSinkConfig,
    build_sink,
    payload_of,
    sd_escape,
    syslog_severity,
)
from splunk_standin import SplunkStandin
from syslog_server import (
    Pki,
    RsyslogServer,
    free_port,
    msg_text,
    rsyslog,
    structured_data,
    write_test_pki,
)

__all__ = ["rsyslog"]  # the module-scoped rsyslogd fixture, used by the syslog tests below

TOKEN = "7b0c7c1e-5a4f-4f51-9d8e-2f1f3a6b9c00"
T0 = 1718370095050  # 2024-06-14T13:01:35.050Z


def delivery(seq: int, **changes: Any) -> Delivery:
    record = AuditRecord(
        event_id=f"ev-{seq:04d}",
        received_at=T0 + seq,
        time=T0 + seq,
        source="orca",
        type="orca:pipeline:complete",
        spinnaker_instance="prod",
        application="tracks",
        execution_id="01HZX0000000000000000000",
        pipeline="Deploy to prod",
        status="SUCCEEDED",
        user="alice@example.com",
        trigger_type="manual",
        accounts=["aws-prod", "aws-dr"],
        regions=["us-east-1"],
        id=seq,
    )
    for key, value in changes.items():
        setattr(record, key, value)
    event = {
        "details": {"source": "orca", "type": record.type, "application": "tracks", "created": str(T0)},
        "content": {"execution": {"id": record.execution_id, "status": record.status}},
    }
    return Delivery(
        seq=seq, event_id=record.event_id, record=record.to_api(), event=event, time_ms=record.time
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_test_pki(tmp_path_factory.mktemp("pki"))


# ================================================================================================ HEC


@pytest.fixture
def hec() -> Iterator[SplunkStandin]:
    with SplunkStandin((TOKEN,), indexes={"main", "spinnaker"}) as standin:
        yield standin


def hec_sink(standin: SplunkStandin, **options: Any) -> HecSink:
    config = {"name": "splunk", "url": standin.url, "token": TOKEN, "index": "spinnaker", **options}
    return HecSink(HecSinkConfig(**config))


def test_hec_delivers_events_with_metadata_and_indexed_fields(hec: SplunkStandin) -> None:
    batch = [delivery(1), delivery(2, application=None), delivery(3)]
    with hec_sink(hec, host="spintrail-1", sourcetype="spinnaker:audit") as sink:
        sink.send(batch)
    [request] = hec.event_requests()
    assert request.path == "/services/collector/event"
    assert request.headers["authorization"] == f"Splunk {TOKEN}"
    assert "x-splunk-request-channel" not in request.headers
    assert [e["event"] for e in hec.events] == [d.record for d in batch]
    first = hec.events[0]
    assert first["time"] == 1718370095.051
    assert (first["host"], first["source"], first["sourcetype"], first["index"]) == (
        "spintrail-1",
        "spintrail",
        "spinnaker:audit",
        "spinnaker",
    )
    assert first["fields"] == {"event_id": "ev-0001", "spinnaker_instance": "prod", "application": "tracks"}
    assert hec.events[1]["fields"] == {"event_id": "ev-0002", "spinnaker_instance": "prod"}


def test_hec_payload_event_and_both(hec: SplunkStandin) -> None:
    d = delivery(1)
    with hec_sink(hec, payload="event") as sink:
        sink.send([d])
    with hec_sink(hec, payload="both") as sink:
        sink.send([d])
    assert hec.events[0]["event"] == d.event
    assert hec.events[1]["event"] == {"record": d.record, "event": d.event}


def test_hec_url_may_already_name_the_collector_path(hec: SplunkStandin) -> None:
    with hec_sink(hec, url=f"{hec.url}/services/collector/") as sink:
        sink.send([delivery(1)])
    assert hec.event_requests()[0].path == "/services/collector/event"


def test_hec_gzip_body_is_accepted(hec: SplunkStandin) -> None:
    batch = [delivery(i) for i in range(20)]
    with hec_sink(hec, gzip=True) as sink:
        sink.send(batch)
    [request] = hec.event_requests()
    assert request.headers["content-encoding"] == "gzip"
    assert request.body[:2] == b"\x1f\x8b"
    plain = gzip.decompress(request.body)
    assert len(request.body) < len(plain)
    assert [e["fields"]["event_id"] for e in hec.events] == [d.event_id for d in batch]


def test_hec_batches_split_by_event_count(hec: SplunkStandin) -> None:
    batch = [delivery(i) for i in range(5)]
    with hec_sink(hec, max_events=2) as sink:
        sink.send(batch)
    assert [len(parse(r.body)) for r in hec.event_requests()] == [2, 2, 1]
    assert [e["fields"]["event_id"] for e in hec.events] == [d.event_id for d in batch]


def test_hec_batches_split_by_size(hec: SplunkStandin) -> None:
    batch = [delivery(i) for i in range(10)]
    one = len(json.dumps(hec_sink(hec).envelope(batch[0]), separators=(",", ":")).encode()) + 1
    limit = one * 3 + 10
    with hec_sink(hec, max_bytes=limit) as sink:
        sink.send(batch)
    sizes = [len(r.body) for r in hec.event_requests()]
    assert len(sizes) == 4
    assert all(size <= limit for size in sizes)
    assert [e["fields"]["event_id"] for e in hec.events] == [d.event_id for d in batch]


def test_hec_event_larger_than_max_bytes_goes_alone(hec: SplunkStandin) -> None:
    big = delivery(2, description="x" * 3000)
    with hec_sink(hec, max_bytes=1000) as sink:
        sink.send([delivery(1), big, delivery(3)])
    assert [len(parse(r.body)) for r in hec.event_requests()] == [1, 1, 1]


def parse(body: bytes) -> list[dict[str, Any]]:
    from spintrail.splunk import parse_hec_events

    return parse_hec_events(body)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (9, SinkUnavailable),
        (8, SinkUnavailable),
        (1, SinkAuthError),
        (4, SinkAuthError),
        (7, SinkAuthError),
        (6, SinkRejected),
        (13, SinkRejected),
    ],
)
def test_hec_error_codes_map_to_sink_errors(hec: SplunkStandin, code: int, error: type[SinkError]) -> None:
    hec.fail(code)
    with hec_sink(hec) as sink, pytest.raises(error) as info:
        sink.send([delivery(1), delivery(2)])
    assert f"HEC code {code}" in str(info.value)
    assert info.value.delivered == 0
    assert hec.events == []


def test_hec_http_429_is_retried_later(hec: SplunkStandin) -> None:
    hec.fail_http(429)
    with hec_sink(hec) as sink:
        with pytest.raises(SinkUnavailable, match="HTTP 429"):
            sink.send([delivery(1)])
        sink.send([delivery(1)])
    assert len(hec.events) == 1


def test_hec_failure_after_some_requests_reports_what_was_delivered(hec: SplunkStandin) -> None:
    hec.fail(9, after=2)
    with hec_sink(hec, max_events=2) as sink, pytest.raises(SinkUnavailable) as info:
        sink.send([delivery(i) for i in range(6)])
    assert info.value.delivered == 4
    assert len(hec.events) == 4


def test_hec_wrong_token_pauses(hec: SplunkStandin) -> None:
    with hec_sink(hec, token="not-the-token") as sink, pytest.raises(SinkAuthError, match="Invalid token"):
        sink.send([delivery(1)])


def test_hec_index_not_allowed_pauses(hec: SplunkStandin) -> None:
    with hec_sink(hec, index="secret") as sink, pytest.raises(SinkAuthError, match="Incorrect index"):
        sink.send([delivery(1)])


def test_hec_blank_event_is_rejected_naming_the_culprit(hec: SplunkStandin) -> None:
    batch = [delivery(10), Delivery(11, "ev-11", delivery(11).record, {}, T0), delivery(12)]
    with hec_sink(hec, payload="event") as sink, pytest.raises(SinkRejected) as info:
        sink.send(batch)
    assert info.value.seq == 11
    assert "Event field cannot be blank" in info.value.reason
    assert info.value.delivered == 0


def test_hec_slow_answer_times_out(hec: SplunkStandin) -> None:
    hec.delay = 1.0
    with (
        hec_sink(hec, timeout=0.2) as sink,
        pytest.raises(SinkUnavailable, match=r"no answer .* within 0.2 s"),
    ):
        sink.send([delivery(1)])


def test_hec_connection_refused_is_unavailable() -> None:
    standin = SplunkStandin((TOKEN,))
    standin.stop()
    with hec_sink(standin) as sink, pytest.raises(SinkUnavailable, match="cannot reach"):
        sink.send([delivery(1)])


def test_hec_over_tls_with_custom_ca(pki: Pki) -> None:
    with SplunkStandin((TOKEN,), tls=(pki.server_cert, pki.server_key)) as standin:
        assert standin.url.startswith("https://")
        with hec_sink(standin, ca_file=pki.ca_cert) as sink:
            sink.send([delivery(1)])
        with (
            hec_sink(standin, ca_file=pki.other_ca_cert) as sink,
            pytest.raises(SinkAuthError, match="certificate"),
        ):
            sink.send([delivery(2)])
        with hec_sink(standin, ca_file=pki.other_ca_cert, insecure=True) as sink:
            sink.send([delivery(3)])
        assert [e["fields"]["event_id"] for e in standin.events] == ["ev-0001", "ev-0003"]


def test_hec_ack_mode_polls_until_acknowledged() -> None:
    with SplunkStandin((TOKEN,), ack=True, ack_after=2) as standin:
        with hec_sink(standin, ack=True, max_events=1, ack_poll_interval=0.02) as sink:
            sink.send([delivery(1), delivery(2), delivery(3)])
            channel = sink.channel
        posts = standin.event_requests()
        acks = [r for r in standin.requests if r.path == "/services/collector/ack"]
        assert [r.answer["ackId"] for r in posts] == [0, 1, 2]
        assert len(acks) == 3
        assert json.loads(acks[0].body) == {"acks": [0, 1, 2]}
        assert acks[-1].answer == {"acks": {"0": True, "1": True, "2": True}}
        assert {r.headers["x-splunk-request-channel"] for r in standin.requests} == {channel}


def test_hec_ack_timeout_is_unavailable_and_delivers_nothing() -> None:
    with SplunkStandin((TOKEN,), ack=True, ack_after=10_000) as standin:
        with (
            hec_sink(standin, ack=True, ack_poll_interval=0.02, ack_timeout=0.2) as sink,
            pytest.raises(SinkUnavailable, match=r"1 of 1 HEC requests not acknowledged within 0\.2") as info,
        ):
            sink.send([delivery(1), delivery(2)])
        assert info.value.delivered == 0


def test_hec_ack_mode_falls_back_when_the_token_has_no_ack() -> None:
    with SplunkStandin((TOKEN,), ack=False) as standin:
        with hec_sink(standin, ack=True, ack_poll_interval=0.02) as sink:
            sink.send([delivery(1)])
            assert sink.ack_active is False
            sink.send([delivery(2)])
        assert len(standin.events) == 2
        assert all(r.path != "/services/collector/ack" for r in standin.requests)


def test_missing_tls_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot load CA file .*nowhere\.pem"):
        build_sink(
            {
                "kind": "splunk_hec",
                "name": "s",
                "url": "https://h",
                "token": "t",
                "ca_file": tmp_path / "nowhere.pem",
            }
        )
    with pytest.raises(ValueError, match=r"cannot load client certificate .*client\.pem"):
        build_sink(
            {
                "kind": "syslog",
                "name": "s",
                "host": "h",
                "transport": "tls",
                "client_cert": tmp_path / "client.pem",
            }
        )


def test_hec_config_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match="expected an http:// or https:// URL"):
        HecSinkConfig(name="s", url="ftp://splunk:8088", token=TOKEN)
    with pytest.raises(ValidationError, match="name"):
        HecSinkConfig(name="bad name!", url="https://splunk:8088", token=TOKEN)
    with pytest.raises(ValidationError, match="max_events"):
        HecSinkConfig(name="s", url="https://splunk:8088", token=TOKEN, max_events=0)


# ============================================================================================= webhook


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 recording each POST and answering with queued statuses (200 after)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status < 300:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                answer = f"status {status}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.url = f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/hooks/audit"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for _, body in self.requests for line in body.decode().splitlines()]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


def webhook_sink(url: str, **options: Any) -> WebhookSink:
    return WebhookSink(WebhookSinkConfig(name="hook", url=url, **options))


def test_webhook_posts_ndjson_batches_with_custom_headers(receiver: WebhookReceiver) -> None:
    batch = [delivery(i, description="multi\nline") for i in range(5)]
    with webhook_sink(receiver.url, headers={"X-Api-Key": "s3cret"}, max_events=2) as sink:
        sink.send(batch)
    assert len(receiver.requests) == 3
    headers, body = receiver.requests[0]
    assert headers["content-type"] == "application/x-ndjson"
    assert headers["x-api-key"] == "s3cret"
    assert body.endswith(b"\n") and body.count(b"\n") == 2
    assert receiver.lines() == [d.record for d in batch]


def test_webhook_payload_both(receiver: WebhookReceiver) -> None:
    d = delivery(1)
    with webhook_sink(receiver.url, payload="both") as sink:
        sink.send([d])
    assert receiver.lines() == [{"record": d.record, "event": d.event}]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, SinkUnavailable),
        (503, SinkUnavailable),
        (429, SinkUnavailable),
        (401, SinkAuthError),
        (403, SinkAuthError),
        (400, SinkRejected),
        (422, SinkRejected),
    ],
)
def test_webhook_status_maps_to_sink_errors(
    receiver: WebhookReceiver, status: int, error: type[SinkError]
) -> None:
    receiver.statuses = [200, status]
    with (
        webhook_sink(receiver.url, max_events=1) as sink,
        pytest.raises(error, match=f"HTTP {status}") as info,
    ):
        sink.send([delivery(1), delivery(2), delivery(3)])
    assert info.value.delivered == 1
    if isinstance(info.value, SinkRejected):
        assert info.value.seq == 2


def test_webhook_unreachable_is_unavailable() -> None:
    port = free_port()
    with (
        webhook_sink(f"http://127.0.0.1:{port}/x") as sink,
        pytest.raises(SinkUnavailable, match="cannot reach"),
    ):
        sink.send([delivery(1)])


def test_webhook_over_tls_with_custom_ca(pki: Pki) -> None:
    server = WebhookReceiver(tls=(pki.server_cert, pki.server_key))
    try:
        with webhook_sink(server.url, ca_file=pki.ca_cert) as sink:
            sink.send([delivery(1)])
        with webhook_sink(server.url, ca_file=pki.other_ca_cert) as sink, pytest.raises(SinkAuthError):
            sink.send([delivery(2)])
        assert [line["event_id"] for line in server.lines()] == ["ev-0001"]
    finally:
        server.close()


# ============================================================================================== syslog

SD_ID = "spintrail@32473"


def syslog_sink(server: RsyslogServer, app: str, **options: Any) -> SyslogSink:
    transport = options.get("transport", "tcp")
    port = {"tcp": server.tcp_port, "udp": server.udp_port, "tls": server.tls_port}[transport]
    config = {
        "name": "siem",
        "host": "127.0.0.1",
        "port": port,
        "app_name": app,
        "hostname": "st-host",
        **options,
    }
    return SyslogSink(SyslogSinkConfig(**config))


def test_syslog_format_is_rfc5424() -> None:
    sink = SyslogSink(SyslogSinkConfig(name="s", host="127.0.0.1", hostname="st-host", facility="local4"))
    d = delivery(7, status="TERMINAL", type="orca:pipeline:failed", user='bob "the" \\admin]')
    message = sink.format(d).decode()
    header = re.match(r"<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[.*\]) (\{.*\})$", message, flags=re.DOTALL)
    assert header is not None
    pri, timestamp, host, app, procid, msgid, sd, msg = header.groups()
    assert int(pri) == 20 * 8 + 4  # local4, warning
    assert timestamp == "2024-06-14T13:01:35.057Z"
    assert (host, app, msgid) == ("st-host", "spintrail", "orca:pipeline:failed")
    assert procid.isdigit()
    assert sd.startswith(f'[{SD_ID} event_id="ev-0007" ')
    assert 'user="bob \\"the\\" \\\\admin\\]"' in sd
    assert 'account="aws-prod,aws-dr"' in sd
    assert json.loads(msg) == d.record


def test_syslog_severity_follows_status() -> None:
    assert syslog_severity({"status": "SUCCEEDED", "type": "orca:stage:complete"}) == 5
    assert syslog_severity({"status": "TERMINAL"}) == 4
    assert syslog_severity({"status": "canceled"}) == 4
    assert syslog_severity({"status": None, "type": "orca:task:failed"}) == 4
    assert syslog_severity({}) == 5


def test_sd_escape() -> None:
    assert sd_escape('a"b\\c]d=e') == 'a\\"b\\\\c\\]d=e'


def test_syslog_config_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match="unknown facility 'local9'"):
        SyslogSinkConfig(name="s", host="h", facility="local9")
    with pytest.raises(ValidationError, match="transport"):
        SyslogSinkConfig(name="s", host="h", transport="sctp")
    assert SyslogSinkConfig(name="s", host="h", transport="tls").effective_port == 6514
    assert SyslogSinkConfig(name="s", host="h", facility="audit").facility == 13


def test_syslog_tcp_octet_counting_round_trips_structured_data(rsyslog: RsyslogServer) -> None:
    tricky = 'ops "lead" \\ [team] ünïcode'
    batch = [delivery(1), delivery(2, user=tricky, pipeline="a]b"), delivery(3, status="TERMINAL")]
    with syslog_sink(rsyslog, "st-octet") as sink:
        sink.send(batch)
    got = rsyslog.wait_for("st-octet", 3)
    assert len(got) == 3
    assert [m["inputname"] for m in got] == ["imtcp"] * 3
    sd = [structured_data(m, SD_ID) for m in got]
    assert [s["event_id"] for s in sd] == ["ev-0001", "ev-0002", "ev-0003"]
    assert sd[1]["user"] == tricky
    assert sd[1]["pipeline"] == "a]b"
    assert sd[0] | {} == {
        "event_id": "ev-0001",
        "source": "orca",
        "type": "orca:pipeline:complete",
        "status": "SUCCEEDED",
        "spinnaker_instance": "prod",
        "application": "tracks",
        "pipeline": "Deploy to prod",
        "execution_id": "01HZX0000000000000000000",
        "user": "alice@example.com",
        "trigger_type": "manual",
        "account": "aws-prod,aws-dr",
        "region": "us-east-1",
    }
    first = got[0]
    assert (first["hostname"], first["app-name"], first["msgid"]) == (
        "st-host",
        "st-octet",
        "orca:pipeline:complete",
    )
    assert first["timereported"] == "2024-06-14T13:01:35.051Z"
    assert (first["syslogfacility"], first["syslogseverity"]) == ("16", "5")
    assert got[2]["syslogseverity"] == "4"
    assert [json.loads(msg_text(m)) for m in got] == [d.record for d in batch]


def test_syslog_octet_counting_keeps_multiline_values_in_one_message(rsyslog: RsyslogServer) -> None:
    batch = [delivery(1, pipeline="line one\nline two\n"), delivery(2), delivery(3, user="x\ny")]
    with syslog_sink(rsyslog, "st-multiline") as sink:
        sink.send(batch)
    got = rsyslog.wait_for("st-multiline", 3)
    assert len(got) == 3
    assert structured_data(got[0], SD_ID)["pipeline"] == "line one\nline two\n"
    assert structured_data(got[2], SD_ID)["user"] == "x\ny"


def test_syslog_newline_framing(rsyslog: RsyslogServer) -> None:
    batch = [delivery(i, pipeline="has\na newline" if i == 2 else "p") for i in range(4)]
    with syslog_sink(rsyslog, "st-newline", framing="newline") as sink:
        assert sink.frame(b"<13>1 x") == b"<13>1 x\n"
        sink.send(batch)
    got = rsyslog.wait_for("st-newline", 4)
    assert len(got) == 4
    assert structured_data(got[2], SD_ID)["pipeline"] == "has a newline"
    assert [json.loads(msg_text(m))["event_id"] for m in got] == [d.event_id for d in batch]


def test_syslog_non_ascii_msg_carries_a_bom(rsyslog: RsyslogServer) -> None:
    d = delivery(1, description="Déploiement 日本")
    with syslog_sink(rsyslog, "st-utf8", payload="both") as sink:
        assert b" \xef\xbb\xbf{" in sink.format(d)
        assert b"\xef\xbb\xbf" not in sink.format(delivery(2))
        sink.send([d])
    [got] = rsyslog.wait_for("st-utf8", 1)
    assert got["msg"].startswith("\ufeff")
    assert json.loads(msg_text(got)) == {"record": d.record, "event": d.event}


def test_syslog_udp(rsyslog: RsyslogServer) -> None:
    batch = [delivery(i) for i in range(3)]
    with syslog_sink(rsyslog, "st-udp", transport="udp") as sink:
        sink.send(batch)
    got = rsyslog.wait_for("st-udp", 3)
    assert [m["inputname"] for m in got] == ["imudp"] * 3
    assert [structured_data(m, SD_ID)["event_id"] for m in got] == [d.event_id for d in batch]


def test_syslog_udp_oversize_is_rejected_with_reason(rsyslog: RsyslogServer) -> None:
    batch = [delivery(1), delivery(2, description="x" * 3000), delivery(3)]
    with (
        syslog_sink(rsyslog, "st-udp-big", transport="udp", max_udp_bytes=2048) as sink,
        pytest.raises(SinkRejected) as info,
    ):
        sink.send(batch)
    assert info.value.seq == 2
    assert info.value.delivered == 1
    assert re.search(r"syslog message of \d+ bytes exceeds the UDP limit of 2048 bytes", info.value.reason)
    got = rsyslog.wait_for("st-udp-big", 1)
    assert [structured_data(m, SD_ID)["event_id"] for m in got] == ["ev-0001"]


def test_syslog_udp_oversize_can_be_truncated(rsyslog: RsyslogServer) -> None:
    big = delivery(1, description="é" * 3000)
    with syslog_sink(
        rsyslog, "st-udp-cut", transport="udp", max_udp_bytes=1000, udp_oversize="truncate"
    ) as sink:
        sink.send([big])
    [got] = rsyslog.wait_for("st-udp-cut", 1)
    assert len(got["rawmsg"].encode()) <= 1000
    assert structured_data(got, SD_ID)["event_id"] == "ev-0001"


def test_syslog_tls_with_custom_ca(rsyslog: RsyslogServer) -> None:
    if rsyslog.tls_port is None:
        pytest.skip("no rsyslog TLS driver installed (Debian: apt-get install rsyslog-openssl)")
    assert rsyslog.pki is not None
    with syslog_sink(rsyslog, "st-tls", transport="tls", ca_file=rsyslog.pki.ca_cert) as sink:
        sink.send([delivery(1), delivery(2)])
    got = rsyslog.wait_for("st-tls", 2)
    assert [structured_data(m, SD_ID)["event_id"] for m in got] == ["ev-0001", "ev-0002"]


def test_syslog_tls_refuses_an_untrusted_receiver(rsyslog: RsyslogServer) -> None:
    if rsyslog.tls_port is None:
        pytest.skip("no rsyslog TLS driver installed (Debian: apt-get install rsyslog-openssl)")
    assert rsyslog.pki is not None
    with (
        syslog_sink(rsyslog, "st-tls-bad", transport="tls", ca_file=rsyslog.pki.other_ca_cert) as sink,
        pytest.raises(SinkAuthError, match=r"certificate .* not accepted"),
    ):
        sink.send([delivery(1)])
    assert rsyslog.wait_for("st-tls-bad", 0, timeout=0) == []


def test_syslog_mutual_tls_with_client_certificate(rsyslog: RsyslogServer) -> None:
    if rsyslog.mtls_port is None:
        pytest.skip("no rsyslog TLS driver installed (Debian: apt-get install rsyslog-openssl)")
    p = rsyslog.pki
    assert p is not None
    with syslog_sink(
        rsyslog,
        "st-mtls",
        transport="tls",
        port=rsyslog.mtls_port,
        ca_file=p.ca_cert,
        client_cert=p.client_cert,
        client_key=p.client_key,
    ) as sink:
        sink.send([delivery(1)])
    [got] = rsyslog.wait_for("st-mtls", 1)
    assert structured_data(got, SD_ID)["event_id"] == "ev-0001"


def test_syslog_unreachable_receiver_is_unavailable() -> None:
    sink = SyslogSink(SyslogSinkConfig(name="s", host="127.0.0.1", port=free_port(), timeout=1))
    with pytest.raises(SinkUnavailable, match=r"cannot write to tcp://127.0.0.1"):
        sink.send([delivery(1)])


def test_syslog_reconnects_after_the_receiver_closed_the_connection() -> None:
    received: list[bytes] = []
    closed = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def serve() -> None:
            first, _ = server.accept()
            with first:
                received.append(first.recv(65536))
            closed.set()  # the receiver dropped the connection after the first batch
            second, _ = server.accept()
            with second:
                second.settimeout(2)
                received.append(second.recv(65536))

        thread = threading.Thread(target=serve)
        thread.start()
        with SyslogSink(SyslogSinkConfig(name="s", host="127.0.0.1", port=port, timeout=2)) as sink:
            sink.send([delivery(1)])
            assert closed.wait(5)
            time.sleep(0.05)  # let the FIN reach this side
            sink.send([delivery(2)])
        thread.join(5)
    assert len(received) == 2
    assert b'event_id="ev-0002"' in received[1]


# ============================================================================================= factory


def test_build_sink_from_mappings() -> None:
    assert isinstance(
        build_sink({"kind": "splunk_hec", "name": "a", "url": "https://s:8088", "token": "t"}), HecSink
    )
    assert isinstance(
        build_sink({"kind": "webhook", "name": "b", "url": "http://127.0.0.1:9/x"}), WebhookSink
    )
    sink = build_sink({"kind": "syslog", "name": "c", "host": "127.0.0.1", "facility": "local7"})
    assert isinstance(sink, SyslogSink)
    assert sink.config.facility == 23
    assert isinstance(build_sink(SyslogSinkConfig(name="d", host="h")), SyslogSink)
    with pytest.raises(ValidationError, match="kind"):
        build_sink({"kind": "kafka", "name": "e"})


def test_payload_of() -> None:
    d = delivery(1)
    assert payload_of(d, "record") is d.record
    assert payload_of(d, "event") is d.event
    assert payload_of(d, "both") == {"record": d.record, "event": d.event}
