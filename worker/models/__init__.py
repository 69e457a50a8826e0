"""The model providers: embedders (text to vectors) and chat models (answers).

    base.py     the two interfaces (`Embedder`, `LLM`), their messages and defaults
    local.py    SentenceTransformerEmbedder: a sentence-transformers model on this machine
    openai.py   OpenAIEmbedder: OpenAI's embeddings API or any server speaking it
    llm.py      OpenAIChat: OpenAI's chat completions API, streamed, or any server speaking it
    _http.py    what both OpenAI-compatible providers share: client, server names, Retry-After
    factory.py  the provider the settings (or a stored model name) call for

Heavy libraries (torch, sentence-transformers, openai) load inside the
providers, so importing any of these modules (and `suparag --help`) stays instant.
"""
