"""Shutdown hooks: work that must finish before the store closes when the server stops.

On SIGTERM the server stops accepting, lets requests in flight finish (``server.py``), then the app's
lifespan runs every hook registered with ``on_shutdown`` in order, and only then closes the store (which
commits what is still queued). A hook may be a plain function or a coroutine function; it gets what is left
of the shutdown grace period as its time budget, and an error or overrun is logged and never stops the
hooks after it. This is where the forwarding outbox records how far each sink got, for example::

    from spintrail.lifecycle import on_shutdown

    on_shutdown(app, forwarder.flush_positions)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI

log = logging.getLogger(__name__)

ShutdownHook = Callable[[], Awaitable[None] | None]

#: Seconds of the grace period kept back for the store to commit its queue and close.
STORE_CLOSE_RESERVE = 0.5


def on_shutdown(app: FastAPI, hook: ShutdownHook) -> None:
    """Run ``hook`` when the server shuts down, after requests in flight and before the store closes."""
    app.state.shutdown_hooks.append(hook)


async def run_shutdown_hooks(app: FastAPI, default_grace: float) -> None:
    """Run the registered hooks in order within what is left of the grace period."""
    deadline = getattr(app.state, "shutdown_deadline", None) or time.monotonic() + default_grace
    for hook in list(getattr(app.state, "shutdown_hooks", [])):
        name = getattr(hook, "__qualname__", repr(hook))
        budget = deadline - STORE_CLOSE_RESERVE - time.monotonic()
        if budget <= 0:
            log.error("shutdown hook %s skipped: the grace period is used up", name)
            continue
        try:
            if inspect.iscoroutinefunction(hook):
                await asyncio.wait_for(hook(), budget)  # type: ignore[arg-type]
            else:
                await asyncio.wait_for(_in_daemon_thread(hook), budget)
        except TimeoutError:
            log.error("shutdown hook %s did not finish within %.1f s", name, budget)
        except Exception:
            log.exception("shutdown hook %s failed", name)


def _in_daemon_thread(fn: Callable[[], object]) -> asyncio.Future[None]:
    """Run a blocking hook in a thread of its own: one that overruns cannot hold up the process exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            fn()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="spintrail-shutdown-hook", daemon=True).start()
    return future
