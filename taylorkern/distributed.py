"""Rows kept on the workers of a Dask cluster: :class:`ShardedData`, accepted by every data call
of :class:`taylorkern.MLP` and by :func:`taylorkern.minimize` in place of X, Y.

The rows are split into shards (the dask array's row chunks) and persisted on the workers
once.  A call then sends one task per shard, carrying the network, theta and, for products, V;
the task evaluates its shard's data term (``reduction="sum"``) with the worker's own fastest
backend, and the shard results are added up by a tree reduction on the workers (``fan_in``
results per task) until at most ``fan_in`` are left, which the client fetches in parallel
and adds: only P-sized or P x P results come back.  The division by the
row count and the l2 term are applied once, here (taylorkern.data.finish).

Faults: shards of dask arrays keep their lineage (the array's graph), so when a worker is lost
the scheduler recomputes them and reruns its tasks.  Numpy shards are scattered once and
have no lineage: the client keeps the arrays (no copy) and sends a lost shard again, then
repeats the call.  Either way the call returns the same values.

Needs ``dask[array]`` and ``distributed`` (``pip install "taylorkern[dask]"``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .data import Data, DataError, accumulate, chunk_error

_RESEND_ATTEMPTS = 3  # numpy shards sent again after lost workers, per call
_LOST = ("cancelled", "lost")  # a scattered future's status once its only copy is gone


def _shard(func, index, first_row, X, Y):
    """One shard's (rows, result); errors name the shard."""
    try:
        return X.shape[0], func(X, Y)
    except Exception as e:
        raise chunk_error(e, index, first_row) from e


def _combine_list(parts):
    # the parts are other tasks' results held by the worker (and read again if this task is
    # rerun): the sum starts from a copy
    return _combine(*parts, copy=True)


def _combine(*parts, copy=False):
    n, total = parts[0][0], accumulate(None, parts[0][1], copy=copy)
    for rows, r in parts[1:]:
        n += rows
        total = accumulate(total, r)
    return n, total


