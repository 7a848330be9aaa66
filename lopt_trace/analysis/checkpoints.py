"""Meta-training checkpoints: θ along the ``/meta_train`` history of a store, batched.

A store recorded with a learned optimizer that has a meta-training history holds it as
``/meta_train`` (see docs/store.md): per-iteration metrics and θ at each checkpoint, stacked along
a ``checkpoint`` dim whose coordinate is the iteration. The group's ``optimizer`` attribute names
the ``/runs`` group whose configuration (``make_optimizer``) the checkpoints share.

The analysis functions that take ``theta_dim`` (effective learning rate, saturation, Jacobians and
linearisation, the autonomous trajectory, the S-curve) evaluate a stack of θ along a batch dim in
one ``vmap``; this module provides what they need for checkpoints:

- :func:`meta_train_history`: the history and the group it belongs to (a clear error without one);
- :func:`stack_thetas`: θ of every checkpoint as arrays with a leading ``checkpoint`` axis;
- :func:`checkpoint_objective`: each checkpoint's meta-objective from the history;
- :func:`initial_states`: h0 = ``opt.init_state(θ_c)`` of every checkpoint;
- :func:`replay`: the recorded gradients replayed through each checkpoint's F (open loop);
- :func:`halfway`: the iteration by which a metric made half of its change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace.analysis._common import UNIT, attrs, float64, strings
from lopt_trace.analysis.rebuild import optimizer_names
from lopt_trace.errors import UserError

CHECKPOINT = "checkpoint"
GROUP = "meta_train"
#: the metric of an ``emergence`` result that measures each mechanism's strength (the keys of
#: its ``halfway`` attribute: the iteration by which that metric made half of its change)
STRENGTH = {
    "meta-objective": "meta_objective",
    "momentum": "momentum_beta",
    "learning rate": "total_alpha",
    "clipping": "clip_fraction_beyond",
    "schedule": "schedule_peak_ratio",
    "adaptation": "adaptation_ratio_positive",
    "layers": "eta_spread_tensors",
}
#: the commands that make a store with a meta-training history
MAKE_HISTORY = ("`lopt-trace train --task TASK --out FILE` then `lopt-trace record --task TASK "
                "--optimizer FILE` (or `lopt-trace record --task TASK` with a bundled learned optimizer)")


def meta_train_history(tree: xr.DataTree, optimizer: str | None = None) -> tuple[str, xr.Dataset]:
    """``(group name, history)``: the store's ``/meta_train`` and the ``/runs`` group it belongs to.

    Raises a one-line :class:`UserError` when the store has no history (or one without θ
    checkpoints), when its group is not recorded, or when ``optimizer`` names another group.
    """
    if GROUP not in tree.children:
        raise UserError(f"the store has no meta-training history (/{GROUP}); make one with {MAKE_HISTORY}")
    hist = tree[GROUP].to_dataset(inherit=False)
    if CHECKPOINT not in hist.dims or not any(str(v).startswith("theta_") for v in hist.data_vars):
        raise UserError(f"the store's meta-training history (/{GROUP}) has no θ checkpoints; "
                        "make one with `lopt-trace train` (it stores θ every --checkpoint-every iterations)")
    names = optimizer_names(tree)
    name = str(hist.attrs.get("optimizer") or ("learned" if "learned" in names else names[0]))
    if name not in names:
        raise UserError(f"the meta-training history belongs to the optimizer {name!r}, which is not "
                        f"recorded in this store (it has: {', '.join(names)})")
    if optimizer is not None and optimizer != name:
        raise UserError(f"the store's meta-training history belongs to {name!r}, not {optimizer!r}; "
                        f"drop --optimizer or pass --optimizer {name}")
    return name, hist


def stack_thetas(history: xr.Dataset, reference: dict | None = None) -> dict:
    """θ of every checkpoint: ``{name: array (checkpoint, ...)}`` in float64.

    With ``reference`` (one θ, e.g. the store group's), the entries and shapes must match it.
    """
    stacked = {str(k)[len("theta_"):]: np.asarray(v.values, dtype=np.float64)
               for k, v in history.data_vars.items() if str(k).startswith("theta_")}
    if reference is not None:
        ref = {k: np.shape(v) for k, v in reference.items()}
        got = {k: v.shape[1:] for k, v in stacked.items()}
        if ref != got:
            raise UserError("the θ checkpoints of the meta-training history do not match the optimizer "
                            f"they belong to (entries and shapes {got} against {ref})")
    return stacked


def theta_at(thetas: dict, i: int) -> dict:
    """θ of checkpoint ``i`` of a stack."""
    return {k: v[i] for k, v in thetas.items()}


def matching_checkpoint(thetas: dict, theta: dict, checkpoints) -> int | None:
    """The iteration of the checkpoint whose θ equals ``theta`` (to float32 rounding), else None."""
    n = len(checkpoints)
    same = np.ones(n, dtype=bool)
    for k, v in theta.items():
        a = np.asarray(thetas[k], dtype=np.float64).reshape(n, -1)
        b = np.asarray(v, dtype=np.float64).reshape(1, -1)
        same &= np.all(np.abs(a - b) <= 1e-6 * (1.0 + np.abs(b)), axis=1)
    hits = np.flatnonzero(same)
    return int(np.asarray(checkpoints)[hits[-1]]) if len(hits) else None


def checkpoint_objective(history: xr.Dataset) -> xr.Dataset:
    """Each checkpoint's meta-objective from the history, over ``checkpoint``.

    ``meta_loss``: the mean training meta-loss (``meta_loss``, skipped iterations left out) over
    the iterations from the previous checkpoint up to this one, [previous, this) (from 0 for the
    first; just iteration 0 for a checkpoint at 0). Iteration i's meta-loss is measured with the θ
    after i updates, so this is the training objective of the θ that led to the checkpoint.
    ``validation`` (when meta-training scored checkpoints on held-back problems): that score.
    ``meta_objective``: the validation score when present, else ``meta_loss``.
    """
    its = np.asarray(history[CHECKPOINT].values, dtype=np.int64)
    loss = np.asarray(history["meta_loss"].values, dtype=np.float64) if "meta_loss" in history else np.zeros(0)
    if "skipped" in history and len(loss):
        loss = np.where(np.asarray(history["skipped"].values, dtype=bool), np.nan, loss)
    loss = np.where(np.isfinite(loss), loss, np.nan)
    window = np.full(len(its), np.nan)
    for i, k in enumerate(its):
        lo = int(its[i - 1]) if i else 0
        hi = max(int(k), lo + 1)
        part = loss[max(lo, 0):min(hi, len(loss))]
        if np.isfinite(part).any():
            window[i] = np.nanmean(part)
    out = xr.Dataset(coords={CHECKPOINT: its})
    out["meta_loss"] = (CHECKPOINT, window, attrs("training meta-loss, mean over the iterations "
                                                  "since the previous checkpoint"))
    if "validation" in history:
        val = np.asarray(history["validation"].values, dtype=np.float64)
        out["validation"] = (CHECKPOINT, val, attrs("validation meta-objective (whole horizon, "
                                                    "held-back problems)"))
        out["meta_objective"] = (CHECKPOINT, val, attrs("meta-objective: validation"))
    else:
        out["meta_objective"] = (CHECKPOINT, window, attrs("meta-objective: training meta-loss"))
    return out


def initial_states(opt, thetas: dict, checkpoints, held_values: np.ndarray | None = None) -> xr.DataArray:
    """h0 = ``opt.init_state(θ_c, 1)`` of every checkpoint: ``(checkpoint, unit)``.

    ``held_values`` (d,) replaces the components in ``opt.held_state`` (where it is finite), as
    :func:`lopt_trace.analysis.sampling.analysis_start` does for one θ.
    """
    with float64():
        th = {k: jnp.asarray(v) for k, v in thetas.items()}
        h0 = np.asarray(jax.vmap(lambda t: opt.init_state(t, 1)[0])(th), dtype=np.float64)
    if held_values is not None:
        held = np.array([n in set(opt.held_state) for n in opt.state_names])
        held_values = np.asarray(held_values, dtype=np.float64)
        h0 = np.where(held & np.isfinite(held_values), held_values, h0)
    return xr.DataArray(h0, dims=(CHECKPOINT, UNIT),
                        coords={CHECKPOINT: np.asarray(checkpoints), UNIT: list(opt.state_names)},
                        attrs=attrs("initial state h0 of each checkpoint"))


def replay_params(ds: xr.Dataset, per_tensor: int) -> np.ndarray:
    """Indices (along ``param``) of up to ``per_tensor`` stored parameters of every tensor, evenly
    spread over each tensor's stored ones (all of them when it has at most ``per_tensor``)."""
    tensors = strings(ds["param_tensor"].values)
    picked = []
    for t in dict.fromkeys(tensors):
        idx = np.flatnonzero(np.asarray(tensors) == t)
        if len(idx) > per_tensor:
            idx = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, per_tensor)).astype(int))]
        picked.append(idx)
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=int)


