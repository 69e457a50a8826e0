"""`suparag demo`, the README's main command, run as a user runs it."""

from __future__ import annotations

import pytest
from test_cli import cli  # noqa: F401  (the fixture: own home, own port)

from worker.db import connect


@pytest.mark.slow
def test_demo_embeds_the_corpus_and_each_user_sees_only_their_share(cli):  # noqa: F811
    first = cli("demo")
    out = first.stdout
    assert "9 created" in out and "9 queued for embedding" in out
    assert "Embedded all 9 documents" in out
    # The demo compares what RLS returns with the sharing rules, per caller,
    # and the citations of carol's and bob's answers with what each may read.
    assert out.count("yes") == 6 and "NO" not in out
    assert "3 of 9" in out and "6 of 9" in out and "5 of 9" in out
    # bob's private negotiation notes top his own search and nobody else's.
    discount = out[out.index("How big a discount"):]
    bob_rows = discount[discount.index("│ bob"):]
    assert "Bob's notes" in bob_rows
    assert "Bob's notes" not in discount[:discount.index("│ bob")]

    # carol's answer quotes the public pricing page, never bob's private notes.
    asked = out[out.index("6. Ask"):]
    carol, bob = asked[asked.index("│ carol"):asked.index("│ bob")], asked[asked.index("│ bob"):]
    assert "Pricing" in carol and "Bob's notes" not in carol
    assert "Bob's notes" in bob

    again = cli("demo").stdout
    assert "9 unchanged, 0 queued" in again and "NO" not in again
    url = f"postgresql://postgres:postgres@127.0.0.1:{cli.port}/postgres"
    with connect(url) as conn:
        row = conn.execute("select count(*) as docs, count(*) filter"
                           " (where embedding_status = 'ready') as ready"
                           " from public.documents").fetchone()
    assert row == {"docs": 9, "ready": 9}
