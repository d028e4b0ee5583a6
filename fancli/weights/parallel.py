"""Where pieces of work run: this thread, a local thread pool, or a Dask cluster, with results handed back
in submission order (`ordered`), so that whoever computed them the caller merges in one order."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

#: Below this many bytes to read, a pool costs more than it saves (two threads on 24 tensors of 2 MiB took
#: 36 ms against one's 23 ms; at 64 MiB they break even): read in this thread whatever `jobs` says.
PARALLEL_BYTES = 64 * 1024 * 1024


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    import os

    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def submit(running: Any, fn, *args) -> Any:
    """`running.submit(fn, *args)`; on a Dask Client not `pure` (two equal jobs are still two jobs)."""
    if type(running).__module__.startswith("distributed"):
        return running.submit(fn, *args, pure=False)
    return running.submit(fn, *args)


class Inline:
    """An executor that runs each job when its result is asked for (`jobs=1`): one task in memory."""

    class _Later:
        def __init__(self, fn, args) -> None:
            self.fn, self.args = fn, args

        def result(self):
            return self.fn(*self.args)

    def submit(self, fn, *args):
        return self._Later(fn, args)


@contextlib.contextmanager
def executor(jobs: int | None, cluster: Any, count: int, nbytes: int) -> Iterator[tuple[Any, int | None]]:
    """Where jobs run, and how many may be submitted ahead of the one being merged: a cluster's Client (all
    at once: its scheduler spreads them), a local pool (a few per worker, so memory stays bounded), or this
    thread one job at a time (`jobs=1`, a single job, or less than PARALLEL_BYTES to read)."""
    if cluster is not None:
        from .cluster import connect

        with connect(cluster, usable_cores()) as client:
            yield client, None
        return
    workers = usable_cores() if jobs is None else jobs
    if workers > 1 and count > 1 and nbytes >= PARALLEL_BYTES:
        with pool(min(workers, count)) as running:
            yield running, 2 * workers
        return
    yield Inline(), 1


def ordered(running: Any, window: int | None, fn, arguments: list[tuple]) -> Iterator[Any]:
    """`fn(*args)` for each args, submitted to `running` in order at most `window` ahead of the result being
    yielded (None: all at once), the results yielded in order: whoever ran them, the caller merges in one order."""
    from collections import deque

    queue: deque = deque()
    pending = iter(arguments)
    while True:
        while window is None or len(queue) < window:
            args = next(pending, None)
            if args is None:
                break
            queue.append(submit(running, fn, *args))
        if not queue:
            return
        yield queue.popleft().result()


def pool(workers: int):
    """The local pool pieces run in: threads, chosen by measurement on the 1.6 GB `.pt` (24 × 64 MiB fp32) on
    this project's 2-core machine, the same pieces through `ThreadPoolExecutor(2)`, `ProcessPoolExecutor(2)`
    with spawn and with forkserver, and one thread, each a fresh process, three rounds:

    - wall: one thread 0.78–0.79 s, threads 0.76–0.79 s, spawn 1.03–1.06 s, forkserver 0.78–1.00 s;
    - CPU (user + sys, children included): one thread 0.97–0.99 s, threads 0.93–0.98 s, spawn 1.26–1.32 s.

    Processes cost ~0.3 s more CPU (two interpreters importing numpy and fancli, every piece pickled) and
    gained nothing. numpy releases the GIL in the copy, sum, dot product and min/max of each 64 Ki-element
    block, and the read releases it too: a second thread waits for a free core, not for the GIL (its
    /proc schedstat shows it runnable, not asleep). That machine rarely had a second core free (two
    *processes* summing in cache each took twice their time alone), so neither pool showed the 2× it
    would on idle cores; threads then cost least, need no `if __name__ == "__main__"` in a library caller,
    and share the process's memory (no piece or result is pickled)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers, thread_name_prefix="fancli-stats")
