"""Seeded generator of realistic Spinnaker echo events, with the ground truth of what it planted.

Used by tests, ``spintrail serve --demo`` and benchmarks. The simulator first *plans* every execution
(compact decisions: applications, users, stages, outcomes, times, server groups) and derives :class:`Facts`
from that plan; :meth:`Simulator.events` then *materializes* the echo event dicts lazily, one execution at a
time, merged in time order. Snapshots of ``content.execution`` are built copy-on-write: stage, task and
context dicts that did not change are shared between consecutive events, so treat the yielded events as
read-only (serialize them, or ``json.loads(json.dumps(event))`` before mutating).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["Facts", "PostStats", "Simulator", "post_events", "simulate", "write_ndjson"]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MIN_MS = 60_000

SERIALIZATIONS = ("legacy", "modern", "mixed")

# ---------------------------------------------------------------------------------------------------------
# Static world: people, service accounts, clouds, task catalogue
# ---------------------------------------------------------------------------------------------------------

_FIRST = (
    "alice",
    "bruno",
    "chen",
    "dana",
    "emeka",
    "fatima",
    "gustavo",
    "hana",
    "ivan",
    "jamal",
    "kasia",
    "liam",
    "maria",
    "nikhil",
    "olga",
    "pedro",
    "quinn",
    "rania",
    "sven",
    "tomoko",
    "uma",
    "victor",
    "wen",
    "xavier",
    "yara",
    "zoe",
    "amir",
    "beatriz",
    "carlos",
    "deepa",
    "erik",
    "farah",
    "goran",
    "helen",
    "ines",
    "jonas",
)
_LAST = (
    "nguyen",
    "silva",
    "okafor",
    "kowalski",
    "tanaka",
    "haddad",
    "murphy",
    "petrov",
    "garcia",
    "schmidt",
    "ali",
    "larsen",
    "rossi",
    "kim",
    "dubois",
    "cohen",
    "novak",
    "mensah",
    "patel",
    "johansson",
    "lopez",
    "fischer",
    "sato",
    "moreau",
    "singh",
    "walker",
    "ivanova",
    "costa",
    "berg",
    "yilmaz",
    "reyes",
    "wright",
)
_EMAIL_DOMAIN = "example.com"
SERVICE_ACCOUNTS = (
    "ci-deployer@svc.example.com",
    "cron-runner@svc.example.com",
    "release-bot@svc.example.com",
)

_APP_NAMES = (
    "checkout",
    "payments",
    "search",
    "catalog",
    "inventory",
    "ledger",
    "identity",
    "notifier",
    "recommender",
    "billing",
    "shipping",
    "reviews",
    "gateway",
    "profile",
    "pricing",
    "fraud",
    "media",
    "analytics",
    "orders",
    "cart",
    "loyalty",
    "messaging",
    "reports",
    "adserver",
    "geo",
    "feeds",
    "tax",
    "subscriptions",
    "coupons",
    "support",
    "warehouse",
    "fleet",
    "wallet",
    "onboarding",
)
_TICKET_PROJECTS = ("OPS", "CHG", "REL", "INC", "DEP", "SEC")

_CLOUDS: dict[str, dict[str, Any]] = {
    "aws": {
        "accounts": {"prod": "aws-prod", "staging": "aws-staging", "test": "aws-test"},
        "regions": ("us-east-1", "us-west-2", "eu-west-1"),
    },
    "gce": {
        "accounts": {"prod": "gce-prod", "staging": "gce-staging", "test": "gce-test"},
        "regions": ("us-central1", "us-east4", "europe-west1"),
    },
    "kubernetes": {
        "accounts": {"prod": "k8s-prod", "staging": "k8s-staging", "test": "k8s-test"},
        "regions": (),
    },
}
PROD_ACCOUNTS = frozenset(c["accounts"]["prod"] for c in _CLOUDS.values())
ALL_ACCOUNTS = tuple(a for c in _CLOUDS.values() for a in c["accounts"].values())

#: Stage types that change infrastructure (a prod account makes the execution a "prod change").
MUTATING_STAGE_TYPES = frozenset(
    {
        "deploy",
        "createServerGroup",
        "cloneServerGroup",
        "deployManifest",
        "resizeServerGroup",
        "disableServerGroup",
        "enableServerGroup",
        "destroyServerGroup",
        "rollbackServerGroup",
        "disableCluster",
        "scaleDownCluster",
        "shrinkCluster",
        "runJob",
    }
)

_O = "com.netflix.spinnaker.orca"
_CD = f"{_O}.clouddriver.tasks"
_HEALTH = ("determineHealthProviders", f"{_CD}.DetermineHealthProvidersTask")
_REFRESH = ("forceCacheRefresh", f"{_CD}.servergroup.ServerGroupCacheForceRefreshTask")
_MONITOR_SG = ("monitorServerGroup", f"{_CD}.MonitorKatoTask")

TASKS: dict[str, tuple[tuple[str, str], ...]] = {
    "bake": (("completeParallel", f"{_O}.bakery.tasks.CompleteParallelBakeTask"),),
    "bakeRegion": (
        ("createBake", f"{_O}.bakery.tasks.CreateBakeTask"),
        ("monitorBake", f"{_O}.bakery.tasks.MonitorBakeTask"),
        ("completedBake", f"{_O}.bakery.tasks.CompletedBakeTask"),
        ("bindProducedArtifacts", f"{_O}.pipeline.tasks.artifacts.BindProducedArtifactsTask"),
    ),
    "deploy": (),
    "rollbackServerGroup": (),
    "createServerGroup": (
        ("determineSourceServerGroup", f"{_O}.kato.pipeline.strategy.DetermineSourceServerGroupTask"),
        _HEALTH,
        ("snapshotSourceServerGroup", f"{_CD}.snapshot.CreateSnapshotTask"),
        ("createServerGroup", f"{_CD}.servergroup.CreateServerGroupTask"),
        ("monitorDeploy", f"{_CD}.MonitorKatoTask"),
        _REFRESH,
        ("waitForUpInstances", f"{_CD}.instance.WaitForUpInstancesTask"),
        _REFRESH,
    ),
    "cloneServerGroup": (
        _HEALTH,
        ("cloneServerGroup", f"{_CD}.servergroup.CloneServerGroupTask"),
        ("monitorDeploy", f"{_CD}.MonitorKatoTask"),
        _REFRESH,
        ("waitForUpInstances", f"{_CD}.instance.WaitForUpInstancesTask"),
        _REFRESH,
    ),
    "manualJudgment": (
        ("waitForJudgment", f"{_O}.echo.pipeline.ManualJudgmentStage$WaitForManualJudgmentTask"),
    ),
    "disableCluster": (
        _HEALTH,
        ("disableCluster", f"{_CD}.cluster.DisableClusterTask"),
        ("monitorDisableCluster", f"{_CD}.MonitorKatoTask"),
        _REFRESH,
        ("waitForClusterDisable", f"{_CD}.cluster.WaitForClusterDisableTask"),
    ),
    "scaleDownCluster": (
        _HEALTH,
        ("scaleDownCluster", f"{_CD}.cluster.ScaleDownClusterTask"),
        ("monitorScaleDownCluster", f"{_CD}.MonitorKatoTask"),
        _REFRESH,
        ("waitForScaleDownClusterInstances", f"{_CD}.instance.WaitForCapacityMatchTask"),
    ),
    "shrinkCluster": (
        _HEALTH,
        ("shrinkCluster", f"{_CD}.cluster.ShrinkClusterTask"),
        ("monitorShrinkCluster", f"{_CD}.MonitorKatoTask"),
        _REFRESH,
        ("waitForDestroyedServerGroup", f"{_CD}.servergroup.WaitForDestroyedServerGroupTask"),
    ),
    "destroyServerGroup": (
        _HEALTH,
        ("destroyServerGroup", f"{_CD}.servergroup.DestroyServerGroupTask"),
        _MONITOR_SG,
        ("waitForDestroyedServerGroup", f"{_CD}.servergroup.WaitForDestroyedServerGroupTask"),
    ),
    "disableServerGroup": (
        _HEALTH,
        ("disableServerGroup", f"{_CD}.servergroup.DisableServerGroupTask"),
        _MONITOR_SG,
        ("waitForDownInstances", f"{_CD}.instance.WaitForRequiredInstancesDownTask"),
        _REFRESH,
    ),
    "enableServerGroup": (
        _HEALTH,
        ("enableServerGroup", f"{_CD}.servergroup.EnableServerGroupTask"),
        _MONITOR_SG,
        ("waitForUpInstances", f"{_CD}.instance.WaitForUpInstancesTask"),
        _REFRESH,
    ),
    "resizeServerGroup": (
        ("checkIfApplicationExists", f"{_CD}.servergroup.CheckIfApplicationExistsForServerGroupTask"),
        _HEALTH,
        ("resizeServerGroup", f"{_CD}.servergroup.ResizeServerGroupTask"),
        _MONITOR_SG,
        _REFRESH,
        ("waitForCapacityMatch", f"{_CD}.servergroup.WaitForCapacityMatchTask"),
    ),
    "deployManifest": (
        ("resolveDeploySourceManifest", f"{_CD}.manifest.ResolveDeploySourceManifestTask"),
        ("deployManifest", f"{_CD}.manifest.DeployManifestTask"),
        ("monitorDeploy", f"{_CD}.MonitorKatoTask"),
        ("promoteOutputs", f"{_CD}.manifest.PromoteManifestKatoOutputsTask"),
        ("waitForManifestToStabilize", f"{_CD}.manifest.WaitForManifestStableTask"),
        ("cleanupArtifacts", f"{_CD}.artifacts.CleanupArtifactsTask"),
        ("monitorCleanup", f"{_CD}.MonitorKatoTask"),
        ("promoteOutputs", f"{_CD}.manifest.PromoteManifestKatoOutputsTask"),
        ("bindProducedArtifacts", f"{_O}.pipeline.tasks.artifacts.BindProducedArtifactsTask"),
    ),
    "runJob": (
        ("runJob", f"{_CD}.job.RunJobTask"),
        ("monitorDeploy", f"{_CD}.MonitorKatoTask"),
        ("waitOnJobCompletion", f"{_CD}.job.WaitOnJobCompletion"),
    ),
    "jenkins": (
        ("startJenkinsJob", f"{_O}.igor.tasks.StartJenkinsJobTask"),
        ("waitForJenkinsJobStart", f"{_O}.igor.tasks.MonitorQueuedJenkinsJobTask"),
        ("monitorJenkinsJob", f"{_O}.igor.tasks.MonitorJenkinsJobTask"),
        ("getBuildProperties", f"{_O}.igor.tasks.GetBuildPropertiesTask"),
        ("getBuildArtifacts", f"{_O}.igor.tasks.GetBuildArtifactsTask"),
    ),
    "wait": (("wait", f"{_O}.pipeline.tasks.WaitTask"),),
    "webhook": (("createWebhook", f"{_O}.webhook.tasks.CreateWebhookTask"),),
    "pipeline": (
        ("startPipeline", f"{_O}.front50.tasks.StartPipelineTask"),
        ("monitorPipeline", f"{_O}.front50.tasks.MonitorPipelineTask"),
    ),
    "savePipeline": (
        ("savePipeline", f"{_O}.front50.tasks.SavePipelineTask"),
        ("waitForPipelineSave", f"{_O}.front50.tasks.MonitorFront50Task"),
    ),
    "updatePipeline": (
        ("updatePipeline", f"{_O}.front50.tasks.UpdatePipelineTask"),
        ("waitForPipelineSave", f"{_O}.front50.tasks.MonitorFront50Task"),
    ),
    "deletePipeline": (("deletePipeline", f"{_O}.front50.tasks.DeletePipelineTask"),),
    "updateApplication": (("updateApplication", f"{_O}.applications.tasks.UpsertApplicationTask"),),
}

#: (min, max) duration in ms per task name; anything else takes 0.1-2.5 s.
_DURATIONS: dict[str, tuple[int, int]] = {
    "monitorBake": (180_000, 720_000),
    "createBake": (800, 3_000),
    "monitorDeploy": (15_000, 90_000),
    "waitForUpInstances": (45_000, 420_000),
    "forceCacheRefresh": (1_000, 9_000),
    "waitForCapacityMatch": (20_000, 180_000),
    "waitForDownInstances": (5_000, 60_000),
    "waitForDestroyedServerGroup": (10_000, 120_000),
    "waitForClusterDisable": (10_000, 90_000),
    "waitForScaleDownClusterInstances": (20_000, 120_000),
    "monitorServerGroup": (4_000, 30_000),
    "monitorDisableCluster": (4_000, 30_000),
    "monitorScaleDownCluster": (4_000, 30_000),
    "monitorShrinkCluster": (4_000, 30_000),
    "monitorJenkinsJob": (60_000, 900_000),
    "waitForJenkinsJobStart": (2_000, 40_000),
    "waitForManifestToStabilize": (10_000, 240_000),
    "waitOnJobCompletion": (30_000, 600_000),
    "createWebhook": (200, 4_000),
}

# timeline step kinds
EX_START, ST_START, TK_START, TK_END, ST_END, EX_END, ST_SKIP = range(7)
_JUDGE_LAG = 700  # ms between a judgment click and the end of the waitForJudgment task

# ---------------------------------------------------------------------------------------------------------
# Public result types
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Facts:
    """Ground truth of what the simulator planted, derived from the generated plan (not guessed).

    ``executions`` maps execution id -> {"type", "application", "pipeline", "pipeline_config_id",
    "description", "user" (the human behind it: trigger user, Deck user or the parent pipeline's human; else
    the principal), "run_as_user" (``authentication.user``), "trigger_type", "trigger_user", "status" (as
    the delivered events show it: ``RUNNING`` when no final event was delivered), "start_time", "end_time",
    "accounts", "regions", "namespaces", "server_groups" (changed by it), "cloud_provider", "stage_types",
    "tickets" (every ticket key anywhere in its events), "prod_change", "approved", "self_approved",
    "judgments" [{"user", "status", "input", "time", "stage_id"}], "canceled_by", "cancellation_reason",
    "parent_execution", "events" (distinct events delivered for it), "serialization", "final_event_dropped",
    "still_running"}.

    A *prod change* is an execution in which a stage of a :data:`MUTATING_STAGE_TYPES` type targeting a prod
    account started (whatever its outcome). It is *approved* when a manual judgment of the same execution
    was answered ``continue`` before the first such stage started, and *self-approved* when the user who
    started it (a manual trigger) answered ``continue`` to a judgment before one of those stages started.
    Server group actions count once the clouddriver task that performs them succeeded; ``disabled_by`` /
    ``enabled_by`` name who changed the state (disabling an already disabled group only adds history).
    """

    executions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: prod-change pipelines approved by the very user who started them (trigger.user)
    self_approved_prod: list[str] = field(default_factory=list)
    #: prod-change executions with no manual-judgment approval before the change
    unapproved_prod: list[str] = field(default_factory=list)
    #: prod-change executions without any ticket key anywhere in their events
    no_ticket_prod: list[str] = field(default_factory=list)
    #: started executions whose final event was never delivered (dropped, or still running at the end)
    unfinished: list[str] = field(default_factory=list)
    #: the subset of ``unfinished`` whose final event was dropped although the execution ended
    dropped_final: list[str] = field(default_factory=list)
    #: server group name -> {"application","account","region","cluster","cloud_provider","created_by",
    #: "created_execution","created_at","resized_by","resized_execution","disabled_by","disabled_execution",
    #: "enabled_by","enabled_execution","destroyed_by","destroyed_execution","destroyed_at","history"[...]}
    server_groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the server group whose create / resize / disable / destroy by named users was planted
    lifecycle_server_group: str | None = None
    #: distinct events generated (duplicates not counted)
    event_count: int = 0
    #: distinct events per ``details.type``
    event_types: dict[str, int] = field(default_factory=dict)
    window_start: int = 0
    window_end: int = 0
    users: list[str] = field(default_factory=list)
    service_accounts: list[str] = field(default_factory=list)
    applications: list[str] = field(default_factory=list)


@dataclass
class PostStats:
    """Outcome of :func:`post_events`."""

    sent: int = 0
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ulid(ms: int, rng: random.Random) -> str:
    n = (ms << 80) | rng.getrandbits(80)
    return "".join(_CROCKFORD[(n >> s) & 31] for s in range(125, -1, -5))


def _uuid4(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _token(rng: random.Random, n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rng.choice(alphabet) for _ in range(n))


def _digest(*parts: str, n: int = 17) -> str:
    return hashlib.blake2b("|".join(parts).encode(), digest_size=(n + 1) // 2).hexdigest()[:n]


def _iso(ms: int) -> str:
    t = time.gmtime(ms / 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", t)


def _human_weight(ms: int) -> float:
    """Relative activity of people at this instant (UTC working hours, quiet weekends)."""
    hour = (ms // HOUR_MS) % 24
    weekday = (ms // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; Monday == 0
    w = _HOUR_WEIGHTS[hour]
    return w * 0.15 if weekday >= 5 else w


_HOUR_WEIGHTS = (
    0.04,
    0.03,
    0.03,
    0.03,
    0.04,
    0.06,
    0.12,
    0.3,
    0.7,
    1.0,
    1.0,
    1.0,
    0.7,
    0.95,
    1.0,
    1.0,
    0.95,
    0.7,
    0.4,
    0.25,
    0.18,
    0.12,
    0.08,
    0.05,
)


def _ri(rng: random.Random, lo: int, hi: int) -> int:
    """``rng.randint(lo, hi)``, several times faster (used on the hot path)."""
    return lo + int(rng.random() * (hi - lo + 1))


def _nn(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _ticket(rng: random.Random) -> str:
    return f"{rng.choice(_TICKET_PROJECTS)}-{rng.randint(100, 9999)}"


# ---------------------------------------------------------------------------------------------------------
# Plan model (compact; dicts are only built when events are materialized)
# ---------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stage:
    idx: int
    kind: str  # stage type
    name: str
    ref: str
    req: list[str]
    owner: str | None  # None | STAGE_BEFORE | STAGE_AFTER
    parent: int | None
    p: dict[str, Any]
    tasks_key: str
    before: list[int] = field(default_factory=list)
    after: list[int] = field(default_factory=list)
    fail_task: int | None = None
    skip: bool = False
    #: task index -> [(action, server group name)] applied when that task succeeds
    effects: dict[int, list[tuple[str, str]]] = field(default_factory=dict)


@dataclass(slots=True)
class _Exec:
    seq: int
    id: str
    type: str  # PIPELINE | ORCHESTRATION
    app: str
    cloud: str
    name: str | None
    config_id: str | None
    description: str | None
    start: int
    seed: int
    modern: bool
    old_echo: bool
    trigger: dict[str, Any]
    auth_user: str | None
    actor: str
    origin: str | None
    stages: list[_Stage] = field(default_factory=list)
    top: list[int] = field(default_factory=list)
    cancel_at: int | None = None
    cancel_by: str | None = None
    cancel_reason: str | None = None
    drop_final: bool = False
    parent: _Exec | None = None
    child: _Exec | None = None
    tickets: set[str] = field(default_factory=set)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    # results of the planning pass
    end: int | None = None
    status: str = "RUNNING"


@dataclass(slots=True)
class _Pipe:
    id: str
    name: str
    arche: str
    app: str
    spec: list[tuple[str, dict[str, Any]]]
    triggers: tuple[tuple[str, float], ...]
    version: int = 1
    cron: str | None = None
    cron_hour: int = 2
    cron_weekday: int | None = None
    scratch: bool = False
    deleted: bool = False


@dataclass(slots=True)
class _App:
    name: str
    cloud: str
    team: list[str]
    namespace: str
    regions: list[str]
    pipes: dict[str, _Pipe] = field(default_factory=dict)
    weight: float = 1.0
    build: int = 100
    version: list[int] = field(default_factory=lambda: [1, 0, 0])
    job: str = ""
    repo: str = ""
    email: str = ""
    last_saved: _Pipe | None = None


@dataclass(slots=True)
class _SG:
    name: str
    app: str
    account: str
    region: str
    cluster: str
    stack: str
    seq: int
    cloud: str
    capacity: dict[str, int]
    created_at: int | None
    disabled: bool = False
    doomed: bool = False
    reserved: bool = False
    destroyed_at: int | None = None


class _Builder:
    """Collects stages of one execution; refIds and requisites follow orca's conventions."""

    def __init__(self, orchestration: bool) -> None:
        self.orch = orchestration
        self.stages: list[_Stage] = []
        self.top: list[int] = []

    def add(
        self,
        kind: str,
        name: str,
        p: dict[str, Any],
        *,
        tasks_key: str | None = None,
        parent: _Stage | None = None,
        owner: str | None = None,
    ) -> _Stage:
        idx = len(self.stages)
        if parent is None:
            ref = str(len(self.top)) if self.orch else str(len(self.top) + 1)
            req = [] if (self.orch or not self.top) else [self.stages[self.top[-1]].ref]
            self.top.append(idx)
            st = _Stage(idx, kind, name, ref, req, None, None, p, tasks_key or kind)
        else:
            n = len(parent.before) + len(parent.after) + 1
            ref = f"{parent.ref}{'<' if owner == 'STAGE_BEFORE' else '>'}{n}"
            st = _Stage(idx, kind, name, ref, [], owner, parent.idx, p, tasks_key or kind)
            (parent.before if owner == "STAGE_BEFORE" else parent.after).append(idx)
        self.stages.append(st)
        return st