def replay(opt, thetas: dict, ds: xr.Dataset, params: np.ndarray, n_samples: int = 32,
           seed: int = 0) -> xr.Dataset:
    """Replay the recorded gradients of the parameters ``params`` through every checkpoint's F.

    Each checkpoint starts from its own h0 = ``opt.init_state(θ_c)`` and takes the gradients the
    store recorded (for the store's own θ this reproduces its recorded states; for another θ it
    is open loop: the gradients stay those the recorded optimizer produced). Needs every step
    (``every`` = 1). One ``lax.scan`` over steps, ``vmap``-ed over checkpoints.

    Returns ``final_state (checkpoint, run, param, unit)`` (the state after the last step) and
    ``sampled_state (checkpoint, start, unit)``: the states at ``n_samples`` random (run, step,
    param) points, the same points for every checkpoint (``sample_run``, ``sample_step``,
    ``sample_param`` say which; ``step`` as in the store: the state after step k's gradient).
    """
    thetas = {k: np.asarray(v, dtype=np.float64) for k, v in thetas.items()}
    checkpoints = np.arange(len(next(iter(thetas.values()))))
    g = np.asarray(ds["gradient"].isel(param=params).transpose("run", "step", "param").values, np.float64)
    R, K, P = g.shape
    rng = np.random.default_rng(seed)
    sr, ss, sp = rng.integers(0, R, n_samples), rng.integers(0, K, n_samples), rng.integers(0, P, n_samples)
    flat = sr * P + sp
    with float64():
        gk = jnp.asarray(g.transpose(1, 0, 2).reshape(K, R * P))
        steps, flat_j, ss_j = jnp.arange(K), jnp.asarray(flat), jnp.asarray(ss)

        def one(theta):
            h = opt.init_state(theta, R * P)
            acc = jnp.zeros((n_samples, h.shape[-1]), h.dtype)

            def body(carry, inp):
                h, acc = carry
                k, gg = inp
                h = opt.F(theta, h, gg)
                acc = jnp.where((ss_j == k)[:, None], h[flat_j], acc)
                return (h, acc), None

            (h, acc), _ = jax.lax.scan(body, (h, acc), (steps, gk))
            return h, acc

        final, sampled = jax.jit(jax.vmap(one))({k: jnp.asarray(v) for k, v in thetas.items()})
        final, sampled = np.asarray(final), np.asarray(sampled)
    d = final.shape[-1]
    param_coords = {c: ("param", np.asarray(ds[c].values)[params]) for c in ds.coords
                    if ds[c].dims == ("param",)}
    units = {UNIT: ds[UNIT].values} if UNIT in ds.coords else {}
    return xr.Dataset(
        {
            "final_state": ((CHECKPOINT, "run", "param", UNIT), final.reshape(len(checkpoints), R, P, d),
                            attrs("state after the last recorded gradient, replayed")),
            "sampled_state": ((CHECKPOINT, "start", UNIT), sampled,
                              attrs("replayed state at sampled (run, step, param) points")),
            "sample_run": (("start",), np.asarray(ds["run"].values)[sr], attrs("run of the sample")),
            "sample_step": (("start",), np.asarray(ds["step"].values)[ss], attrs("step of the sample", "steps")),
            "sample_param": (("start",), np.asarray(params)[sp], attrs("param index of the sample")),
        },
        coords={"run": ds["run"].values, **param_coords, **units, "start": np.arange(n_samples)},
    )


