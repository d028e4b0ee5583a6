"""`--cluster ADDRESS`: the pieces `--stats` and `diff` reduce, run on a Dask distributed cluster.

Dask's `distributed.Client` is a `concurrent.futures`-style executor (`submit(fn, *args)` returns a future),
so the very jobs the local pool runs (`stats.reduce_piece`, `diff.diff_job`) are submitted to it, and their
results merged here in the same fixed order: the numbers are identical to `--jobs 1`, bit for bit (on
workers with the same numpy and CPU family). A job carries a data handle (a path and byte offsets, never
the bytes): the workers read the files themselves, so they must see them at the same paths (shared
storage, or the same files copied to each node, e.g. the DCP shards a node wrote).

dask is an optional extra (`pip install 'fancli-init[dask]'`), imported only here, only when asked.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from .errors import DISTRIBUTION, SettingsError

#: Seconds to wait for the scheduler before giving up with one line (a typo should not hang CI).
CONNECT_TIMEOUT = 5


def _dask() -> Any:
    try:
        import distributed
    except ModuleNotFoundError:
        raise SettingsError(f"--cluster needs Dask's distributed scheduler, which is not installed: "
                            f"pip install '{DISTRIBUTION}[dask]'") from None
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
        local = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                         dashboard_address=":0", silence_logs=logging.ERROR)
        with local, distributed.Client(local) as client:
            yield client
        return
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as error:
        raise SettingsError(f"--cluster {address}: cannot reach a Dask scheduler there "
                            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no answer'})")\
            from None
    with client:
        yield client
