"""Data that does not sit in one in-memory array: a source of (X, Y) chunks that every data
call of :class:`taylorkern.MLP` (and :func:`taylorkern.minimize`) takes in place of X, Y.

Every quantity is a sum over samples.  A data object evaluates each chunk with the very call
of the in-memory path and ``reduction="sum"``, adds the chunk results up (loss, gradient,
products, P x P matrices, blocks, diagonals), and only at the end divides by the total row
count and adds the l2 term, so the results equal the in-memory ones up to summation order.

:class:`Batches` reads its chunks one after the other on this machine (a list of pairs, a
function returning a fresh iterator, or row slices of arrays such as numpy memmaps, zarr or
dask arrays), keeping one chunk in memory at a time.  ``taylorkern.distributed.ShardedData``
keeps the rows on the workers of a Dask cluster and reduces there.  Both derive from
:class:`Data`, the one type :class:`taylorkern.MLP` recognises.

Index letters: N rows (all chunks), P parameters, m directions.
"""

from __future__ import annotations

import functools
import inspect
import numbers

import numpy as np

SUM_KINDS = ("loss", "loss_and_grad", "loss_grad_ggn", "hvp", "ggn_vp", "hessian", "ggn",
             "hessian_blocks", "ggn_blocks", "hessian_diag", "ggn_diag")
ROW_KINDS = ("predict", "jacobian")
PRODUCTS = ("hvp", "ggn_vp")
DEFAULT_CHUNK_ROWS = 1 << 16


class DataError(ValueError):
    """A chunk of a data source could not be read or evaluated; the message names the chunk."""


# ------------------------------------------------------------------ per-chunk work
def chunk_sum(net, kind, theta, X, Y, V=None):
    """One chunk's data term of ``kind`` (``reduction="sum"``: no 1/N, no l2), computed by the
    network's own public call on the chunk's arrays (which checks them)."""
    fn = getattr(net, kind)
    if kind in PRODUCTS:
        return fn(theta, X, Y, V, reduction="sum")
    return fn(theta, X, Y, reduction="sum")


def accumulate(total, part, dtype=None, copy=False):
    """``total + part`` for a chunk result (float, array, or tuple/list of them); ``total``
    None starts a new sum from ``part`` itself (converted to ``dtype`` where it differs, copied
    when ``copy``).  Arrays of ``total`` are updated in place, so a sum starts without a copy
    only from a result its caller owns (a fresh result of an MLP call)."""
    if isinstance(part, (tuple, list)):
        if total is None:
            return type(part)(accumulate(None, p, dtype, copy) for p in part)
        return type(part)(accumulate(t, p, dtype) for t, p in zip(total, part))
    if isinstance(part, np.ndarray):
        if total is None:
            return (np.array if copy else np.asarray)(part, dtype=dtype or part.dtype)
        total += part
        return total
    return float(part) if total is None else total + float(part)


def _scale(x, s):
    if isinstance(x, (tuple, list)):
        return type(x)(_scale(v, s) for v in x)
    if isinstance(x, np.ndarray):
        x *= s
        return x
    return x * s


def _cast(x, dtype):
    if isinstance(x, (tuple, list)):
        return type(x)(_cast(v, dtype) for v in x)
    if isinstance(x, np.ndarray):
        return x.astype(dtype, copy=False)
    return float(x)


def finish(net, kind, total, n, theta, V=None, reduction="mean"):
    """The summed data term ``total`` over ``n`` rows as the in-memory call returns it: divided
    by n and with the l2 term for ``reduction="mean"``, in the network's dtype."""
    if reduction == "mean":
        total = _scale(total, 1.0 / n)
        l2 = net.l2
        if l2 > 0.0:
            t = np.asarray(theta, dtype=np.float64)
            if kind == "loss":
                total = total + 0.5 * l2 * float(t @ t)
            elif kind in ("loss_and_grad", "loss_grad_ggn"):
                grad = total[1]
                grad += (l2 * t).astype(grad.dtype)
                if kind == "loss_grad_ggn":
                    total[2].flat[::total[2].shape[0] + 1] += l2
                total = (total[0] + 0.5 * l2 * float(t @ t),) + tuple(total[1:])
            elif kind in PRODUCTS:
                total += (l2 * np.asarray(V, dtype=np.float64)).astype(total.dtype)
            elif kind.endswith("_diag"):
                total += l2
            else:
                for B in total if isinstance(total, list) else [total]:
                    B.flat[::B.shape[0] + 1] += l2
    return _cast(total, net.dtype)


