"""The MNIST CNN's training step with channels-first im2col (the task's) against channels-last.

Times what the tuning search and ``compare`` run: ``--steps`` SGD steps of loss and gradient in a
jitted ``lax.scan``, vmapped over ``--problems`` problems (16 = the MNIST search's batch of 4
candidates × 4 problems), for

- ``channels first``: ``lopt_trace.tasks.mnist.Mnist.logits`` (activations (C, B, H, W), each
  convolution one (O × 9C) @ (9C × B·H·W) matmul);
- ``channels last``: the formulation it replaced, written out here (activations (B, H, W, C), each
  convolution one (B·H·W × 9C) @ (9C × O) matmul).

Prints ms per CNN step (one problem's loss and gradient), the speed-up, and the largest relative
difference of the losses between the two (float32 round-off, grown over the steps). Run it on an
otherwise idle machine; the minimum of ``--repeat`` timed calls is kept.

    python benchmarks/mnist_cnn_layout.py [--problems 16] [--steps 5] [--repeat 3]
    python benchmarks/mnist_cnn_layout.py --quick      # a small check that it runs
"""

from __future__ import annotations

import argparse
import datetime
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _timing import best_time_and_output  # benchmarks/ is the script's folder
from lopt_trace.tasks import get_task


def channels_last_logits(params, images):
    """The CNN with (B, H, W, C) activations: im2col (B·H·W × 9C) @ (9C × O)."""
    h = images
    for layer in range(3):
        w = params[f"conv{layer}/weight"]
        height, width = h.shape[1] - 2, h.shape[2] - 2
        patches = jnp.concatenate([h[:, i:i + height, j:j + width, :] for i in range(3) for j in range(3)],
                                  axis=-1)
        h = jax.nn.relu(patches @ w.reshape(-1, w.shape[-1]) + params[f"conv{layer}/bias"])
    return h.reshape(h.shape[0], -1) @ params["dense3/weight"] + params["dense3/bias"]


def sgd_losses(task, logits, problems, steps: int):
    """A jitted function: the losses (problems, steps) of ``steps`` SGD steps on each problem."""
    def loss(data, params, step):
        images, labels = task.batch(data, step)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits(params, images), labels))

    def one(problem):
        def body(params, step):
            value, grad = jax.value_and_grad(lambda p: loss(problem.data, p, step))(params)
            return jax.tree.map(lambda p, g: p - 0.05 * g, params, grad), value
        return jax.lax.scan(body, problem.params, jnp.arange(steps))[1]

    return jax.jit(jax.vmap(one))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problems", type=int, default=16, help="problems vmapped (default 16)")
    p.add_argument("--steps", type=int, default=5, help="SGD steps per scan (default 5)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls; the minimum is kept (default 3)")
    p.add_argument("--quick", action="store_true", help="a check that it runs: 2 problems, 2 steps, 1 call")
    a = p.parse_args(argv)
    if a.quick:
        a.problems, a.steps, a.repeat = 2, 2, 1
    task = get_task("mnist")
    problems = jax.vmap(task.sample)(jax.random.split(jax.random.PRNGKey(0), a.problems))
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}; jax {jax.__version__}; {os.cpu_count()} CPUs; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {a.problems} problems x "
          f"{a.steps} steps per call, min of {a.repeat} calls")
    times, losses = {}, {}
    for name, logits in (("channels last", channels_last_logits), ("channels first", task.logits)):
        t, out = best_time_and_output(sgd_losses(task, logits, problems, a.steps), (problems,), a.repeat)
        losses[name] = np.asarray(out)
        times[name] = t / (a.problems * a.steps)
        print(f"{name}: {1e3 * times[name]:.1f} ms per CNN step", flush=True)
    diff = np.max(np.abs(losses["channels first"] - losses["channels last"]) / np.abs(losses["channels last"]))
    print(f"speed-up of channels first: {times['channels last'] / times['channels first']:.2f}x; "
          f"largest relative difference of the losses: {diff:.1e}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
