"""The PNG plots of the experiments: accuracy curves and grouped bars."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def plot_lines(path, x_values, series, xlabel, title, xscale="linear"):
  """Accuracy curves (percent) against `x_values`, one line per series."""
  figure, axis = plt.subplots(figsize=(5.5, 3.8))
  for label, values in series.items():
    axis.plot(x_values, [100 * v for v in values], "o-", label=label)
  if xscale == "log":
    axis.set_xscale("log", base=2)
  axis.set(xlabel=xlabel, ylabel="accuracy (%)", ylim=(0, 100), title=title)
  axis.title.set_fontsize(8)
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def plot_bars(path, groups, series, title):
  """Grouped bars (percent): one group per `groups` entry, one bar per series."""
  figure, axis = plt.subplots(figsize=(6, 3.8))
  width = 0.8 / max(1, len(series))
  positions = np.arange(len(groups))
  for index, (label, values) in enumerate(series.items()):
    axis.bar(positions + index * width, [100 * v for v in values], width,
             label=label)
  axis.set_xticks(positions + width * (len(series) - 1) / 2)
  axis.set_xticklabels(groups, fontsize=8)
  axis.set(ylabel="accuracy (%)", ylim=(0, 100), title=title)
  axis.title.set_fontsize(8)
  axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
