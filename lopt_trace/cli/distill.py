"""``lopt-trace distill STORE``: do the mechanisms the analyses found explain the learned optimizer?"""

from __future__ import annotations

import numpy as np

from lopt_trace.cli import nonnegative_int, output_path, positive_int

# Everything that loads JAX, xarray, zarr, Dask or HoloViews (the lopt_trace modules behind this
# command included) is imported inside the functions below, never here: `lopt-trace --help` and
# argument errors must answer without loading them (tests/test_cli_startup.py).


def add_parser(sub, name):
    p = sub.add_parser(
        name, help="build an optimizer from a store's analyses and test how much of the learned "
                   "optimizer it explains",
        description="Build a small optimizer from the store's /analysis/{momentum,schedule,clipping,"
                    "adaptation} results (run `lopt-trace analyze all STORE` first), run it, the "
                    "analysed optimizer and tuned momentum on the same held-out problems, and "
                    "report the fraction of the analysed optimizer's advantage over tuned momentum "
                    "that it recovers, with an ablation of each mechanism. Writes /analysis/distill. "
                    "See docs/analysis.md, 'distill'.")
    p.add_argument("store", metavar="STORE", help="path or URL of a store from `lopt-trace record`")
    p.add_argument("--optimizer", default=None, metavar="NAME",
                   help="optimizer group to distil (default: 'learned' if recorded, else the first)")
    p.add_argument("--problems", type=positive_int, default=64,
                   help="held-out problems every variant runs on (default 64)")
    p.add_argument("--seed-base", type=nonnegative_int, default=None,
                   help="first problem seed is 1e9 + this (default 1000000, past the store's own runs)")
    p.add_argument("--bootstrap", type=positive_int, default=2000,
                   help="bootstrap resamples of the problems for the uncertainty (default 2000)")
    p.add_argument("--no-write", action="store_true", help="print the result without writing it to the store")
    p.add_argument("--save", default=None, metavar="FILE", type=output_path,
                   help="also write the distilled optimizer as an optimizer file, which "
                        "`lopt-trace record --optimizer FILE` records like any other")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --save file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def table(ds) -> str:
    """Every variant's meta-objective (mean ± sem), recovered fraction and 95% interval."""
    from lopt_trace.distill.result import percent

    def pct(x):
        return "diverged" if float(x) == -np.inf else percent(x, "inf")

    rows = [f"  {'variant':<18}{'meta-objective':>22}{'recovered':>12}{'95% interval':>24}  diverged",
            "  " + "-" * 86]
    for i, label in enumerate(str(v) for v in ds["variant"].values):
        m = f"{float(ds['meta_objective_mean'][i]):.4g} ± {float(ds['meta_objective_sem'][i]):.2g}"
        r, lo, hi = (float(ds[k][i]) for k in ("recovered", "recovered_low", "recovered_high"))
        interval = f"{pct(lo)} to {pct(hi)}" if np.isfinite(lo) and np.isfinite(hi) else "n/a"
        rows.append(f"  {label:<18}{m:>22}{pct(r):>12}{interval:>24}  {int(ds['diverged'][i])}")
    rows.append("  carried by each mechanism (recovered by distilled − recovered without it): " + ", ".join(
        f"{m} {pct(c)}" + (f" [{pct(lo)}, {pct(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else "")
        for m, c, lo, hi in zip(ds["mechanism"].values, ds["carried"].values, ds["carried_low"].values,
                                ds["carried_high"].values)))
    d = ds.attrs["distilled"]
    rows.append(f"  distilled: β = {d['beta']:.4g}, α = {d['learning_rate']:.4g}, α_fast = "
                f"{d['fast_learning_rate']:.4g} (momentum fit error {100 * d['momentum_fit_error']:.2g}%); "
                f"schedule ×{d['schedule_min']:.3g}–×{d['schedule_max']:.3g}; clip τ = "
                f"{d['clip_threshold'][0]:.3g} (g < 0), {d['clip_threshold'][1]:.3g} (g > 0); adaptation "
                f"×{d['adaptation_min']:.3g}–×{d['adaptation_max']:.3g} (β_a = {d['adaptation_beta']:.3g})"
                + (f"; gradient normaliser δ = {d['input_norm']:g}" if d.get("input_norm") is not None else ""))
    rows.append(f"  tuned momentum: α = {ds.attrs['momentum_theta']['learning_rate']:.4g}, β = "
                f"{ds.attrs['momentum_theta']['beta']:.4g} ({ds.attrs['momentum_source']})")
    return "\n".join(rows)


def run(args) -> int:
    from lopt_trace.distill import DEFAULT_SEED_BASE, distill, distilled_from_result, summary

    if args.save:
        from lopt_trace.zarr_io import check_writable

        check_writable(args.save, args.overwrite)
    seed_base = DEFAULT_SEED_BASE if args.seed_base is None else args.seed_base
    ds = distill(args.store, args.optimizer, args.problems, seed_base, args.bootstrap,
                 write=not args.no_write, progress=not args.no_progress)
    print(summary(ds), flush=True)
    print(table(ds))
    if args.save:
        from lopt_trace.optimizers.io import save_optimizer

        opt, theta = distilled_from_result(ds)
        save_optimizer(args.save, opt, theta, task=dict(ds.attrs.get("task_config") or {}) or None,
                       metatrain={"distilled_from": str(args.store), "optimizer": ds.attrs["optimizer"]},
                       overwrite=args.overwrite)
        print(f"wrote {args.save} (record it with `lopt-trace record --task {ds.attrs['task']} "
              f"--optimizer {args.save}`)")
    return 0
