"""`/rest/v1`: PostgREST's semantics, split along PostgREST's own pipeline.

request.py (Call, Prefer, profiles) -> grammar.py (filters, select, order, paging)
-> catalog.py (columns, functions, relationships) -> tables.py or rpc.py (one
statement as the caller; resource_embed.py for `relation(columns)` in select)
-> response.py. routes.py holds the routes and the per-request transaction.
"""