def chunk_error(exc, index, first_row):
    """``exc`` from evaluating chunk ``index`` as the same kind of error, naming the chunk."""
    where = f"data: chunk {index} (from row {first_row})" if first_row is not None else f"data: chunk {index}"
    msg = f"{where}: {exc}"
    if isinstance(exc, (ValueError, TypeError, MemoryError)):
        try:
            return type(exc)(msg)
        except Exception:  # an exception type with another constructor
            pass
    return DataError(f"{msg} ({type(exc).__name__})")


def _rows(a):
    s = getattr(a, "shape", None)
    s = s if s is not None else np.shape(a)
    return int(s[0]) if len(s) else None


# ------------------------------------------------------------------ the data objects
class Data:
    """What :class:`taylorkern.MLP`'s data calls accept in place of ``X, Y``.

    Subclasses provide ``map_sum(func)``: ``func(X, Y)`` applied to every chunk and the results
    added up, returning ``(rows, total)``; ``gather(func)`` (optional): the results
    concatenated by rows.  ``num_rows`` is the row count, or None until a pass has counted it.
    """

    num_rows = None
    accumulate = None

    def map_sum(self, func):  # pragma: no cover - abstract
        raise NotImplementedError

    def gather(self, func):
        raise TypeError(f"X: {type(self).__name__} does not return per-row results "
                        "(predict, jacobian); only P-sized and P x P ones")

    def evaluate(self, net, kind, theta, V=None, reduction="mean"):
        """``kind`` (one of ``SUM_KINDS``) over all rows, equal to the in-memory call on the
        concatenated rows up to summation order."""
        if kind not in SUM_KINDS:
            raise ValueError(f"kind: expected one of {SUM_KINDS}, got {kind!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        theta = _check_theta(net, theta)
        if kind in PRODUCTS:
            V = _check_V(net, V)
        # the chunk's call checks its own result and workspace; the running sum is one more
        # result: refused here, before any chunk is read or sent (MLP's own check and message)
        P = net.num_params
        if kind in ("hessian", "ggn", "loss_grad_ggn"):
            net._check_memory(f"{kind} over a data object", 3.0 * P * P)
        elif kind.endswith("_blocks"):
            net._check_memory(f"{kind} over a data object", 3.0 * sum(q * q for q in net.layer_sizes))
        acc = self.accumulate or net.dtype
        n, total = self.map_sum(ChunkSum(net, kind, theta, V, acc))
        return finish(net, kind, total, n, theta, V, reduction)

    def call(self, net, kind, theta, Y, args, kwargs):
        """An MLP method ``kind`` called as ``method(theta, data, ...)``: binds the rest of the
        arguments (V for products, reduction) and evaluates."""
        args = list(args)
        if kind not in SUM_KINDS + ROW_KINDS:
            raise TypeError(f"X: {kind} takes arrays X, Y, not a data object")
        if kwargs.get("sample_weight", 0) is None:  # the default, passed on by tk.minimize
            kwargs = {k: v for k, v in kwargs.items() if k != "sample_weight"}
        if kind in ROW_KINDS:
            if args or kwargs:
                raise TypeError(f"{kind}: unexpected arguments with a data object")
            return self.gather(functools.partial(_row_result, net, kind, _check_theta(net, theta)))
        V = None
        if kind in PRODUCTS:
            V = Y if Y is not None else (args.pop(0) if args else kwargs.pop("V", None))
            if V is None:
                raise TypeError(f"V: missing; call {kind}(theta, data, V)")
        elif Y is not None:
            if not isinstance(Y, str):
                raise TypeError("Y: not taken with a data object, which holds the targets; "
                                f"call {kind}(theta, data)")
            args.insert(0, Y)  # reduction given positionally
        reduction = args.pop(0) if args else kwargs.pop("reduction", "mean")
        if args or kwargs:
            extra = ", ".join(sorted(kwargs)) or f"{len(args)} positional"
            raise TypeError(f"{extra}: not supported by {kind} with a data object")
        return self.evaluate(net, kind, theta, V, reduction)


class ChunkSum:
    """``func(X, Y)`` of :meth:`Data.evaluate`: one chunk's data term of ``kind``, its arrays in
    ``dtype``.  :meth:`layout` describes the result's structure, so that a data object may move
    it as one flat array (taylorkern.distributed)."""

    def __init__(self, net, kind, theta, V, dtype):
        self.net, self.kind, self.theta, self.V, self.dtype = net, kind, theta, V, np.dtype(dtype)

    def __call__(self, X, Y):
        return accumulate(None, chunk_sum(self.net, self.kind, self.theta, X, Y, self.V), self.dtype)

    def layout(self):
        """(container, parts): container None (a single part), tuple or list; each part
        ``(shape, symmetric)``, shape () for a number (a Python float)."""
        P, kind = self.net.num_params, self.kind
        if kind == "loss":
            return None, [((), False)]
        if kind == "loss_and_grad":
            return tuple, [((), False), ((P,), False)]
        if kind == "loss_grad_ggn":
            return tuple, [((), False), ((P,), False), ((P, P), True)]
        if kind in PRODUCTS:
            return None, [(tuple(np.shape(self.V)), False)]
        if kind in ("hessian", "ggn"):
            return None, [((P, P), True)]
        if kind.endswith("_blocks"):
            return list, [((q, q), True) for q in self.net.layer_sizes]
        return None, [((P,), False)]  # the diagonals


def _row_result(net, kind, theta, X, Y):
    return getattr(net, kind)(theta, X)


def _check_theta(net, theta):
    net.unflatten(theta)  # the network's own shape and dtype checks
    return np.asarray(theta)


def _check_V(net, V):
    if V is None:
        raise TypeError("V: missing")
    shape = np.shape(V)
    P = net.num_params
    if len(shape) not in (1, 2) or shape[0] != P or (len(shape) == 2 and shape[1] < 1):
        raise ValueError(f"V: expected shape ({P},) or ({P}, m) with m >= 1, got {tuple(shape)}")
    return np.asarray(V)


class Batches(Data):
    """Re-iterable ``(X, Y)`` chunks, read one at a time on this machine.

    Parameters
    ----------
    source : list of (X, Y) pairs, callable, or array
        * a list (or tuple) of ``(X, Y)`` pairs;
        * a function of no arguments returning a new iterator of ``(X, Y)`` pairs (a
          generator function), called once per pass over the data;
        * an array of inputs, ``X``, with ``Y`` given: anything sliced by rows into numpy
          arrays (numpy arrays and memmaps, zarr, h5py or dask arrays).
    Y : array, optional
        The targets when ``source`` is ``X``; the same number of rows.
    chunk_size : int, optional
        Rows per chunk when slicing arrays: default a dask array's own row chunks, else 65536.
        For zarr arrays and chunked h5py datasets it is rounded down to a whole number of
        storage chunks (at least one), so that each read decompresses every storage chunk it
        touches once.  The last chunk may be shorter.
    accumulate : dtype, optional
        The dtype the chunk results are added up in: default the network's;
        ``np.float64`` for float32 networks that want float64 sums.  Results have the
        network's dtype either way.

    Notes
    -----
    A one-shot iterator (a generator object) is refused: every call reads all chunks again,
    so the source must be re-iterable.  Each chunk is checked by the network's own call; an
    error names the chunk, and no partial result is returned.  Peak memory is one chunk,
    its workspace and the result being accumulated.

    Examples
    --------
    >>> data = tk.Batches(np.load("X.npy", mmap_mode="r"), np.load("Y.npy", mmap_mode="r"),
    ...                   chunk_size=50_000)                                # doctest: +SKIP
    >>> G = net.ggn(theta, data)                                            # doctest: +SKIP
    """

    def __init__(self, source, Y=None, *, chunk_size=None, accumulate=None):
        if accumulate is not None:
            try:
                accumulate = np.dtype(accumulate)
            except TypeError:
                raise TypeError(f"accumulate: expected a float dtype, got {accumulate!r}") from None
            if accumulate not in (np.dtype(np.float64), np.dtype(np.float32)):
                raise TypeError(f"accumulate: expected float64 or float32, got {accumulate}")
        self.accumulate = accumulate
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
                                       or chunk_size < 1):
            raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
        self._arrays = self._factory = self._pairs = None
        if Y is not None:
            n, ny = _rows(source), _rows(Y)
            if n is None:
                raise ValueError("X: expected an array of shape (N, d0)")
            if ny != n:
                raise ValueError(f"Y: {ny} rows, but X has {n}")
            if n < 1:
                raise ValueError("X: the source is empty (0 rows)")
            stored = storage_row_chunk(source)
            if stored is not None:  # zarr, h5py: whole storage chunks per read
                chunk_size = aligned_rows(chunk_size or DEFAULT_CHUNK_ROWS, stored)
            elif chunk_size is None:
                chunk_size = _native_row_chunks(source) or DEFAULT_CHUNK_ROWS
            self._arrays = (source, Y)
            self.chunk_size = chunk_size
            self.num_rows = n
        elif chunk_size is not None:
            raise ValueError("chunk_size: only used when slicing arrays, Batches(X, Y, chunk_size=...)")
        elif isinstance(source, (list, tuple)):
            if not source:
                raise ValueError("source: empty (no chunks)")
            for i, pair in enumerate(source):
                _check_pair(pair, i)
            self._pairs = list(source)
            rows = [_rows(p[0]) for p in self._pairs]
            self.num_rows = sum(rows) if None not in rows else None
        elif callable(source):
            self._factory = source
        elif hasattr(source, "__next__"):
            raise TypeError("source: a one-shot iterator cannot be read again; pass a function "
                            "returning a new iterator (e.g. the generator function itself)")
        else:
            raise TypeError(f"source: expected a list of (X, Y) pairs, a function returning an "
                            f"iterator of them, or an array X with Y; got {type(source).__name__}")

    def __repr__(self):
        return f"Batches(num_rows={self.num_rows})"

    def _chunks(self):
        if self._pairs is not None:
            yield from self._pairs
        elif self._arrays is not None:
            X, Y = self._arrays
            bounds = self.chunk_size if isinstance(self.chunk_size, tuple) else None
            start = 0
            i = 0
            while start < self.num_rows:
                step = bounds[i] if bounds is not None else self.chunk_size
                yield np.asarray(X[start:start + step]), np.asarray(Y[start:start + step])
                start += step
                i += 1
        else:
            it = self._factory()
            if not hasattr(it, "__next__"):
                try:
                    it = iter(it)
                except TypeError:
                    raise TypeError(f"source: the function returned {type(it).__name__}, "
                                    "not an iterator of (X, Y) pairs") from None
            yield from it

    def _each(self, func):
        """(index, first row, rows, func(X, Y)) for every chunk; errors name the chunk."""
        it = self._chunks()
        i = row = 0
        while True:
            try:
                pair = next(it)
            except StopIteration:
                break
            except Exception as e:
                raise DataError(f"data: reading chunk {i} (from row {row}) failed: "
                                f"{type(e).__name__}: {e}") from e
            X, Y = _check_pair(pair, i)
            try:
                r = func(X, Y)
            except Exception as e:
                raise chunk_error(e, i, row) from e
            n = _rows(X)
            yield i, row, n, r
            i += 1
            row += n
        if i == 0:
            raise ValueError("source: empty (it yielded no chunks)")

    def map_sum(self, func):
        total, n = None, 0
        for _, _, rows, r in self._each(func):
            total = accumulate(total, r)
            n += rows
        self.num_rows = n
        return n, total

    def gather(self, func):
        parts, n = [], 0
        for _, _, rows, r in self._each(func):
            parts.append(r)
            n += rows
        self.num_rows = n
        return np.concatenate(parts, axis=0)


