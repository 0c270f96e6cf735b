"""``python -m taylorkern bench``: a quick table of taylorkern against the reference and every
peer installed, with the machine's GEMM ceiling, and a JSON record of it all.

The benchmark runs in a child process started with every library's thread count pinned in
its environment (numpy, and with it OpenBLAS, is already loaded in the process that parses
the command line).  Each case is checked once against the float64 reference (a mismatch is
printed and makes the exit status 1), then timed: the median of as many calls as fit in
--budget seconds; a call longer than that is timed once, and the reference's full matrices
past 256 parameters are estimated from 16 identity columns (both marked "~").  Peers' full
matrices and blocks past 2,000 parameters take seconds to minutes per call and are left to
``pytest bench``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys

from . import flops, harness, pinning
from .problems import CONFIGS, QUANTITIES

CHILD = "TAYLORKERN_BENCH_CHILD"   # set (to the thread count) in the pinned child's environment
QUICK_MAX_P = 2000                 # peers' dense matrices above this many parameters: not here
DENSE = ("ggn", "hessian", "ggn_blocks", "hessian_blocks")
QUICK_SLAB = 16                    # identity columns of the reference's full-matrix estimates


def _default_threads():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def add_arguments(p):
    p.add_argument("--config", default="all",
                   help=f"comma-separated, of {', '.join(CONFIGS)} (default all)")
    p.add_argument("--quantity", default="all", help=f"comma-separated, of {', '.join(QUANTITIES)} (default all)")
    p.add_argument("--dtype", default="float64", help="float64, float32 or both comma-separated (default float64)")
    p.add_argument("--threads", type=int, default=_default_threads(),
                   help="threads of every library (default: this process's cores)")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="time the peers installed beside taylorkern (default yes)")
    p.add_argument("--json", default="taylorkern-bench.json", help="where to write the record "
                   "(default ./taylorkern-bench.json)")
    p.add_argument("--budget", type=float, default=0.2, help="seconds of timing per case (default 0.2)")
    p.add_argument("--training", action="store_true",
                   help="instead of the kernels' table: time to a target loss on the Levenberg-Marquardt "
                        "regime's problems, taylorkern's optimizers against the peers installed "
                        "(taylorkern.benchmarks.training)")
    p.add_argument("--time-limit", type=float, default=60.0,
                   help="with --training: seconds per training run before it counts as not reaching the "
                        "target (default 60)")


def add_parser(sub):
    """Register ``bench`` on ``python -m taylorkern``'s subcommands."""
    p = sub.add_parser("bench", help="quick table: taylorkern vs the reference and the peers installed",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(fn=lambda args: _exit(run(args, p.error)))


def _exit(rc):
    if rc:
        sys.exit(rc)


def _pick(name, value, allowed, error):
    if value == "all":
        return list(allowed)
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        error(f"--{name}: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
              f"expected a comma-separated list of {', '.join(allowed)} (or all)")
    return items


def validate(args, error):
    """The parsed options as lists, or ``error(message)`` (argparse's: exits with status 2)."""
    opts = argparse.Namespace(
        configs=_pick("config", args.config, CONFIGS, error),
        quantities=_pick("quantity", args.quantity, QUANTITIES, error),
        dtypes=_pick("dtype", args.dtype, ("float64", "float32"), error),
        threads=args.threads, peers=args.peers, json=args.json, budget=args.budget,
        training=args.training, time_limit=args.time_limit)
    if opts.threads < 1:
        error(f"--threads: expected a positive integer, got {opts.threads}")
    if not opts.budget > 0:
        error(f"--budget: expected seconds > 0, got {opts.budget}")
    if not opts.time_limit > 0:
        error(f"--time-limit: expected seconds > 0, got {opts.time_limit}")
    return opts


def run(args, error):
    """Validate, then run in a pinned child process (or here, when this is that child)."""
    opts = validate(args, error)
    if os.environ.get(CHILD) == str(opts.threads):
        return bench(opts)
    env = pinning.thread_env(opts.threads)
    env[CHILD] = str(opts.threads)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    argv = ["--config", ",".join(opts.configs), "--quantity", ",".join(opts.quantities),
            "--dtype", ",".join(opts.dtypes), "--threads", str(opts.threads),
            "--peers" if opts.peers else "--no-peers", "--json", os.path.abspath(opts.json),
            "--budget", str(opts.budget), "--time-limit", str(opts.time_limit)] + ["--training"] * opts.training
    sys.stdout.flush()
    # Started in the directory that holds this very package: `-m` puts its working directory
    # first on sys.path, and a source checkout there would shadow the installed package.
    return subprocess.run([sys.executable, "-m", "taylorkern.benchmarks.cli", *argv], env=env,
                          cwd=root).returncode


# ------------------------------------------------------------------------------ the benchmark
def _fmt_time(s):
    if s is None:
        return "–"
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= f or unit == "µs":
            return f"{s / f:.3g} {unit}"


def _time_case(case, budget):
    """Check, then time: a record with median seconds, or status mismatch."""
    rec = {"status": "ok", "note": case.note, "flops": case.flops}
    try:
        first, err = harness.first_call(case)
    except AssertionError as exc:
        return {**rec, "status": "mismatch", "reason": str(exc)}
    rec.update(check_error=err, tolerance=case.tolerance)
    if harness.timed_once(case, first, budget):
        times, rec["estimated"] = [first * case.scale], True
        rec["note"] = "; ".join(filter(None, [case.note, "one call"]))
    else:
        times, rec["estimated"] = harness.measure(case, budget), False
    rec.update(times_s=times, median_s=statistics.median(times))
    rec.update(harness.rates(case, rec["median_s"]))
    return rec


def _run_one(cases, config, dtype, q, impl, is_peer, budget):
    """One case's record: timed, or skipped / mismatch / error with the reason."""
    rec = {"config": config, "dtype": dtype, "quantity": q, "implementation": impl}
    try:
        p = cases.problem(config, dtype)
        rec["P"] = p.P
        if is_peer and q in DENSE and p.P > QUICK_MAX_P:
            raise harness.Skip(f"peers' full matrices and blocks past P = {QUICK_MAX_P:,} take seconds to "
                               "minutes a call: pytest bench --benchmark-only -k '<config> and <quantity>'")
        rec.update(_time_case(cases.case(config, dtype, impl, q), budget))
    except harness.Skip as why:
        rec.update(status="skipped", reason=str(why), not_offered=why.not_offered)
    except Exception as exc:  # a peer that breaks must not stop the table
        rec.update(status="error", reason=f"{type(exc).__name__}: {exc}")
    return rec


def _header(opts, machine, ceil, peers):
    print(f"taylorkern bench: {machine['cpu']}, {machine['cores_allowed']} of {machine['cores']} cores; "
          f"{opts.threads} thread(s) in every library; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    for c in ceil.values():
        print(f"  {c['kernel']} ceiling ({c['n']}^3): {c['gflops']:.1f} GFLOP/s here, "
              f"{c['gflops_without_coretype']:.1f} without OPENBLAS_CORETYPE")
    missing = "; ".join(f"{p}: {why}" for p, why in harness.unavailable_peers().items()) if opts.peers else ""
    if not opts.peers:
        print("  peers: not timed (--no-peers)")
    elif not peers:
        print(f"  peers: none installed ({missing}); to time them: {harness.INSTALL_PEERS}")
    else:
        print(f"  peers: {', '.join(peers)}" + (f" (not: {missing})" if missing else ""))
    print(f"  each case: checked against the reference, then the median of the calls that fit in "
          f"{opts.budget:g} s;  ~ one call or an estimate, – not run (reasons below)\n")


class _Table:
    """Fixed-width rows: label columns left-aligned, the others right-aligned."""

    def __init__(self, labels, columns):
        self.n = len(labels)
        self.widths = [max(8, len(c)) for c in labels] + [max(10, len(c)) for c in columns]
        self.widths[1] = 15  # quantity names
        print(self.line(labels + columns))
        print("-" * (sum(self.widths) + 2 * (len(self.widths) - 1)))

    def line(self, cells):
        return "  ".join(str(c).ljust(w) if i < self.n else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, self.widths)))


