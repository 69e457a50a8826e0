"""The model's sweet spot: chunks per second against padded tokens per call (issue 16).

    python -m bench.token_budget [--docs 100] [--backend torch|onnx-int8]
                                 [--budgets 512,1024,2048,4096,8192,16384] [--json]

The documents (1-14 paragraphs, as `bench worker` makes them) are chunked as
the worker chunks them; for each budget the texts are sorted by length and
cut into calls of at most that many padded tokens (worker/jobs/batching.py,
what the worker does), and each call goes to embedder.embed as one forward
pass. Each budget is timed both ways the worker can run the model: one call
at a time on all cores (torch's default threads), and, for torch on more
than one core, in the worker's lanes (worker/models/lanes.py: a call per
core, one thread each, as `suparag worker` runs it by default). The budgets
run in turn after a warm-up call, and then again in reverse order, so a
change of background load weighs on both ends alike; each budget's rate is
over both passes. The worker's default
(DEFAULT_TOKEN_BUDGET) should sit where the rate levels off: a larger budget
only makes an edit wait longer behind a bulk backlog.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench._common import embed_texts, emit, err_console, machine, make_documents, print_load
from bench.worker import time_lanes
from worker.errors import BenchError
from worker.jobs.batching import model_calls
from worker.models.base import DEFAULT_MODEL
from worker.models.factory import make_embedder
from worker.models.lanes import torch_threads

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
    threads = torch_threads() or 1
    lanes = threads if backend == "torch" and threads > 1 else 1
    now = _current_threads() if lanes > 1 else None  # torch's count, restored after lanes
    one_call = dict.fromkeys(budgets, 0.0)
    in_lanes = dict.fromkeys(budgets, 0.0)
    calls: dict[int, list[list[str]]] = {
        b: [[texts[i] for i in call] for call in model_calls(texts, embedder.count_tokens,
                                                              budget=b)]
        for b in budgets}
    for order in (budgets, tuple(reversed(budgets))):
        for budget in order:
            started = time.perf_counter()
            for group in calls[budget]:
                embedder.embed(group)
            one_call[budget] += time.perf_counter() - started
            if lanes > 1:
                in_lanes[budget] += time_lanes(embedder, calls[budget], lanes,
                                               f"{budget} tokens a call, in {lanes} lanes",
                                               None, now)
    return {
        "bench": "token_budget",
        "model": embedder.name,
        "backend": backend,
        "chunks": len(texts),
        "torch_threads": threads,
        "lanes": lanes,
        "results": [{"budget": b, "calls": len(calls[b]),
                     "chunks_per_s": 2 * len(texts) / one_call[b],
                     "lanes_chunks_per_s": 2 * len(texts) / in_lanes[b] if lanes > 1 else None}
                    for b in budgets],
        "machine_before": before,
        "machine_after": machine(),
    }


def _current_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def print_report(r: dict[str, Any]) -> None:
    print(f"\n{r['chunks']} chunks, {r['model']}; each budget run twice (up, then down)")
    lanes = r["lanes"] > 1
    print(f"{'tokens per call':>16}{'calls':>8}{'one call at a time':>20}"
          + (f"{'in ' + str(r['lanes']) + ' lanes':>14}" if lanes else "") + "  (chunks/s)")
    for row in r["results"]:
        print(f"{row['budget']:>16}{row['calls']:>8}{row['chunks_per_s']:>20.1f}"
              + (f"{row['lanes_chunks_per_s']:>14.1f}" if lanes else ""))
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
