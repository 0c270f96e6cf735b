"""Rows kept on the workers of a Dask cluster: :class:`ShardedData`, accepted by every data call
of :class:`taylorkern.MLP` and by :func:`taylorkern.minimize` in place of X, Y.

The rows are split into shards (the dask array's row chunks, or whole storage chunks of a zarr
array or h5py dataset, which the workers read themselves) and persisted on the workers once.
At the first call the shards are cut into groups, one per worker thread, each of shards held
by one worker.  A call then sends one task per group, carrying the network, theta and, for
products, V; the task evaluates its shards' data terms (``reduction="sum"``) with the worker's
own fastest backend and adds them up.  Its result is one flat numpy array (the row count, the
numbers, the arrays, a symmetric P x P matrix by its upper triangle), which Dask moves as a
buffer rather than pickling it.  Groups are added up by a tree reduction on the workers
(``fan_in`` results per task) until at most ``fan_in`` are left, which the client fetches in
parallel straight from the workers and adds: only P-sized or P x P results come back.  The
division by the row count and the l2 term are applied once, here (taylorkern.data.finish).

Faults: shards of dask arrays keep their lineage (the array's graph), so when a worker is lost
the scheduler recomputes them and reruns its tasks.  Numpy shards are scattered once and
have no lineage: the client keeps the arrays (no copy) and sends a lost shard again, then
repeats the call.  Either way the call returns the same values.

Needs ``dask[array]`` and ``distributed`` (``pip install "taylorkern[dask]"``).
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from .data import Data, DataError, accumulate, chunk_error, storage_row_chunk

_RESEND_ATTEMPTS = 3  # numpy shards sent again after lost workers, per call
_LOST = ("cancelled", "lost")  # a scattered future's status once its only copy is gone


@functools.lru_cache(maxsize=4)
def _upper(n):
    """The upper triangle of an n x n matrix as a boolean mask: indexing with it reads and
    writes the triangle row by row, in one call."""
    return np.triu(np.ones((n, n), dtype=bool))


class _Flat:
    """A chunk result of known structure (``ChunkSum.layout``) as one flat array, which Dask
    moves out of band (a numpy array at the top level of a task result is sent as its buffer,
    not pickled).  The first 8-byte words hold the row count (int64) and the numbers (float64,
    as the chunk sums add them); then the arrays in the accumulation dtype, a symmetric P x P
    matrix by its upper triangle, row by row."""

    def __init__(self, container, parts, dtype):
        self.container, self.parts, self.dtype = container, parts, np.dtype(dtype)
        self.words = 1 + sum(1 for shape, _ in parts if shape == ())
        self.head = self.words * 8 // self.dtype.itemsize  # elements of the 8-byte words
        self.size = self.head + sum(shape[0] * (shape[0] + 1) // 2 if sym else math.prod(shape)
                                    for shape, sym in parts if shape != ())

    def add(self, out, rows, result):
        """``result`` of ``rows`` rows packed into a new flat array (``out`` None) or added to
        ``out``."""
        parts = [result] if self.container is None else list(result)
        if len(parts) != len(self.parts):
            raise TypeError(f"data: a chunk result has {len(parts)} parts, expected {len(self.parts)}")
        new = out is None
        if new:
            out = np.empty(self.size, self.dtype)
        words = out[:self.head].view(np.int64), out[:self.head].view(np.float64)
        words[0][0] = rows if new else words[0][0] + rows
        w, o = 1, self.head
        for (shape, sym), r in zip(self.parts, parts):
            if shape == ():
                words[1][w] = float(r) if new else words[1][w] + float(r)
                w += 1
                continue
            r = np.asarray(r)
            if r.shape != shape:
                raise ValueError(f"data: a chunk result of shape {r.shape}, expected {shape}")
            if sym:
                upper = _upper(shape[0])
                seg = out[o:o + upper.sum(dtype=np.int64)]
                if new:
                    seg[...] = r[upper]
                else:
                    seg += r[upper]
                o += seg.size
            else:
                seg = out[o:o + r.size]
                if new:
                    seg[...] = r.reshape(-1)
                else:
                    seg += r.reshape(-1)
                o += r.size
        return out

    def combine(self, bufs):
        """The sum of flat arrays (the first copied: the others are other tasks' results)."""
        out = np.array(bufs[0], dtype=self.dtype)
        ints, floats = out[:self.head].view(np.int64), out[:self.head].view(np.float64)
        for b in bufs[1:]:
            b = np.asarray(b)
            ints[0] += b[:self.head].view(np.int64)[0]
            floats[1:] += b[:self.head].view(np.float64)[1:]
            out[self.head:] += b[self.head:]
        return out

    def unpack(self, buf):
        """(rows, result) from a flat array; the arrays are new, symmetric ones filled from the
        triangle in place."""
        rows = int(buf[:self.head].view(np.int64)[0])
        floats = buf[:self.head].view(np.float64)
        parts, w, o = [], 1, self.head
        for shape, sym in self.parts:
            if shape == ():
                parts.append(float(floats[w]))
                w += 1
            elif sym:
                upper = _upper(shape[0])
                tri = buf[o:o + upper.sum(dtype=np.int64)]
                A = np.empty(shape, self.dtype)
                A[upper] = tri
                A.T[upper] = tri  # the lower triangle, mirrored
                o += tri.size
                parts.append(A)
            else:
                size = math.prod(shape)
                parts.append(buf[o:o + size].reshape(shape).copy())
                o += size
        return rows, (parts[0] if self.container is None else self.container(parts))


def _group(func, flat, indices, first_rows, xs, ys):
    """The sum over shards ``indices`` (in this order) of func(X, Y): a flat array (``flat``
    given) or (rows, total).  Errors name the shard."""
    total = None
    for index, first_row, X, Y in zip(indices, first_rows, xs, ys):
        try:
            r = func(X, Y)
        except Exception as e:
            raise chunk_error(e, index, first_row) from e
        if flat is not None:
            total = flat.add(total, X.shape[0], r)
        elif total is None:
            total = (X.shape[0], accumulate(None, r))
        else:
            total = (total[0] + X.shape[0], accumulate(total[1], r))
    return total


def _combine(flat, parts):
    # the parts are other tasks' results held by the worker (and read again if this task is
    # rerun): the sum starts from a copy
    if flat is not None:
        return flat.combine(parts)
    n, total = parts[0][0], accumulate(None, parts[0][1], copy=True)
    for rows, r in parts[1:]:
        n += rows
        total = accumulate(total, r)
    return n, total


class ShardedData(Data):
    """``(X, Y)`` rows persisted on a Dask cluster's workers, reduced there.

    Parameters
    ----------
    X, Y : dask arrays, zarr arrays, h5py datasets or numpy arrays
        Inputs (N, d0) and targets ((N, dL) or (N,)), with the same number of rows.  Dask
        arrays keep their row chunks (Y is rechunked to X's) and are persisted on the
        workers; a zarr array or chunked h5py dataset X is read by the workers themselves, in
        shards of whole storage chunks (``chunk_size`` rounded up to them), and read again
        from the store if a worker is lost (the store must be reachable from the workers);
        numpy arrays are cut into ``chunk_size`` rows and scattered once (and sent again if a
        worker holding one is lost).
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
    direct : bool
        Fetch the last partial sums straight from the workers that hold them (default), not
        through the scheduler; False where the client cannot reach the workers.

    Notes
    -----
    Per-row results (``predict``, ``jacobian``) are refused: only P-sized and P x P results
    come back.  An error in a shard names the shard and its first row; no partial result is
    returned.
    """

    def __init__(self, X, Y, client=None, *, chunk_size=None, fan_in=4, accumulate=None, timeout=None,
                 direct=True):
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
        if not isinstance(direct, bool):
            raise TypeError(f"direct: expected True or False, got {direct!r}")
        self.timeout = timeout
        self.direct = direct
        self.accumulate = accumulate
        self.client = client if client is not None else default_client()
        self.fan_in = int(fan_in)

        if np.ndim(X) != 2:
            raise ValueError(f"X: expected shape (N, d0), got {np.shape(X)}")
        n = X.shape[0]
        if not isinstance(Y, da.Array) and storage_row_chunk(Y) is None:
            Y = np.asarray(Y)
        if len(Y.shape) not in (1, 2):
            raise ValueError(f"Y: expected shape (N, dL) or (N,), got {Y.shape}")
        if isinstance(n, float) and math.isnan(n):
            raise ValueError("X: the number of rows is unknown (compute the chunk sizes first)")
        if Y.shape[0] != n:
            raise ValueError(f"Y: {Y.shape[0]} rows, but X has {n}")
        if n < 1:
            raise ValueError("X: the source is empty (0 rows)")

        for a, name in ((X, "X"), (Y, "Y")):
            f = getattr(a, "file", None)
            if type(a).__module__.startswith("h5py") and getattr(f, "mode", "r") != "r":
                raise ValueError(f"{name}: the workers open an h5py dataset's file themselves, "
                                 "which needs it opened read-only here (h5py.File(path, 'r'))")
        self._source = None
        stored = storage_row_chunk(X)
        if stored is not None and not isinstance(X, da.Array):
            # zarr, h5py: the workers read their shards from the store (whole storage chunks),
            # which is also where a lost shard is read again from
            if chunk_size is None:
                workers = max(1, len(self.client.nthreads()))
                chunk_size = -(-n // workers)
            rows = -(-chunk_size // stored) * stored  # up to whole storage chunks
            X = da.from_array(X, chunks=(rows, -1), name=False)
            if not isinstance(Y, da.Array):
                Y = da.from_array(Y, chunks=(rows,) + ((-1,) if Y.ndim == 2 else ()), name=False)
            chunk_size = None
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
        self._groups = None  # fixed at the first call, when the shards are on the workers

    def _group_by_worker(self):
        """The shards cut into one group per worker thread, each of shards held by one worker
        (in index order): a call sends one task per group, which adds its shards' results
        on that worker.  Fixed once, so that the order of the additions (and so the result, to
        the last bit) does not depend on where the shards are later, after a worker is lost."""
        self._wait(self._x + self._y)
        who = self.client.who_has(self._x)
        nthreads = self.client.nthreads()
        by_worker = {}
        for i, f in enumerate(self._x):
            holders = sorted(who.get(f.key, ())) or [None]
            by_worker.setdefault(holders[0], []).append(i)
        groups = []
        for w, idx in by_worker.items():
            k = max(1, min(len(idx), nthreads.get(w, 1)))
            groups += [list(part) for part in np.array_split(idx, k)]
        return sorted(([int(i) for i in g] for g in groups), key=lambda g: g[0])

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
        client = self.client
        layout = getattr(func, "layout", None)
        flat = _Flat(*layout(), func.dtype) if layout is not None else None
        if self._groups is None:
            self._groups = self._group_by_worker()
        g = self._groups
        # one task per group, submitted together (client.map: one message to the scheduler)
        level = first = client.map(_group, [func] * len(g), [flat] * len(g), g,
                                   [[self._first_rows[i] for i in idx] for idx in g],
                                   [[self._x[i] for i in idx] for idx in g],
                                   [[self._y[i] for i in idx] for idx in g], pure=False)
        while len(level) > self.fan_in:
            parts = [level[i:i + self.fan_in] for i in range(0, len(level), self.fan_in)]
            level = client.map(_combine, [flat] * len(parts), parts, pure=False)
        if self.timeout is not None:
            self._wait(level)
        # the last fan_in results come here in parallel, straight from the workers that hold
        # them (direct), and are added here: one hop less than fetching a root
        try:
            results = client.gather(level, direct=self.direct)
        except Exception:
            self._raise_first_failure(first)
            raise
        if flat is None:
            return _combine(None, results)
        return flat.unpack(flat.combine(results) if len(results) > 1 else results[0])

    def _wait(self, futures):
        from distributed import wait
        if self.timeout is None:
            wait(futures)
            return
        try:
            wait(futures, timeout=self.timeout)
        except TimeoutError:
            raise TimeoutError(f"data: no result from the cluster within timeout = {self.timeout:g} s "
                               f"({len(self._x)} shards)") from None

    def _raise_first_failure(self, groups):
        """Raise the error of the first failing group in chunk order.  Several groups can fail
        (data of the wrong width fails each), and gather raises whichever failure reached this
        process first, so the chunk an error names would otherwise change from run to run."""
        from distributed import wait
        try:
            wait(groups, timeout=self.timeout)
        except TimeoutError:
            return
        for f in groups:  # sorted by first chunk (_group_by_worker)
            if f.status == "error":
                raise f.exception() from None

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