def tensor_mean_states(played: xr.Dataset, ds: xr.Dataset) -> xr.DataArray:
    """The mean replayed state after the last step of every tensor (over runs and the tensor's
    replayed parameters): ``(checkpoint, tensor, unit)``, with the tensor coords of the store
    group ``ds`` (``tensor_layer``, ``tensor_kind``, ``tensor_size``), in the group's order."""
    fin = played["final_state"]
    owner = strings(fin["param_tensor"].values)
    names = [str(t) for t in strings(ds["tensor"].values)]
    present = [i for i, t in enumerate(names) if t in set(owner)]
    per_tensor = xr.concat([fin.isel(param=np.flatnonzero(owner == names[i])).mean(["run", "param"])
                            for i in present], dim="tensor")
    coords = {c: ("tensor", np.asarray(ds[c].values)[present])
              for c in ("tensor_layer", "tensor_kind", "tensor_size") if c in ds.coords}
    return per_tensor.assign_coords(tensor=np.array([names[i] for i in present], dtype=object), **coords)


def metric(ds: xr.Dataset, name: str) -> np.ndarray:
    """One metric of an ``emergence`` result (``metrics (checkpoint, metric)``) over the
    checkpoints; NaN when the result does not have it."""
    if "metric" not in ds.coords or name not in strings(ds["metric"].values):
        return np.full(ds.sizes[CHECKPOINT], np.nan)
    return np.asarray(ds["metrics"].sel(metric=name).values, dtype=np.float64)


