"""The web dashboard: static assets shipped in the package, served by :mod:`tidegauge.server`.

No internet access is needed: the page, its script and style sheet are package data
(``tidegauge/dashboard/static``), and the charting library is the ``plotly.min.js`` bundled in the
``plotly`` wheel (a dependency of the ``demo`` and ``server`` extras), served at
``/vendor/plotly.min.js``. The page logs in by POSTing a token once to ``/api/v1/session`` (an HttpOnly
cookie afterwards: see :mod:`tidegauge.server.session`) and gets live data over the WebSocket
``/api/v1/live/ws`` (:mod:`tidegauge.server.live_api`).

Routes: ``GET /`` (the page), ``GET /static/...`` (its assets), ``GET /vendor/plotly.min.js``.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["dashboard_routes", "plotly_js"]

logger = logging.getLogger(__name__)

_NO_CACHE = {"Cache-Control": "no-cache"}  # the page is tiny; always the one matching this server
_CACHE = {"Cache-Control": "public, max-age=86400"}


def _static() -> Path:
    return Path(str(resources.files("tidegauge.dashboard").joinpath("static")))


def plotly_js() -> Path | None:
    """The ``plotly.min.js`` bundled in the installed ``plotly`` wheel (``None`` if plotly is missing)."""
    try:
        root = resources.files("plotly")
    except ModuleNotFoundError:
        return None
    path = Path(str(root.joinpath("package_data", "plotly.min.js")))
    return path if path.is_file() else None


async def _index(request: Request) -> Response:
    return FileResponse(_static() / "index.html", media_type="text/html", headers=_NO_CACHE)


async def _plotly(request: Request) -> Response:
    path = plotly_js()
    if path is None:
        return Response("plotly is not installed: pip install 'tidegauge[demo]'", 503, media_type="text/plain")
    return FileResponse(path, media_type="text/javascript", headers=_CACHE)


def dashboard_routes() -> list[BaseRoute]:
    """``/``, ``/static/*`` and ``/vendor/plotly.min.js``."""
    return [
        Route("/", _index),
        Route("/vendor/plotly.min.js", _plotly),
        Mount("/static", StaticFiles(directory=_static()), name="dashboard-static"),
    ]
