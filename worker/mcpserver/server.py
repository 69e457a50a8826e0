"""`suparag mcp`: the knowledge base as MCP tools, answered as the user, never as the server.

Built on the official `mcp` SDK's `MCPServer`. Three tools:

- `search_knowledge_base(query, limit=5, filter?, hybrid?)`: passages with title,
  similarity (or fused score), document and chunk ids, metadata;
- `ask(question, conversation?)`: through the answer queue, as `suparag ask`;
- `get_document(id)`: one document; missing and unreadable read alike.

Who the caller is depends on the transport:

- stdio (a desktop client starts the process): one caller for the process,
  a local user (`--as EMAIL`) or a user's access token, which is verified
  again on every call, so an expired token stops working when it expires.
- streamable HTTP: every request carries `Authorization: Bearer <the user's
  Supabase access token>`, verified (project JWT secret, or JWKS) before the
  SDK parses anything; the SDK hands the verified token to the tool, and the
  tool runs under those claims. A missing, forged, expired, anon or
  service_role token is a 401 with the reason.

The tools run blocking database and model work in a worker thread, so one
slow answer does not hold up other HTTP callers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from pydantic import AnyHttpUrl, Field

from worker.errors import InvalidToken, SuparagError
from worker.mcpserver.auth import TokenVerifier
from worker.mcpserver.knowledge import (
    MAX_LIMIT,
    MAX_QUERY_CHARS,
    MAX_QUESTION_CHARS,
    Answer,
    Document,
    KnowledgeBase,
    Passage,
    SearchResults,
)

T = TypeVar("T")

#: Where the streamable HTTP endpoint is served.
HTTP_PATH = "/mcp"

INSTRUCTIONS = (
    "A knowledge base searched and answered as the signed-in user: every result is a "
    "document that user may read (row-level security), nothing else. Use "
    "search_knowledge_base for passages, ask for an answer with citations, get_document "
    "for a whole document by the document_id a search returned."
)

Claims = dict[str, Any]


def _tool_error(exc: Exception) -> Exception:
    from mcp.server.mcpserver.exceptions import ToolError

    return ToolError(str(exc))


async def _run(fn: Callable[[], T]) -> T:
    """fn in a worker thread; suparag's own errors become MCP tool errors (isError)."""
    try:
        return await anyio.to_thread.run_sync(fn)
    except SuparagError as exc:
        raise _tool_error(exc) from exc


def build_server(kb: KnowledgeBase, caller: Callable[[], Claims], *,
                 token_verifier: TokenVerifier | None = None,
                 issuer_url: str | None = None,
                 resource_url: str | None = None) -> Any:
    """An MCPServer with the three tools, each run as caller() says.

    caller() returns the claims to run as, or raises InvalidToken. For HTTP,
    pass token_verifier (and issuer_url, resource_url for the SDK's protected
    resource metadata) and use `http_caller` as caller.
    """
    from mcp.server import MCPServer

    kwargs: dict[str, Any] = {}
    if token_verifier is not None:
        from mcp.server.auth.settings import AuthSettings

        kwargs["token_verifier"] = _SdkVerifier(token_verifier)
        kwargs["auth"] = AuthSettings(
            issuer_url=AnyHttpUrl(issuer_url or "http://127.0.0.1/auth/v1"),
            resource_server_url=AnyHttpUrl(resource_url) if resource_url else None,
            required_scopes=[],
            # Supabase access tokens name the audience `authenticated`, not this
            # server; the role and signature are what the verifier checks.
            validate_token_resource=False,
        )
    server = MCPServer("suparag", instructions=INSTRUCTIONS, **kwargs)

    def as_caller(work: Callable[[Claims], T]) -> Awaitable[T]:
        def call() -> T:
            try:
                claims = caller()
            except InvalidToken as exc:
                raise _tool_error(exc) from exc
            return work(claims)
        return _run(call)

    @server.tool(structured_output=True)
    async def search_knowledge_base(
        query: Annotated[str, Field(description="What to look for, in plain words.",
                                    min_length=1, max_length=MAX_QUERY_CHARS)],
        limit: Annotated[int, Field(description="How many passages to return.",
                                    ge=1, le=MAX_LIMIT)] = 5,
        filter: Annotated[  # the tool's public parameter name
            dict[str, str | int | float | bool] | None,
            Field(description='Only documents whose metadata has these values, e.g. '
                  '{"topic": "geology"}.')] = None,
        hybrid: Annotated[bool, Field(description="Fuse full-text and semantic ranking: "
                                      "better for exact words, names and codes.")] = False,
    ) -> SearchResults:
        """Search the knowledge base for passages relevant to a query.

        Returns the best passages among the documents the signed-in user may
        read, best first, each with its title, text, similarity (or fused score
        when hybrid), document_id and chunk_index for citing.
        """
        passages = await as_caller(functools.partial(
            _search, kb, query=query, limit=limit, metadata_filter=filter, hybrid=hybrid))
        return SearchResults(results=passages)

    @server.tool(structured_output=True)
    async def ask(
        question: Annotated[str, Field(description="The question, in plain words.",
                                       min_length=1, max_length=MAX_QUESTION_CHARS)],
        conversation: Annotated[str | None, Field(
            description="Continue this conversation: the conversation_id an earlier ask "
            "returned.")] = None,
    ) -> Answer:
        """Answer a question from the knowledge base, with numbered citations.

        Only documents the signed-in user may read are used. Returns the
        answer, its citations (document_id, chunk_index, title, similarity)
        and a conversation_id to continue with.
        """
        return await as_caller(functools.partial(
            _ask, kb, question=question, conversation=conversation))

    @server.tool(structured_output=True)
    async def get_document(
        id: Annotated[str, Field(  # the tool's public parameter name
            description="The document_id a search or a citation returned.", max_length=100)],
    ) -> Document:
        """Read one whole document by its id (title, content, metadata).

        A document that does not exist and one the user may not read give the
        same error.
        """
        return await as_caller(functools.partial(_get_document, kb, value=id))

    return server


