"""The one backoff rule: exponential, capped, with jitter.

Used wherever suparag waits before trying again (a failed job in either
queue, a retried HTTP request to a model server), so that many workers that
failed together do not retry in step.
"""

from __future__ import annotations

import random


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait after the attempt-th failure (1-based).

    The ceiling doubles from `base` each attempt up to `cap`; the wait is drawn
    uniformly from the upper half of it ("equal jitter"), so it never collapses
    to zero and still spreads retries apart.
    """
    ceiling = min(cap, base * 2 ** (max(attempt, 1) - 1))
    return random.uniform(ceiling / 2, ceiling)