def progress(values, min_change: float = 0.01) -> np.ndarray:
    """``values`` rescaled so that the first finite value is 0 and the last 1 (non-finite values
    become NaN); all NaN when there is no net change: fewer than two finite values, or a change
    smaller than ``min_change`` (1%) of the largest |value| (a metric that wanders and comes back
    has made no progress)."""
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, np.nan)
    ok = np.flatnonzero(np.isfinite(v))
    if len(ok) < 2:
        return np.full(v.shape, np.nan)
    change = v[ok[-1]] - v[ok[0]]
    if abs(change) <= min_change * max(np.nanmax(np.abs(v)), 1e-300):
        return np.full(v.shape, np.nan)
    return (v - v[ok[0]]) / change


def halfway(iterations, values, min_change: float = 0.01) -> int | None:
    """The first iteration at which ``values`` has made half of its net change from the first to
    the last finite value (:func:`progress` ≥ 0.5); None without a net change."""
    p = progress(values, min_change)
    done = np.isfinite(p) & (p >= 0.5 - 1e-9)  # (rounding: 0.3 → 0.6 → 0.9 is half-way at 0.6)
    return int(np.asarray(iterations)[np.argmax(done)]) if done.any() else None


__all__ = ["CHECKPOINT", "STRENGTH", "checkpoint_objective", "halfway", "initial_states", "matching_checkpoint",
           "meta_train_history", "metric", "progress", "replay", "replay_params", "stack_thetas", "tensor_mean_states", "theta_at"]