def bench(opts):
    """The benchmark itself (in the pinned child): prints the table, writes the JSON, returns
    the exit status (1 when any case mismatched or failed)."""
    pinning.limit_affinity(opts.threads)
    if opts.peers:
        pinning.pin_torch(opts.threads)
    if opts.training:
        return _training(opts)
    tk_impl = harness.taylorkern_impl()
    peers = harness.available_peers() if opts.peers else []
    impls = [tk_impl] + (["taylorkern-reference"] if tk_impl != "taylorkern-reference" else []) + peers
    ceil, machine = flops.ceilings(opts.dtypes), harness.machine(with_peers=opts.peers)
    _header(opts, machine, ceil, peers)

    names = {tk_impl: tk_impl.replace("taylorkern-", "tk-"), "taylorkern-reference": "reference"}
    show_dtype = len(opts.dtypes) > 1
    table = _Table(["config", "quantity", "dtype"][:2 + show_dtype],
                   [names.get(i, i) for i in impls] + ["best peer/tk" if peers else "reference/tk",
                                                       "GFLOP/s", "% ceiling"])
    cases = harness.Cases(slab=QUICK_SLAB, quantities=opts.quantities)
    records, reasons, not_offered, failures = [], {}, {}, []
    for config, dtype, q in itertools.product(opts.configs, opts.dtypes, opts.quantities):
        row = {impl: _run_one(cases, config, dtype, q, impl, impl in peers, opts.budget) for impl in impls}
        for impl, rec in row.items():
            records.append(rec)
            name = names.get(impl, impl)
            if rec["status"] == "skipped":
                if rec.pop("not_offered"):
                    not_offered.setdefault(name, {})[q] = None
                else:
                    where = " ".join([config, q] + [dtype] * show_dtype + [name])
                    reasons.setdefault(rec["reason"], []).append(where)
            elif rec["status"] != "ok":
                failures.append(rec)
                print(f"!!! {rec['status'].upper()}: {impl} {config} {q} {dtype}: {rec['reason']}", flush=True)
        print(table.line(_row(config, q, dtype, impls, row, tk_impl, peers, show_dtype)), flush=True)

    if reasons or not_offered:
        print("\n– not run:")
        for name, qs in not_offered.items():
            print(f"  {name} does not offer {', '.join(qs)}")
        for why, where in reasons.items():
            shown = ", ".join(where[:4]) + (f" (+{len(where) - 4} more)" if len(where) > 4 else "")
            print(f"  {shown}: {why}")
    late = flops.ceilings(opts.dtypes, fresh=True)
    for dt, c in late.items():
        if c["gflops"] > 1.15 * ceil[dt]["gflops"]:
            print(f"\nnote: {c['kernel']} ran at {c['gflops']:.1f} GFLOP/s at the end against {ceil[dt]['gflops']:.1f} "
                  "at the start: the machine's load changed, and fractions of the ceiling with it")
    if failures:
        print(f"\n!!! {len(failures)} case(s) failed (mismatch against the reference or an error): see above")
    with open(opts.json, "w") as f:
        json.dump({"machine": machine, "threads": opts.threads, "budget_s": opts.budget, "ceilings": ceil,
                   "ceilings_at_end": late, "implementations": impls, "cases": records,
                   "failures": len(failures)}, f, indent=1)
    print(f"\nwritten: {os.path.abspath(opts.json)}")
    return 1 if failures else 0


