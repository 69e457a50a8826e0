"""`suparag serve`: the edge functions (embed, search, wake, health, metrics) in production.

Everything is read from the environment (worker/edge/app.py lists the names), so it
runs the same in a container, a systemd unit or a shell.
"""

from __future__ import annotations

from cli._common import err_console
from worker.settings import get_settings


def serve() -> None:
    """Serve POST /functions/v1/embed, /search (as the calling user, under RLS) and /wake,
    GET /health and /metrics, next to a Supabase project.

    Configured by the environment only: SUPARAG_DB_URL, SUPABASE_ANON_KEY,
    SUPABASE_JWT_SECRET and/or SUPABASE_URL (its JWKS), SUPARAG_SERVE_PORT (or PORT).
    See docs/edge-functions.md.
    """
    import uvicorn

    from worker.edge.app import config_from_settings, create_edge_app
    from worker.models.factory import embedder_from_settings

    settings = get_settings()
    config = config_from_settings(settings)
    assert settings.db_url is not None  # config_from_settings requires it
    origins = [o.strip() for o in settings.edge_cors_origins.split(",") if o.strip()]
    app = create_edge_app(settings.db_url, config, lambda: embedder_from_settings(settings),
                          cors_origins=origins, warm_model=True)
    err_console.print(f"suparag serve: http://{settings.serve_host}:{settings.serve_port}"
                      "/functions/v1/{embed,search,wake}")
    uvicorn.run(app, host=settings.serve_host, port=settings.serve_port, log_level="info")
