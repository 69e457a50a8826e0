"""Embed a query on the running local API instead of loading the model here (issue 16).

`suparag search` used to load torch and the model on every call (seconds of
CPU). When `suparag dev` is running, its API already holds the configured
model behind `POST /functions/v1/embed`; the query goes there, and only if
that model is the one whose vectors are searched. Otherwise (no stack, another
model, any error) the caller loads the model itself, as before.

One POST per search, so the standard library's urllib makes it: httpx (with
httpcore and h2) took a quarter of a second to import, a quarter of the goal
of issue 16 (`suparag search` under 1 s with the stack running).
"""

from __future__ import annotations

import functools
import http.client
import json
import urllib.request
from collections.abc import Callable, Sequence

from worker.devstack import stack
from worker.models.base import Embedder
from worker.settings import Settings

#: A local API that does not answer this fast is not worth waiting for.
TIMEOUT_SECONDS = 5.0

#: The API is on loopback: no HTTP_PROXY applies to it.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EndpointEmbedder:
    """Embeds through `/functions/v1/embed` of an API, if it serves model `name`; else
    with the embedder fallback() builds here (loaded only then)."""

    def __init__(self, api_url: str, key: str, name: str, *,
                 fallback: Callable[[], Embedder]) -> None:
        self.api_url, self._key, self.name = api_url, key, name
        self._fallback = functools.cache(fallback)  # built once, when first needed
        self.used_api: bool | None = None  # after embed: whether the API answered

    # The rest of the Embedder protocol: the local model's (loaded on first use).
    @property
    def dimensions(self) -> int:
        return self._fallback().dimensions

    @property
    def max_tokens(self) -> int:
        return self._fallback().max_tokens

    def count_tokens(self, text: str) -> int:
        return self._fallback().count_tokens(text)

    def split_tokens(self, text: str, size: int) -> list[str]:
        return self._fallback().split_tokens(text, size)

    def load(self) -> None:
        """Nothing to load: the API holds the model."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        try:
            vectors = self._remote(texts)
        # OSError: refused, timed out, dropped, or an error status (urllib's URLError and
        # HTTPError are OSErrors); HTTPException: a broken response; ValueError: not JSON.
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
            self.used_api = False
            return self._fallback().embed(texts)
        self.used_api = True
        return vectors

    def _remote(self, texts: Sequence[str]) -> list[list[float]]:
        request = urllib.request.Request(
            f"{self.api_url}/functions/v1/embed", method="POST",
            data=json.dumps({"input": list(texts)}).encode(),
            headers={"Authorization": f"Bearer {self._key}", "apikey": self._key,
                     "Content-Type": "application/json"})
        with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as response:  # HTTPError if >= 400
            body = json.load(response)
        if not isinstance(body, dict) or body.get("model") != self.name:
            raise ValueError(f"the API does not embed with {self.name!r}")
        return [[float(x) for x in v] for v in body["embeddings"]]


def running_api_embedder(settings: Settings, model: str, *,
                         fallback: Callable[[], Embedder]) -> Embedder:
    """The running local API's embed endpoint for model, falling back to fallback();
    with no API running, fallback() itself."""
    api = stack.local_api(settings).status()
    if api is None:
        return fallback()
    return EndpointEmbedder(api.url, stack.project_keys(settings).anon_key, model,
                            fallback=fallback)
