"""The embedding worker's overlap: the model never waits for the database (issue 16).

Three stages per batch: *prepare* (claim, read, chunk: database), *embed*
(the model) and *finish* (write back or fail: database). The model runs on
the calling thread; the database side runs on one thread of its own, in
order, on the worker's one connection. While the model embeds batch N, that
thread writes batch N-1 back and then claims and prepares batch N+1:

    db thread:  finish N-1, prepare N+1 | finish N, prepare N+2 | ...
    caller:     embed N                 | embed N+1             | ...

A bulk batch is claimed several token budgets at a time (its texts sorted by
length across the whole claim, so its model calls pad little), which would
hold back an edit committed after the claim. So a claim made while interactive
jobs are due takes those alone, and between two model calls of a batch
holding bulk jobs the embed stage asks the database thread, once per call,
whether an interactive job is due (`prepare_urgent`); if one is, it is
claimed, embedded at once between the bulk batch's calls and written back,
and the bulk batch carries on. An interactive batch already claimed as the
next one goes ahead the same way. The question and the urgent write-back run
on a second database thread with a connection of its own, so they never wait
behind a bulk claim's read or write-back (hundreds of documents, about a
second each), and a boundary waits for the answer (about a millisecond) rather
than taking it at the next one. An edit then waits for about one model call,
not for the batches ahead of it. A worker that hears every enqueue (LISTEN or
Realtime connected: the enqueue that makes a job notifies; not the wake
endpoint, which hears only what pg_net is set to send) asks only when a hint
came since it last asked, or RECHECK_SECONDS after that
(a hint can be lost); a backlog that nothing is added to is then drained
without a question per call.

So at most three batches are in flight (one written, one embedded, one
waiting) besides the urgent ones, and every guarantee stays where it was: the write-back checks the
version under `for update` (a batch that waited is dropped if its document
changed), a poison document is isolated inside the embed stage, and the
leases of every batch in flight are renewed every third of the lease by a
heartbeat, so a batch never loses its lease while it waits. Stopping
(SIGTERM) claims nothing more, finishes the batch in hand, and gives back the
one claimed behind it, which the model has not started (`release`: its jobs
are due at once for any worker, the attempt not counted), so a stop waits for
one claim's model calls, not two.

The model waits for the first batch of a drain (a wake-up), so that one is
claimed small (a few budgets: the model starts within milliseconds of a
commit, not after a whole claim's read and chunking), and the full-size
claim behind it is prepared while it embeds.

Lower-priority work that is not a job (a space's backfill, issue 10) is a
batch like the others: `prepare` returns it when no job is due.

Each connection is used by one thread at a time: the first by the database
thread while the pipeline runs, the second by the urgent thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Generic, Protocol, TypeVar

from worker.jobs.queue import Tally, TallyT

BatchT = TypeVar("BatchT")
EmbeddedT = TypeVar("EmbeddedT")
TallyT_co = TypeVar("TallyT_co", bound=Tally, covariant=True)


class Stages(Protocol[BatchT, EmbeddedT, TallyT_co]):
    """What a pipelined worker does, stage by stage."""

    def prepare(self, opening: bool = False) -> BatchT | None:
        """Claim, read and chunk the next batch (database thread); None: nothing due.

        opening: the first batch of a drain, which the model waits for; a small one, so
        the model starts at once and the next (full) batch is prepared while it embeds."""
        ...

    def prepare_urgent(self) -> BatchT | None:
        """Claim interactive jobs only, if any are due (database thread); None: none due."""
        ...

    def urgent(self, batch: BatchT) -> bool:
        """Whether a prepared batch holds interactive jobs only."""
        ...

    def embed(self, batch: BatchT, between: Callable[[], None] | None = None) -> EmbeddedT:
        """Run the model over a prepared batch (calling thread); never touches the database.

        between, if given, is called before each model call."""
        ...

    def finish(self, batch: BatchT, embedded: EmbeddedT) -> TallyT_co:
        """Write back or fail each job of the batch (database thread)."""
        ...

    def release(self, batch: BatchT) -> TallyT_co | None:
        """Give back a prepared batch the model has not started, when stopping (database
        thread): its jobs due again at once for any worker. The tally of what it settled
        while prepared; None if it cannot be given back (it is then embedded)."""
        ...

    def renew(self) -> None:
        """Extend the leases of every job in flight (database thread)."""
        ...

    def use_second_connection(self) -> None:
        """Called once on the urgent thread: its stages use a connection of their own."""
        ...


class Pipeline(Generic[BatchT, EmbeddedT, TallyT]):
    """Drains a queue through stages, overlapping the database with the model."""

    def __init__(self, stages: Stages[BatchT, EmbeddedT, TallyT], *,
                 tally: Callable[[], TallyT], lease_seconds: float,
                 hints: Callable[[], int | None] | None = None) -> None:
        self.stages = stages
        self.tally = tally
        # Whether to ask about interactive work at a boundary; kept across passes.
        self._worth_asking = _WorthAsking(hints)
        self.heartbeat_seconds = max(lease_seconds / 3.0, 0.1)

    def drain(self, *, on_batch: Callable[[TallyT], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> TallyT:
        """Batches until nothing is due (or should_stop); the batches' summed tally."""
        total = self.tally()

        def stopping() -> bool:
            return should_stop is not None and should_stop()

        def done(batch: TallyT) -> None:
            total.add(batch)
            if on_batch is not None:
                on_batch(batch)

        with ThreadPoolExecutor(1, thread_name_prefix="suparag-embedding-db") as db, \
                ThreadPoolExecutor(1, thread_name_prefix="suparag-embedding-urgent",
                                   initializer=self.stages.use_second_connection) as lane:
            beat = _Heartbeat(db, self.stages.renew, self.heartbeat_seconds)
            writing: Future[TallyT] | None = None
            urgent = _Urgent(self.stages, lane, stopping, self._worth_asking)
            try:
                waiting = None if stopping() else db.submit(self.stages.prepare, opening=True)
                while waiting is not None:
                    # Waiting for the next batch (a big claim's read and chunking): the
                    # model is free, so interactive work goes meanwhile.
                    while not waiting.done():
                        urgent.between()
                        wait([waiting], timeout=PATIENCE)
                    batch = waiting.result()
                    if batch is None:
                        break  # nothing due
                    if stopping():  # claimed before the stop: give it back, if it can be
                        released = db.submit(self.stages.release, batch).result()
                        if released is not None:
                            done(released)
                            waiting = None
                            break
                    # Claim the next batch now: it is read and chunked while this one embeds.
                    waiting = None if stopping() else db.submit(self.stages.prepare)

                    def between() -> None:
                        # An interactive batch claimed ahead goes before the rest of a bulk
                        # one; then the question: did an interactive job fall due?
                        nonlocal waiting
                        if waiting is not None and waiting.done():
                            ahead = waiting.result()
                            if ahead is not None and self.stages.urgent(ahead):
                                urgent.take(ahead)
                                waiting = None if stopping() else db.submit(
                                    self.stages.prepare)
                        urgent.between()

                    embedded = self.stages.embed(batch, between)
                    if writing is not None:
                        done(writing.result())
                    for tally in urgent.written(wait=False):
                        done(tally)
                    writing = db.submit(self.stages.finish, batch, embedded)
                if writing is not None:
                    done(writing.result())
                    writing = None
                for tally in urgent.written(wait=True):
                    done(tally)
            finally:
                beat.stop()
                if waiting is not None and not waiting.done():
                    waiting.cancel()
                urgent.close()
        return total


