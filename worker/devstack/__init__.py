"""The local dev stack behind `suparag dev`: the embedded PostgreSQL, the local
Supabase-compatible API and the supervisor of its background processes.

Used by the CLI, the benchmarks and the tests, never by the runtime: nothing in
`worker/` outside this package imports it.
"""
