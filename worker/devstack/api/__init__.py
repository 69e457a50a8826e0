"""The local Supabase-compatible HTTP API: /rest/v1 (PostgREST), /auth/v1 (GoTrue),
/realtime/v1 and /functions/v1.

For development and CI only; production is a real Supabase project.
`create_app` (app.py) builds the ASGI app; `python -m worker.devstack.api` serves it.
"""
