"""The model's sweet spot: chunks per second against padded tokens per call (issue 16).

    python -m bench.token_budget [--docs 100] [--backend torch|onnx-int8]
                                 [--budgets 512,1024,2048,4096,8192,16384] [--json]

The documents (1-14 paragraphs, as `bench worker` makes them) are chunked as
the worker chunks them; for each budget the texts are sorted by length and
cut into calls of at most that many padded tokens (worker/jobs/batching.py,
what the worker does), and each call goes to embedder.embed as one forward
pass. The budgets run in turn after a warm-up call, and then again in
reverse order, so a change of background load weighs on both ends alike;
each budget's rate is over both passes. The worker's default
(DEFAULT_TOKEN_BUDGET) should sit where the rate levels off: a larger budget
only makes an edit wait longer behind a bulk backlog.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench._common import embed_texts, emit, err_console, machine, make_documents, print_load
from worker.errors import BenchError
from worker.jobs.batching import model_calls
from worker.models.base import DEFAULT_MODEL
from worker.models.factory import make_embedder

BUDGETS = (512, 1024, 2048, 4096, 8192, 16384)


def run(*, docs: int = 100, backend: str = "torch", budgets: tuple[int, ...] = BUDGETS,
        seed: int = 7) -> dict[str, Any]:
    if docs < 1 or not budgets or min(budgets) < 1:
        raise BenchError("--docs must be at least 1 and every budget at least 1 token")
    before = machine()
    embedder = make_embedder("sentence-transformers", DEFAULT_MODEL, backend=backend)
    err_console.print(f"loading {embedder.name}…")
    embedder.embed(["load the model"])
    texts = list(dict.fromkeys(t for d in make_documents(docs, seed=seed)
                               for t in embed_texts(embedder, d)))
    # One forward pass per call: the providers' own per-call split must not cut it.
    if hasattr(embedder, "batch_size"):
        setattr(embedder, "batch_size", len(texts))  # noqa: B010  # not in the protocol
    embedder.embed(texts[:16])  # warm-up
    seconds = dict.fromkeys(budgets, 0.0)
    calls: dict[int, int] = {}
    for order in (budgets, tuple(reversed(budgets))):
        for budget in order:
            groups = model_calls(texts, embedder.count_tokens, budget=budget)
            calls[budget] = len(groups)
            started = time.perf_counter()
            for group in groups:
                embedder.embed([texts[i] for i in group])
            seconds[budget] += time.perf_counter() - started
    return {
        "bench": "token_budget",
        "model": embedder.name,
        "backend": backend,
        "chunks": len(texts),
        "results": [{"budget": b, "calls": calls[b], "chunks_per_s": 2 * len(texts) / seconds[b]}
                    for b in budgets],
        "machine_before": before,
        "machine_after": machine(),
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"\n{r['chunks']} chunks, {r['model']}; each budget run twice (up, then down)")
    print(f"{'tokens per call':>16}{'calls':>8}{'chunks/s':>11}")
    for row in r["results"]:
        print(f"{row['budget']:>16}{row['calls']:>8}{row['chunks_per_s']:>11.1f}")
    print_load(r)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx-int8"])
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)),
                        help="comma-separated padded tokens per call")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        budgets = tuple(int(b) for b in args.budgets.split(","))
    except ValueError as exc:
        raise BenchError(f"--budgets {args.budgets!r}: give whole numbers, e.g. 1024,2048") \
            from exc
    emit(run(docs=args.docs, backend=args.backend, budgets=budgets), args.json, print_report)


if __name__ == "__main__":
    main()