# ---------------------------------------------------------------------------------------------------------
# Timeline: the exact sequence of orca events of one execution, derived from its plan and seed
# ---------------------------------------------------------------------------------------------------------

Step = tuple[int, int, int, int, str]


class _Timeline:
    def __init__(self, ep: _Exec, start: int | None = None) -> None:
        self.ep = ep
        self.rng = random.Random(ep.seed)
        self.t = ep.start if start is None else start
        self.cancel_at = ep.cancel_at if start is None else None

    def _canceled(self) -> bool:
        return self.cancel_at is not None and self.t >= self.cancel_at

    def steps(self) -> Iterator[Step]:
        ep, rng = self.ep, self.rng
        yield (self.t, EX_START, -1, -1, "RUNNING")
        self.t += _ri(rng, 150, 1200)
        final = "SUCCEEDED"
        for si in ep.top:
            if self._canceled():
                final = "CANCELED"
                break
            st = ep.stages[si]
            if st.skip:
                yield (self.t, ST_SKIP, si, -1, "SKIPPED")
                self.t += _ri(rng, 20, 200)
                continue
            status = yield from self._stage(si)
            self.t += _ri(rng, 40, 900)
            if status != "SUCCEEDED":
                final = status
                break
        if final == "CANCELED" and self.cancel_at is not None:
            self.t = max(self.t, self.cancel_at + _ri(rng, 200, 1500))
        yield (self.t, EX_END, -1, -1, final)

    def _stage(self, si: int) -> Iterator[Step]:
        ep, rng = self.ep, self.rng
        st = ep.stages[si]
        yield (self.t, ST_START, si, -1, "RUNNING")
        self.t += _ri(rng, 20, 300)
        status = "SUCCEEDED"
        for ci in st.before:
            status = yield from self._stage(ci)
            self.t += _ri(rng, 20, 300)
            if status != "SUCCEEDED":
                break
        if status == "SUCCEEDED":
            for j, (tname, _cls) in enumerate(TASKS[st.tasks_key]):
                if self._canceled():
                    status = "CANCELED"
                    break
                yield (self.t, TK_START, si, j, "RUNNING")
                end = self.t + self._duration(st, tname)
                tstatus = "SUCCEEDED"
                if self.cancel_at is not None and end >= self.cancel_at:
                    end = max(self.t + 1, self.cancel_at + _ri(rng, 100, 900))
                    tstatus = "CANCELED"
                elif st.fail_task == j:
                    tstatus = "TERMINAL"
                self.t = end
                yield (self.t, TK_END, si, j, tstatus)
                self.t += _ri(rng, 20, 400)
                if tstatus != "SUCCEEDED":
                    status = tstatus
                    break
        if status == "SUCCEEDED":
            for ci in st.after:
                status = yield from self._stage(ci)
                self.t += _ri(rng, 20, 300)
                if status != "SUCCEEDED":
                    break
        if status == "SUCCEEDED" and self._canceled():
            status = "CANCELED"
        yield (self.t, ST_END, si, -1, status)
        return status

    def _duration(self, st: _Stage, tname: str) -> int:
        if tname == "waitForJudgment":
            return int(st.p["delay"]) + _JUDGE_LAG
        if tname == "monitorPipeline":
            return int(st.p["child_duration"]) + _ri(self.rng, 800, 4000)
        if tname == "wait":
            return int(st.p["wait"]) * 1000 + _ri(self.rng, 5, 400)
        lo, hi = _DURATIONS.get(tname, (100, 2500))
        return _ri(self.rng, lo, hi)


# ---------------------------------------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------------------------------------