def _row(config, q, dtype, impls, row, tk_impl, peers, show_dtype):
    def cell(rec):
        if rec.get("status") == "ok":
            return ("~" if rec.get("estimated") else "") + _fmt_time(rec["median_s"])
        return {"skipped": "–", "mismatch": "MISMATCH"}.get(rec.get("status"), "ERROR")

    tk = row[tk_impl]
    ok = tk.get("status") == "ok"
    others = [row[i] for i in (peers or ["taylorkern-reference"]) if i in row and row[i].get("status") == "ok"]
    ratio = f"{min(r['median_s'] for r in others) / tk['median_s']:.3g}x" if others and ok else "–"
    rate = (f"{tk['gflops']:.3g}", f"{100 * tk['fraction_of_ceiling']:.0f}%") if ok else ("–", "–")
    return [config, q, dtype][:2 + show_dtype] + [cell(row[i]) for i in impls] + [ratio, *rate]


def _training(opts):
    import taylorkern

    from . import training
    print(f"taylorkern {taylorkern.__version__}: time to a target loss, {opts.threads} threads, float64, "
          f"{opts.time_limit:g} s per run at most")
    rows = training.table(time_limit=opts.time_limit, peers=opts.peers)
    p = training.diabetes()
    per_it = training.lbfgs_per_iteration(p)
    for who, (sec, mse, nit) in per_it.items():
        print(f"{p.name:28s} {who + ' lbfgs':40s} {sec * 1e6:9.1f} us per iteration ({nit} iterations, MSE {mse:.4g})")
    with open(opts.json, "w") as f:
        json.dump({"training": rows, "lbfgs_per_iteration": per_it, "threads": opts.threads}, f, indent=1)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m taylorkern bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv), parser.error)


if __name__ == "__main__":
    sys.exit(main())
