"""MNIST classification with a small CNN (three 3×3 convolutions, then a dense layer)."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt_trace import bundled
from lopt_trace.errors import UserError
from lopt_trace.tasks.base import Params, Problem, Task, TensorInfo

_FIX = ("Fix: reinstall lopt-trace (`pip install .`), pass an explicit path with "
        "--data /path/to/mnist.npz, or use --data tfds with the [tfds] extra installed.")


@functools.lru_cache(maxsize=2)
def load_mnist(source: str = "bundled") -> tuple[np.ndarray, np.ndarray]:
    """Training images (60000, 28, 28) uint8 and labels (60000,) from ``source``.

    ``source`` is ``"bundled"`` (the copy in ``data/``), ``"tfds"`` (tensorflow-datasets) or a
    path to an ``.npz`` with ``x_train`` and ``y_train``. Raises :class:`UserError` with a fix
    when the file is missing or corrupt.
    """
    if source == "tfds":
        try:
            import tensorflow_datasets as tfds  # optional (the tfds extra)
        except ImportError:
            raise UserError("--data tfds needs tensorflow-datasets: pip install 'lopt-trace[tfds]'") from None
        ds = tfds.as_numpy(tfds.load("mnist", split="train", batch_size=-1))
        return np.asarray(ds["image"])[..., 0].astype(np.uint8), np.asarray(ds["label"]).astype(np.uint8)
    path = bundled.data_file("mnist.npz") if source == "bundled" else Path(source)
    if not path.is_file():
        raise UserError(f"MNIST data file {path} is missing. {_FIX}")
    try:
        with np.load(path) as archive:
            x, y = archive["x_train"], archive["y_train"]
    except Exception as exc:  # zipfile, pickle, key and value errors all mean the same here
        raise UserError(f"MNIST data file {path} is corrupt ({type(exc).__name__}). {_FIX}") from None
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise UserError(f"MNIST data file {path} has unexpected shapes {x.shape}, {y.shape}. {_FIX}")
    return x.astype(np.uint8), y.astype(np.int32)


def conv3x3_valid(h: jax.Array, w: jax.Array) -> jax.Array:
    """3×3 VALID convolution of channel-first activations as one matmul over shifted slices
    (im2col).

    h: (C, B, H, W), w: (3, 3, C, O) -> (O, B, H − 2, W − 2); equal to
    ``lax.conv_general_dilated(h, w, (1, 1), "VALID", dimension_numbers=("CNHW", "HWIO", "CNHW"))``.
    XLA's CPU convolutions (and their gradients) run ~30× slower inside ``lax.scan`` loops than
    outside (jax-ml/jax#12868); slices and a matmul do not, and inner loops are all scans here.
    Channels first make it (O × 9C) @ (9C × B·H·W), a wide product, which runs faster on this CPU
    than the channels-last (B·H·W × 9C) @ (9C × O) (``benchmarks/mnist_cnn_layout.py``).
    """
    height, width = h.shape[2] - 2, h.shape[3] - 2
    patches = jnp.concatenate([h[:, :, i:i + height, j:j + width] for i in range(3) for j in range(3)],
                              axis=0)  # (9C, B, H - 2, W - 2), rows ordered (i, j, c) as w
    out = w.reshape(-1, w.shape[-1]).T @ patches.reshape(patches.shape[0], -1)
    return out.reshape(w.shape[-1], h.shape[1], height, width)


class Mnist(Task):
    """Softmax cross-entropy of a CNN on MNIST minibatches; 82,250 parameters, 200 steps default.

    Architecture: three 3×3 convolutions with 16 channels, VALID padding and ReLU
    (28→26→24→22), flatten, dense to 10 classes. Minibatches of ``batch_size`` training images
    scaled to [0, 1] are drawn (with replacement) from the problem's key folded with the step, so a
    run is reproduced by its seed. A problem is a draw of the initial weights (LeCun normal, zero
    biases) together with its minibatch key.
    """

    name = "mnist"
    default_steps = 200
    channels = 16

    def __init__(self, steps: int | None = None, batch_size: int = 100, data: str = "bundled"):
        super().__init__(steps)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.data_source = str(data)
        c = self.channels
        self.tensors = (
            TensorInfo("conv0/weight", 0, "weight", (3, 3, 1, c)),
            TensorInfo("conv0/bias", 0, "bias", (c,)),
            TensorInfo("conv1/weight", 1, "weight", (3, 3, c, c)),
            TensorInfo("conv1/bias", 1, "bias", (c,)),
            TensorInfo("conv2/weight", 2, "weight", (3, 3, c, c)),
            TensorInfo("conv2/bias", 2, "bias", (c,)),
            TensorInfo("dense3/weight", 3, "weight", (22 * 22 * c, 10)),
            TensorInfo("dense3/bias", 3, "bias", (10,)),
        )

    def config(self) -> dict:
        return {**super().config(), "batch_size": self.batch_size, "data": self.data_source}

    @functools.cached_property
    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        # NumPy, not jax arrays: this may first run while a function is being traced
        return load_mnist(self.data_source)

    def sample(self, key: jax.Array) -> Problem:
        self._data  # fail early, with a clear message, if the data is missing
        kp, kb = jax.random.split(key)
        params = {}
        for k, t in zip(jax.random.split(kp, len(self.tensors)), self.tensors):
            if t.kind == "weight":
                fan_in = int(np.prod(t.shape[:-1]))
                params[t.name] = jax.random.normal(k, t.shape) / jnp.sqrt(fan_in)
            else:
                params[t.name] = jnp.zeros(t.shape)
        return Problem(params=params, data={"batch_key": kb})

    def batch(self, data, step) -> tuple[jax.Array, jax.Array]:
        """The minibatch for ``step``: images (B, 28, 28, 1) in [0, 1] and labels (B,)."""
        images, labels = (jnp.asarray(a) for a in self._data)
        key = jax.random.fold_in(data["batch_key"], step)
        idx = jax.random.randint(key, (self.batch_size,), 0, images.shape[0])
        return images[idx][..., None].astype(jnp.float32) / 255.0, labels[idx]

    def logits(self, params: Params, images: jax.Array) -> jax.Array:
        """Class logits (B, 10) for images (B, 28, 28, 1)."""
        h = jnp.moveaxis(images, -1, 0)  # channels first: (1, B, 28, 28)
        for layer in range(3):
            bias = params[f"conv{layer}/bias"][:, None, None, None]
            h = jax.nn.relu(conv3x3_valid(h, params[f"conv{layer}/weight"]) + bias)
        h = jnp.moveaxis(h, 0, -1).reshape(h.shape[1], -1)  # flattened as (H, W, C), as dense3 expects
        return h @ params["dense3/weight"] + params["dense3/bias"]

    def loss(self, data, params: Params, step) -> jax.Array:
        images, labels = self.batch(data, step)
        logits = self.logits(params, images)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