class Simulator:
    """A seeded, reproducible world of Spinnaker activity rendered as echo events.

    :param seed: the random seed; the same seed (and ``start_ms``) gives the same events.
    :param start_ms: start of the simulated window (epoch ms); ``None`` means the window ends now.
    :param days: length of the window in days.
    :param executions: number of orca executions (pipelines, child pipelines and ad-hoc orchestrations).
    :param include_full_execution: orca's ``echo.events.includeFullExecution``; False omits
        ``content.execution`` from task events.
    :param serialization: ``legacy`` (nulls kept, trigger extras under ``trigger.other``), ``modern``
        (NON_NULL, extras flattened into the trigger) or ``mixed`` (chosen per execution).
    :param duplicate_rate: fraction of events delivered a second time later (same dict, same eventId).
    :param shuffle_window: events are delivered out of order within about this many positions.
    :param builds: also emit igor ``build`` and ``docker`` events (git and gate ``manual`` events always).

    The realistic mix averages about 45 distinct events per execution (orca events plus the igor, git and
    gate events around them), about 16 KB each as JSON with full executions; 1M events take about 23,000
    executions. For an exact volume use ``itertools.islice(sim.events(), n)``.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        start_ms: int | None = None,
        days: float = 14.0,
        executions: int = 200,
        include_full_execution: bool = True,
        serialization: str = "mixed",
        duplicate_rate: float = 0.0,
        shuffle_window: int = 5,
        builds: bool = True,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not isinstance(days, int | float) or isinstance(days, bool) or not days > 0:
            raise ValueError(f"days must be a positive number, got {days!r}")
        if isinstance(executions, bool) or not isinstance(executions, int) or executions < 0:
            raise ValueError(f"executions must be a non-negative integer, got {executions!r}")
        if serialization not in SERIALIZATIONS:
            raise ValueError(
                f"serialization must be one of {', '.join(SERIALIZATIONS)}; got {serialization!r}"
            )
        if not isinstance(duplicate_rate, int | float) or not 0.0 <= duplicate_rate <= 1.0:
            raise ValueError(f"duplicate_rate must be between 0 and 1, got {duplicate_rate!r}")
        if isinstance(shuffle_window, bool) or not isinstance(shuffle_window, int) or shuffle_window < 0:
            raise ValueError(f"shuffle_window must be a non-negative integer, got {shuffle_window!r}")
        if start_ms is not None and (isinstance(start_ms, bool) or not isinstance(start_ms, int)):
            raise ValueError(f"start_ms must be epoch milliseconds (int) or None, got {start_ms!r}")
        self.seed = seed
        self.days = float(days)
        span = int(self.days * DAY_MS)
        if start_ms is None:
            self.window_end = int(time.time() * 1000)
            self.window_start = self.window_end - span
        else:
            self.window_start = start_ms
            self.window_end = start_ms + span
        self.n_executions = executions
        self.include_full_execution = include_full_execution
        self.serialization = serialization
        self.duplicate_rate = float(duplicate_rate)
        self.shuffle_window = shuffle_window
        self.builds = builds

        self._rng = random.Random(f"spintrail-simulate:{seed}")
        self._seq = 0
        self._plans: list[_Exec] = []
        self._points: list[tuple[int, int, str, int, tuple[Any, ...]]] = []
        self._clusters: dict[tuple[str, str, str], list[_SG]] = {}
        self._next_seq: dict[tuple[str, str], int] = {}
        self._sg_effects: list[tuple[int, str, str, str, str]] = []  # (time, action, sg, user, exec id)
        self._sgs: dict[str, _SG] = {}
        self._manual: dict[str, _Exec] = {}
        self._type_counts: dict[str, int] = {}
        self._story_sg: str | None = None
        self.facts = Facts(window_start=self.window_start, window_end=self.window_end)
        self._build_world()
        self._plan_all()
        schedule: list[tuple[int, int, str, Any]] = [(ep.start, ep.seq, "x", ep) for ep in self._plans]
        schedule += [(pt[0], pt[1], "p", pt) for pt in self._points]
        schedule.sort(key=lambda item: (item[0], item[1]))
        self._schedule = schedule

    # ------------------------------------------------------------------ world
    def _build_world(self) -> None:
        rng = self._rng
        names = [(f, ln) for f in _FIRST for ln in _LAST]
        rng.shuffle(names)
        seen: set[str] = set()
        users: list[str] = []
        for f, ln in names:
            if f in seen:
                continue
            seen.add(f)
            users.append(f"{f}.{ln}@{_EMAIL_DOMAIN}")
            if len(users) == 34:
                break
        self._users = users
        self._approvers = users[:6]
        n_apps = rng.randint(10, 30)
        app_names = rng.sample(_APP_NAMES, n_apps)
        clouds = ["aws"] + [
            rng.choices(("aws", "kubernetes", "gce"), (0.5, 0.38, 0.12))[0] for _ in range(n_apps - 1)
        ]
        if "kubernetes" not in clouds and n_apps > 1:
            clouds[1] = "kubernetes"
        self._apps: dict[str, _App] = {}
        for i, (name, cloud) in enumerate(zip(app_names, clouds, strict=True)):
            team = rng.sample(users[6:], rng.randint(3, 6))
            regions = list(_CLOUDS[cloud]["regions"][: rng.randint(1, 3)]) if cloud != "kubernetes" else []
            app = _App(
                name,
                cloud,
                team,
                namespace=name if rng.random() < 0.6 else rng.choice(("web", "backend", "platform", "data")),
                regions=regions,
                weight=1.0 / (1 + i) ** 0.7,
                build=rng.randint(80, 2000),
                version=[rng.randint(1, 4), rng.randint(0, 20), rng.randint(0, 9)],
            )
            app.job = f"{name}-build-master"
            app.repo = name
            app.email = f"{name}-team@{_EMAIL_DOMAIN}"
            self._make_pipes(app, allow_release=(cloud != "kubernetes" and rng.random() < 0.35) or i == 0)
            self._apps[name] = app
            if cloud != "kubernetes":
                self._seed_server_groups(app)
        self.facts.users = list(users)
        self.facts.service_accounts = list(SERVICE_ACCOUNTS)
        self.facts.applications = sorted(self._apps)
        # manifests / pipelines configs need stable per-app secrets
        self._app_list = list(self._apps.values())
        self._app_weights = [a.weight for a in self._app_list]

    def _make_pipes(self, app: _App, allow_release: bool) -> None:
        rng = self._rng

        def pipe(
            arche: str,
            name: str,
            spec: list[tuple[str, dict[str, Any]]],
            triggers: tuple[tuple[str, float], ...],
            **kw: Any,
        ) -> None:
            app.pipes[arche] = _Pipe(_uuid4(rng), name, arche, app.name, spec, triggers, **kw)

        hook = {"url": f"https://hooks.{_EMAIL_DOMAIN}/deploys/{app.name}", "token": _token(rng, 40)}
        if app.cloud == "kubernetes":
            pipe(
                "dev",
                "Deploy to Test",
                [
                    ("deployManifest", {"env": "test", "name": "Deploy (Manifest)"}),
                    ("runJob", {"env": "test", "name": "Run smoke tests"}),
                ],
                (("git", 0.6), ("docker", 0.4)),
            )
            pipe(
                "staging",
                "Deploy to Staging",
                [
                    ("deployManifest", {"env": "staging", "name": "Deploy to staging"}),
                    ("runJob", {"env": "staging", "name": "Integration tests"}),
                    ("webhook", {**hook, "name": "Notify deploy channel", "optional": True}),
                ],
                (("docker", 0.6), ("manual", 0.4)),
            )
            prod_spec: list[tuple[str, dict[str, Any]]] = [
                ("deployManifest", {"env": "staging", "name": "Deploy to staging"}),
                ("runJob", {"env": "staging", "name": "Smoke tests"}),
                ("manualJudgment", {"name": "Promote to production?"}),
                ("deployManifest", {"env": "prod", "name": "Deploy to production"}),
            ]
            if rng.random() < 0.6:
                prod_spec.append(("webhook", {**hook, "name": "Announce release", "optional": True}))
            pipe("prod", "Deploy to Prod", prod_spec, (("manual", 1.0),))
            pipe(
                "hotfix",
                "Hotfix to Prod",
                [("deployManifest", {"env": "prod", "name": "Deploy hotfix"})],
                (("manual", 1.0),),
            )
            pipe(
                "itest",
                "Integration Tests",
                [
                    ("runJob", {"env": "test", "name": "Run test suite"}),
                    ("wait", {"wait": rng.choice((30, 60, 120)), "name": "Settle"}),
                ],
                (("cron", 0.7), ("manual", 0.3)),
                cron_hour=rng.randint(3, 5),
            )
            return
        regions = app.regions
        staging: list[tuple[str, dict[str, Any]]] = []
        if rng.random() < 0.5:
            staging.append(("jenkins", {"name": "Build", "job": app.job}))
        staging += [
            ("bake", {"regions": regions[:1], "name": "Bake"}),
            ("deploy", {"env": "staging", "regions": regions[:1], "name": "Deploy to staging"}),
        ]
        if rng.random() < 0.5:
            staging.append(
                ("disableCluster", {"env": "staging", "regions": regions[:1], "name": "Disable previous"})
            )
        if rng.random() < 0.3:
            staging.append(("wait", {"wait": rng.choice((60, 120, 300)), "name": "Wait"}))
        if rng.random() < 0.4:
            staging.append(("webhook", {**hook, "name": "Notify deploy channel", "optional": True}))
        pipe("staging", "Deploy to Staging", staging, (("jenkins", 0.5), ("git", 0.2), ("manual", 0.3)))

        prod: list[tuple[str, dict[str, Any]]] = []
        if rng.random() < 0.5:
            prod.append(("bake", {"regions": regions, "name": "Bake"}))
        prod += [
            ("deploy", {"env": "staging", "regions": regions[:1], "name": "Deploy to staging"}),
            ("webhook", {**hook, "name": "Smoke test staging"}),
            ("manualJudgment", {"name": "Promote to production?"}),
            ("deploy", {"env": "prod", "regions": regions, "name": "Deploy to production"}),
        ]
        if rng.random() < 0.6:
            prod.append(("disableCluster", {"env": "prod", "regions": regions, "name": "Disable previous"}))
        if rng.random() < 0.3:
            prod.append(
                ("scaleDownCluster", {"env": "prod", "regions": regions, "name": "Scale down previous"})
            )
        if rng.random() < 0.4:
            prod.append(("shrinkCluster", {"env": "prod", "regions": regions, "name": "Shrink cluster"}))
        if rng.random() < 0.5:
            prod.append(("webhook", {**hook, "name": "Announce release", "optional": True}))
        pipe("prod", "Deploy to Prod", prod, (("manual", 0.9), ("jenkins", 0.1)))
        pipe(
            "hotfix",
            "Hotfix to Prod",
            [
                ("deploy", {"env": "prod", "regions": regions[:1], "name": "Deploy hotfix"}),
                ("webhook", {**hook, "name": "Announce hotfix", "optional": True}),
            ],
            (("manual", 1.0),),
        )
        pipe(
            "itest",
            "Integration Tests",
            [
                ("jenkins", {"name": "Integration tests", "job": f"{app.name}-integration"}),
                ("deploy", {"env": "test", "regions": regions[:1], "name": "Deploy test stack"}),
                ("wait", {"wait": rng.choice((60, 180, 300)), "name": "Soak"}),
                (
                    "destroyServerGroup",
                    {"env": "test", "regions": regions[:1], "name": "Tear down test stack"},
                ),
            ],
            (("cron", 0.6), ("manual", 0.4)),
            cron_hour=rng.randint(3, 5),
        )
        pipe(
            "scaledown",
            "Nightly Scale Down",
            [
                (
                    "resizeServerGroup",
                    {"env": "prod", "regions": regions[:1], "name": "Scale down for the night"},
                ),
            ],
            (("cron", 1.0),),
            cron_hour=rng.choice((0, 1, 22, 23)),
        )
        pipe(
            "cleanup",
            "Weekly Cleanup",
            [
                ("shrinkCluster", {"env": "staging", "regions": regions[:1], "name": "Shrink staging"}),
                ("disableCluster", {"env": "test", "regions": regions[:1], "name": "Disable old test"}),
            ],
            (("cron", 1.0),),
            cron_hour=3,
            cron_weekday=6,
        )
        if allow_release:
            rel: list[tuple[str, dict[str, Any]]] = [
                ("jenkins", {"name": "Build release", "job": f"{app.name}-release"}),
                ("bake", {"regions": regions, "name": "Bake"}),
                ("deploy", {"env": "staging", "regions": regions[:1], "name": "Deploy to staging"}),
                ("pipeline", {"name": "Run integration tests", "child": "itest"}),
                ("manualJudgment", {"name": "Go / no-go"}),
            ]
            waves = rng.randint(1, 2)
            for w in range(waves):
                for r in regions:
                    label = f"{r}" if waves == 1 else f"{r} wave {w + 1}"
                    rel.append(("deploy", {"env": "prod", "regions": [r], "name": f"Deploy {label}"}))
                    rel.append(("wait", {"wait": rng.choice((120, 300, 600)), "name": f"Bake time {label}"}))
                    rel.append(("webhook", {**hook, "name": f"Health check {label}"}))
                    if rng.random() < 0.5:
                        rel.append(("manualJudgment", {"name": f"Continue after {label}?", "extra": True}))
            rel += [
                ("disableCluster", {"env": "prod", "regions": regions, "name": "Disable previous"}),
                ("scaleDownCluster", {"env": "prod", "regions": regions, "name": "Scale down previous"}),
                ("shrinkCluster", {"env": "prod", "regions": regions, "name": "Shrink cluster"}),
                ("webhook", {**hook, "name": "Announce release", "optional": True}),
            ]
            pipe("release", "Release Train", rel, (("manual", 0.7), ("cron", 0.3)), cron_hour=14)

    def _seed_server_groups(self, app: _App) -> None:
        rng = self._rng
        for env in ("prod", "staging", "test"):
            account = _CLOUDS[app.cloud]["accounts"][env]
            self._next_seq[(account, f"{app.name}-{env}")] = rng.randint(0, 40)
            for region in app.regions:
                for _ in range(rng.randint(1, 2) if env != "test" else rng.randint(0, 1)):
                    self._new_sg(app, env, region, created_at=self.window_start - rng.randint(1, 20) * DAY_MS)

    def _new_sg(self, app: _App, env: str, region: str, created_at: int | None) -> _SG:
        account = _CLOUDS[app.cloud]["accounts"][env]
        cluster = f"{app.name}-{env}"
        key = (account, region, cluster)
        # one sequence per account and cluster, so that names are unique across regions
        seq = self._next_seq.get((account, cluster), -1) + 1
        if seq > 999:
            seq = 0
        self._next_seq[(account, cluster)] = seq
        desired = {"prod": 3, "staging": 2, "test": 1}[env]
        sg = _SG(
            f"{cluster}-v{seq:03d}",
            app.name,
            account,
            region,
            cluster,
            env,
            seq,
            app.cloud,
            {"min": desired, "max": desired * 2 if env == "prod" else desired, "desired": desired},
            created_at,
        )
        self._clusters.setdefault(key, []).append(sg)
        self._sgs[sg.name] = sg
        return sg

    def _alive(self, key: tuple[str, str, str], now: int) -> list[_SG]:
        """Live server groups of a cluster at ``now``, oldest first (only the latest ten are considered)."""
        return [
            s
            for s in self._clusters.get(key, ())[-10:]
            if s.created_at is not None and s.created_at < now and not s.doomed and s.destroyed_at is None
        ]

    # ------------------------------------------------------------------ scheduling
    def _sample_time(self, human: bool, lo: float = 0.0, hi: float = 1.0) -> int:
        rng = self._rng
        span = self.window_end - self.window_start
        a, b = self.window_start + int(span * lo), self.window_start + int(span * hi)
        for _ in range(200):
            t = rng.randint(a, b)
            w = _human_weight(t)
            if not human:
                w = 0.25 + 0.75 * w
            if rng.random() < w:
                return t
        return rng.randint(a, b)

    def _cron_time(self, pipe: _Pipe) -> int:
        rng = self._rng
        first_day = self.window_start // DAY_MS
        last_day = self.window_end // DAY_MS
        days = list(range(first_day, last_day + 1))
        if pipe.cron_weekday is not None:
            matching = [d for d in days if (d + 3) % 7 == pipe.cron_weekday]
            days = matching or days
        for _ in range(20):
            t = rng.choice(days) * DAY_MS + pipe.cron_hour * HOUR_MS + rng.randint(200, 4000)
            if self.window_start <= t <= self.window_end:
                return t
        return self._sample_time(False)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _plan_all(self) -> None:
        rng = self._rng
        n = self.n_executions
        queue: list[tuple[int, int, str, tuple[Any, ...]]] = []
        planted = self._planted_items(n)
        budget = n - sum(need for _k, _w, need in planted)
        for kind, when, _need in planted:
            queue.append((when, self._next(), "planted", (kind,)))
        pipe_weights = {
            "staging": 30,
            "prod": 20,
            "dev": 12,
            "itest": 7,
            "hotfix": 3,
            "release": 4,
            "scaledown": 4,
            "cleanup": 3,
        }
        while budget > 0:
            if rng.random() < 0.27:
                app = rng.choices(self._app_list, self._app_weights)[0]
                # someone editing a pipeline saves it a few times in a row
                edits = rng.randint(2, 3) if rng.random() < 0.12 else 1
                edits = min(edits, budget)
                queue.append((self._sample_time(True), self._next(), "orch", (app.name, edits)))
                budget -= edits
                continue
            app = rng.choices(self._app_list, self._app_weights)[0]
            arches = [a for a in app.pipes if a in pipe_weights and not (a == "release" and budget < 2)]
            arche = rng.choices(arches, [pipe_weights[a] for a in arches])[0]
            pipe = app.pipes[arche]
            trig = rng.choices([k for k, _ in pipe.triggers], [w for _, w in pipe.triggers])[0]
            if trig == "cron":
                when = self._cron_time(pipe)
            else:
                hi = 0.85 if arche == "release" else 1.0
                when = self._sample_time(trig == "manual", 0.0, hi)
            queue.append((when, self._next(), "pipe", (app.name, arche, trig)))
            budget -= 2 if arche == "release" else 1
        self._plan_background_points(n)
        heapq.heapify(queue)
        while queue:
            when, _s, kind, args = heapq.heappop(queue)
            if kind == "pipe":
                app = self._apps[args[0]]
                self._plan_pipeline(when, app, app.pipes[args[1]], args[2])
            elif kind == "orch" and args[1] == 1:
                self._plan_orchestration(when, self._apps[args[0]])
            elif kind == "orch":
                app = self._apps[args[0]]
                user = rng.choice(app.team)
                for i in range(args[1]):
                    self._plan_orchestration(
                        when,
                        app,
                        op="savePipeline" if i == 0 else "updatePipeline",
                        user=user,
                        same_pipe=i > 0,
                    )
                    when += rng.randint(2 * MIN_MS, 25 * MIN_MS)
            else:
                for follow in self._plan_planted(args[0], when):
                    heapq.heappush(queue, (follow[0], self._next(), "planted", (follow[1],)))
        self._finish_facts()

    def _planted_items(self, n: int) -> list[tuple[str, int, int]]:
        """The planted scenarios that fit in ``n`` executions: (kind, start, executions used)."""
        span = self.window_end - self.window_start
        # the self-approved prod deploy also creates the server group later resized, disabled and destroyed
        order = [
            ("self_approved", 0.12, 4),
            ("hotfix_no_ticket", 0.2, 1),
            ("dropped_final", 0.3, 1),
            ("release_cancel", 0.25, 2),
        ]
        items: list[tuple[str, int, int]] = []
        budget = n
        for kind, frac, need in order:
            if budget < need:
                continue
            budget -= need
            items.append((kind, self.window_start + int(span * frac), need))
        return items

    # ------------------------------------------------------------------ planning: shared bits
    def _human_trigger(
        self, user: str, params: dict[str, Any], via_api: bool, ep_id: str, when: int
    ) -> tuple[dict[str, Any], str]:
        trig: dict[str, Any] = {"type": "manual", "user": user, "parameters": params}
        origin = "deck"
        if via_api:
            event_id = _uuid4(self._rng)
            trig["extras"] = {
                "eventId": event_id,
                "executionId": ep_id,
                "expectedArtifacts": [],
                "enabled": False,
            }
            origin = "api"
            self._points.append(
                (
                    when - self._rng.randint(150, 900),
                    self._next(),
                    "manual",
                    self._rng.getrandbits(48),
                    (event_id,),
                )
            )
        else:
            trig["extras"] = {"expectedArtifacts": []}
        return trig, origin

    def _allowed(self, user: str) -> list[str]:
        if user in self._approvers or user in SERVICE_ACCOUNTS:
            return list(ALL_ACCOUNTS)
        return [a for a in ALL_ACCOUNTS if a not in PROD_ACCOUNTS]

    def _modern(self) -> bool:
        if self.serialization == "mixed":
            return self._rng.random() < 0.5
        return self.serialization == "modern"

    def _new_exec(
        self,
        when: int,
        app: _App,
        etype: str,
        *,
        name: str | None,
        config_id: str | None,
        description: str | None,
        trigger: dict[str, Any],
        auth_user: str | None,
        actor: str,
        origin: str | None,
        ep_id: str | None = None,
    ) -> _Exec:
        rng = self._rng
        modern = self._modern()
        ep = _Exec(
            self._next(),
            ep_id or _ulid(when, rng),
            etype,
            app.name,
            app.cloud,
            name,
            config_id,
            description,
            when,
            rng.getrandbits(62),
            modern,
            old_echo=(not modern and rng.random() < 0.25),
            trigger=trigger,
            auth_user=auth_user,
            actor=actor,
            origin=origin,
        )
        if auth_user and auth_user != "anonymous":
            ep.allowed = self._allowed(auth_user)
        return ep

    def _version(self, app: _App) -> str:
        app.version[2] += 1
        if self._rng.random() < 0.1:
            app.version[1] += 1
            app.version[2] = 0
        return ".".join(map(str, app.version))

    # ------------------------------------------------------------------ planning: pipelines
    def _plan_pipeline(
        self,
        when: int,
        app: _App,
        pipe: _Pipe,
        trig_kind: str,
        *,
        user: str | None = None,
        ticket: bool | None = None,
        judge: str | None = None,
        judge_status: str | None = None,
        reserve_sg: bool = False,
        drop_final: bool = False,
        cancel: bool | None = None,
        force_ok: bool = False,
    ) -> _Exec:
        rng = self._rng
        version = self._version(app)
        app.build += 1
        build = app.build
        ep_id = _ulid(when, rng)
        params: dict[str, Any] = {"version": version}
        tickets: set[str] = set()
        is_prod = pipe.arche in ("prod", "hotfix", "release", "scaledown")
        if ticket is None:
            ticket = is_prod and trig_kind in ("manual", "jenkins") and rng.random() < 0.85
        if ticket:
            key = _ticket(rng)
            params["jiraTicket"] = key
            tickets.add(key)
        if pipe.arche in ("prod", "release") and app.cloud != "kubernetes":
            params["regions"] = ",".join(app.regions)
        human: str | None = None
        principal: str | None
        if trig_kind == "manual":
            human = user or (rng.choice(app.team + self._approvers[:2]) if is_prod else rng.choice(app.team))
            trigger, origin = self._human_trigger(human, params, rng.random() < 0.2, ep_id, when)
            principal = human
        else:
            run_as = rng.choice(SERVICE_ACCOUNTS) if rng.random() < 0.8 else None
            principal = run_as or "anonymous"
            origin = "unknown"
            extras: dict[str, Any] = {
                "runAsUser": run_as,
                "enabled": True,
                "eventId": _uuid4(rng),
                "expectedArtifacts": [],
            }
            trigger = {"type": trig_kind, "user": "[anonymous]", "parameters": params, "extras": extras}
            if trig_kind == "cron":
                extras["id"] = _uuid4(rng)
                extras["cronExpression"] = self._cron_expr(pipe)
            elif trig_kind == "jenkins":
                msg_ticket = _ticket(rng) if rng.random() < 0.6 else None
                if msg_ticket:
                    tickets.add(msg_ticket)
                trigger["jenkins"] = {
                    "master": "jenkins-main",
                    "job": app.job,
                    "buildNumber": build,
                    "sha": _hex(rng, 40),
                    "committer": rng.choice(app.team),
                    "message": self._commit_message(msg_ticket),
                }
                if self.builds:
                    self._points.append(
                        (
                            when - rng.randint(1500, 9000),
                            self._next(),
                            "build",
                            rng.getrandbits(48),
                            (app.job, build, "SUCCESS", app.name),
                        )
                    )
            elif trig_kind == "git":
                sha = _hex(rng, 40)
                trigger["git"] = {
                    "hash": sha,
                    "source": "github",
                    "project": "example-org",
                    "branch": "main",
                    "slug": app.repo,
                    "action": "push:push",
                }
                extras["secret"] = _token(rng, 24)
                self._points.append(
                    (
                        when - rng.randint(800, 4000),
                        self._next(),
                        "git",
                        rng.getrandbits(48),
                        (app.repo, sha, rng.choice(app.team), None),
                    )
                )
            elif trig_kind == "docker":
                tag = version
                trigger["docker"] = {
                    "account": "registry-main",
                    "repository": f"example-org/{app.name}",
                    "tag": tag,
                }
                extras["registry"] = "registry.example.com"
                extras["digest"] = "sha256:" + _hex(rng, 64)
                if self.builds:
                    self._points.append(
                        (
                            when - rng.randint(2000, 20000),
                            self._next(),
                            "docker",
                            rng.getrandbits(48),
                            (app.name, tag),
                        )
                    )
        actor = human or principal or "anonymous"
        ep = self._new_exec(
            when,
            app,
            "PIPELINE",
            name=pipe.name,
            config_id=pipe.id,
            description=None,
            trigger=trigger,
            auth_user=principal,
            actor=actor,
            origin=origin,
            ep_id=ep_id,
        )
        ep.tickets = tickets
        ep.drop_final = drop_final or (not force_ok and rng.random() < 0.01)
        if rng.random() < 0.5:
            ep.notifications = [
                {
                    "type": "slack",
                    "address": f"#{app.name}-deploys",
                    "level": "pipeline",
                    "when": ["pipeline.failed"],
                }
            ]
        b = _Builder(orchestration=False)
        ctx = {
            "ep": ep,
            "app": app,
            "pipe": pipe,
            "version": version,
            "build": build,
            "human": human,
            "judge": judge,
            "judge_status": judge_status,
            "reserve": reserve_sg,
            "force_ok": force_ok,
            "created": {},
        }
        for kind, spec in pipe.spec:
            self._plan_stage(b, kind, spec, ctx)
        ep.stages, ep.top = b.stages, b.top
        # outcomes
        if cancel is None:
            cancel = not force_ok and rng.random() < 0.03
        child = ctx.get("child")
        if child is not None:
            return self._finalize_parent(ep, child, cancel)
        if cancel:
            self._plan_cancel(ep, human or rng.choice(app.team))
        self._finalize(ep)
        return ep

    def _cron_expr(self, pipe: _Pipe) -> str:
        if pipe.cron_weekday is not None:
            day = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")[pipe.cron_weekday]
            return f"0 0 {pipe.cron_hour} ? * {day}"
        return f"0 0 {pipe.cron_hour} * * ?"

    def _commit_message(self, ticket: str | None) -> str:
        text = self._rng.choice(
            (
                "fix retry loop in client",
                "bump dependencies",
                "add metrics for cache hits",
                "refactor config loading",
                "handle empty responses",
                "tune timeouts",
            )
        )
        return f"{ticket}: {text}" if ticket else text

    def _plan_cancel(self, ep: _Exec, by: str) -> None:
        rng = self._rng
        probe = _Timeline(ep, start=ep.start)
        last = ep.start
        for step in probe.steps():
            last = step[0]
        ep.cancel_at = ep.start + int((last - ep.start) * rng.uniform(0.1, 0.8)) + 1
        ep.cancel_by = by
        ep.cancel_reason = rng.choice(
            (
                None,
                "wrong version",
                "deploying the fix instead",
                "started by mistake",
                "blocking the release window",
            )
        )

    def _plan_stage(self, b: _Builder, kind: str, spec: dict[str, Any], ctx: dict[str, Any]) -> None:
        rng = self._rng
        ep: _Exec = ctx["ep"]
        app: _App = ctx["app"]
        force_ok = ctx["force_ok"]
        name = spec["name"]
        clouds = _CLOUDS[app.cloud]
        user = ctx["human"] or ep.auth_user or "anonymous"
        if kind == "bake":
            st = b.add(
                "bake",
                name,
                {"regions": spec["regions"], "user": user, "version": ctx["version"], "build": ctx["build"]},
            )
            for r in spec["regions"]:
                child = b.add(
                    "bake",
                    f"Bake in {r}",
                    {"region": r, "user": user, "version": ctx["version"], "build": ctx["build"]},
                    tasks_key="bakeRegion",
                    parent=st,
                    owner="STAGE_BEFORE",
                )
                if not force_ok and rng.random() < 0.03:
                    child.fail_task = 1
        elif kind == "deploy":
            env = spec["env"]
            account = clouds["accounts"][env]
            st = b.add(
                "deploy",
                name,
                {
                    "env": env,
                    "account": account,
                    "regions": spec["regions"],
                    "strategy": "redblack" if env != "test" else "",
                    "version": ctx["version"],
                    "build": ctx["build"],
                },
            )
            for r in spec["regions"]:
                key = (account, r, f"{app.name}-{env}")
                alive = self._alive(key, ep.start)
                source = alive[-1].name if alive else None
                sg = self._new_sg(app, env, r, created_at=None)
                if ctx["reserve"] and env == "prod":
                    sg.reserved = True
                    ctx["reserved_sg"] = sg.name
                ctx["created"][(env, r)] = sg.name
                child = b.add(
                    "createServerGroup",
                    f"Deploy in {r}",
                    {
                        "env": env,
                        "account": account,
                        "region": r,
                        "sg": sg.name,
                        "seq": sg.seq,
                        "source": source,
                        "capacity": dict(sg.capacity),
                        "strategy": st.p["strategy"],
                        "version": ctx["version"],
                        "build": ctx["build"],
                    },
                    parent=st,
                    owner="STAGE_BEFORE",
                )
                child.effects[4] = [("created", sg.name)]
                if not force_ok and rng.random() < 0.04:
                    child.fail_task = 6 if rng.random() < 0.7 else 4
        elif kind in ("disableCluster", "scaleDownCluster", "shrinkCluster"):
            env = spec["env"]
            account = clouds["accounts"][env]
            affected: dict[str, list[str]] = {}
            effects: list[tuple[str, str]] = []
            action = {
                "disableCluster": "disabled",
                "scaleDownCluster": "resized",
                "shrinkCluster": "destroyed",
            }[kind]
            for r in spec["regions"]:
                key = (account, r, f"{app.name}-{env}")
                new = ctx["created"].get((env, r))
                alive = [s for s in self._alive(key, ep.start) if not s.reserved and s.name != new]
                if kind == "shrinkCluster":  # shrinkToSize 2, counting the server group deployed just before
                    hit = alive[: max(0, len(alive) - (1 if new else 2))]
                    for s in hit:
                        s.doomed = True
                else:  # keep one enabled / full-size server group: the new one, else the newest
                    older = alive if new else alive[:-1]
                    hit = [s for s in older if not s.disabled] if kind == "disableCluster" else older
                    if kind == "disableCluster":
                        for s in hit:
                            s.disabled = True
                if hit:
                    affected[r] = [s.name for s in hit]
                    effects += [(action, s.name) for s in hit]
            st = b.add(
                kind,
                name,
                {
                    "env": env,
                    "account": account,
                    "regions": spec["regions"],
                    "cluster": f"{app.name}-{env}",
                    "affected": affected,
                },
            )
            st.effects[2] = effects
        elif kind == "manualJudgment":
            judge = ctx["judge"]
            status = ctx["judge_status"]
            starter = ctx["human"]
            if judge is None:
                r = rng.random()
                if starter and r < 0.12:
                    judge = starter
                else:
                    judge = rng.choice([u for u in self._approvers if u != starter] or self._approvers)
            if status is None:
                status = "stop" if (not force_ok and rng.random() < 0.07) else "continue"
            delay = int(min(6 * HOUR_MS, rng.lognormvariate(13.3, 1.0)))  # median ~10 min
            if force_ok:
                delay = min(delay, 20 * MIN_MS)
            st = b.add(
                "manualJudgment",
                name,
                {
                    "judge": judge,
                    "status": status,
                    "delay": delay,
                    "input": "Rollback" if status == "stop" else rng.choice(("LGTM", "Approved", "Ship it")),
                },
            )
            if status == "stop":
                st.fail_task = 0
        elif kind == "webhook":
            st = b.add("webhook", name, {"url": spec["url"], "token": spec["token"]})
            if spec.get("optional") and rng.random() < 0.15:
                st.skip = True
            elif not force_ok and rng.random() < 0.02:
                st.fail_task = 0
        elif kind == "wait":
            st = b.add("wait", name, {"wait": spec["wait"]})
        elif kind == "jenkins":
            st = b.add(
                "jenkins",
                name,
                {"job": spec["job"], "number": rng.randint(100, 5000), "version": ctx["version"]},
            )
            if not force_ok and rng.random() < 0.05:
                st.fail_task = 2
        elif kind == "deployManifest":
            env = spec["env"]
            st = b.add(
                "deployManifest",
                name,
                {
                    "env": env,
                    "account": clouds["accounts"][env],
                    "namespace": app.namespace if env != "test" else f"{app.namespace}-test",
                    "version": ctx["version"],
                    "user": user,
                },
            )
            if not force_ok and rng.random() < 0.04:
                st.fail_task = 4
        elif kind == "runJob":
            env = spec["env"]
            st = b.add(
                "runJob",
                name,
                {
                    "env": env,
                    "account": clouds["accounts"][env],
                    "namespace": app.namespace if env != "test" else f"{app.namespace}-test",
                    "version": ctx["version"],
                },
            )
            if not force_ok and rng.random() < 0.05:
                st.fail_task = 2
        elif kind == "resizeServerGroup":
            env = spec["env"]
            account = clouds["accounts"][env]
            r = spec["regions"][0]
            alive = [s for s in self._alive((account, r, f"{app.name}-{env}"), ep.start) if not s.reserved]
            target = alive[-1] if alive else None
            cap_from = dict(target.capacity) if target else {"min": 3, "max": 6, "desired": 3}
            cap_to = {"min": 1, "max": cap_from["max"], "desired": 1}
            st = b.add(
                "resizeServerGroup",
                name,
                {
                    "env": env,
                    "account": account,
                    "region": r,
                    "cluster": f"{app.name}-{env}",
                    "sg": target.name if target else None,
                    "from": cap_from,
                    "to": cap_to,
                    "dynamic": True,
                },
            )
            if target:
                st.effects[3] = [("resized", target.name)]
                target.capacity = cap_to
            else:
                st.fail_task = 0
        elif kind == "destroyServerGroup":
            env = spec["env"]
            account = clouds["accounts"][env]
            r = spec["regions"][0]
            target_name = ctx["created"].get((env, r))
            if target_name is None:
                alive = [
                    s for s in self._alive((account, r, f"{app.name}-{env}"), ep.start) if not s.reserved
                ]
                target_name = alive[0].name if alive else None
            if target_name:
                self._sgs[target_name].doomed = True
            p = {
                "env": env,
                "account": account,
                "region": r,
                "cluster": f"{app.name}-{env}",
                "sg": target_name,
                "dynamic": True,
            }
            st = b.add("destroyServerGroup", name, p)
            child = b.add(
                "disableServerGroup", "disableServerGroup", dict(p), parent=st, owner="STAGE_BEFORE"
            )
            if target_name:
                child.effects[2] = [("disabled", target_name)]
                st.effects[2] = [("destroyed", target_name)]
            else:
                child.fail_task = 0
        elif kind == "pipeline":
            child_pipe = app.pipes[spec["child"]]
            ctx["child"] = b.add("pipeline", name, {"pipe": child_pipe})
        else:  # pragma: no cover - specs are internal
            raise AssertionError(kind)

    # child pipelines ---------------------------------------------------------------------------------------
    def _finalize_parent(self, ep: _Exec, pipe_stage: _Stage, cancel: bool) -> _Exec:
        rng = self._rng
        app = self._apps[ep.app]
        child_pipe: _Pipe = pipe_stage.p["pipe"]
        child = self._plan_child(ep, app, child_pipe)
        # relative run of the child gives its duration and outcome
        last: Step | None = None
        for step in _Timeline(child, start=0).steps():
            last = step
        assert last is not None
        pipe_stage.p["child_duration"] = last[0]
        pipe_stage.p["child_id"] = child.id
        pipe_stage.p["child_name"] = child.name
        pipe_stage.p["child_config"] = child.config_id
        if last[4] != "SUCCEEDED":
            pipe_stage.fail_task = 1
        pipe_stage.p["child_status"] = last[4]
        # the child pipeline counts as one of the executions, so the stages before it do not fail
        for st in ep.stages[: pipe_stage.idx]:
            st.fail_task = None
        # where the child starts in the parent's timeline
        child_start = None
        monitor_end = None
        for t, kind, si, tj, _st in _Timeline(ep).steps():
            if si == pipe_stage.idx and kind == TK_END and tj == 0:
                child_start = t + rng.randint(300, 1500)
            if si == pipe_stage.idx and kind == TK_END and tj == 1:
                monitor_end = t
        if cancel and child_start is not None and monitor_end is not None:
            ep.cancel_at = child_start + int((monitor_end - child_start) * rng.uniform(0.2, 0.8))
            ep.cancel_by = (
                ep.actor
                if ep.actor not in SERVICE_ACCOUNTS and ep.actor != "anonymous"
                else rng.choice(app.team)
            )
            ep.cancel_reason = rng.choice(("tests are flaky, restarting", "wrong build", None))
        self._finalize(ep)
        if (
            child_start is None
            or child_start > self.window_end
            or (ep.cancel_at is not None and ep.cancel_at <= child_start)
        ):
            # the parent never got to start the child inside the window
            pipe_stage.p["child_id"] = None
            return ep
        child.start = child_start
        child.id = _ulid(child_start, rng)
        pipe_stage.p["child_id"] = child.id
        child.trigger["extras"]["executionId"] = child.id
        if ep.cancel_at is not None and ep.cancel_at < child_start + pipe_stage.p["child_duration"]:
            child.cancel_at = ep.cancel_at + rng.randint(100, 600)
            child.cancel_by = "parent pipeline"
            child.cancel_reason = None
        ep.child = child
        self._finalize(child)
        return ep

    def _plan_child(self, parent: _Exec, app: _App, pipe: _Pipe) -> _Exec:
        version = ".".join(map(str, app.version))
        params = {"version": version, "parentVersion": version}
        trigger = {
            "type": "pipeline",
            "user": parent.auth_user or "[anonymous]",
            "parameters": params,
            "extras": {"executionId": None},
        }
        human = parent.actor if parent.actor not in SERVICE_ACCOUNTS and parent.actor != "anonymous" else None
        ep = self._new_exec(
            parent.start,
            app,
            "PIPELINE",
            name=pipe.name,
            config_id=pipe.id,
            description=None,
            trigger=trigger,
            auth_user=parent.auth_user,
            actor=parent.actor,
            origin=None,
        )
        ep.parent = parent
        ep.modern, ep.old_echo = parent.modern, parent.old_echo
        ep.tickets = set(_trigger_tickets(parent))
        ep.allowed = list(parent.allowed)
        b = _Builder(orchestration=False)
        ctx = {
            "ep": ep,
            "app": app,
            "pipe": pipe,
            "version": version,
            "build": app.build,
            "human": human,
            "judge": None,
            "judge_status": None,
            "reserve": False,
            "force_ok": False,
            "created": {},
        }
        for kind, spec in pipe.spec:
            self._plan_stage(b, kind, spec, ctx)
        ep.stages, ep.top = b.stages, b.top
        return ep

    # ------------------------------------------------------------------ planning: orchestrations
    def _plan_orchestration(
        self,
        when: int,
        app: _App,
        *,
        op: str | None = None,
        user: str | None = None,
        target: _SG | None = None,
        reason: str | None = None,
        ticket: bool | None = None,
        force_ok: bool = False,
        same_pipe: bool = False,
    ) -> _Exec:
        rng = self._rng
        if op is None:
            if app.cloud == "kubernetes":
                op = rng.choices(
                    (
                        "deployManifest",
                        "savePipeline",
                        "updatePipeline",
                        "deletePipeline",
                        "updateApplication",
                    ),
                    (30, 40, 15, 5, 10),
                )[0]
            else:
                op = rng.choices(
                    (
                        "resizeServerGroup",
                        "disableServerGroup",
                        "enableServerGroup",
                        "destroyServerGroup",
                        "rollbackServerGroup",
                        "cloneServerGroup",
                        "savePipeline",
                        "updatePipeline",
                        "deletePipeline",
                        "updateApplication",
                    ),
                    (22, 12, 8, 10, 5, 5, 20, 8, 3, 7),
                )[0]
        user = user or rng.choice(app.team if rng.random() < 0.8 else self._users)
        b = _Builder(orchestration=True)
        tickets: set[str] = set()
        sg = None
        if op in _SG_OPS:
            sg = target or self._pick_sg(app, op, when)
            if sg is None:
                op = "savePipeline"
        if sg is not None:
            if ticket is None:
                ticket = rng.random() < (0.6 if op == "resizeServerGroup" else 0.3)
            if reason is None and (op == "resizeServerGroup" or rng.random() < 0.5):
                reason = rng.choice(
                    ("scale up for load test", "traffic spike", "cost savings")
                    if op == "resizeServerGroup"
                    else ("bad deploy", "canary looks unhealthy", "cleanup", "replaced by a newer version")
                )
            if ticket:
                key = _ticket(rng)
                tickets.add(key)
                reason = f"{key} {reason or 'requested change'}"
            description = self._plan_sg_op(b, op, sg, user, reason, when)
        elif op in ("savePipeline", "updatePipeline", "deletePipeline"):
            description = self._plan_pipeline_op(b, op, app, user, same_pipe)
        elif op == "updateApplication":
            b.add("updateApplication", "updateApplication", {"user": user, "n": rng.randint(1, 99)})
            description = f"Update Application: {app.name}"
        else:  # deployManifest
            env = "prod" if rng.random() < 0.4 else "staging"
            st = b.add(
                "deployManifest",
                "deployManifest",
                {
                    "env": env,
                    "account": _CLOUDS["kubernetes"]["accounts"][env],
                    "user": user,
                    "version": ".".join(map(str, app.version)),
                    "namespace": app.namespace,
                },
            )
            description = "Deploy manifest"
            if not force_ok and rng.random() < 0.04:
                st.fail_task = 4
        trigger = {"type": "manual", "user": user, "parameters": {}, "extras": {}}
        ep = self._new_exec(
            when,
            app,
            "ORCHESTRATION",
            name=None,
            config_id=None,
            description=description,
            trigger=trigger,
            auth_user=user,
            actor=user,
            origin="deck",
        )
        ep.tickets = tickets
        ep.stages, ep.top = b.stages, b.top
        if not force_ok and rng.random() < 0.03 and all(st.fail_task is None for st in ep.stages):
            top = ep.stages[0]
            if TASKS[top.tasks_key]:
                top.fail_task = len(TASKS[top.tasks_key]) - 1
        ep.drop_final = not force_ok and rng.random() < 0.01
        self._finalize(ep)
        return ep

    def _pick_sg(self, app: _App, op: str, when: int) -> _SG | None:
        rng = self._rng
        pool: list[_SG] = []
        for env in ("prod", "staging", "test"):
            account = _CLOUDS[app.cloud]["accounts"][env]
            for r in app.regions:
                alive = [s for s in self._alive((account, r, f"{app.name}-{env}"), when) if not s.reserved]
                if op == "disableServerGroup":
                    alive = [s for s in alive if not s.disabled]
                elif op == "enableServerGroup":
                    alive = [s for s in alive if s.disabled]
                elif op == "rollbackServerGroup":
                    alive = alive[-1:] if len(alive) >= 2 else []
                elif op == "destroyServerGroup":
                    alive = alive[:-1] or ([] if env == "prod" else alive)
                pool += alive
        return rng.choice(pool) if pool else None

    def _plan_sg_op(self, b: _Builder, op: str, sg: _SG, user: str, reason: str | None, when: int) -> str:
        rng = self._rng
        p: dict[str, Any] = {
            "account": sg.account,
            "region": sg.region,
            "sg": sg.name,
            "user": user,
            "reason": reason,
            "cluster": sg.cluster,
            "seq": sg.seq,
            "stack": sg.stack,
            "cloud": sg.cloud,
        }
        if op == "resizeServerGroup":
            cap_from = dict(sg.capacity)
            d = max(1, cap_from["desired"] + rng.choice((-2, -1, 1, 2, 3)))
            cap_to = {"min": d, "max": max(d, cap_from["max"]), "desired": d}
            p.update({"from": cap_from, "to": cap_to})
            sg.capacity = cap_to
            st = b.add(op, op, p)
            st.effects[3] = [("resized", sg.name)]
            return f"Resize Server Group: {sg.name} from ({_cap_text(cap_from)}) to ({_cap_text(cap_to)})"
        if op in ("disableServerGroup", "enableServerGroup"):
            st = b.add(op, op, p)
            st.effects[2] = [("disabled" if op == "disableServerGroup" else "enabled", sg.name)]
            sg.disabled = op == "disableServerGroup"
            verb = "Disable" if op == "disableServerGroup" else "Enable"
            return f"{verb} Server Group: {sg.name}"
        if op == "destroyServerGroup":
            sg.doomed = True
            st = b.add(op, op, p)
            child = b.add(
                "disableServerGroup", "disableServerGroup", dict(p), parent=st, owner="STAGE_BEFORE"
            )
            child.effects[2] = [("disabled", sg.name)]
            st.effects[2] = [("destroyed", sg.name)]
            return f"Destroy Server Group: {sg.name}"
        if op == "rollbackServerGroup":
            key = (sg.account, sg.region, sg.cluster)
            alive = [s for s in self._alive(key, when) if not s.reserved and s is not sg]
            restore = alive[-1]
            p["restore"] = restore.name
            st = b.add(op, op, p)
            en = b.add(
                "enableServerGroup",
                "enableServerGroup",
                {**p, "sg": restore.name},
                parent=st,
                owner="STAGE_AFTER",
            )
            en.effects[2] = [("enabled", restore.name)]
            dis = b.add("disableServerGroup", "disableServerGroup", dict(p), parent=st, owner="STAGE_AFTER")
            dis.effects[2] = [("disabled", sg.name)]
            restore.disabled = False
            sg.disabled = True
            return f"Rollback Server Group: {sg.name}"
        # cloneServerGroup
        app = self._apps[sg.app]
        new = self._new_sg(app, sg.stack, sg.region, created_at=None)
        p.update({"new": new.name, "capacity": dict(sg.capacity)})
        st = b.add(op, op, p)
        st.effects[2] = [("created", new.name)]
        return f"Create Cloned Server Group from {sg.name}"

    def _plan_pipeline_op(self, b: _Builder, op: str, app: _App, user: str, same_pipe: bool = False) -> str:
        rng = self._rng
        scratch = app.pipes.get("scratch")
        if op == "deletePipeline" and (scratch is None or scratch.deleted):
            op = "savePipeline"
        if same_pipe and app.last_saved is not None and not app.last_saved.deleted:
            pipe = app.last_saved
        elif op == "savePipeline" and rng.random() < 0.25 and (scratch is None or scratch.deleted):
            scratch = _Pipe(
                _uuid4(rng),
                f"{app.name} experiment {rng.randint(1, 99)}",
                "scratch",
                app.name,
                [("wait", {"wait": 30, "name": "Wait"})],
                (("manual", 1.0),),
                version=0,
                scratch=True,
            )
            app.pipes["scratch"] = scratch
            pipe = scratch
        elif op == "deletePipeline":
            assert scratch is not None
            pipe = scratch
        elif app.last_saved is not None and not app.last_saved.deleted and rng.random() < 0.6:
            pipe = app.last_saved  # people iterate on the pipeline they just edited
        else:
            pipe = rng.choice([p for p in app.pipes.values() if not p.deleted])
        app.last_saved = pipe
        if op != "deletePipeline":
            pipe.version += 1
        else:
            pipe.deleted = True
        b.add(op, op, {"pipe": pipe, "version": pipe.version, "user": user})
        verb = {"savePipeline": "Save", "updatePipeline": "Update", "deletePipeline": "Delete"}[op]
        return f"{verb} pipeline '{pipe.name}'"

    # ------------------------------------------------------------------ planting
    def _plan_planted(self, kind: str, when: int) -> list[tuple[int, str]]:
        rng = self._rng
        aws = [a for a in self._app_list if a.cloud != "kubernetes"]
        app = aws[0]
        follow: list[tuple[int, str]] = []
        if kind == "self_approved":
            starter = self._approvers[0]
            ep = self._plan_pipeline(
                when,
                app,
                app.pipes["prod"],
                "manual",
                user=starter,
                ticket=True,
                judge=starter,
                judge_status="continue",
                reserve_sg=True,
                force_ok=True,
                cancel=False,
            )
            sg = next(
                s
                for st in ep.stages
                for acts in st.effects.values()
                for a, s in acts
                if a == "created" and self._sgs[s].reserved
            )
            self._story_sg = sg
            self.facts.lifecycle_server_group = sg
            created = self._sgs[sg].created_at or when
            span = self.window_end - self.window_start
            t = max(created + 30 * MIN_MS, self.window_start + int(span * 0.4))
            for step in ("story_resize", "story_disable", "story_destroy"):
                t = min(t, self.window_end - 2 * HOUR_MS)
                follow.append((t, step))
                t = max(t + 20 * MIN_MS, t + int(span * 0.12))
        elif kind.startswith("story_"):
            assert self._story_sg is not None
            sg = self._sgs[self._story_sg]
            who = {
                "story_resize": self._users[10],
                "story_disable": self._users[11],
                "story_destroy": self._users[12],
            }[kind]
            op = {
                "story_resize": "resizeServerGroup",
                "story_disable": "disableServerGroup",
                "story_destroy": "destroyServerGroup",
            }[kind]
            reason = "scale up for launch" if kind == "story_resize" else None
            self._plan_orchestration(
                when,
                self._apps[sg.app],
                op=op,
                user=who,
                target=sg,
                reason=reason,
                ticket=kind == "story_resize",
                force_ok=True,
            )
        elif kind == "hotfix_no_ticket":
            user = rng.choice(app.team)
            self._plan_pipeline(
                when, app, app.pipes["hotfix"], "manual", user=user, ticket=False, force_ok=True, cancel=False
            )
        elif kind == "dropped_final":
            self._plan_pipeline(
                when,
                app,
                app.pipes["staging"],
                "manual",
                user=rng.choice(app.team),
                drop_final=True,
                force_ok=True,
                cancel=False,
            )
        elif kind == "release_cancel":
            self._plan_pipeline(
                when,
                app,
                app.pipes["release"],
                "manual",
                user=self._approvers[1],
                ticket=True,
                force_ok=True,
                cancel=True,
            )
        return follow

    # ------------------------------------------------------------------ facts
    def _finalize(self, ep: _Exec) -> None:
        """Walk the execution's timeline once: end state, effects on server groups and facts."""
        end_ms = self.window_end
        n_events = 0
        status = "RUNNING"
        end_time: int | None = None
        prod_change_at: int | None = None
        last_prod_change: int | None = None
        judgments: list[dict[str, Any]] = []
        effects: list[tuple[int, str, str]] = []
        counts = self._type_counts
        for t, kind, si, tj, st in _Timeline(ep).steps():
            if t > end_ms:
                break
            if kind == EX_END:
                end_time = t
                if not ep.drop_final:
                    status = st
                    n_events += 1
                    etype = _event_type(ep, kind, st)
                    counts[etype] = counts.get(etype, 0) + 1
                ep.status = st
                continue
            n_events += 1
            etype = _event_type(ep, kind, st)
            counts[etype] = counts.get(etype, 0) + 1
            if kind == ST_START:
                sp = ep.stages[si]
                if sp.kind in MUTATING_STAGE_TYPES and sp.p.get("account") in PROD_ACCOUNTS:
                    prod_change_at = t if prod_change_at is None else prod_change_at
                    last_prod_change = t
            elif kind == TK_END:
                sp = ep.stages[si]
                if sp.kind == "manualJudgment" and st in ("SUCCEEDED", "TERMINAL"):
                    judgments.append(
                        {
                            "user": sp.p["judge"],
                            "status": sp.p["status"],
                            "input": sp.p["input"],
                            "time": t - _JUDGE_LAG,
                            "stage_id": None,
                        }
                    )
                if st == "SUCCEEDED":
                    effects += [(t, a, s) for a, s in sp.effects.get(tj, ())]
        ep.end = end_time
        self._plans.append(ep)
        if ep.origin == "api":
            self._manual[ep.trigger["extras"]["eventId"]] = ep
        for t, action, sg_name in effects:
            sg = self._sgs[sg_name]
            if action == "created":
                sg.created_at = t
            elif action == "destroyed":
                sg.destroyed_at = t
            self._sg_effects.append((t, action, sg_name, ep.actor, ep.id))
        approved = any(
            j["status"] == "continue" and prod_change_at is not None and j["time"] < prod_change_at
            for j in judgments
        )
        # the starter answered "continue" to a judgment that gated at least one prod change
        starter = ep.trigger["user"] if ep.trigger["type"] == "manual" else None
        self_approved = any(
            j["status"] == "continue"
            and j["user"] == starter
            and last_prod_change is not None
            and j["time"] < last_prod_change
            for j in judgments
        )
        accounts: set[str] = set()
        regions: set[str] = set()
        namespaces: set[str] = set()
        sgs: set[str] = set()
        for sp in ep.stages:
            if "account" in sp.p:
                accounts.add(sp.p["account"])
            for key in ("region",):
                if sp.p.get(key):
                    regions.add(sp.p[key])
            regions.update(sp.p.get("regions", ()))
            if sp.p.get("namespace") and sp.kind in ("deployManifest", "runJob"):
                namespaces.add(sp.p["namespace"])
        for _t, _a, s in effects:
            sgs.add(s)
        trig = ep.trigger
        self.facts.executions[ep.id] = {
            "type": ep.type,
            "application": ep.app,
            "pipeline": ep.name,
            "pipeline_config_id": ep.config_id,
            "description": ep.description,
            "user": ep.actor,
            "run_as_user": ep.auth_user,
            "trigger_type": trig["type"],
            "trigger_user": trig["user"],
            "status": status,
            "start_time": ep.start,
            "end_time": end_time if not ep.drop_final else None,
            "accounts": sorted(accounts),
            "regions": sorted(regions),
            "namespaces": sorted(namespaces),
            "server_groups": sorted(sgs),
            "cloud_provider": ep.cloud,
            "stage_types": sorted({sp.kind for sp in ep.stages}),
            "tickets": sorted(ep.tickets),
            "prod_change": prod_change_at is not None,
            "approved": approved,
            "self_approved": self_approved,
            "judgments": judgments,
            "canceled_by": ep.cancel_by if ep.cancel_at is not None else None,
            "cancellation_reason": ep.cancel_reason if ep.cancel_at is not None else None,
            "parent_execution": ep.parent.id if ep.parent else None,
            "events": n_events,
            "serialization": "modern" if ep.modern else "legacy",
            "final_event_dropped": ep.drop_final and end_time is not None,
            "still_running": end_time is None,
        }

    def _plan_background_points(self, n: int) -> None:
        rng = self._rng
        if self.builds:
            for _ in range(int(n * 1.6)):
                app = rng.choices(self._app_list, self._app_weights)[0]
                app.build += 1
                result = rng.choices(
                    ("SUCCESS", "FAILURE", "UNSTABLE", "ABORTED", "BUILDING"), (80, 8, 4, 2, 6)
                )[0]
                job = rng.choice((app.job, f"{app.name}-pr-check", f"{app.name}-integration"))
                self._points.append(
                    (
                        self._sample_time(False),
                        self._next(),
                        "build",
                        rng.getrandbits(48),
                        (job, app.build, result, app.name),
                    )
                )
            for _ in range(int(n * 0.25)):
                app = rng.choices(self._app_list, self._app_weights)[0]
                self._points.append(
                    (
                        self._sample_time(False),
                        self._next(),
                        "docker",
                        rng.getrandbits(48),
                        (app.name, ".".join(map(str, app.version)) + f"-rc{rng.randint(1, 9)}"),
                    )
                )
        for _ in range(int(n * 0.35)):
            app = rng.choices(self._app_list, self._app_weights)[0]
            ticket = _ticket(rng) if rng.random() < 0.4 else None
            self._points.append(
                (
                    self._sample_time(True),
                    self._next(),
                    "git",
                    rng.getrandbits(48),
                    (app.repo, _hex(rng, 40), rng.choice(app.team), ticket),
                )
            )

    def _finish_facts(self) -> None:
        f = self.facts
        self._plans.sort(key=lambda e: (e.start, e.seq))
        self._points = [p for p in self._points if self.window_start - HOUR_MS <= p[0] <= self.window_end]
        for ep_id, e in f.executions.items():
            if e["prod_change"] and not e["approved"]:
                f.unapproved_prod.append(ep_id)
            if e["prod_change"] and not e["tickets"]:
                f.no_ticket_prod.append(ep_id)
            if e["self_approved"]:
                f.self_approved_prod.append(ep_id)
            if e["still_running"] or e["final_event_dropped"]:
                f.unfinished.append(ep_id)
            if e["final_event_dropped"]:
                f.dropped_final.append(ep_id)
        for ep in self._plans:
            e = f.executions[ep.id]
            if e["judgments"]:
                ids = [_stage_id(ep, st) for st in ep.stages if st.kind == "manualJudgment"]
                for j, sid in zip(e["judgments"], ids, strict=False):
                    j["stage_id"] = sid
        enabled: dict[str, bool] = {}
        for t, action, name, user, ep_id in sorted(self._sg_effects):
            sg = self._sgs[name]
            was_enabled = enabled.get(name, True)
            enabled[name] = {"disabled": False, "enabled": True}.get(action, was_enabled)
            entry = f.server_groups.setdefault(
                name,
                {
                    "application": sg.app,
                    "account": sg.account,
                    "region": sg.region,
                    "cluster": sg.cluster,
                    "cloud_provider": sg.cloud,
                    "created_by": None,
                    "created_execution": None,
                    "created_at": None,
                    "resized_by": None,
                    "resized_execution": None,
                    "disabled_by": None,
                    "disabled_execution": None,
                    "enabled_by": None,
                    "enabled_execution": None,
                    "destroyed_by": None,
                    "destroyed_execution": None,
                    "destroyed_at": None,
                    "history": [],
                },
            )
            entry["history"].append({"action": action, "user": user, "execution": ep_id, "time": t})
            if (action == "disabled" and not was_enabled) or (action == "enabled" and was_enabled):
                continue  # no change of state: keep who changed it last
            entry[f"{action}_by"] = user
            entry[f"{action}_execution"] = ep_id
            if action in ("created", "destroyed"):
                entry[f"{action}_at"] = t
        counts = dict(self._type_counts)
        for ep in self._plans:
            f.event_count += f.executions[ep.id]["events"]
        for p in self._points:
            k = _POINT_TYPES[p[2]]
            counts[k] = counts.get(k, 0) + 1
            f.event_count += 1
        f.event_types = dict(sorted(counts.items()))
        for lst in (f.self_approved_prod, f.unapproved_prod, f.no_ticket_prod, f.unfinished, f.dropped_final):
            lst.sort()

    # ------------------------------------------------------------------ delivery
    def events(self) -> Iterator[dict[str, Any]]:
        """Echo event dicts (plain, unwrapped shape) in delivery order; reproducible for a seed."""
        return self._deliver(self._merged())

    def gate_executions(self) -> Iterator[dict[str, Any]]:
        """What Gate serves for each execution at the end of the window, in start order: its last state
        (an execution whose final event echo dropped is finished here). A child pipeline embeds its parent
        as it ended, not as it was when the child started."""
        parents: dict[str, _Run] = {}
        for _start, _seq, kind, obj in self._schedule:
            if kind != "x":
                continue
            ep: _Exec = obj
            parent_run = parents.pop(ep.id, None) if ep.parent is not None else None
            run = _Run(self, ep, parent_run)
            if ep.child is not None:
                parents[ep.child.id] = run
            for step in _Timeline(ep).steps():
                if step[0] > self.window_end:
                    break
                run._apply(step)
            yield json.loads(json.dumps(run.snapshot()))

    def _merged(self) -> Iterator[dict[str, Any]]:
        """All events in time order: a heap of running executions, fed from the start-ordered schedule."""
        heap: list[tuple[int, int, int, Iterator[Any]]] = []
        parents: dict[str, _Run] = {}
        counter = 0
        schedule = self._schedule
        i, n = 0, len(schedule)
        while i < n or heap:
            if i < n and (not heap or schedule[i][0] <= heap[0][0]):
                _start, seq, kind, obj = schedule[i]
                i += 1
                gen: Iterator[Any]
                if kind == "x":
                    ep: _Exec = obj
                    parent_run = parents.pop(ep.id, None) if ep.parent is not None else None
                    run = _Run(self, ep, parent_run)
                    if ep.child is not None:
                        parents[ep.child.id] = run
                    gen = run.events()
                else:
                    gen = _point_events(self, obj)
                first = next(gen, None)
                if first is not None:
                    counter += 1
                    heapq.heappush(heap, (first, seq, counter, gen))
            else:
                _t, seq, _c, gen = heapq.heappop(heap)
                yield next(gen)
                nxt = next(gen, None)
                if nxt is not None:
                    counter += 1
                    heapq.heappush(heap, (nxt, seq, counter, gen))

    def _deliver(self, source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rng = random.Random(f"spintrail-delivery:{self.seed}")
        window = self.shuffle_window
        rate = self.duplicate_rate
        buffer: list[dict[str, Any]] = []
        dups: list[tuple[int, int, dict[str, Any]]] = []
        delivered = 0
        dseq = 0

        def out(ev: dict[str, Any]) -> Iterator[dict[str, Any]]:
            nonlocal delivered, dseq
            while dups and dups[0][0] <= delivered:
                delivered += 1
                yield heapq.heappop(dups)[2]
            delivered += 1
            yield ev
            if rate and rng.random() < rate:
                dseq += 1
                heapq.heappush(dups, (delivered + rng.randint(1, 25), dseq, ev))

        for ev in source:
            if window <= 1:
                yield from out(ev)
                continue
            buffer.append(ev)
            if len(buffer) >= window:
                k = rng.randrange(len(buffer))
                buffer[k], buffer[-1] = buffer[-1], buffer[k]
                yield from out(buffer.pop())
        while buffer:
            k = rng.randrange(len(buffer))
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            yield from out(buffer.pop())
        while dups:
            yield heapq.heappop(dups)[2]


# ---------------------------------------------------------------------------------------------------------
# Materialization of one execution
# ---------------------------------------------------------------------------------------------------------


def _trigger_tickets(ep: _Exec) -> set[str]:
    """Tickets that sit in the trigger (and therefore in every snapshot, including embedded parents)."""
    out: set[str] = set()
    trig = ep.trigger
    t = trig.get("parameters", {}).get("jiraTicket")
    if t:
        out.add(t)
    msg = trig.get("jenkins", {}).get("message", "")
    if msg and ":" in msg:
        out.add(msg.split(":", 1)[0])
    if ep.parent is not None:
        out |= _trigger_tickets(ep.parent)
    return out


def _stage_id(ep: _Exec, st: _Stage) -> str:
    return _ulid(ep.start + st.idx, random.Random(f"{ep.seed}:{st.idx}"))


def _cap_text(c: Mapping[str, int]) -> str:
    return f"min: {c['min']}, max: {c['max']}, desired: {c['desired']}"


def _event_type(ep: _Exec, kind: int, status: str) -> str:
    """``details.type`` of the event a timeline step produces."""
    if kind in (EX_START, EX_END):
        prefix = "orca:pipeline" if ep.type == "PIPELINE" else "orca:orchestration"
        if kind == EX_START:
            return f"{prefix}:starting"
        return f"{prefix}:complete" if status in ("SUCCEEDED", "STOPPED", "SKIPPED") else f"{prefix}:failed"
    if kind == ST_START:
        return "orca:stage:starting"
    if kind == ST_SKIP:
        return "orca:stage:skipped"
    if kind == ST_END:
        return "orca:stage:complete" if status == "SUCCEEDED" else "orca:stage:failed"
    if kind == TK_START:
        return "orca:task:starting"
    return "orca:task:complete" if status == "SUCCEEDED" else "orca:task:failed"


class _SS:
    """Mutable state of one stage while its execution is materialized; ``d`` is the published dict."""

    __slots__ = (
        "ctx",
        "d",
        "end",
        "id",
        "last_modified",
        "on_end",
        "on_fail",
        "on_task",
        "outputs",
        "parent_id",
        "sp",
        "start",
        "status",
        "tasks",
        "visible",
    )

    def __init__(self, sp: _Stage, sid: str) -> None:
        self.sp = sp
        self.id = sid
        self.status = "NOT_STARTED"
        self.start: int | None = None
        self.end: int | None = None
        self.last_modified: dict[str, Any] | None = None
        self.outputs: dict[str, Any] = {}
        self.ctx: dict[str, Any] = {}
        self.on_task: dict[int, dict[str, Any]] = {}
        self.on_end: dict[str, Any] = {}
        self.on_fail: dict[str, Any] = {}
        self.tasks: list[dict[str, Any]] = []
        self.visible = sp.parent is None
        self.parent_id: str | None = None
        self.d: dict[str, Any] = {}


class _Run:
    """Builds the echo events of one execution, step by step, with copy-on-write snapshots."""

    def __init__(self, sim: Simulator, ep: _Exec, parent_run: _Run | None) -> None:
        self.sim = sim
        self.ep = ep
        self.rng = random.Random(ep.seed ^ 0x5DEECE66D)
        self.modern = ep.modern
        self.app = sim._apps[ep.app]
        self.parent_run = parent_run
        self.orch = ep.type == "ORCHESTRATION"
        self.canceled = False
        self.status = "NOT_STARTED"
        self.start_time: int | None = None
        self.end_time: int | None = None
        self.image_suffix = time.strftime("%Y%m%d%H%M%S", time.gmtime(ep.start / 1000))
        self.states = [_SS(sp, _stage_id(ep, sp)) for sp in ep.stages]
        for s in self.states:
            if s.sp.parent is not None:
                s.parent_id = self.states[s.sp.parent].id
        for s in self.states:
            _script(self, s)
            s.tasks = [
                self._task_dict(j, name, cls, "NOT_STARTED", None, None, len(TASKS[s.sp.tasks_key]))
                for j, (name, cls) in enumerate(TASKS[s.sp.tasks_key])
            ]
            s.d = self._stage_dict(s)
        self.parent_snapshot: dict[str, Any] | None = None
        self.trigger = self._trigger()
        self._head()

    # dict builders -----------------------------------------------------------------------------------------
    def _task_dict(
        self, j: int, name: str, cls: str, status: str, start: int | None, end: int | None, n: int
    ) -> dict[str, Any]:
        d = {
            "id": str(j + 1),
            "implementingClass": cls,
            "name": name,
            "startTime": start,
            "endTime": end,
            "status": status,
            "stageStart": j == 0,
            "stageEnd": j == n - 1,
            "loopStart": False,
            "loopEnd": False,
            "taskExceptionDetails": {},
        }
        return _nn(d) if self.modern else d

    def _stage_dict(self, s: _SS) -> dict[str, Any]:
        sp = s.sp
        d = {
            "id": s.id,
            "refId": sp.ref,
            "type": sp.kind,
            "name": sp.name,
            "startTime": s.start,
            "endTime": s.end,
            "startTimeExpiry": None,
            "status": s.status,
            "context": s.ctx,
            "outputs": s.outputs,
            "tasks": s.tasks,
            "syntheticStageOwner": sp.owner,
            "parentStageId": s.parent_id,
            "requisiteStageRefIds": sp.req,
            "scheduledTime": None,
            "lastModified": s.last_modified,
            "additionalMetricTags": None,
        }
        return _nn(d) if self.modern else d

    def _trigger(self) -> dict[str, Any]:
        ep, rng = self.ep, self.rng
        spec = ep.trigger
        base: dict[str, Any] = {
            "type": spec["type"],
            "correlationId": None,
            "user": spec["user"],
            "parameters": dict(spec.get("parameters", {})),
            "artifacts": [],
            "notifications": [],
            "rebake": False,
            "dryRun": False,
            "strategy": False,
            "resolvedExpectedArtifacts": [],
        }
        extras = dict(spec.get("extras", {}))
        if "jenkins" in spec:
            j = spec["jenkins"]
            url = f"https://jenkins.{_EMAIL_DOMAIN}/job/{j['job']}/{j['buildNumber']}/"
            base.update(
                {
                    "master": j["master"],
                    "job": j["job"],
                    "buildNumber": j["buildNumber"],
                    "propertyFile": None,
                    "buildInfo": {
                        "name": j["job"],
                        "number": j["buildNumber"],
                        "url": url,
                        "result": "SUCCESS",
                        "artifacts": [
                            {
                                "fileName": f"{self.app.name}_{spec['parameters']['version']}_all.deb",
                                "displayPath": f"{self.app.name}.deb",
                                "relativePath": f"build/distributions/{self.app.name}.deb",
                            }
                        ],
                        "scm": [
                            {
                                "name": "origin/main",
                                "branch": "main",
                                "sha1": j["sha"],
                                "committer": j["committer"],
                                "message": j["message"],
                            }
                        ],
                        "building": False,
                        "timestamp": str(ep.start - rng.randint(5000, 60000)),
                    },
                    "properties": {},
                }
            )
        elif "git" in spec:
            base.update(spec["git"])
        elif "docker" in spec:
            base.update(spec["docker"])
        elif spec["type"] == "pipeline":
            pr = self.parent_run
            if pr is not None:
                self.parent_snapshot = pr.snapshot()
                base["parentExecution"] = self.parent_snapshot
                base["parentPipelineStageId"] = next(
                    (s.id for s in pr.states if s.sp.kind == "pipeline"), None
                )
            else:  # pragma: no cover - parents always start first
                base["parentExecution"] = {"id": ep.parent.id if ep.parent else None}
                base["parentPipelineStageId"] = None
            extras["executionId"] = ep.id
        if self.modern:
            base.update(_nn(extras))
            return _nn(base)
        base["other"] = extras
        return base

    def _head(self) -> None:
        ep = self.ep
        h1 = {
            "type": ep.type,
            "id": ep.id,
            "application": ep.app,
            "name": ep.name,
            "buildTime": ep.start - 37 - (ep.seed % 500),
            "canceled": self.canceled,
            "canceledBy": ep.cancel_by if self.canceled else None,
            "cancellationReason": ep.cancel_reason if self.canceled else None,
            "limitConcurrent": not self.orch,
            "maxConcurrentExecutions": 0,
            "keepWaitingPipelines": False,
        }
        h2 = {
            "startTime": self.start_time,
            "endTime": self.end_time,
            "startTimeExpiry": None,
            "status": self.status,
            "authentication": {"user": ep.auth_user, "allowedAccounts": list(ep.allowed)},
            "paused": None,
            "origin": ep.origin,
            "trigger": self.trigger,
            "description": ep.description,
            "pipelineConfigId": ep.config_id,
            "source": None,
            "notifications": ep.notifications,
            "initialConfig": {},
            "systemNotifications": [],
            "spelEvaluator": None if self.orch else "v4",
            "templateVariables": None,
            "partition": None,
        }
        if self.modern:
            h1, h2 = _nn(h1), _nn(h2)
        self.h1, self.h2 = h1, h2

    def snapshot(self) -> dict[str, Any]:
        d = dict(self.h1)
        d["stages"] = [s.d for s in self.states if s.visible]
        d.update(self.h2)
        return d

    # events ------------------------------------------------------------------------------------------------
    def _envelope(self, t: int, etype: str, content: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng
        created = str(t + rng.randint(2, 45))
        if self.ep.old_echo:
            details: dict[str, Any] = {
                "source": "orca",
                "type": etype,
                "created": created,
                "organization": None,
                "project": None,
                "application": self.ep.app,
                "_content_id": None,
                "requestHeaders": {},
            }
            ev: dict[str, Any] = {"details": details, "content": content, "rawContent": None, "payload": None}
        else:
            ev = {
                "details": {
                    "source": "orca",
                    "type": etype,
                    "created": created,
                    "application": self.ep.app,
                    "requestHeaders": {},
                },
                "content": content,
            }
        event_id = _uuid4(rng)
        if self.modern or rng.random() >= 0.03:
            ev["eventId"] = event_id
        return ev

    def _stage_content(self, s: _SS, task: str | None, with_execution: bool) -> dict[str, Any]:
        c = {
            "standalone": self.orch,
            "canceled": self.canceled,
            "context": s.ctx,
            "startTime": s.start,
            "endTime": s.end,
            "executionId": self.ep.id,
            "stageId": s.id,
            "isSynthetic": s.sp.owner is not None,
            "name": s.sp.name,
        }
        if task is not None:
            c["taskName"] = f"{s.sp.kind}.{task}"
        if with_execution:
            c["execution"] = self.snapshot()
        return c

    def _set_task(self, s: _SS, j: int, status: str, start: int | None, end: int | None) -> None:
        name, cls = TASKS[s.sp.tasks_key][j]
        old = s.tasks[j]
        if start is None:
            start = old.get("startTime")
        tasks = list(s.tasks)
        tasks[j] = self._task_dict(j, name, cls, status, start, end, len(tasks))
        s.tasks = tasks

    def _update_ctx(self, s: _SS, updates: Mapping[str, Any]) -> None:
        if updates:
            s.ctx = {**s.ctx, **updates}

    def events(self) -> Iterator[int | dict[str, Any]]:
        """Alternately the time of the next event, then (when resumed) the event itself.

        The execution's state only changes when the event is asked for, so another execution that starts
        in between (a child pipeline embedding its parent) sees this one exactly as it is at that moment.
        """
        ep = self.ep
        end_ms = self.sim.window_end
        for step in _Timeline(ep).steps():
            t = step[0]
            if t > end_ms or (step[1] == EX_END and ep.drop_final):
                return
            yield t
            yield self._apply(step)

    def _apply(self, step: Step) -> dict[str, Any]:
        t, kind, si, tj, st = step
        ep = self.ep
        if ep.cancel_at is not None and t >= ep.cancel_at and not self.canceled:
            self.canceled = True
            self._head()
        if kind in (EX_START, EX_END):
            if kind == EX_START:
                self.status, self.start_time = "RUNNING", t
            else:
                self.status, self.end_time = st, t
            self._head()
            content = {"executionId": ep.id, "execution": self.snapshot()}
            return self._envelope(t, _event_type(ep, kind, st), content)
        s = self.states[si]
        task: str | None = None
        if kind == ST_START:
            s.status, s.start = "RUNNING", t
            for ci in (*s.sp.before, *s.sp.after):
                self.states[ci].visible = True
        elif kind == ST_SKIP:
            s.status, s.start, s.end = "SKIPPED", t, t
        elif kind == TK_START:
            self._set_task(s, tj, "RUNNING", t, None)
            task = TASKS[s.sp.tasks_key][tj][0]
        elif kind == TK_END:
            self._set_task(s, tj, st, None, t)
            if s.sp.kind == "manualJudgment" and st in ("SUCCEEDED", "TERMINAL"):
                self._judge(s, t)
            if st == "SUCCEEDED":
                self._update_ctx(s, s.on_task.get(tj, {}))
            elif st == "TERMINAL":
                self._update_ctx(s, s.on_fail)
            task = TASKS[s.sp.tasks_key][tj][0]
        else:  # ST_END
            s.status, s.end = st, t
            if st == "SUCCEEDED":
                self._update_ctx(s, s.on_end)
                if s.sp.kind == "bake" and s.sp.parent is None:
                    details = [self._image_details(r, s.sp.p) for r in s.sp.p["regions"]]
                    s.outputs = {"deploymentDetails": details}
        s.d = self._stage_dict(s)
        with_execution = task is None or self.sim.include_full_execution
        return self._envelope(t, _event_type(ep, kind, st), self._stage_content(s, task, with_execution))

    def _judge(self, s: _SS, t: int) -> None:
        p = s.sp.p
        judged = t - _JUDGE_LAG
        s.last_modified = {
            "user": p["judge"],
            "allowedAccounts": self.sim._allowed(p["judge"]),
            "lastModifiedTime": judged,
        }
        self._update_ctx(
            s, {"judgmentStatus": p["status"], "judgmentInput": p["input"], "lastModifiedBy": p["judge"]}
        )

    # images ------------------------------------------------------------------------------------------------
    def image_name(self, version: str, build: int) -> str:
        sha = _digest(self.app.name, version, n=7)
        return f"{self.app.name}-{version}-h{build}.{sha}-x86_64-{self.image_suffix}-jammy-hvm-sriov-ebs"

    def ami(self, region: str, version: str) -> str:
        return "ami-" + _digest(self.app.name, version, region)

    def _image_details(self, region: str, p: Mapping[str, Any]) -> dict[str, Any]:
        version, build = p["version"], p["build"]
        return {
            "ami": self.ami(region, version),
            "imageId": self.ami(region, version),
            "imageName": self.image_name(version, build),
            "region": region,
            "cloudProvider": self.app.cloud,
            "package": self.app.name,
        }


# ---------------------------------------------------------------------------------------------------------
# Stage contexts (what orca puts in stage.context, step by step)
# ---------------------------------------------------------------------------------------------------------


def _exception(rng: random.Random, error: str, errors: list[str], operation: str, t: int) -> dict[str, Any]:
    return {
        "details": {
            "error": error,
            "errors": errors,
            "stackTrace": f"{_O}.clouddriver.tasks.{operation}.execute(Task.groovy:"
            f"{rng.randint(40, 300)})\n\tat {_O}.q.handler.RunTaskHandler",
        },
        "exceptionType": "IllegalStateException",
        "operation": operation,
        "shouldRetry": False,
        "timestamp": t,
    }


def _kato(
    task_id: str, op: str, phase: str, lines: list[str], results: list[dict[str, Any]], failed: bool = False
) -> dict[str, Any]:
    history = [
        {"phase": "ORCHESTRATION", "status": "Initializing Orchestration Task"},
        {"phase": "ORCHESTRATION", "status": f"Processing op: {op}"},
    ]
    history += [{"phase": phase, "status": line} for line in lines]
    history.append(
        {
            "phase": "ORCHESTRATION",
            "status": "Orchestration failed." if failed else "Orchestration completed.",
        }
    )
    return {
        "id": task_id,
        "status": {"completed": True, "failed": failed, "retryable": False},
        "history": history,
        "resultObjects": results,
    }


def _zones(cloud: str, region: str) -> list[str]:
    if cloud == "gce":
        return [f"{region}-a", f"{region}-b", f"{region}-c"]
    return [f"{region}a", f"{region}b", f"{region}c"]


def _moniker(app: str, sg: str, stack: str) -> dict[str, Any]:
    return {
        "app": app,
        "cluster": sg.rsplit("-", 1)[0],
        "detail": None,
        "stack": stack,
        "sequence": int(sg.rsplit("-v", 1)[1]),
    }


def _base(run: _Run, s: _SS) -> dict[str, Any]:
    sp = s.sp
    if run.orch:
        return {}
    if sp.parent is not None:
        parent = run.ep.stages[sp.parent]
        return {"type": sp.kind, "name": sp.name, "refId": parent.ref, "requisiteStageRefIds": []}
    return {"type": sp.kind, "name": sp.name, "refId": sp.ref, "requisiteStageRefIds": list(sp.req)}


def _script(run: _Run, s: _SS) -> None:
    """Fill ``s.ctx`` (initial context) and the updates applied when tasks / the stage finish."""
    sp, p, rng, app = s.sp, s.sp.p, run.rng, run.app
    kind = sp.kind
    base = _base(run, s)
    now = run.ep.start
    kato_id = _ulid(now + sp.idx * 1000, rng)
    if kind == "bake":
        common = {
            "package": app.name,
            "baseOs": "jammy",
            "baseLabel": "release",
            "vmType": "hvm",
            "storeType": "ebs",
            "cloudProviderType": app.cloud,
            "user": p["user"],
            "rebake": False,
            "extendedAttributes": {},
            "amiSuffix": run.image_suffix,
        }
        version, build = p["version"], p["build"]
        image = run.image_name(version, build)
        if sp.parent is None:
            s.ctx = {**base, "regions": list(p["regions"]), **common}
            r0 = p["regions"][0]
            s.on_task = {
                0: {"ami": run.ami(r0, version), "imageId": run.ami(r0, version), "imageName": image}
            }
        else:
            r = p["region"]
            s.ctx = {**base, **common, "region": r}
            bake_id = f"s-{_hex(rng, 10)}"
            s.on_task = {
                0: {
                    "status": {
                        "id": bake_id,
                        "state": "RUNNING",
                        "result": None,
                        "resourceId": None,
                        "outputContent": None,
                    },
                    "bakePackageName": app.name,
                    "previouslyBaked": False,
                },
                1: {
                    "status": {
                        "id": bake_id,
                        "state": "COMPLETED",
                        "result": "SUCCESS",
                        "resourceId": f"b-{_hex(rng, 10)}",
                        "outputContent": None,
                    }
                },
                2: {
                    "ami": run.ami(r, version),
                    "imageId": run.ami(r, version),
                    "imageName": image,
                    "artifacts": [],
                    "baseAmiId": "ami-" + _hex(rng, 17),
                    "cloudProvider": app.cloud,
                },
            }
            s.on_fail = {
                "status": {
                    "id": bake_id,
                    "state": "COMPLETED",
                    "result": "FAILURE",
                    "resourceId": None,
                    "outputContent": None,
                },
                "exception": _exception(
                    rng, "Bake failed", [f"Packer build failed for {app.name} in {r}"], "monitorBake", now
                ),
            }
    elif kind == "deploy":
        s.ctx = {**base, "clusters": [_cluster_cfg(run, p)]}
    elif kind == "createServerGroup":
        _ctx_create(run, s, base, kato_id)
    elif kind == "cloneServerGroup":
        _ctx_clone(run, s, kato_id)
    elif kind == "manualJudgment":
        s.ctx = {
            **base,
            "instructions": f"Check the staging dashboards for {app.name} before promoting.",
            "judgmentInputs": [
                {"value": "LGTM"},
                {"value": "Approved"},
                {"value": "Ship it"},
                {"value": "Rollback"},
            ],
            "failPipeline": True,
            "stageTimeoutMs": 86_400_000,
            "notifications": [],
            "sendNotifications": False,
        }
    elif kind in ("disableCluster", "scaleDownCluster", "shrinkCluster"):
        _ctx_cluster_op(run, s, base, kato_id)
    elif kind in (
        "destroyServerGroup",
        "disableServerGroup",
        "enableServerGroup",
        "resizeServerGroup",
        "rollbackServerGroup",
    ):
        _ctx_sg_op(run, s, base, kato_id)
    elif kind == "deployManifest":
        _ctx_manifest(run, s, base, kato_id)
    elif kind == "runJob":
        _ctx_run_job(run, s, base, kato_id)
    elif kind == "jenkins":
        job, number = p["job"], p["number"]
        s.ctx = {
            **base,
            "master": "jenkins-main",
            "job": job,
            "parameters": {"VERSION": p["version"], "BRANCH": "main"},
            "waitForCompletion": True,
            "markUnstableAsSuccessful": False,
        }
        url = f"https://jenkins.{_EMAIL_DOMAIN}/job/{job}/{number}/"
        info = {
            "name": job,
            "number": number,
            "url": url,
            "result": "SUCCESS",
            "artifacts": [],
            "scm": [{"name": "origin/main", "branch": "main", "sha1": _hex(rng, 40)}],
            "building": False,
            "timestamp": str(now + rng.randint(1000, 50000)),
        }
        s.on_task = {
            0: {"queuedBuild": str(rng.randint(10000, 99999))},
            1: {"buildNumber": number},
            2: {"buildInfo": info},
            3: {"propertyFileContents": {}},
        }
        s.on_fail = {"buildInfo": {**info, "result": "FAILURE"}}
    elif kind == "wait":
        s.ctx = {**base, "waitTime": p["wait"]}
    elif kind == "webhook":
        s.ctx = {
            **base,
            "url": p["url"],
            "method": "POST",
            "customHeaders": {"Authorization": f"Bearer {p['token']}", "Content-Type": "application/json"},
            "payload": {"application": app.name, "pipeline": run.ep.name, "stage": sp.name},
            "statusUrlResolution": "getMethod",
            "waitForCompletion": False,
            "failFastStatusCodes": [],
        }
        s.on_task = {0: {"webhook": {"statusCode": "OK", "statusCodeValue": 200, "body": {"ok": True}}}}
        s.on_fail = {
            "webhook": {
                "statusCode": "INTERNAL_SERVER_ERROR",
                "statusCodeValue": 500,
                "error": "The webhook request failed",
            },
            "exception": _exception(
                rng, "Webhook failed", ["Received status code 500"], "createWebhook", now
            ),
        }
    elif kind == "pipeline":
        child_pipe: _Pipe = p["pipe"]
        s.ctx = {
            **base,
            "application": app.name,
            "pipeline": child_pipe.id,
            "pipelineParameters": {},
            "waitForCompletion": True,
        }
        s.on_task = {
            0: {"executionId": p.get("child_id"), "executionName": child_pipe.name},
            1: {"status": p.get("child_status", "SUCCEEDED")},
        }
        s.on_fail = {
            "status": p.get("child_status"),
            "exception": {
                "details": {"errors": [f"Pipeline '{child_pipe.name}' failed"]},
                "exceptionType": None,
                "shouldRetry": False,
            },
        }
    elif kind in ("savePipeline", "updatePipeline", "deletePipeline"):
        pipe: _Pipe = p["pipe"]
        config = _pipeline_config(pipe, p["version"], p["user"], now)
        blob = base64.b64encode(json.dumps(config, separators=(",", ":")).encode()).decode()
        s.ctx = {
            "application": app.name,
            "pipeline": blob,
            "user": p["user"],
            "notification.type": kind.lower(),
        }
        if kind == "deletePipeline":
            s.ctx = {
                "application": app.name,
                "pipelineName": pipe.name,
                "pipeline": blob,
                "user": p["user"],
                "notification.type": "deletepipeline",
            }
        s.on_task = {0: {"pipeline.id": pipe.id, "pipeline.name": pipe.name}}
    elif kind == "updateApplication":
        prev = {
            "name": app.name.upper(),
            "email": app.email,
            "cloudProviders": app.cloud,
            "user": p["user"],
            "instancePort": 80,
            "trafficGuards": [],
            "dataSources": {"disabled": [], "enabled": ["serverGroups", "loadBalancers"]},
        }
        new = {
            "name": app.name,
            "email": app.email,
            "cloudProviders": app.cloud,
            "user": p["user"],
            "description": f"{app.name} service (rev {p['n']})",
            "instancePort": 8080,
            "dataSources": {"disabled": [], "enabled": ["serverGroups", "loadBalancers", "securityGroups"]},
        }
        s.ctx = {
            "application": {"name": app.name, **{k: v for k, v in new.items() if k != "name"}},
            "newState": new,
            "previousState": prev,
            "user": p["user"],
        }
        s.on_task = {0: {"notification.type": "upsertapplication"}}
    if not s.on_fail and kind != "manualJudgment" and TASKS[sp.tasks_key]:
        last_task = TASKS[sp.tasks_key][-1][0]
        s.on_fail = {
            "exception": _exception(
                rng, "Unexpected Task Failure", [f"{last_task} did not complete"], last_task, now
            )
        }


def _cluster_cfg(run: _Run, p: Mapping[str, Any]) -> dict[str, Any]:
    app = run.app
    env = p["env"]
    desired = {"prod": 3, "staging": 2, "test": 1}[env]
    cfg: dict[str, Any] = {
        "application": app.name,
        "account": p["account"],
        "stack": env,
        "freeFormDetails": "",
        "strategy": p.get("strategy", ""),
        "cloudProvider": app.cloud,
        "provider": app.cloud,
        "capacity": {"min": desired, "max": desired * 2 if env == "prod" else desired, "desired": desired},
        "availabilityZones": {r: _zones(app.cloud, r) for r in p["regions"]},
    }
    if app.cloud == "aws":
        cfg.update(
            {
                "instanceType": "m5.large" if env == "prod" else "t3.medium",
                "iamRole": "BaseIAMRole",
                "keyPair": f"{env}-keypair",
                "subnetType": "internal (vpc0)",
                "securityGroups": [f"sg-{_digest(app.name, env, n=17)}"],
                "loadBalancers": [],
                "targetGroups": [f"{app.name}-{env}-tg"],
                "healthCheckType": "EC2",
                "healthCheckGracePeriod": 600,
                "maxRemainingAsgs": 3,
                "scaleDown": False,
            }
        )
    else:
        cfg.update(
            {
                "instanceType": "n2-standard-2" if env == "prod" else "e2-medium",
                "network": "default",
                "subnet": f"{env}-subnet",
                "tags": [app.name, env],
                "enableSecureBoot": False,
                "maxRemainingAsgs": 3,
            }
        )
    return cfg


def _ctx_create(run: _Run, s: _SS, base: dict[str, Any], kato_id: str) -> None:
    p, rng, app = s.sp.p, run.rng, run.app
    r, sg, account = p["region"], p["sg"], p["account"]
    cfg = _cluster_cfg(run, {**p, "regions": [r]})
    cfg["capacity"] = dict(p["capacity"])
    cfg.pop("scaleDown", None)
    image = run.image_name(p["version"], p["build"])
    s.ctx = {
        **base,
        "application": app.name,
        "account": account,
        "credentials": account,
        **{k: v for k, v in cfg.items() if k not in ("application", "account")},
    }
    if app.cloud == "aws":
        s.ctx.update({"amiName": image, "imageId": run.ami(r, p["version"])})
    else:
        s.ctx.update({"image": image, "imageName": image})
    ops = {
        "aws": ("DeployAtomicOperation", "AWS_DEPLOY", "BasicAmazonDeployHandler"),
        "gce": ("DeployAtomicOperation", "GCE_DEPLOY", "BasicGoogleDeployHandler"),
    }[app.cloud]
    source = p["source"]
    cap = p["capacity"]
    ok_lines = [
        f"Beginning {app.cloud.upper()} deployment.",
        f"Deploying server group: {sg}",
        f"Server Groups: [{r}:{sg}] created.",
    ]
    s.on_task = {
        0: (
            {
                "source": {
                    "account": account,
                    "region": r,
                    "asgName": source,
                    "serverGroupName": source,
                    "useSourceCapacity": False,
                }
            }
            if source
            else {}
        ),
        1: {"interestingHealthProviderNames": ["Amazon"] if app.cloud == "aws" else ["Google"]},
        3: {
            "notification.type": "createdeploy",
            "kato.result.expected": True,
            "kato.last.task.id": {"id": kato_id},
            "deploy.account.name": account,
        },
        4: {
            "kato.task.firstNotFoundRetry": -1,
            "kato.task.notFoundRetryCount": 0,
            "kato.task.lastStatus": "SUCCEEDED",
            "kato.tasks": [
                _kato(
                    kato_id,
                    ops[0],
                    "DEPLOY",
                    ok_lines,
                    [
                        {
                            "serverGroupNames": [f"{r}:{sg}"],
                            "serverGroupNameByRegion": {r: sg},
                            "messages": [],
                            "deployedNames": [],
                            "deployedNamesByLocation": {},
                        }
                    ],
                )
            ],
            "deploy.server.groups": {r: [sg]},
        },
        5: {
            "zones": [],
            "refreshed.server.groups": [],
            "processed.server.groups": [],
            "force.cache.refresh.errors": [],
        },
        6: {
            "targetDesiredSize": cap["desired"],
            "lastCapacityCheck": {
                "up": cap["desired"],
                "down": 0,
                "outOfService": 0,
                "starting": 0,
                "succeeded": 0,
                "failed": 0,
                "unknown": 0,
            },
            "capacitySnapshot": {
                "minSize": cap["min"],
                "desiredCapacity": cap["desired"],
                "maxSize": cap["max"],
            },
        },
    }
    if s.sp.fail_task == 4:
        s.on_fail = {
            "kato.task.lastStatus": "TERMINAL",
            "kato.tasks": [
                _kato(
                    kato_id,
                    ops[0],
                    "DEPLOY",
                    [
                        f"Beginning {app.cloud.upper()} deployment.",
                        "Insufficient capacity in the requested zones",
                    ],
                    [],
                    failed=True,
                )
            ],
            "exception": _exception(
                rng,
                "Unexpected Task Failure",
                ["Insufficient capacity in the requested zones"],
                "monitorDeploy",
                run.ep.start,
            ),
        }
    else:
        inst = "i-0" + _hex(rng, 16)
        s.on_fail = {
            "exception": _exception(
                rng,
                "Unexpected Task Failure",
                [f"Instance(s) [{inst}] failed health checks"],
                "waitForUpInstances",
                run.ep.start,
            )
        }


def _ctx_clone(run: _Run, s: _SS, kato_id: str) -> None:
    p, app = s.sp.p, run.app
    r, src, new = p["region"], p["sg"], p["new"]
    s.ctx = {
        "application": app.name,
        "stack": p["stack"],
        "freeFormDetails": "",
        "cloudProvider": app.cloud,
        "credentials": p["account"],
        "account": p["account"],
        "region": r,
        "availabilityZones": {r: _zones(app.cloud, r)},
        "capacity": dict(p["capacity"]),
        "source": {"account": p["account"], "region": r, "asgName": src},
        "user": p["user"],
    }
    if p.get("reason"):
        s.ctx["reason"] = p["reason"]
    s.on_task = {
        0: {"interestingHealthProviderNames": ["Amazon"] if app.cloud == "aws" else ["Google"]},
        1: {
            "notification.type": "createcopylastasg",
            "kato.result.expected": True,
            "kato.last.task.id": {"id": kato_id},
            "deploy.account.name": p["account"],
        },
        2: {
            "kato.task.lastStatus": "SUCCEEDED",
            "kato.tasks": [
                _kato(
                    kato_id,
                    "CopyLastAsgAtomicOperation",
                    "COPY_LAST_ASG",
                    [f"Copying server group {src}", f"Server Groups: [{r}:{new}] created."],
                    [{"serverGroupNames": [f"{r}:{new}"], "serverGroupNameByRegion": {r: new}}],
                )
            ],
            "deploy.server.groups": {r: [new]},
        },
        3: {"zones": [], "refreshed.server.groups": [], "force.cache.refresh.errors": []},
    }
    s.on_fail = {
        "exception": _exception(
            run.rng,
            "Unexpected Task Failure",
            [f"{new} did not become healthy"],
            "waitForUpInstances",
            run.ep.start,
        )
    }


def _ctx_cluster_op(run: _Run, s: _SS, base: dict[str, Any], kato_id: str) -> None:
    p, app, kind = s.sp.p, run.app, s.sp.kind
    account, affected = p["account"], p["affected"]
    ctx = {
        **base,
        "cluster": p["cluster"],
        "credentials": account,
        "cloudProvider": app.cloud,
        "cloudProviderType": app.cloud,
        "regions": list(p["regions"]),
        "interestingHealthProviderNames": ["Amazon"] if app.cloud == "aws" else ["Google"],
    }
    if kind == "disableCluster":
        ctx.update({"remainingEnabledServerGroups": 1, "preferLargerOverNewer": "false"})
        op, phase, verb = "DisableAsgAtomicOperation", "DISABLE_ASG", "Disable"
    elif kind == "scaleDownCluster":
        ctx.update(
            {
                "remainingFullSizeServerGroups": 1,
                "allowScaleDownActive": False,
                "preferLargerOverNewer": "false",
            }
        )
        op, phase, verb = "ResizeAsgAtomicOperation", "RESIZE", "Resize"
    else:
        ctx.update({"shrinkToSize": 2, "allowDeleteActive": False, "retainLargerOverNewer": "false"})
        op, phase, verb = "DestroyAsgAtomicOperation", "DESTROY_ASG", "Destroy"
    s.ctx = ctx
    lines = [f"Finished {verb} ASG operation for [{r}:{n}]." for r, names in affected.items() for n in names]
    s.on_task = {
        1: {
            "notification.type": kind.lower(),
            "kato.last.task.id": {"id": kato_id},
            "deploy.account.name": account,
            "deploy.server.groups": {r: list(v) for r, v in affected.items()},
        },
        2: {
            "kato.task.lastStatus": "SUCCEEDED",
            "kato.tasks": [_kato(kato_id, op, phase, lines or ["No server groups to process."], [])],
        },
        3: {"zones": [], "refreshed.server.groups": [], "force.cache.refresh.errors": []},
    }


def _ctx_sg_op(run: _Run, s: _SS, base: dict[str, Any], kato_id: str) -> None:
    p, app, kind, sp = s.sp.p, run.app, s.sp.kind, s.sp
    sg, r, account = p["sg"], p["region"], p["account"]
    dynamic = p.get("dynamic") and not run.orch
    moniker = _moniker(app.name, sg, p.get("stack", p.get("env", ""))) if sg else None
    if dynamic:
        ctx: dict[str, Any] = {
            **base,
            "cluster": p["cluster"],
            "credentials": account,
            "regions": [r],
            "target": "current_asg_dynamic" if kind == "resizeServerGroup" else "ancestor_asg_dynamic",
            "cloudProvider": app.cloud,
            "cloudProviderType": app.cloud,
        }
        if sp.parent is not None:
            ctx = {
                **base,
                "serverGroupName": sg,
                "asgName": sg,
                "region": r,
                "credentials": account,
                "cloudProvider": app.cloud,
            }
    else:
        ctx = {
            "asgName": sg,
            "serverGroupName": sg,
            "moniker": moniker,
            "region": r,
            "credentials": account,
            "cloudProvider": app.cloud,
            "user": p.get("user"),
        }
        if p.get("reason"):
            ctx["reason"] = p["reason"]
    if kind == "resizeServerGroup":
        ctx = (
            {"capacity": dict(p["to"]), **ctx}
            if not dynamic
            else {**ctx, "action": "scale_exact", "capacity": dict(p["to"])}
        )
        ctx["interestingHealthProviderNames"] = ["Amazon"] if app.cloud == "aws" else ["Google"]
    s.ctx = ctx
    if sg is None:
        s.on_fail = {
            "exception": _exception(
                run.rng,
                "Unexpected Task Failure",
                [f"Unable to locate {ctx.get('target')} in {account}/{r}/{p['cluster']}"],
                "determineHealthProviders",
                run.ep.start,
            )
        }
        return
    found = {"serverGroupName": sg, "asgName": sg} if dynamic and sp.parent is None else {}
    done = {
        "deploy.account.name": account,
        "deploy.server.groups": {r: [sg]},
        "kato.last.task.id": {"id": kato_id},
    }
    if kind == "resizeServerGroup":
        s.on_task = {
            1: found,
            2: {"notification.type": "resizeservergroup", **done, f"originalCapacity.{sg}": dict(p["from"])},
            3: {
                "kato.task.lastStatus": "SUCCEEDED",
                "kato.result.expected": False,
                "kato.tasks": [
                    _kato(
                        kato_id,
                        "ResizeAsgAtomicOperation",
                        "RESIZE",
                        [
                            f"Initializing Resize ASG operation for [{r}:{sg}]...",
                            f"Finished Resize ASG operation for [{r}:{sg}].",
                        ],
                        [],
                    )
                ],
            },
            4: {
                "zones": [],
                "refreshed.server.groups": [],
                "processed.server.groups": [],
                "force.cache.refresh.errors": [],
            },
        }
    elif kind == "rollbackServerGroup":
        s.ctx = {
            **ctx,
            "rollbackType": "EXPLICIT",
            "rollbackContext": {
                "rollbackServerGroupName": sg,
                "restoreServerGroupName": p["restore"],
                "targetHealthyRollbackPercentage": 100,
            },
            "platformHealthOnlyShowOverride": False,
        }
    else:
        verb = {
            "destroyServerGroup": (
                "destroyservergroup",
                "DestroyAsgAtomicOperation",
                "DESTROY_ASG",
                "Destroy",
            ),
            "disableServerGroup": (
                "disableservergroup",
                "DisableAsgAtomicOperation",
                "DISABLE_ASG",
                "Disable",
            ),
            "enableServerGroup": ("enableservergroup", "EnableAsgAtomicOperation", "ENABLE_ASG", "Enable"),
        }[kind]
        s.on_task = {
            0: {**found, "interestingHealthProviderNames": ["Amazon"] if app.cloud == "aws" else ["Google"]},
            1: {"notification.type": verb[0], **done},
            2: {
                "kato.task.lastStatus": "SUCCEEDED",
                "kato.tasks": [
                    _kato(
                        kato_id, verb[1], verb[2], [f"Finished {verb[3]} ASG operation for [{r}:{sg}]."], []
                    )
                ],
            },
        }
        if kind != "destroyServerGroup":
            s.on_task[4] = {"zones": [], "force.cache.refresh.errors": []}
    s.on_fail = {
        "exception": _exception(
            run.rng,
            "Unexpected Task Failure",
            [f"Timed out waiting for {sg} in {r}"],
            TASKS[sp.tasks_key][-1][0] if TASKS[sp.tasks_key] else kind,
            run.ep.start,
        )
    }


def _manifests(run: _Run, s: _SS) -> list[dict[str, Any]]:
    p, app = s.sp.p, run.app
    ns = p["namespace"]
    labels = {"app.kubernetes.io/name": app.name, "app.kubernetes.io/managed-by": "spinnaker"}
    env = [{"name": "LOG_LEVEL", "value": "info"}]
    if _digest(run.ep.id, s.id, n=2) < "80":
        env.append({"name": "DATABASE_PASSWORD", "value": _digest(app.name, "db", n=24)})
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": app.name,
            "namespace": ns,
            "labels": labels,
            "annotations": {"moniker.spinnaker.io/application": app.name},
        },
        "spec": {
            "replicas": 3 if p["env"] == "prod" else 1,
            "selector": {"matchLabels": {"app": app.name}},
            "template": {
                "metadata": {"labels": {"app": app.name}},
                "spec": {
                    "containers": [
                        {
                            "name": app.name,
                            "image": f"registry.example.com/example-org/{app.name}:{p['version']}",
                            "env": env,
                        }
                    ]
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": app.name, "namespace": ns, "labels": labels},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": app.name}},
    }
    return [deployment, service]


def _ctx_manifest(run: _Run, s: _SS, base: dict[str, Any], kato_id: str) -> None:
    p, app = s.sp.p, run.app
    ns, account = p["namespace"], p["account"]
    manifests = _manifests(run, s)
    names = {ns: [f"deployment {app.name}", f"service {app.name}"]}
    created = [
        {
            "customKind": False,
            "reference": app.name,
            "metadata": {"account": account},
            "name": app.name,
            "location": ns,
            "type": f"kubernetes/{k}",
            "version": "",
        }
        for k in ("deployment", "service")
    ]
    if run.orch:
        s.ctx = {
            "cloudProvider": "kubernetes",
            "manifests": manifests,
            "relationships": {"loadBalancers": [], "securityGroups": []},
            "moniker": {"app": app.name},
            "account": account,
            "manifestArtifactAccount": "embedded-artifact",
            "source": "text",
            "user": p["user"],
        }
    else:
        s.ctx = {
            **base,
            "account": account,
            "cloudProvider": "kubernetes",
            "manifests": manifests,
            "moniker": {"app": app.name},
            "source": "text",
            "skipExpressionEvaluation": False,
            "trafficManagement": {"enabled": False, "options": {"enableTraffic": False, "services": []}},
        }
    s.on_task = {
        1: {
            "kato.result.expected": True,
            "kato.last.task.id": {"id": kato_id},
            "deploy.account.name": account,
        },
        2: {
            "kato.task.firstNotFoundRetry": -1,
            "kato.task.notFoundRetryCount": 0,
            "kato.task.terminalRetryCount": 0,
            "kato.task.lastStatus": "SUCCEEDED",
            "kato.tasks": [
                _kato(
                    kato_id,
                    "KubernetesDeployManifestOperation",
                    "DEPLOY_KUBERNETES_MANIFEST",
                    [
                        "Beginning deployment of manifest...",
                        f"Deploy order is: deployment {app.name}, service {app.name}",
                        "Deploy manifest task completed successfully.",
                    ],
                    [
                        {
                            "manifestNamesByNamespace": names,
                            "manifests": manifests,
                            "createdArtifacts": created,
                            "boundArtifacts": [],
                        }
                    ],
                )
            ],
            "deploy.server.groups": {},
        },
        3: {
            "outputs.manifestNamesByNamespace": names,
            "outputs.manifests": manifests,
            "outputs.createdArtifacts": created,
            "outputs.boundArtifacts": [],
        },
        4: {
            "messages": [],
            "stableManifests": [{"location": ns, "manifestName": n} for n in names[ns]],
            "failedManifests": [],
        },
    }
    s.on_fail = {
        "messages": [f"deployment {app.name}: waiting for rollout to finish"],
        "failedManifests": [{"location": ns, "manifestName": f"deployment {app.name}"}],
        "exception": _exception(
            run.rng,
            "Unexpected Task Failure",
            [f"deployment {app.name} in {ns} did not stabilize"],
            "waitForManifestToStabilize",
            run.ep.start,
        ),
    }


def _ctx_run_job(run: _Run, s: _SS, base: dict[str, Any], kato_id: str) -> None:
    p, app, rng = s.sp.p, run.app, run.rng
    ns, account = p["namespace"], p["account"]
    job = f"{app.name}-tests-{_hex(rng, 5)}"
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job, "namespace": ns, "labels": {"app": app.name}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "tests",
                            "image": f"registry.example.com/example-org/{app.name}-tests:{p['version']}",
                            "env": [{"name": "API_TOKEN", "value": _token(rng, 32)}],
                        }
                    ],
                }
            },
        },
    }
    s.ctx = {
        **base,
        "account": account,
        "credentials": account,
        "cloudProvider": "kubernetes",
        "application": app.name,
        "manifest": manifest,
        "source": "text",
        "consumeArtifactSource": "none",
        "propertyFile": "tests",
    }
    s.on_task = {
        0: {
            "kato.result.expected": True,
            "kato.last.task.id": {"id": kato_id},
            "deploy.account.name": account,
        },
        1: {
            "kato.task.lastStatus": "SUCCEEDED",
            "deploy.jobs": {ns: [f"job {job}"]},
            "kato.tasks": [
                _kato(
                    kato_id,
                    "KubernetesRunJobOperation",
                    "RUN_KUBERNETES_JOB",
                    [f"Running job {job}"],
                    [{"deployedNamesByLocation": {ns: [f"job {job}"]}}],
                )
            ],
        },
        2: {
            "jobStatus": {"name": job, "location": ns, "account": account, "status": "SUCCEEDED"},
            "completionDetails": {"exitCode": "0", "reason": "Completed"},
        },
    }
    s.on_fail = {
        "jobStatus": {"name": job, "location": ns, "account": account, "status": "FAILED"},
        "completionDetails": {"exitCode": "1", "reason": "Error"},
        "exception": _exception(
            rng, "Job failed", [f"Job {job} failed"], "waitOnJobCompletion", run.ep.start
        ),
    }


