"""`/functions/v1` of the local API: the edge functions of `worker/edge`, mounted with
the local project's keys, so `suparag dev` and `suparag serve` run the same code.

See `worker/edge/functions.py` for the functions (embed, search as the caller, wake,
health, metrics) and `worker/edge/auth.py` for how callers are checked.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.routing import Route

from worker.devstack.api.keys import ProjectKeys
from worker.edge.auth import Gateway
from worker.edge.functions import WAKE_CHANNELS, EdgeConfig, EdgeFunctions
from worker.models.base import Embedder

__all__ = ["WAKE_CHANNELS", "functions_routes"]


def functions_routes(keys: ProjectKeys, embedder_factory: Callable[[], Embedder], *,
                     warm_model: bool = False) -> list[Route]:
    """The `/functions/v1` routes (and `/health`, `/metrics`), for
    `create_app(..., routes=...)`; with warm_model, the model starts loading now, in
    the background, instead of on the first call."""
    gateway = Gateway(api_keys=frozenset({keys.anon_key, keys.service_role_key}),
                      jwt_secret=keys.jwt_secret)
    functions = EdgeFunctions(EdgeConfig(gateway=gateway), embedder_factory)
    if warm_model:
        functions.warm()
    return functions.routes()
