"""suparag's edge functions in Python (issue 18): `suparag serve` in production, and the
`/functions/v1` routes of the dev API, one code path.

    auth       Gateway: apikey + Bearer JWT as Supabase's gateway checks them, verify_jwt
    limits     body reader, input caps, the per-user rate limit
    metrics    Prometheus registry: requests, latency, model time, queue depth, cache hits
    functions  EdgeConfig; embed, search (as the caller), wake, health, metrics
    app        create_edge_app: the standalone service (pool, CORS, error shapes) and
               its EdgeConfig from the environment

The query-vector cache is worker/models/cache.py (the answer worker uses it too).
"""