def _pipeline_config(pipe: _Pipe, version: int, user: str, now: int) -> dict[str, Any]:
    """The front50 pipeline config as saved at ``version`` (deterministic, so versions diff meaningfully)."""
    rng = random.Random(f"{pipe.id}:{version}")
    secret_rng = random.Random(f"{pipe.id}:secret")
    stages = []
    for i, (kind, spec) in enumerate(pipe.spec):
        st: dict[str, Any] = {
            "refId": str(i + 1),
            "requisiteStageRefIds": [str(i)] if i else [],
            "type": kind,
            "name": spec["name"],
        }
        if kind == "wait":
            st["waitTime"] = spec["wait"] + 30 * (version % 3)
        if kind == "manualJudgment":
            st["stageTimeoutMs"] = 3_600_000 * (1 + version % 4)
            st["failPipeline"] = True
        stages.append(st)
    triggers: list[dict[str, Any]] = []
    for trig, _w in pipe.triggers:
        if trig == "git":
            triggers.append(
                {
                    "type": "git",
                    "source": "github",
                    "project": "example-org",
                    "slug": pipe.app,
                    "branch": "main",
                    "enabled": version % 5 != 0,
                    "secret": _token(secret_rng, 24),
                }
            )
        elif trig == "cron":
            triggers.append(
                {
                    "type": "cron",
                    "cronExpression": f"0 0 {pipe.cron_hour} * * ?",
                    "enabled": True,
                    "runAsUser": SERVICE_ACCOUNTS[1],
                }
            )
        elif trig == "jenkins":
            triggers.append(
                {
                    "type": "jenkins",
                    "master": "jenkins-main",
                    "job": f"{pipe.app}-build-master",
                    "enabled": True,
                }
            )
        elif trig == "docker":
            triggers.append(
                {
                    "type": "docker",
                    "account": "registry-main",
                    "repository": f"example-org/{pipe.app}",
                    "enabled": True,
                }
            )
    return {
        "application": pipe.app,
        "id": pipe.id,
        "name": pipe.name,
        "index": rng.randint(0, 6),
        "keepWaitingPipelines": version % 2 == 0,
        "limitConcurrent": True,
        "spelEvaluator": "v4",
        "lastModifiedBy": user,
        "updateTs": str(now),
        "parameterConfig": [
            {"name": "version", "default": f"1.{version}.0", "required": True},
            {"name": "jiraTicket", "default": "", "required": version % 3 == 0},
        ],
        "stages": stages,
        "triggers": triggers,
        "notifications": [
            {
                "type": "slack",
                "address": f"#{pipe.app}-deploys",
                "level": "pipeline",
                "when": ["pipeline.failed"] + (["pipeline.complete"] if version % 2 else []),
            }
        ],
    }


