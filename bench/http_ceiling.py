"""The HTTP ceiling: a bare Starlette endpoint that reads the body and answers 200, under the same uvicorn
settings as ``spintrail serve`` (one process, uvloop and httptools when installed, access log off)."""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def receive(request: Request) -> Response:
    await request.body()
    return Response(b'{"ok":true}', media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b'{"status":"ready"}', media_type="application/json")


app = Starlette(
    routes=[
        Route("/api/v1/events", receive, methods=["POST"]),
        Route("/readyz", ready, methods=["GET"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    from spintrail.cli import uvicorn_options

    uvicorn.run(app, host="127.0.0.1", port=args.port, **uvicorn_options("info"))


if __name__ == "__main__":
    main()
