"""Errors suparag raises on purpose: the one exception tree. Every message says what to do next.

    SuparagError
    ├── ConfigError                  settings missing or contradictory
    ├── BadInput                     (also ValueError) a tool input out of its bounds (MCP)
    ├── NotFound                     a named thing does not exist
    │   └── UserNotFound             no auth.users row for that email or id
    ├── LocalServerError             the embedded PostgreSQL could not be managed
    │   ├── PortInUse                another program holds the port
    │   └── ServerNotRunning         a command needs `suparag dev` first
    ├── RemoteRefused                an operation that is for local databases only
    ├── models (worker/models)
    │   ├── EmbeddingServiceError    a remote embedding service failed or refused a request
    │   │   └── EmbeddingServiceUnavailable   down or throttling: nothing can be embedded now
    │   └── LLMError                 the chat model failed, timed out or refused
    ├── ingest (worker/ingest)
    │   ├── NotText                  a file is not text; the message is why it is skipped
    │   └── JsonTooDeep              (also ValueError) JSON nested deeper than we read
    ├── queues (worker/jobs)
    │   ├── EmbeddingJobError        a document could not be embedded (stored on its job)
    │   └── AnswerFailed             a question asked from the CLI was not answered
    ├── SpaceNotReady                an embedding space cannot be activated yet (coverage, index)
    ├── evaluation (worker/evaluation)
    │   ├── EvalSetInvalid           (also ConfigError) an evaluation set file or line is malformed
    │   └── ActivationRefused        a space scores below the active one on the same set
    ├── commands (cli, bench)
    │   ├── DemoFailed               what RLS returned differs from the sharing rules
    │   └── BenchError               a benchmark could not run to the end
    ├── the APIs (worker/devstack's local API, worker/edge's functions)
    │   ├── ApiError                 PostgREST-shaped error: status, code, message, hint
    │   ├── AuthError                GoTrue-shaped error: status, error_code, msg
    │   ├── InvalidToken             a JWT that is malformed, wrongly signed or expired
    │   ├── SubscriptionError        (also ValueError) a Realtime binding we cannot serve
    │   └── JoinRefused              a Realtime join or token refresh refused
    └── (database errors also subclass psycopg's, so driver-level handlers still work)
        ├── DatabaseUnavailable      psycopg.OperationalError: cannot connect
        └── MigrationFailed          psycopg.DatabaseError: a migration did not apply

Third-party errors are translated where they enter (`raise ... from exc`);
`cli/main.py` is the one place that turns a SuparagError into a one-line
message and exit code 1.
"""

from __future__ import annotations

import psycopg


class SuparagError(Exception):
    """Base of every error suparag raises deliberately."""


class ConfigError(SuparagError):
    """Settings are missing or contradictory."""


class BadInput(SuparagError, ValueError):
    """An input to an MCP tool that is empty, malformed or over its limit (the limit named)."""


class NotFound(SuparagError):
    """A named object does not exist."""


class UserNotFound(NotFound):
    """No user with that email or id in auth.users."""


class LocalServerError(SuparagError):
    """The embedded PostgreSQL server could not be started, stopped or read."""


class PortInUse(LocalServerError):
    """The port the local server should listen on is taken by another program."""


class ServerNotRunning(LocalServerError):
    """The local server is not running."""


class RemoteRefused(SuparagError):
    """A destructive, local-only operation was pointed at a non-local database."""


class DatabaseUnavailable(SuparagError, psycopg.OperationalError):
    """The database could not be reached."""


class MigrationFailed(SuparagError, psycopg.DatabaseError):
    """A migration failed to apply; nothing of it was committed."""


# -- models: embedders and chat models (worker/models) ------------------------------------


class EmbeddingServiceError(SuparagError):
    """A remote embedding service failed or refused a request (status and server named)."""


class EmbeddingServiceUnavailable(EmbeddingServiceError):
    """The service is down or throttling past our patience: no document can be embedded now."""


class LLMError(SuparagError):
    """The chat model failed, timed out or refused the request (server and reason named)."""


# -- ingest (worker/ingest) ---------------------------------------------------------------


class NotText(SuparagError):
    """A file's bytes are not text ingest can read; the message is the reason it is skipped."""


class JsonTooDeep(SuparagError, ValueError):
    """JSON nests arrays and objects deeper than worker.documents.MAX_JSON_DEPTH."""


# -- evaluation (worker/evaluation) --------------------------------------------------------

class EvalSetInvalid(ConfigError):
    """An evaluation set file or line cannot be read; the message names the file and line."""


class ActivationRefused(SuparagError):
    """A space's latest evaluation scores below the active space's on the same set."""


# -- the queues (worker/jobs) -------------------------------------------------------------

class EmbeddingJobError(SuparagError):
    """A document could not be embedded; the message is stored on its job."""


class SpaceNotReady(SuparagError):
    """An embedding space cannot be activated (vectors missing, no valid index, dropped), or
    dropping the first one cannot finish (an old worker still writes its vectors)."""


class AnswerFailed(SuparagError):
    """A question asked from the command line was not answered (the error says why)."""


# -- commands (cli, bench) ----------------------------------------------------------------

class DemoFailed(SuparagError):
    """What the database returned to some user differs from what the sharing rules allow."""


class BenchError(SuparagError):
    """A benchmark could not run to the end (the worker died, a document failed, a timeout)."""


# -- the local API of the dev stack (worker/devstack) -------------------------------------


class ApiError(SuparagError):
    """An error the local API answers with `{code, message, details, hint}` and a status
    (PostgREST's shape; `worker.devstack.api.errors` builds the response)."""

    def __init__(self, status: int, code: str, message: str, *, details: str | None = None,
                 hint: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.hint, self.headers = details, hint, headers


class AuthError(SuparagError):
    """An error the local `/auth/v1` answers with `{code, error_code, msg}` (GoTrue's shape)."""

    def __init__(self, status: int, error_code: str, msg: str, **extra: object) -> None:
        super().__init__(msg)
        self.status, self.error_code, self.msg, self.extra = status, error_code, msg, extra


class InvalidToken(SuparagError):
    """A JWT that is malformed, wrongly signed, expired or names no API role."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class SubscriptionError(SuparagError, ValueError):
    """A Realtime postgres_changes binding the local API cannot serve (bad event or filter)."""


class JoinRefused(SuparagError):
    """A Realtime join (or token refresh) refused; the message is the reply's `reason`."""