#: Seconds a boundary between two model calls waits for the answer to "is an interactive
#: job due?" (_Urgent.between).
PATIENCE = 0.05

#: With a source of wake-up hints, the longest a drain goes without asking whether an
#: interactive job is due (_WorthAsking): asked at every boundary, about every
#: 0.13 s in a bulk drain on two lanes, the question took 1.3 ms each time (three round
#: trips), the lane that had just finished waiting for it: 0.6% of the model's time
#: (README, "Measured", session 18).
RECHECK_SECONDS = 1.0


class _Urgent(Generic[BatchT, EmbeddedT, TallyT]):
    """Interactive work taken between a batch's model calls (the module docstring)."""

    def __init__(self, stages: Stages[BatchT, EmbeddedT, TallyT], lane: ThreadPoolExecutor,
                 stopping: Callable[[], bool], worth_asking: Callable[[], bool]) -> None:
        # lane: the urgent thread, on the second connection.
        self._stages, self._db, self._stopping = stages, lane, stopping
        self._asking: Future[BatchT | None] | None = None
        self._writing: list[Future[TallyT]] = []
        self._worth_asking = worth_asking

    def between(self) -> None:
        """Ask whether interactive jobs are due and embed them now (the calling thread).

        The answer is awaited for at most PATIENCE: on its own connection the question
        takes about a millisecond, so an edit committed during the model call just ended
        goes before the next one (asked without waiting, it went after it). A question
        still unanswered then (a slow database, an urgent write-back ahead of it on the
        thread) is taken at the next boundary."""
        if self._asking is None and not self._stopping() and self._worth_asking():
            self._asking = self._db.submit(self._stages.prepare_urgent)
        if self._asking is None:
            return
        try:
            batch = self._asking.result(timeout=PATIENCE)
        except TimeoutError:
            return
        self._asking = None
        if batch is not None:
            self.take(batch)

    def take(self, batch: BatchT) -> None:
        """Embed an interactive batch now and have it written back (the calling thread)."""
        embedded = self._stages.embed(batch)  # no nesting: its calls poll nothing
        self._writing.append(self._db.submit(self._stages.finish, batch, embedded))

    def written(self, *, wait: bool) -> list[TallyT]:
        """The tallies of urgent batches written back (all of them, if wait)."""
        if wait and self._asking is not None:
            # A question still out may have claimed jobs: embed and write them too.
            batch, self._asking = self._asking.result(), None
            if batch is not None:
                self._writing.append(
                    self._db.submit(self._stages.finish, batch, self._stages.embed(batch)))
        done = [f for f in self._writing if wait or f.done()]
        self._writing = [f for f in self._writing if f not in done]
        return [f.result() for f in done]

    def close(self) -> None:
        """After an error: wait for the question out, so nothing it claimed is left leased
        without a batch (its lease runs out and another worker takes it)."""
        if self._asking is not None and not self._asking.cancel():
            self._asking.exception()