def _search(kb: KnowledgeBase, claims: Claims, *, query: str, limit: int,
            metadata_filter: Mapping[str, Any] | None, hybrid: bool) -> list[Passage]:
    return kb.search(claims, query, limit=limit, metadata_filter=metadata_filter,
                     hybrid=hybrid)


def _ask(kb: KnowledgeBase, claims: Claims, *, question: str,
         conversation: str | None) -> Answer:
    return kb.ask(claims, question, conversation=conversation)


def _get_document(kb: KnowledgeBase, claims: Claims, *, value: str) -> Document:
    return kb.get_document(claims, value)


# -- who is calling --------------------------------------------------------------------


def fixed_caller(claims: Mapping[str, Any]) -> Callable[[], Claims]:
    """Always these claims (stdio as a local user, `--as EMAIL`)."""
    frozen = json.loads(json.dumps(dict(claims), default=str))
    return lambda: dict(frozen)


def token_caller(verifier: TokenVerifier, token: str) -> Callable[[], Claims]:
    """The claims of token, verified on every call (stdio with an access token)."""
    return lambda: verifier.verify(token)


def http_caller() -> Claims:
    """The claims of the token this HTTP request carried (verified by the SDK's auth
    middleware through `_SdkVerifier`)."""
    from mcp.server.auth.middleware.auth_context import get_access_token

    token = get_access_token()
    if token is None or not token.claims:
        raise InvalidToken("this request carried no verified access token: send "
                           "`Authorization: Bearer <the user's Supabase access token>`")
    return dict(token.claims)


class _SdkVerifier:
    """Our TokenVerifier in the SDK's shape: an AccessToken carrying the claims, or None
    (the SDK then answers 401)."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    async def verify_token(self, token: str) -> Any:
        from mcp.server.auth.provider import AccessToken

        try:
            claims = self.verifier.verify(token)
        except InvalidToken:
            return None
        return AccessToken(token=token, client_id=str(claims["sub"]), scopes=[],
                           expires_at=int(claims["exp"]), subject=str(claims["sub"]),
                           claims=claims)


# -- HTTP ------------------------------------------------------------------------------


def http_app(server: Any, verifier: TokenVerifier) -> Any:
    """The streamable HTTP app behind a check that answers a bad token with its reason.

    The SDK's own middleware would refuse the same tokens, with a generic
    "Authentication required"; this says what is wrong (expired, forged, anon
    key) in GoTrue-like words, in the WWW-Authenticate header and the body.
    """
    inner = server.streamable_http_app(streamable_http_path=HTTP_PATH)
    return _ExplainRefusals(inner, verifier)


class _ExplainRefusals:
    """ASGI middleware: a request without a valid user token gets 401 and the reason."""

    def __init__(self, app: Any, verifier: TokenVerifier) -> None:
        self.app, self.verifier = app, verifier

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") == HTTP_PATH:
            reason = self._refusal(dict(scope.get("headers") or []))
            if reason is not None:
                await _unauthorized(send, reason)
                return
        await self.app(scope, receive, send)

    def _refusal(self, headers: dict[bytes, bytes]) -> str | None:
        value = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return ("no access token: send `Authorization: Bearer <the user's Supabase "
                    "access token>`")
        try:
            self.verifier.verify(token.strip())
        except InvalidToken as exc:
            return str(exc)
        return None


async def _unauthorized(send: Any, reason: str) -> None:
    body = json.dumps({"error": "invalid_token", "error_description": reason}).encode()
    quoted = reason.replace("\\", "\\\\").replace('"', "'")
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate",
         f'Bearer error="invalid_token", error_description="{quoted}"'.encode()),
    ]})
    await send({"type": "http.response.body", "body": body})
