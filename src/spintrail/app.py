"""The web application: builds the FastAPI app from settings and a store, and wires every router."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from spintrail import (
    __version__,
    api,
    apidocs,
    auth,
    checkpoint_forward,
    dbutil,
    forward,
    forward_api,
    lifecycle,
    receive,
    receive_hec,
    retention,
    trust_api,
    web,
)
from spintrail.browsers import SecurityHeaders
from spintrail.guard import InflightBytes, ReleaseInflight
from spintrail.ingest import Ingestor
from spintrail.metrics import Metrics
from spintrail.settings import Settings
from spintrail.store import Store, open_store

log = logging.getLogger(__name__)


#: Seconds between two attempts to open a store whose database cannot be reached at start-up.
OPEN_RETRY_SECONDS = 2.0


async def _open_store_when_reachable(settings: Settings) -> Store:
    """Open the store, waiting while its database cannot be reached (a replica started during an outage
    waits for the database instead of exiting, so an orchestrator does not restart it in a loop)."""
    waiting = dbutil.Throttled(log, "opening the store")
    while True:
        try:
            store = await run_in_threadpool(
                open_store,
                settings.database,
                batch_max=settings.commit_batch_max,
                queue_max=settings.write_queue_max,
                pool_size=settings.postgres_pool_size,
            )
        except Exception as exc:
            if not dbutil.is_unreachable(exc):
                raise
            waiting.failed(exc)
            await asyncio.sleep(OPEN_RETRY_SECONDS)
            continue
        waiting.succeeded()
        return store


def create_app(
    settings: Settings | None = None, store: Store | None = None, *, close_store: bool = False
) -> FastAPI:
    """The application. When ``store`` is not given, it is opened from ``settings.database`` at start-up.

    A store opened here, or given with ``close_store=True``, is closed at shutdown after the shutdown hooks.
    """
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = app.state.store is None
        if own:
            app.state.store = await _open_store_when_reachable(settings)
        app.state.store.commit_observer = metrics.observe_commit
        app.state.store.commit_wait = settings.commit_wait_ms / 1000
        metrics.watch(app.state.store, app.state.inflight)
        app.state.ingestor = Ingestor(settings, app.state.store)
        # Before the checkpointer starts, so the first signed checkpoint is forwarded too.
        app.state.checkpoint_forwarder = checkpoint_forward.start_checkpoint_forwarding(
            settings, metrics.registry
        )
        listeners = [app.state.checkpoint_forwarder.offer] if app.state.checkpoint_forwarder else []
        trust_api.start(app, settings, app.state.store, listeners)
        log.info("spintrail %s: store %s ready", __version__, app.state.store.backend)
        if not app.state.authenticator.enabled():  # else the Splunk routes need a token anyway
            receive_hec.warn_if_open(settings.hec_tokens)
        app.state.forwarder = forward.start_forwarding(settings, app.state.store, metrics.registry)
        stop_retention = retention.start_background(settings, app.state.store)
        try:
            yield
        finally:
            stop_retention()
            await lifecycle.run_shutdown_hooks(app, settings.shutdown_grace_seconds)
            if app.state.forwarder is not None:
                app.state.forwarder.stop()
            trust_api.stop(app)
            if app.state.checkpoint_forwarder is not None:  # after the final checkpoint is signed
                app.state.checkpoint_forwarder.stop()
            if own or close_store:
                app.state.store.close()
                log.info("store closed: everything queued is committed")

    app = FastAPI(
        title="spintrail",
        version=__version__,
        description="The audit trail for Spinnaker: who changed what, where, when and why.",
        lifespan=lifespan,
        docs_url=None,  # apidocs serves /docs from the swagger-ui-bundle package, not a CDN
        redoc_url=None,
        # Every API route, including those added later, is authorized by its rule in auth.RULES.
        dependencies=[Depends(auth.authorize)],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.store = store
    app.state.inflight = InflightBytes(settings.max_inflight_bytes)
    app.state.shutdown_hooks = []
    if store is not None:
        app.state.ingestor = Ingestor(settings, store)
    app.add_middleware(ReleaseInflight)
    app.add_middleware(SecurityHeaders)
    app.include_router(receive.router)
    receive.serve_directly(app)
    app.include_router(api.router)
    app.include_router(receive_hec.router)
    app.include_router(forward_api.router)
    trust_api.setup(app)
    web.mount(app)
    apidocs.mount(app)
    return app
