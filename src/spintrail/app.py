"""The web application: builds the FastAPI app from settings and a store, and wires every router."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from spintrail import __version__, api, receive
from spintrail.ingest import Ingestor
from spintrail.metrics import Metrics
from spintrail.settings import Settings, store_options
from spintrail.store import Store, open_store

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """The application. When ``store`` is not given, it is opened from ``settings.database`` at start-up."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = app.state.store is None
        if own:
            app.state.store = open_store(
                settings.database,
                batch_max=settings.commit_batch_max,
                queue_max=settings.write_queue_max,
                **store_options(settings),
            )
        app.state.store.commit_observer = metrics.observe_commit
        app.state.ingestor = Ingestor(settings, app.state.store)
        log.info("spintrail %s: store %s ready", __version__, app.state.store.backend)
        try:
            yield
        finally:
            if own:
                app.state.store.close()

    app = FastAPI(
        title="spintrail",
        version=__version__,
        description="The audit trail for Spinnaker: who changed what, where, when and why.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.store = store
    if store is not None:
        app.state.ingestor = Ingestor(settings, store)
    app.include_router(receive.router)
    app.include_router(api.router)
    return app