# ---------------------------------------------------------------------------------------------------------
# igor / git / gate events
# ---------------------------------------------------------------------------------------------------------

_SG_OPS = frozenset(
    {
        "resizeServerGroup",
        "disableServerGroup",
        "enableServerGroup",
        "destroyServerGroup",
        "rollbackServerGroup",
        "cloneServerGroup",
    }
)
_POINT_TYPES = {"build": "build", "docker": "docker", "git": "git", "manual": "manual"}


def _point_events(sim: Simulator, item: tuple[int, int, str, int, tuple[Any, ...]]) -> Iterator[Any]:
    """The time of one igor / git / gate event, then the event (the protocol of ``_Run.events``)."""
    yield item[0]
    yield _point_event(sim, item)[1]


def _point_event(
    sim: Simulator, item: tuple[int, int, str, int, tuple[Any, ...]]
) -> tuple[int, dict[str, Any]]:
    t, _seq, kind, seed, args = item
    rng = random.Random(seed)
    modern = sim.serialization == "modern" or (sim.serialization == "mixed" and rng.random() < 0.5)
    created = str(t)
    details: dict[str, Any]
    event: dict[str, Any]
    if kind == "build":
        job, number, result, app = args
        building = result == "BUILDING"
        last = {
            "building": building,
            "number": number,
            "result": result,
            "timestamp": str(t - rng.randint(60_000, 900_000)),
            "duration": 0 if building else rng.randint(40_000, 900_000),
            "url": f"https://jenkins.{_EMAIL_DOMAIN}/job/{job}/{number}/",
        }
        if modern:
            last.update(
                {
                    "estimatedDuration": rng.randint(60_000, 600_000),
                    "id": str(number),
                    "builtOn": f"agent-{rng.randint(1, 12)}",
                    "fullDisplayName": f"{job} #{number}",
                }
            )
        if result == "SUCCESS" and rng.random() < 0.3:
            last["artifacts"] = [
                {
                    "fileName": f"{app}_{number}_all.deb",
                    "displayPath": f"{app}_{number}_all.deb",
                    "relativePath": f"build/distributions/{app}_{number}_all.deb",
                }
            ]
        details = {"source": "igor", "type": "build", "created": created}
        event = {
            "details": details,
            "content": {"project": {"name": job, "lastBuild": last}, "master": "jenkins-main"},
        }
    elif kind == "docker":
        app, tag = args
        details = {"source": "igor", "type": "docker", "created": created}
        event = {
            "details": details,
            "content": {
                "account": "registry-main",
                "registry": "registry.example.com",
                "repository": f"example-org/{app}",
                "tag": tag,
                "digest": "sha256:" + _hex(rng, 64),
            },
        }
    elif kind == "git":
        repo, sha, author, ticket = args
        before = _hex(rng, 40)
        message = (f"{ticket}: " if ticket else "") + rng.choice(
            ("update README", "fix flaky test", "add health endpoint", "bump base image", "tune logging")
        )
        login = author.split("@")[0].replace(".", "-")
        commit = {
            "id": sha,
            "tree_id": _hex(rng, 40),
            "distinct": True,
            "message": message,
            "timestamp": _iso(t - rng.randint(5_000, 600_000)),
            "url": f"https://github.com/example-org/{repo}/commit/{sha}",
            "author": {
                "name": author.split("@")[0].replace(".", " ").title(),
                "email": author,
                "username": login,
            },
            "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
            "added": [],
            "removed": [],
            "modified": ["src/main.py"],
        }
        payload = {
            "ref": "refs/heads/main",
            "before": before,
            "after": sha,
            "repository": {
                "id": int(_digest(repo, n=8), 16),
                "name": repo,
                "full_name": f"example-org/{repo}",
                "owner": {"name": "example-org", "login": "example-org"},
                "private": True,
                "html_url": f"https://github.com/example-org/{repo}",
                "default_branch": "main",
                "master_branch": "main",
            },
            "pusher": {"name": login, "email": author},
            "sender": {"login": login, "type": "User"},
            "created": False,
            "deleted": False,
            "forced": False,
            "base_ref": None,
            "compare": f"https://github.com/example-org/{repo}/compare/{before[:12]}...{sha[:12]}",
            "commits": [commit],
            "head_commit": commit,
        }
        content = {
            **payload,
            "repoProject": "example-org",
            "slug": repo,
            "hash": sha,
            "branch": "main",
            "action": "push:push",
            "artifacts": [
                {
                    "type": "github/file",
                    "customKind": False,
                    "name": "src/main.py",
                    "version": sha,
                    "metadata": {},
                    "reference": f"https://api.github.com/repos/example-org/{repo}/contents/src/main.py",
                }
            ],
        }
        details = {
            "source": "github",
            "type": "git",
            "created": created,
            "requestHeaders": {
                "accept": ["application/json"],
                "content-type": ["application/json"],
                "x-github-event": ["push"],
                "x-hub-signature": [f"sha1={_hex(rng, 40)}"],
                "x-spinnaker-request-id": [_uuid4(rng)],
                "user-agent": ["okhttp/4.12.0"],
            },
        }
        event = {
            "details": details,
            "content": content,
            "payload": payload,
            "rawContent": json.dumps(payload, separators=(",", ":")),
        }
    else:  # manual (gate triggerViaEcho)
        (event_id,) = args
        ep = sim._manual[event_id]
        trig = {
            "type": "manual",
            "user": ep.trigger["user"],
            "parameters": dict(ep.trigger["parameters"]),
            "dryRun": False,
            "notifications": [],
            "eventId": event_id,
            "executionId": ep.id,
        }
        details = {"type": "manual", "created": created}
        event = {
            "details": details,
            "content": {
                "application": ep.app,
                "pipelineNameOrId": ep.name,
                "trigger": trig,
                "user": ep.trigger["user"],
            },
        }
        details["requestHeaders"] = {}
        event["eventId"] = event_id
        return t, event
    if not modern:
        details.update({"organization": None, "project": None, "_content_id": None})
    details.setdefault("requestHeaders", {})
    eid = _uuid4(rng)
    if modern or rng.random() >= 0.03:
        event["eventId"] = eid
    return t, event


