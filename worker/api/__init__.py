"""The local Supabase-compatible HTTP API: /rest/v1 (PostgREST) and /auth/v1 (GoTrue).

For development and CI only; production is a real Supabase project.
`create_app` builds the ASGI app; `python -m worker.api` serves it.
"""
