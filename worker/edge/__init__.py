"""suparag's edge functions in Python (issue 18): `suparag serve` in production, and the
`/functions/v1` routes of the dev API, one code path.

    config     EdgeConfig: keys, secret or JWKS, limits (from Settings, or the dev keys)
    auth       Gateway: apikey + Bearer JWT as Supabase's gateway checks them, verify_jwt
    limits     body reader, input caps, the per-user rate limit
    cache      the query-vector cache (LRU per model) and CachedEmbedder
    metrics    Prometheus registry: requests, latency, model time, queue depth, cache hits
    functions  embed, search (as the caller), wake, health, metrics
    app        create_edge_app: the standalone service (pool, CORS, error shapes)
"""
