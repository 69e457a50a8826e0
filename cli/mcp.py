"""`suparag mcp`: serve the knowledge base to MCP clients, as the user, never as the server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from cli._common import DbUrlOption, err_console, resolve_db_url
from worker.errors import ConfigError
from worker.settings import Settings, get_settings

if TYPE_CHECKING:
    from worker.mcpserver.auth import TokenVerifier
    from worker.mcpserver.knowledge import KnowledgeBase


def mcp(
    as_user: Annotated[
        str | None,
        typer.Option("--as", help="stdio: answer as this local user (email or id), for "
                     "`suparag dev`.", show_default=False),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="stdio: answer as the user whose access token this is "
                     "(else SUPARAG_MCP_TOKEN). Verified on every call.", show_default=False),
    ] = None,
    http: Annotated[
        bool,
        typer.Option("--http", help="Serve streamable HTTP at /mcp instead of stdio; every "
                     "request must carry the user's access token (Authorization: Bearer)."),
    ] = False,
    host: Annotated[str, typer.Option(help="--http: the address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="--http: the port.")] = 8765,
    public_url: Annotated[
        str | None,
        typer.Option(help="--http: this server's public URL (for the OAuth protected-resource "
                     "metadata). Default: http://HOST:PORT/mcp.", show_default=False),
    ] = None,
    db_url: DbUrlOption = None,
) -> None:
    """Serve search_knowledge_base, ask and get_document to MCP clients (Claude Desktop,
    Cursor, agents), each run as the user under their row-level security.

    stdio (the default) runs as one user: `--as EMAIL` locally, or `--token` with a
    user's access token. `--http` serves many users, one access token per request,
    verified with SUPABASE_JWT_SECRET (or the project's JWKS with SUPABASE_URL; for
    `suparag dev`, the local project's secret). Nothing runs as service_role.
    """
    from worker.mcpserver.knowledge import KnowledgeBase
    from worker.models.factory import llm_from_settings
    from worker.search import configured_model

    settings = get_settings()
    token = token or settings.mcp_token
    if http and (as_user or token):
        raise ConfigError("--http serves each request as the token it carries: drop --as "
                          "and --token (they are for stdio)")
    if not http and bool(as_user) == bool(token):
        raise ConfigError("say who the stdio server answers as: --as EMAIL (a local user) "
                          "or --token ACCESS_TOKEN (or SUPARAG_MCP_TOKEN), one of them")
    url = resolve_db_url(db_url, settings=settings)
    kb = KnowledgeBase(url, configured_model=configured_model(settings),
                       llm=llm_from_settings(settings))
    if http:
        _serve_http(kb, settings, host=host, port=port, public_url=public_url)
    else:
        _serve_stdio(kb, settings, as_user=as_user, token=token)


def _verifier(settings: Settings) -> TokenVerifier:
    from worker.mcpserver.auth import TokenVerifier, jwks_url_for

    secret = settings.supabase_jwt_secret
    if secret is None and settings.supabase_url is None:
        from worker.devstack import stack

        secret = stack.project_keys(settings).jwt_secret
    jwks = jwks_url_for(settings.supabase_url) if settings.supabase_url else None
    return TokenVerifier(jwt_secret=secret, jwks_url=jwks)


def _serve_stdio(kb: KnowledgeBase, settings: Settings, *, as_user: str | None,
                 token: str | None) -> None:
    from worker.db import connect
    from worker.mcpserver.server import build_server, fixed_caller, token_caller
    from worker.users import find_user

    if as_user:
        with connect(kb.db_url) as conn:
            user = find_user(conn, as_user)
        caller = fixed_caller(user.claims())
        who = user.email
    else:
        assert token is not None
        verifier = _verifier(settings)
        claims = verifier.verify(token)  # refuse a bad token now, not at the first call
        caller = token_caller(verifier, token)
        who = str(claims.get("email") or claims["sub"])
    # stdout is the protocol's: anything for people goes to stderr.
    err_console.print(f"suparag mcp: answering as {who} over stdio")
    build_server(kb, caller).run()


def _serve_http(kb: KnowledgeBase, settings: Settings, *, host: str, port: int,
                public_url: str | None) -> None:
    import uvicorn

    from worker.mcpserver.server import HTTP_PATH, build_server, http_app, http_caller

    verifier = _verifier(settings)
    issuer = (settings.supabase_url.rstrip("/") + "/auth/v1" if settings.supabase_url
              else f"http://{host}:{settings.api_port or settings.db_port - 1}/auth/v1")
    resource = public_url or f"http://{host}:{port}{HTTP_PATH}"
    server = build_server(kb, http_caller, token_verifier=verifier, issuer_url=issuer,
                          resource_url=resource)
    err_console.print(f"suparag mcp: streamable HTTP at {resource}; each request answers as "
                      "the user whose access token it carries")
    uvicorn.run(http_app(server, verifier), host=host, port=port, log_level="warning")
