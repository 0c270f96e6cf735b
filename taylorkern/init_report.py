"""Initialization report: how each init scheme starts, read from the curvature.

For a network and data, every scheme (He, Xavier, LeCun, normal with several scales, and
any user callable) gives a starting theta, at which the report measures

- the loss and the gradient norm;
- the top eigenvalue of the Hessian H and of the GGN G (the stiffest direction: a stable
  gradient-descent step needs lr < 2 / lambda_max);
- their traces (total curvature);
- the condition number of G over its non-zero spectrum, and its numerical rank (an
  ill-conditioned or rank-poor G means slow, badly scaled training);
- the fraction of negative Hessian eigenvalues (how far from a convex region theta starts);
- the loss after a fixed short training run (``taylorkern.minimize``) from that theta.

Small networks (P <= ``taylorkern.spectrum.EXACT_MAX_ORDER``) use the exact spectra; larger
ones Lanczos, the diagonal trace and stochastic Lanczos quadrature.  Index letters: P
parameters, N samples, S schemes.

:func:`init_report` returns an :class:`InitReport` (``.rows``, ``.table()``, ``.plot()``);
``python -m taylorkern init-report`` runs it on a bundled data set.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time

import numpy as np

from . import spectrum
from ._validate import check_net

# label -> spec: a scheme name of MLP.init, ("normal", std), a callable (net, seed) -> theta,
# or a (P,) array.
DEFAULT_SCHEMES = {
    "he": "he",
    "xavier": "xavier",
    "lecun": "lecun",
    "normal(0.01)": ("normal", 0.01),
    "normal(0.1)": ("normal", 0.1),
    "normal(1)": ("normal", 1.0),
}

# (row key, column title, width, number format)
COLUMNS = (
    ("scheme", "scheme", -14, "s"),
    ("loss", "loss", 10, ".4g"),
    ("grad_norm", "|grad|", 9, ".3g"),
    ("h_max", "lmax(H)", 9, ".3g"),
    ("g_max", "lmax(G)", 9, ".3g"),
    ("h_trace", "tr(H)", 9, ".3g"),
    ("g_trace", "tr(G)", 9, ".3g"),
    ("g_cond", "cond(G)", 9, ".3g"),
    ("g_rank", "rank(G)", 7, "d"),
    ("h_negative", "neg(H)", 7, ".3f"),
    ("trained_loss", "trained", 10, ".4g"),
)


def _cell(value, width, fmt):
    align = "<" if width < 0 else ">"
    return f"{format(value, fmt):{align}{abs(width)}}"


def _theta_for(net, spec, seed, label):
    """The starting parameters (P,) of one scheme spec."""
    if isinstance(spec, str):
        return net.init(seed=seed, scheme=spec)
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "normal":
        return net.init(seed=seed, scheme="normal", std=spec[1])
    if callable(spec):
        theta = spec(net, seed)
    elif isinstance(spec, np.ndarray):
        theta = spec
    else:
        raise ValueError(f"schemes[{label!r}]: expected a scheme name, ('normal', std), a callable "
                         f"(net, seed) -> theta or a theta array, got {spec!r}")
    theta = np.asarray(theta)
    if theta.shape != (net.num_params,):
        raise ValueError(f"schemes[{label!r}]: theta of shape ({net.num_params},) expected, got {theta.shape}")
    return theta.astype(net.dtype)


@dataclasses.dataclass
class InitReport:
    """The report: one row per scheme.

    Attributes
    ----------
    rows : list of dict, keys: scheme, loss, grad_norm, h_max, g_max, h_trace, g_trace,
        g_cond (over G's non-zero spectrum when exact; lambda_max / lambda_min otherwise),
        g_rank (-1 when not exact), g_cond_converged (False: Lanczos did not converge the
        smallest eigenvalue and g_cond is only a lower bound), h_negative (fraction of negative Hessian eigenvalues),
        trained_loss, train_status, time (seconds for the row)
    spectra : dict label -> :class:`taylorkern.spectrum.Density` of the Hessian
    thetas : dict label -> (P,) starting parameters
    method : "exact" or "lanczos"
    train : str, the training method;  train_options : dict
    """

    rows: list
    spectra: dict
    thetas: dict
    method: str
    train: str | None
    train_options: dict

    def table(self) -> str:
        """The rows as a text table (the columns of :data:`COLUMNS`)."""
        lines = [" ".join(_cell(title, w, "s") for _, title, w, _ in COLUMNS)]
        for r in self.rows:
            lines.append(" ".join(_cell(r[key], w, f) for key, _, w, f in COLUMNS))
        return "\n".join(lines)

    def plot(self, path=None):
        """The Hessian spectrum of every scheme (needs matplotlib); saved to ``path`` when
        given.  Exact spectra: histograms of the eigenvalues (fraction per bin) on a symlog
        axis; SLQ spectra: the smoothed densities.  Returns the figure."""
        import matplotlib
        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        if self.method == "exact":
            top = max(float(np.max(np.abs(d.nodes))) for d in self.spectra.values())
            lin = 1e-6 * top
            pos = np.geomspace(lin, top * 1.01, 37)
            edges = np.concatenate([-pos[::-1], np.linspace(-lin, lin, 3)[1:-1], pos])
            for label, d in self.spectra.items():
                ev = d.nodes.ravel()
                ax.hist(ev, bins=edges, weights=np.full(ev.size, 1.0 / ev.size), histtype="step",
                        lw=1.4, label=label)
            ax.set_xscale("symlog", linthresh=lin)
            ax.set_ylabel("fraction of eigenvalues per bin")
        else:
            for label, d in self.spectra.items():
                ax.plot(d.grid, np.maximum(d.values, 1e-12), label=label, lw=1.2)
            ax.set_yscale("log")
            ax.set_ylabel("density (SLQ)")
        ax.set_xlabel("Hessian eigenvalue")
        ax.set_title(f"Hessian spectra at initialization ({self.method})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def init_report(net, X, Y, schemes=None, seed=0, train="adam", train_options=None, method="auto",
                n_probes=10, n_steps=80) -> InitReport:
    """Compare init schemes by curvature at the start and by loss after a short training run.

    Parameters
    ----------
    net, X (N, d0), Y : the network and data
    schemes : dict label -> spec (default :data:`DEFAULT_SCHEMES`); a spec is a scheme name of
        ``MLP.init`` ("he", "xavier", "lecun"), ``("normal", std)``, a callable
        ``(net, seed) -> theta (P,)``, or a theta array
    seed : the seed every scheme draws with
    train : a ``taylorkern.minimize`` method for the short run, or None to skip it
    train_options : its options (default ``{"max_iter": 100}`` plus ``lr=1e-2`` for
        adam/gd/momentum)
    method : "exact" (full H and G, all eigenvalues), "lanczos" (products only: Lanczos for
        the top eigenvalues and cond(G), SLQ for the negative fraction and the spectra), or
        "auto" (exact when P <= EXACT_MAX_ORDER)
    n_probes, n_steps : SLQ options (method "lanczos")
    """
    check_net(net)
    if schemes is None:
        schemes = DEFAULT_SCHEMES
    if not isinstance(schemes, dict) or not schemes:
        raise ValueError("schemes: expected a non-empty dict label -> spec")
    if method not in ("auto", "exact", "lanczos"):
        raise ValueError(f"method: expected 'auto', 'exact' or 'lanczos', got {method!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if method == "auto":
        method = "exact" if net.num_params <= spectrum.EXACT_MAX_ORDER else "lanczos"
    opts = {}
    if train is not None:
        opts = dict(max_iter=100)
        if train in ("adam", "gd", "momentum"):
            opts["lr"] = 1e-2
        opts.update(train_options or {})
    net.loss(net.init(seed=0), X, Y)  # validate X and Y once, with the network's messages

    rows, spectra, thetas = [], {}, {}
    for label, spec in schemes.items():
        t0 = time.perf_counter()
        theta = _theta_for(net, spec, seed, label)
        thetas[label] = theta
        loss, g = net.loss_and_grad(theta, X, Y)
        h_trace = spectrum.trace(net, theta, X, Y, "hessian").value
        g_trace = spectrum.trace(net, theta, X, Y, "ggn").value
        if method == "exact":
            eh = spectrum.exact_eigenvalues(net, theta, X, Y, "hessian")
            eg = spectrum.exact_eigenvalues(net, theta, X, Y, "ggn")
            cg = spectrum.condition_from_eigenvalues(eg)
            ch = spectrum.condition_from_eigenvalues(eh)
            h_max, g_max = float(eh[-1]), float(eg[-1])
            g_cond, g_rank, g_conv = cg.cond_nonzero, cg.rank, True
            h_neg = float(np.mean(eh < -ch.rtol * ch.abs_max))
            sigma = max(0.01 * float(eh[-1] - eh[0]), 1e-12)
            grid = np.linspace(eh[0] - 3 * sigma, eh[-1] + 3 * sigma, 600)
            spectra[label] = spectrum.density_from_eigenvalues(eh, grid, sigma)
        else:
            h_max = float(spectrum.eigenvalues(net, theta, X, Y, k=1, curvature="hessian",
                                               method="lanczos", seed=seed).values[-1])
            cg = spectrum.condition_number(net, theta, X, Y, "ggn", method="lanczos", seed=seed)
            g_max, g_cond, g_rank, g_conv = cg.lambda_max, cg.cond, -1, cg.converged
            dens = spectrum.density(net, theta, X, Y, "hessian", n_probes=n_probes, n_steps=n_steps,
                                    seed=seed, n_grid=600)
            h_neg = dens.fraction_below(-1e-12 * max(abs(h_max), 1e-300))
            spectra[label] = dens
        trained, status = math.nan, ""
        if train is not None:
            from .optim import minimize  # the optimizers import nothing from here
            res = minimize(net, theta, X, Y, method=train, **opts)
            trained, status = float(res.loss), res.status.name
        rows.append(dict(scheme=str(label), loss=float(loss), grad_norm=float(np.linalg.norm(g)),
                         h_max=h_max, g_max=g_max, h_trace=float(h_trace), g_trace=float(g_trace),
                         g_cond=float(g_cond), g_rank=int(g_rank), g_cond_converged=bool(g_conv),
                         h_negative=float(h_neg),
                         trained_loss=trained, train_status=status, time=time.perf_counter() - t0))
    return InitReport(rows=rows, spectra=spectra, thetas=thetas, method=method, train=train,
                      train_options=opts)


# ----------------------------------------------------------------------------- command line
DATASETS = ("auto", "digits", "diabetes", "synthetic")


def _resolve_data(name):
    if name != "auto":
        return name
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return "synthetic"
    return "digits"


def example_data(name="auto", n_samples=500, seed=0):
    """``(X (N, d0), Y, loss)`` for the command line and the examples.

    "digits": scikit-learn's 8x8 digits (pixels scaled to [0, 1], 10 classes, loss "ce");
    "diabetes": its diabetes regression (standardised inputs and target, loss "mse");
    "synthetic": a random two-layer tanh teacher, 8 inputs, 3 outputs, loss "mse" (no
    scikit-learn needed); "auto": digits when scikit-learn is installed, else synthetic.
    At most ``n_samples`` samples (a seeded random subset).
    """
    if name not in DATASETS:
        raise ValueError(f"name: expected one of {DATASETS}, got {name!r}")
    name = _resolve_data(name)
    rng = np.random.default_rng(seed)
    if name == "synthetic":
        X = rng.standard_normal((n_samples, 8))
        W1, W2 = rng.standard_normal((8, 16)) / np.sqrt(8), rng.standard_normal((16, 3)) / 4.0
        Y = np.tanh(X @ W1) @ W2 + 0.05 * rng.standard_normal((n_samples, 3))
        return X, Y, "mse"
    from sklearn import datasets  # optional dependency
    if name == "digits":
        d = datasets.load_digits()
        X, Y, loss = d.data / 16.0, d.target.astype(np.int64), "ce"
    else:
        d = datasets.load_diabetes()
        X = (d.data - d.data.mean(0)) / d.data.std(0)
        Y = ((d.target - d.target.mean()) / d.target.std())[:, None]
        loss = "mse"
    if n_samples < len(X):
        idx = np.sort(rng.choice(len(X), n_samples, replace=False))
        X, Y = X[idx], Y[idx]
    return X, Y, loss


def main_cli(args) -> InitReport:
    """``python -m taylorkern init-report``: see ``--help``."""
    import sys

    from .model import MLP
    data = _resolve_data(args.data)
    X, Y, loss = example_data(data, args.samples, args.seed)
    hidden = [int(h) for h in str(args.hidden).split(",") if h.strip()]
    k = int(Y.max()) + 1 if loss == "ce" else Y.shape[1]
    net = MLP([X.shape[1], *hidden, k], activation=args.activation, loss=loss)
    print(f"init report: {net}, P = {net.num_params}, data {data} (N = {X.shape[0]}), "
          f"training: {args.train} x {args.train_iter} iterations, seed {args.seed}")
    opts = {"max_iter": args.train_iter}
    rep = init_report(net, X, Y, seed=args.seed, train=args.train, train_options=opts, method=args.method)
    print(f"spectra: {rep.method}\n")
    print(rep.table())
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("\n(matplotlib not installed: no plot)", file=sys.stderr)
        else:
            rep.plot(args.plot)
            print(f"\nHessian spectra plotted to {args.plot}")
    return rep


def add_parser(sub):
    """Register the ``init-report`` subcommand on an argparse subparsers object."""
    p = sub.add_parser("init-report", help="compare init schemes by curvature and short training",
                       description="Compare init schemes (he, xavier, lecun, normal(0.01/0.1/1)) by loss, "
                                   "gradient norm, top eigenvalues, traces, cond(G), negative Hessian "
                                   "eigenvalues and the loss after a short training run.")
    p.add_argument("--data", choices=DATASETS, default="auto",
                   help="digits (needs scikit-learn; the default when installed), diabetes, synthetic")
    p.add_argument("--samples", type=int, default=500, help="at most this many samples (default 500)")
    p.add_argument("--hidden", default="16", help="hidden widths, comma-separated (default 16)")
    p.add_argument("--activation", default="tanh", help="hidden activation (default tanh)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", default="adam", help="taylorkern.minimize method for the short run")
    p.add_argument("--train-iter", type=int, default=100, help="its iterations (default 100)")
    p.add_argument("--method", choices=("auto", "exact", "lanczos"), default="auto",
                   help="exact spectra or Lanczos/SLQ (default: exact when P <= 1500)")
    p.add_argument("--plot", default="init-report.png", metavar="PATH",
                   help="where to save the spectra plot when matplotlib is installed")
    p.add_argument("--no-plot", dest="plot", action="store_const", const=None, help="no plot")
    p.set_defaults(fn=main_cli)
    return p