# ---------------------------------------------------------------------------------------------------------
# Public helpers
# ---------------------------------------------------------------------------------------------------------


def simulate(**kwargs: Any) -> Iterator[dict[str, Any]]:
    """Shortcut for ``Simulator(**kwargs).events()``."""
    return Simulator(**kwargs).events()


def write_ndjson(events: Iterable[dict[str, Any]], fp: IO[bytes]) -> int:
    """Write events as compact JSON, one per line, to a binary file; returns the number written."""
    n = 0
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for ev in events:
        fp.write(dumps(ev).encode("utf-8"))
        fp.write(b"\n")
        n += 1
    return n


def post_events(
    url: str,
    events: Iterable[dict[str, Any]],
    *,
    batch_size: int = 1,
    concurrency: int = 4,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> PostStats:
    """POST events to a spintrail server; ``batch_size > 1`` sends a JSON array per request.

    Requests run on a pool of ``concurrency`` threads and at most ``2 * concurrency`` are in flight, so the
    event stream is consumed lazily. The server answers ``{"stored": n, "duplicates": m, ...}``; a failed
    request (network error or non-2xx) counts all its events as ``failed``. After each request ``progress``
    receives the number of events that request carried (sent or failed), e.g. ``rich`` ``Progress.advance``.
    """
    import httpx  # imported here so generating events does not need it

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    stats = PostStats()
    lock = threading.Lock()
    send_headers = {"Content-Type": "application/json", **(headers or {})}
    started = time.perf_counter()
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def send(client: httpx.Client, body: bytes, count: int) -> None:
        stored = dups = failed = 0
        try:
            resp = client.post(url, content=body, headers=send_headers)
            if 200 <= resp.status_code < 300:
                try:
                    answer = resp.json()
                except ValueError:
                    answer = {}
                if isinstance(answer, dict):
                    stored = int(answer.get("stored", 0) or 0)
                    dups = int(answer.get("duplicates", 0) or 0)
            else:
                failed = count
        except httpx.HTTPError:
            failed = count
        with lock:
            stats.sent += count
            stats.stored += stored
            stats.duplicates += dups
            stats.failed += failed
            if progress is not None:
                progress(count)

    def batches() -> Iterator[tuple[bytes, int]]:
        if batch_size == 1:
            for ev in events:
                yield dumps(ev).encode("utf-8"), 1
            return
        batch: list[dict[str, Any]] = []
        for ev in events:
            batch.append(ev)
            if len(batch) >= batch_size:
                yield dumps(batch).encode("utf-8"), len(batch)
                batch = []
        if batch:
            yield dumps(batch).encode("utf-8"), len(batch)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with (
        httpx.Client(timeout=timeout, limits=limits) as client,
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="spintrail-post") as pool,
    ):
        pending: set[Future[None]] = set()
        for body, count in batches():
            if len(pending) >= 2 * concurrency:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    fut.result()
            pending.add(pool.submit(send, client, body, count))
        for fut in pending:
            fut.result()
    stats.seconds = time.perf_counter() - started
    return stats