class ShardedData(Data):
    """``(X, Y)`` rows persisted on a Dask cluster's workers, reduced there.

    Parameters
    ----------
    X, Y : dask arrays or numpy arrays
        Inputs (N, d0) and targets ((N, dL) or (N,)), with the same number of rows.  Dask
        arrays keep their row chunks (Y is rechunked to X's) and are persisted on the
        workers; numpy arrays are cut into ``chunk_size`` rows and scattered once (and sent
        again if a worker holding one is lost).
    client : distributed.Client, optional
        Default: the current client (``distributed.default_client()``).
    chunk_size : int, optional
        Rows per shard for numpy inputs: default an even split into one shard per worker.
    fan_in : int
        How many results one reduction task adds up (default 4).
    accumulate : dtype, optional
        The dtype shard results are added up in (default the network's; ``np.float64`` for
        float32 networks that want float64 sums).
    timeout : float, optional
        Seconds a call waits for the cluster before it raises ``TimeoutError`` (default: no
        limit; a lost worker's shards are recomputed or re-sent meanwhile).

    Notes
    -----
    Per-row results (``predict``, ``jacobian``) are refused: only P-sized and P x P results
    come back.  An error in a shard names the shard and its first row; no partial result is
    returned.
    """

    def __init__(self, X, Y, client=None, *, chunk_size=None, fan_in=4, accumulate=None, timeout=None):
        import dask.array as da
        from distributed import default_client, futures_of

        if isinstance(fan_in, bool) or not isinstance(fan_in, numbers.Integral) or fan_in < 2:
            raise ValueError(f"fan_in: expected an integer >= 2, got {fan_in!r}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
                                       or chunk_size < 1):
            raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
        if accumulate is not None:
            accumulate = np.dtype(accumulate)
            if accumulate not in (np.dtype(np.float64), np.dtype(np.float32)):
                raise TypeError(f"accumulate: expected float64 or float32, got {accumulate}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
                                    or not timeout > 0):
            raise ValueError(f"timeout: expected a number of seconds > 0 or None, got {timeout!r}")
        self.timeout = timeout
        self.accumulate = accumulate
        self.client = client if client is not None else default_client()
        self.fan_in = int(fan_in)

        if np.ndim(X) != 2:
            raise ValueError(f"X: expected shape (N, d0), got {np.shape(X)}")
        n = X.shape[0]
        if not isinstance(Y, da.Array):
            Y = np.asarray(Y)
        if Y.ndim not in (1, 2):
            raise ValueError(f"Y: expected shape (N, dL) or (N,), got {Y.shape}")
        if isinstance(n, float) and math.isnan(n):
            raise ValueError("X: the number of rows is unknown (compute the chunk sizes first)")
        if Y.shape[0] != n:
            raise ValueError(f"Y: {Y.shape[0]} rows, but X has {n}")
        if n < 1:
            raise ValueError("X: the source is empty (0 rows)")

        self._source = None
        if not isinstance(X, da.Array) and not isinstance(Y, da.Array):
            # numpy: scattered once; a lost shard is sent again from here (it has no lineage)
            X = np.asarray(X)
            if chunk_size is None:
                workers = max(1, len(self.client.nthreads()))  # every worker, not a summary
                chunk_size = -(-n // workers)
            starts = list(range(0, n, chunk_size))
            self._source = (X, Y, [(a, min(n, a + chunk_size)) for a in starts])
            self._x = self.client.scatter([X[a:b] for a, b in self._source[2]], hash=False)
            self._y = self.client.scatter([Y[a:b] for a, b in self._source[2]], hash=False)
            self._first_rows = starts
        else:
            if not isinstance(X, da.Array):
                X = da.from_array(np.asarray(X), chunks=(chunk_size or Y.chunks[0], -1))
            elif chunk_size is not None:
                X = X.rechunk({0: chunk_size})
            X = X.rechunk({1: -1})
            Y = (Y if isinstance(Y, da.Array) else da.from_array(Y)).rechunk(
                {0: X.chunks[0], **({1: -1} if Y.ndim == 2 else {})})
            X, Y = self.client.persist([X, Y])
            xf = {f.key: f for f in futures_of(X)}
            yf = {f.key: f for f in futures_of(Y)}
            self._x = [xf[k[0]] for k in X.__dask_keys__()]
            self._y = [yf[k[0] if Y.ndim == 2 else k] for k in Y.__dask_keys__()]
            self._first_rows = [int(r) for r in np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]])]
            self._persisted = (X, Y)  # the shards live as long as this object
        self.num_rows = int(n)

    @property
    def num_shards(self) -> int:
        return len(self._x)

    def __repr__(self):
        return f"ShardedData(num_rows={self.num_rows}, num_shards={self.num_shards})"

    def map_sum(self, func):
        for attempt in range(_RESEND_ATTEMPTS + 1):
            try:
                return self._reduce(func)
            except BaseException as e:  # noqa: BLE001 - cancelled futures raise a BaseException
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                self._name_failed_shard(e)
                if attempt == _RESEND_ATTEMPTS or not self._resend_lost():
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _reduce(self, func):
        client, k = self.client, len(self._x)
        # one message to the scheduler per level (client.map), not one per task
        level = client.map(_shard, [func] * k, range(k), self._first_rows, self._x, self._y, pure=False)
        while len(level) > self.fan_in:
            groups = [level[i:i + self.fan_in] for i in range(0, len(level), self.fan_in)]
            level = client.map(_combine_list, groups, pure=False)
        if self.timeout is not None:
            from distributed import wait
            try:
                wait(level, timeout=self.timeout)
            except TimeoutError:
                raise TimeoutError(f"data: no result from the cluster within timeout = {self.timeout:g} s "
                                   f"({len(self._x)} shards)") from None
        # the last fan_in results come here in parallel and are added here (they are this
        # process's own copies): one hop less than fetching a root
        return _combine(*client.gather(level))

    def _name_failed_shard(self, exc):
        """A shard that could not be read (its own task failed) is named."""
        for i, (r, x, y) in enumerate(zip(self._first_rows, self._x, self._y)):
            for f in (x, y):
                if f.status == "error":
                    err = f.exception()
                    raise DataError(f"data: chunk {i} (from row {r}) could not be read: "
                                    f"{type(err).__name__}: {err}") from exc

    def _resend_lost(self):
        """Scatter again the numpy shards whose only copy went with a lost worker; False when
        none was lost (or the shards are dask arrays, which the scheduler recomputes)."""
        if self._source is None:
            return False
        X, Y, bounds = self._source
        lost = [i for i in range(len(bounds))
                if self._x[i].status in _LOST or self._y[i].status in _LOST]
        for i in lost:
            a, b = bounds[i]
            self._x[i] = self.client.scatter(X[a:b], hash=False)
            self._y[i] = self.client.scatter(Y[a:b], hash=False)
        return bool(lost)
