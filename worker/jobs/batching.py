"""Model calls sized by work, not by document count (issue 16).

A transformer's cost per call is about (texts in the call) x (the longest
text's tokens): every text is padded to the longest. So the worker sorts a
batch's texts by length and fills each call up to a token budget counted that
way, padding included. Short chunks then share a call with many others and
long ones with few, and no call is a few long texts padding many short ones.

The budget is the model's sweet spot on the machine (README, "Embedding
throughput": chunks/s against tokens per call). A single text longer than
the budget gets a call of its own; nothing is ever cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: Padded tokens per model call when none is configured. An edit committed
#: during a bulk backlog is taken between two model calls of the bulk batch
#: (worker/jobs/pipeline.py), so it waits for one or two calls and its own:
#: the budget bounds that wait. 1,024 tokens is about 6 chunks, ~0.25 s of
#: all-MiniLM-L6-v2 fp32 on one core of this 2-core CPU, the model running one
#: call per core (worker/models/lanes.py). Measured in those lanes
#: (`python -m bench.token_budget`): 1,024 to 2,048 tokens a call embed at the same rate,
#: 512 slower; one call at a time on both cores is as flat from 1,024 to 4,096. Of
#: the budgets at that rate the smallest pads least: a claim's texts are sorted by
#: length among themselves, and the smaller the calls, the narrower the range of
#: lengths each holds (300 documents: 1.02x the corpus-sorted calls' padded tokens
#: at 1,024, 1.04x at 2,048). The README ("Issue 16 figures") has the figures.
DEFAULT_TOKEN_BUDGET = 1024

#: Token budgets of bulk documents one claim takes when none is configured. The
#: claim's texts are sorted by length together, so the more budgets, the less
#: each call pads and the fewer calls are a short tail; an edit committed
#: meanwhile does not wait for the claim (worker/jobs/pipeline.py). Measured
#: (`suparag bench worker --docs 300`, 2,048-token calls): the worker's calls
#: padded 1.11x the corpus-sorted calls at 4 budgets a claim, 1.03x at 16; the
#: end-to-end ratio went from 0.73 to 0.89. 32 budgets of 1,024 tokens is the
#: same claim as 16 of 2,048. The cost: a crashed worker's claim (about 32 model
#: calls) is embedded again when its leases run out.
DEFAULT_CLAIM_BUDGETS = 32

#: The most documents one claim takes when none is configured (`--batch-size`):
#: high enough that DEFAULT_CLAIM_BUDGETS of ordinary documents fit.
DEFAULT_CLAIM_DOCUMENTS = 256

#: Tokens a model adds to every input ([CLS] and [SEP] for BERT-like models).
SPECIAL_TOKENS = 2


def padded_cost(lengths: Sequence[int]) -> int:
    """What a call of texts with these token lengths costs: each padded to the longest."""
    return len(lengths) * max(lengths, default=0)


def model_calls(texts: Sequence[str], count_tokens: Callable[[str], int], *,
                budget: int, max_texts: int | None = None) -> list[list[int]]:
    """The indexes of texts, grouped into calls of at most budget padded tokens.

    Sorted by length (shortest first), so each call pads little. A call holds
    at most max_texts texts (a provider's own limit per request), and exceeds
    the budget only when it is a single text longer than the budget.
    """
    if budget < 1:
        raise ValueError("the token budget must be at least 1")
    lengths = [count_tokens(t) + SPECIAL_TOKENS for t in texts]
    calls: list[list[int]] = []
    call: list[int] = []
    for i in sorted(range(len(texts)), key=lambda i: lengths[i]):
        # Sorted ascending, so the newcomer is the call's longest text.
        full = max_texts is not None and len(call) >= max_texts
        if call and (full or (len(call) + 1) * lengths[i] > budget):
            calls.append(call)
            call = []
        call.append(i)
    if call:
        calls.append(call)
    return calls


class DocumentEstimate:
    """How many documents to claim so that a batch holds about budget tokens of work.

    Documents' sizes are unknown until they are read, so the worker keeps a
    running mean of tokens per claimed document and claims budget / mean of
    them (at least one, at most the configured cap).
    """

    def __init__(self, *, budget: int, cap: int, first_guess: float = 512.0) -> None:
        self.budget = budget
        self.cap = cap
        self.tokens_per_document = first_guess

    def documents(self, budget: int | None = None) -> int:
        """Documents holding about budget tokens (default: the estimate's own budget)."""
        wanted = self.budget if budget is None else budget
        return max(1, min(self.cap, round(wanted / max(self.tokens_per_document, 1.0))))

    def observe(self, documents: int, tokens: int) -> None:
        """A claimed batch's size: documents read and the tokens their new chunks hold."""
        if documents:
            self.tokens_per_document = 0.7 * self.tokens_per_document + \
                0.3 * max(tokens / documents, 1.0)
