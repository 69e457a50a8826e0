"""`python -m worker.devstack.api --db-url URL --home DIR --port N`: serve the local API.

`suparag dev` starts this detached, with its output in SUPARAG_HOME/logs/api.log.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from worker.devstack.api.app import create_app
from worker.devstack.api.functions import functions_routes
from worker.devstack.api.keys import load_or_create
from worker.devstack.api.realtime.hub import realtime_routes
from worker.models.factory import embedder_from_settings
from worker.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.devstack.api", description=__doc__)
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--home", type=Path, required=True, help="where keys.json lives")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=54321)
    args = parser.parse_args()
    keys = load_or_create(args.home)
    # `suparag search` asks this API to embed its query: have the model ready for it.
    functions = functions_routes(keys, lambda: embedder_from_settings(get_settings()),
                                 warm_model=True)
    app = create_app(args.db_url, keys,
                     routes=[*realtime_routes(args.db_url, keys), *functions])
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
