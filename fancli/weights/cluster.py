"""`--cluster ADDRESS`: the pieces `--stats` and `diff` reduce, run on a Dask distributed cluster.

Dask's `distributed.Client` is a `concurrent.futures`-style executor (`submit(fn, *args)` returns a future),
so the very jobs the local pool runs (`stats.reduce_piece`, `diff.diff_job`) are submitted to it, and their
results merged here in the same fixed order: the numbers are identical to `--jobs 1`, bit for bit (on
workers with the same numpy and CPU family). A job carries a data handle (a path and byte offsets, never
the bytes): the workers read the files themselves, so they must see them at the same paths (shared
storage, or the same files copied to each node, e.g. the DCP shards a node wrote), or a URL's filesystem
and byte range (`loaders/remote_io.RemoteRange`: each worker fetches its own ranges from object storage).

dask is an optional extra (`pip install 'dask[distributed]'`), imported only here, only when asked.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from ..errors import SettingsError

#: Seconds to wait for the scheduler before giving up with one line (a typo should not hang CI).
CONNECT_TIMEOUT = 5


def _dask() -> Any:
    try:
        import distributed
    except ModuleNotFoundError:
        raise SettingsError("--cluster needs Dask's distributed scheduler, which is not installed: "
                            "pip install 'dask[distributed]'") from None
    return distributed


@contextlib.contextmanager
def connect(address: Any, workers: int = 1) -> Iterator[Any]:
    """A Client for `address`: `tcp://host:port` (a running scheduler), `local` (a LocalCluster of `workers`
    single-threaded worker processes on this machine, closed afterwards), or an executor object already
    made (a Client, a `concurrent.futures` pool), used as it is."""
    if not isinstance(address, str):
        yield address
        return
    distributed = _dask()
    if address == "local":
        with _local_client(distributed, workers) as client:
            yield client
        return
    _handshake(distributed, address)
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except Exception as error:  # noqa: BLE001 - whatever the far end made Dask raise: it is no scheduler
        raise _unreachable(address, error) from None
    with client:
        yield client


def _unreachable(address: str, error: BaseException) -> SettingsError:
    text = str(error).splitlines()[0] if str(error) else "no answer"
    return SettingsError(f"--cluster {address}: cannot reach a Dask scheduler there ({type(error).__name__}: "
                         f"{text[:200]})")


def _handshake(distributed: Any, address: str) -> None:
    """Dask's handshake with `address`, all of it within CONNECT_TIMEOUT, before a Client is made: Dask
    bounds the TCP connect but then waits for the handshake's reply without a limit (a port that accepts
    and stays silent hung for good), and a port answering anything else makes it raise from deep inside
    (a frame length read from garbage asked for 3 EiB) and print tracebacks from the half-made Client's
    `__del__`. Every failure here is one line, exit 2. Its own event loop in a thread of its own, so that a
    caller already running one (a notebook) can still connect."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    async def greet() -> None:
        comm = await distributed.comm.connect(address, timeout=CONNECT_TIMEOUT)
        await comm.close()

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="fancli-handshake") as thread:
            thread.submit(asyncio.run, asyncio.wait_for(greet(), CONNECT_TIMEOUT)).result()
    except asyncio.TimeoutError:
        raise SettingsError(f"--cluster {address}: cannot reach a Dask scheduler there (no answer in "
                            f"{CONNECT_TIMEOUT} s)") from None
    except Exception as error:  # noqa: BLE001 - MemoryError, ValueError, OSError…: not a scheduler
        raise _unreachable(address, error) from None


@contextlib.contextmanager
def _local_client(distributed: Any, workers: int) -> Iterator[Any]:
    """A Client of a LocalCluster whose workers import nothing from the working directory. Dask spawns each
    worker with `python -c`, which puts the working directory first on sys.path before any import: a folder
    one `cd`s into (a downloaded model's) holding `multiprocessing/__init__.py` would run in every worker. So the
    workers start with PYTHONSAFEPATH=1 (Python 3.11+: no such entry; kept for the workers Dask restarts)
    from an empty private folder (the same on 3.10), and are then moved to the working directory, where
    the relative paths of the files they read lead."""
    import os
    import tempfile

    import dask

    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="fancli-workers-") as empty, \
            dask.config.set({"distributed.nanny.pre-spawn-environ.PYTHONSAFEPATH": "1"}):
        os.chdir(empty)
        try:
            local = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                             dashboard_address=":0", silence_logs=logging.ERROR)
        finally:
            os.chdir(here)
    with local, distributed.Client(local) as client:
        client.run(os.chdir, here)
        yield client
