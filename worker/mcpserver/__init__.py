"""`suparag mcp`: an MCP server that searches and answers as the user (issue 15).

    auth.py        verify a user's Supabase access token (JWT secret or JWKS)
    knowledge.py   the tools' work as one caller's claims, with the input limits
    server.py      the MCPServer, who the caller is per transport, the HTTP app
"""
