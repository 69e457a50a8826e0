"""`suparag search` embeds its query on the running local API (issue 16), else loads the model.

A real API (create_app with the functions routes) over the packaged model;
the fallback records whether it was needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import running_app

from worker.devstack.api.app import create_app
from worker.devstack.api.functions import functions_routes
from worker.devstack.api.keys import load_or_create
from worker.devstack.postgres import free_port
from worker.devstack.query_embed import EndpointEmbedder, running_api_embedder
from worker.settings import Settings


def test_the_query_is_embedded_by_the_api_when_it_serves_the_model(db_url, tmp_path, embedder):
    keys = load_or_create(tmp_path / "home")
    built: list[int] = []

    def fallback():
        built.append(1)
        return embedder

    app = create_app(db_url, keys, routes=functions_routes(keys, lambda: embedder))
    with running_app(app) as url:
        remote = EndpointEmbedder(url, keys.anon_key, embedder.name, fallback=fallback)
        (vector,) = remote.embed(["who reads which rows?"])
        assert remote.used_api is True and built == []
        assert np.allclose(vector, embedder.embed(["who reads which rows?"])[0], atol=1e-6)
        # The API serves another model than the corpus's: the query is embedded here.
        other = EndpointEmbedder(url, keys.anon_key, "Supabase/gte-small", fallback=fallback)
        assert len(other.embed(["x"])[0]) == 384
        assert other.used_api is False and built == [1]
        # A bad key is an HTTP error: also the fallback, never a failed search.
        bad = EndpointEmbedder(url, "not-a-key", embedder.name, fallback=fallback)
        bad.embed(["x"])
        assert bad.used_api is False


def test_no_api_running_means_the_local_model(tmp_path: Path, embedder):
    settings = Settings(home=tmp_path / "nothing-here", api_port=free_port())
    assert running_api_embedder(settings, embedder.name, fallback=lambda: embedder) is embedder
    gone = EndpointEmbedder(f"http://127.0.0.1:{free_port()}", "k", embedder.name,
                            fallback=lambda: embedder)
    assert len(gone.embed(["x"])[0]) == 384 and gone.used_api is False