class _WorthAsking:
    """Whether a boundary should ask if an interactive job is due: always, without a source
    of hints (hints None, or returning None while the source is not connected); with one,
    when a hint came since the question was last asked (an enqueue
    notifies in the transaction that queues the job), or RECHECK_SECONDS after it (a hint
    can be lost)."""

    def __init__(self, hints: Callable[[], int | None] | None) -> None:
        self._hints = hints
        self._hinted: int | None = None  # the hints seen when the question was last asked
        self._asked_at = 0.0

    def __call__(self) -> bool:
        hinted = None if self._hints is None else self._hints()
        if hinted is None:  # no source of hints, or not connected now
            self._hinted = None
            return True
        now = time.monotonic()
        if hinted == self._hinted and now - self._asked_at < RECHECK_SECONDS:
            return False
        self._hinted, self._asked_at = hinted, now
        return True


class _Heartbeat:
    """Renews the leases in flight every interval, through the database thread."""

    def __init__(self, db: ThreadPoolExecutor, renew: Callable[[], None],
                 interval: float) -> None:
        self._stopped = threading.Event()
        self._db = db
        self._renew = renew
        self._thread = threading.Thread(target=self._run, args=(interval,),
                                        name="suparag-lease-heartbeat", daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            try:
                self._db.submit(self._renew)
            except RuntimeError:  # the executor is shutting down
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