def _check_pair(pair, i):
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"data: chunk {i}: expected an (X, Y) pair, got {type(pair).__name__}")
    return pair


def storage_row_chunk(X):
    """Rows per storage chunk of a zarr array (per shard where it has shards) or a chunked h5py
    dataset; None for other arrays (numpy, dask, contiguous h5py datasets)."""
    for attr in ("shards", "chunks"):
        chunks = getattr(X, attr, None)
        if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], numbers.Integral) and chunks[0] > 0:
            return int(chunks[0])
    return None


def aligned_rows(rows, stored):
    """``rows`` rounded down to a multiple of ``stored`` rows (at least ``stored``), so that
    every read covers whole storage chunks."""
    return max(1, int(rows) // stored) * stored


def _native_row_chunks(X):
    """The row chunking of a dask array (a tuple of sizes) or a zarr array (an int), if any."""
    chunks = getattr(X, "chunks", None)
    if not chunks:
        return None
    first = chunks[0]
    if isinstance(first, tuple):
        return tuple(int(c) for c in first) if all(c > 0 for c in first) else None
    return int(first) if isinstance(first, numbers.Integral) and first > 0 else None


def accepting(method, kind):
    """``method`` of MLP, also taking a :class:`Data` object in place of ``X, Y``
    (``method(theta, data, ...)``).  The wrappers of the usual signatures name their
    parameters: on a network of a few dozen parameters, ``*args, **kwargs`` cost 0.2-0.3 us of a
    7 us call (bench/RESULTS.md)."""
    params = tuple(inspect.signature(method).parameters)[1:]
    if kind in ROW_KINDS and params == ("theta", "X"):
        @functools.wraps(method)
        def rows_call(self, theta, X):
            if isinstance(X, Data):
                return X.call(self, kind, theta, None, (), {})
            return method(self, theta, X)
        return rows_call

    if params == ("theta", "X", "Y", "reduction", "sample_weight"):
        @functools.wraps(method)
        def data_call(self, theta, X, Y=None, reduction="mean", sample_weight=None):
            if isinstance(X, Data):  # Y, if given, is the reduction, positional
                kw = {"sample_weight": sample_weight}
                if Y is None or reduction != "mean":
                    kw["reduction"] = reduction
                return X.call(self, kind, theta, Y, (), kw)
            if Y is None:
                raise _missing_y(kind)
            return method(self, theta, X, Y, reduction, sample_weight)
        return data_call

    if params == ("theta", "X", "Y", "V", "reduction", "sample_weight"):
        @functools.wraps(method)
        def product_call(self, theta, X, Y=None, V=None, reduction="mean", sample_weight=None):
            if isinstance(X, Data):  # V in Y's place, and the reduction in V's, if positional
                kw = {"sample_weight": sample_weight}
                if reduction != "mean":
                    kw["reduction"] = reduction
                return X.call(self, kind, theta, Y, () if V is None else (V,), kw)
            if Y is None:
                raise _missing_y(kind)
            if V is None:
                raise TypeError(f"V: missing; call {kind}(theta, X, Y, V)")
            return method(self, theta, X, Y, V, reduction, sample_weight)
        return product_call

    raise TypeError(f"accepting: {kind}{params} has none of the signatures a data object can take")


def _missing_y(kind):
    return TypeError(f"Y: missing; call {kind}(theta, X, Y, ...) or pass a data object "
                     "(tk.Batches, taylorkern.distributed.ShardedData) in place of X, Y")


def accepting_trusted(method):
    """MLP._trusted(kind, theta, X, Y, reduction) routed to a :class:`Data` object's sum."""
    @functools.wraps(method)
    def call(self, kind, theta, X, Y, reduction="mean", sample_weight=None):
        if isinstance(X, Data):
            if sample_weight is not None:
                raise TypeError("sample_weight: not supported with a data object")
            return X.evaluate(self, kind, theta, reduction=reduction)
        return method(self, kind, theta, X, Y, reduction, sample_weight)
    return call
