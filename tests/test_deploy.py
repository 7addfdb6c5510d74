"""The deployment files are right: both Kubernetes overlays render and validate against the Kubernetes
schemas, their pods are hardened, probed, sized and fed from Secrets, the echo snippets point at the
Service, and the systemd unit verifies and runs the command the docs give. (The image itself:
tests/test_image.py.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from spintrail.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
UNIT = ROOT / "deploy" / "systemd" / "spintrail.service"
DEPLOY_MD = (ROOT / "docs" / "deploy.md").read_text()
OVERLAYS = ["sqlite", "postgresql"]
# The oldest Kubernetes release still commonly run, and the newest the validator knows.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# Settings the manifests already pass that this version of spintrail may not know yet (unknown SPINTRAIL_*
# variables are ignored): the signer's state directory, which must persist.
UPCOMING = {"signer_state_dir"} - set(Settings.model_fields)
MiB = 1024 * 1024

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed"
)


@cache
def render(overlay: str, *components: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize`` of an overlay, with optional components added the way the docs say."""
    with tempfile.TemporaryDirectory() as work:
        target = KUBE / "overlays" / overlay
        if components:
            # An overlay of one's own; kustomize wants relative paths.
            (Path(work) / "kustomization.yaml").write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "kustomize.config.k8s.io/v1beta1",
                        "kind": "Kustomization",
                        "resources": [os.path.relpath(target, work)],
                        "components": [os.path.relpath(KUBE / "components" / c, work) for c in components],
                    }
                )
            )
            target = Path(work)
        result = subprocess.run(
            ["kubectl", "kustomize", str(target)], capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, f"kubectl kustomize {overlay} {components} failed: {result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def only(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workload(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, [d["kind"] for d in found]
    return found[0]


def settings_env(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The ConfigMap of settings shared by every replica."""
    cm = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("spintrail-settings")
    ]
    assert len(cm) == 1
    return cm[0]["data"]  # type: ignore[no-any-return]


def container_env(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    [container] = workload(docs)["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


def mount_of(docs: tuple[dict[str, Any], ...], path: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The volume mount holding ``path`` and its pod volume (None for a volumeClaimTemplate)."""
    wl = workload(docs)
    pod = wl["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is on no volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if mount["name"] in volumes:
        return mount, volumes[mount["name"]]
    claims = {c["metadata"]["name"] for c in wl["spec"].get("volumeClaimTemplates", [])}
    assert mount["name"] in claims, f"volume {mount['name']} is not defined"
    return mount, None


def setting_name(env_name: str) -> str:
    assert env_name.startswith("SPINTRAIL_"), env_name
    return env_name.removeprefix("SPINTRAIL_").lower()


def assert_known_settings(names: list[str], where: str) -> None:
    unknown = {n for n in names if setting_name(n) not in Settings.model_fields} - {
        f"SPINTRAIL_{u.upper()}" for u in UPCOMING
    }
    assert not unknown, f"{where} sets variables that are no setting: {sorted(unknown)}"


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": MiB, "Gi": 1024 * MiB}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", quantity)
    assert m, quantity
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


# ------------------------------------------------------------------------------------------- Kubernetes


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = render(overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert {"Service", "ServiceAccount", "ConfigMap"} <= set(kinds)
    for doc in docs:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{overlay}: {doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {exc}"
                )


@needs_kubectl
def test_sqlite_runs_one_replica_recreated_on_a_claimed_volume() -> None:
    docs = render("sqlite")
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = container_env(docs)
    database = env["SPINTRAIL_DATABASE"]["value"]
    _, volume = mount_of(docs, database)
    assert volume is not None
    claim = only(docs, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


@needs_kubectl
def test_postgresql_runs_replicas_with_their_own_state_and_a_disruption_budget() -> None:
    docs = render("postgresql")
    sts = only(docs, "StatefulSet")
    assert sts["spec"]["replicas"] >= 2
    assert only(docs, "Service", sts["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    env = container_env(docs)
    assert env["SPINTRAIL_DATABASE"]["valueFrom"]["secretKeyRef"]["name"] == "spintrail-database"
    pdb = only(docs, "PodDisruptionBudget")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= sts["spec"]["template"]["metadata"]["labels"].items()
    )
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_hardened(overlay: str) -> None:
    docs = render(overlay)
    pod = workload(docs)["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc.get("privileged")
    assert pod["automountServiceAccountToken"] is False
    # Kubernetes would otherwise set SPINTRAIL_PORT=tcp://<ip>:8080 for the Service named spintrail.
    assert pod["enableServiceLinks"] is False
    # A read-only root still needs a writable /tmp.
    _, tmp = mount_of(docs, "/tmp/x")
    assert tmp is not None and "emptyDir" in tmp


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_grace_and_resources(overlay: str) -> None:
    docs = render(overlay)
    wl = workload(docs)
    pod = wl["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    settings = settings_env(docs)
    env = {**settings, **{k: v.get("value") for k, v in container_env(docs).items()}}
    assert int(env["SPINTRAIL_PORT"]) == ports["http"]
    grace = float(settings["SPINTRAIL_SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] >= grace + 5
    # docs/operations.md: a memory limit of at least 160 MiB + 8 x max_inflight_bytes.
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()
    inflight = int(settings["SPINTRAIL_MAX_INFLIGHT_BYTES"])
    assert memory_bytes(resources["limits"]["memory"]) >= 160 * MiB + 8 * inflight
    # The Service reaches these pods on that port.
    service = only(docs, "Service", "spintrail")
    assert service["spec"]["selector"].items() <= wl["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tokens_key_and_signer_state(overlay: str) -> None:
    docs = render(overlay)
    env = container_env(docs)
    assert env["SPINTRAIL_AUTH"]["value"] == "on"
    assert env["SPINTRAIL_HOST"]["value"] == "0.0.0.0"
    for name in ("SPINTRAIL_ADMIN_TOKEN", "SPINTRAIL_INGEST_TOKENS"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "spintrail-tokens", name
    # The one signing key every replica shares comes from a Secret, read-only.
    key_mount, key_volume = mount_of(docs, env["SPINTRAIL_SIGNING_KEY_FILE"]["value"])
    assert key_volume is not None and key_volume["secret"]["secretName"] == "spintrail-signing-key"
    assert key_mount["readOnly"] is True
    # The signer's state and the checkpoint copies persist: a claimed volume, per replica with PostgreSQL.
    for name in ("SPINTRAIL_SIGNER_STATE_DIR", "SPINTRAIL_CHECKPOINT_DIR"):
        _, volume = mount_of(docs, env[name]["value"] + "/x")
        assert volume is None or "persistentVolumeClaim" in volume, name
        if overlay == "postgresql":
            assert volume is None, f"{name} must be on a volume of each replica's own"
    assert_known_settings([*env, *settings_env(docs)], f"the {overlay} overlay")


@needs_kubectl
def test_servicemonitor_component_scrapes_the_service() -> None:
    docs = render("postgresql", "servicemonitor")
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    # The Prometheus Operator's required fields, and a selector that picks exactly the one Service.
    assert monitor["metadata"]["name"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        d for d in docs if d["kind"] == "Service" and selector.items() <= d["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in services] == ["spintrail"]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert [d for d in render("postgresql") if d["kind"] == "ServiceMonitor"] == [], "optional, not default"


def test_echo_snippets_point_at_the_service_with_a_secret_token() -> None:
    service = yaml.safe_load((KUBE / "base" / "service.yaml").read_text())
    port = service["spec"]["ports"][0]["port"]
    local = yaml.safe_load((KUBE / "echo" / "echo-local.yml").read_text())
    operator = yaml.safe_load((KUBE / "echo" / "spinnakerservice-echo.yml").read_text())
    assert operator["spec"]["spinnakerConfig"]["profiles"]["echo"] == local
    [endpoint] = local["rest"]["endpoints"]
    assert local["rest"]["enabled"] is True
    assert re.fullmatch(
        rf"http://{service['metadata']['name']}\.[a-z0-9-]+\.svc\.cluster\.local:{port}/api/v1/events\?",
        endpoint["url"],
    ), endpoint["url"]
    assert endpoint["password"].startswith("encrypted:k8s!n:")
    assert endpoint["retryCount"] >= 2


def test_image_env_names_real_settings() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    env_block = re.search(r"^ENV (.*?)\n(?=\S)", dockerfile, re.S | re.M)
    assert env_block
    names = re.findall(r"(SPINTRAIL_[A-Z_]+)=", env_block.group(1))
    assert "SPINTRAIL_AUTH" in names and "SPINTRAIL_HOST" in names
    assert_known_settings(names, "the Dockerfile")


# ------------------------------------------------------------------------------------------- systemd


def unit_values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_systemd_unit_runs_the_documented_command_hardened() -> None:
    unit = unit_values(UNIT.read_text())
    [exec_start] = unit["ExecStart"]
    assert f"ExecStart={exec_start}" in DEPLOY_MD, "docs/deploy.md does not give the unit's ExecStart"
    binary = exec_start.split()[0]
    venv = str(Path(binary).parent.parent)
    assert f"python3 -m venv {venv}" in DEPLOY_MD, f"docs/deploy.md does not install into {venv}"
    assert unit["User"] == ["spintrail"] and unit["StateDirectory"] == ["spintrail"]
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "Restart": "on-failure",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit[key] == [value], key
    stop = float(unit["TimeoutStopSec"][0].removesuffix("s"))
    assert stop >= Settings.model_fields["shutdown_grace_seconds"].default + 5
    env = dict(v.split("=", 1) for v in unit["Environment"])
    assert env["SPINTRAIL_DATABASE"].startswith("/var/lib/spintrail/")
    example = unit_values((UNIT.parent / "spintrail.env").read_text())
    assert_known_settings([*env, *example], "the systemd unit and its environment file")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # verify also checks that ExecStart exists: point it at an executable of this machine for the check.
    exe = shutil.which("true")
    assert exe
    text = UNIT.read_text()
    [exec_start] = unit_values(text)["ExecStart"]
    (tmp_path / UNIT.name).write_text(text.replace(exec_start.split()[0], exe))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / UNIT.name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_image_version_is_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG VERSION={version}\n" in (ROOT / "Dockerfile").read_text()
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((KUBE / "overlays" / overlay / "kustomization.yaml").read_text())
        [image] = kustomization["images"]
        assert image["newTag"] == version, f"overlays/{overlay} deploys spintrail {image['newTag']}"
