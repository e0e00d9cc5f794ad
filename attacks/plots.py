"""The plots of a robustness report (PNG): accuracy against epsilon and EOT
samples, and the grid of x / g(x) / E[g(x)] / x_adv.
"""

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

__all__ = [
    "plot_accuracy_vs_eot", "plot_accuracy_vs_epsilon", "plot_transform_grid",
    "transform_views"
]


def _set_title(axis, title):
  """A plot title wrapped to the width of the 5-inch figures here."""
  axis.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)


def plot_accuracy_vs_epsilon(curve, path, title, clean=None):
  """Accuracy against epsilon (in /255 units on a log axis).

  Args:
    curve: dict epsilon -> accuracy.
    path: PNG path.
    title: plot title (name the attack, its budget and data).
    clean: clean accuracy, drawn as a horizontal line, or None.
  """
  eps = sorted(curve)
  figure, axis = plt.subplots(figsize=(5, 3.5))
  axis.plot([e * 255 for e in eps], [100 * curve[e] for e in eps], "o-",
            label="robust (mean over draws)")
  if clean is not None:
    axis.axhline(100 * clean, color="gray", linestyle="--", label="clean")
  axis.set_xscale("log", base=2)
  axis.set(xlabel="epsilon (x/255)", ylabel="accuracy (%)", ylim=(0, 100))
  _set_title(axis, title)
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def plot_accuracy_vs_eot(curve, path, title):
  """Accuracy against EOT samples, as in the paper's Fig. 7.

  Args:
    curve: dict EOT samples -> accuracy.
    path: PNG path.
    title: plot title.
  """
  samples = sorted(curve)
  figure, axis = plt.subplots(figsize=(5, 3.5))
  axis.plot(samples, [100 * curve[k] for k in samples], "o-")
  axis.set_xscale("log", base=2)
  axis.set(xlabel="EOT samples", ylabel="robust accuracy, mean over draws (%)",
           ylim=(0, 100))
  _set_title(axis, title)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def transform_views(layer, x, samples=64):
  """One draw g(x) and the EOT image E[g(x)] over `samples` draws.

  Args:
    layer: an `AdversarialTransform`.
    x: float32 images.
    samples: draws averaged for E[g(x)] (paper Fig. 4 uses 5000).

  Returns:
    `(g_x, mean_g_x)` as NumPy arrays of the shape of `x`.
  """
  x = tf.convert_to_tensor(x, tf.float32)
  g_x = np.asarray(layer.transform(x))
  tiled = tf.tile(x, [samples] + [1] * (len(x.shape) - 1))
  draws = np.asarray(layer.transform(tiled)).reshape((samples,) + tuple(x.shape))
  return g_x, draws.mean(axis=0)


def plot_transform_grid(columns, path, title):
  """A grid: one row per image, one column per view (paper Figs. 2 and 4).

  Args:
    columns: ordered dict column label -> images `(n, h, w, c)` in [0, 1].
    path: PNG path.
    title: figure title.
  """
  labels = list(columns)
  rows = len(next(iter(columns.values())))
  figure, axes = plt.subplots(rows, len(labels), squeeze=False,
                              figsize=(1.6 * len(labels), 1.6 * rows + 0.4))
  for col, label in enumerate(labels):
    for row in range(rows):
      image = np.clip(np.asarray(columns[label][row]), 0.0, 1.0)
      axis = axes[row][col]
      axis.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None,
                  vmin=0.0, vmax=1.0)
      axis.set_xticks([])
      axis.set_yticks([])
      if row == 0:
        axis.set_title(label, fontsize=8)
  figure.suptitle(title, fontsize=9)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
