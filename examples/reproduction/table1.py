"""Table 1: the choice of f_b (untrained, trained some epochs, adversarial)."""

import keras
import numpy as np
import tensorflow as tf

import adv_layer
from examples.reproduction import experiment
from examples.reproduction import markdown
from examples.reproduction import plots
from examples.reproduction import reference


def expected_transform_distance(layer, x, draws, seed, chunk=64):
  """‖x − E g(x)‖∞ and mean |x − E g(x)| per image, E over `draws` draws.

  Also returns the estimation noise of the ∞-norm: E g(x) is a mean of
  `draws` samples, so even g(x) = x + zero-mean noise gives a positive
  distance. Half the distance between the means of the two halves of the
  draws has the same variance as the full mean's error; its ∞-norm is the
  floor below which the figure is noise (the paper's 0.005 for an untrained
  f_b is at its floor with 5000 draws).

  Args:
    layer: an `AdversarialTransform`.
    x: float32 images.
    draws: samples of g per image (even).
    seed: integer seed of the draws.
    chunk: draws per transform call.

  Returns:
    dict of per-image averages: `linf`, `mean_abs`, `linf_noise_floor`.
  """
  generator = keras.random.SeedGenerator(seed)
  x = tf.convert_to_tensor(x, tf.float32)
  half = max(1, draws // 2)
  sums = [np.zeros(x.shape, np.float64), np.zeros(x.shape, np.float64)]
  for part in range(2):
    done = 0
    while done < half:
      count = min(chunk, half - done)
      tiled = tf.tile(x, [count, 1, 1, 1])
      out = np.asarray(layer.transform(tiled, seed=generator))
      sums[part] += out.reshape((count,) + tuple(x.shape)).sum(axis=0)
      done += count
  means = [s / half for s in sums]
  expected = (means[0] + means[1]) / 2
  difference = np.abs(np.asarray(x) - expected).reshape(len(x), -1)
  noise = np.abs(means[0] - means[1]).reshape(len(x), -1) / 2
  return {"linf": float(difference.max(axis=1).mean()),
          "mean_abs": float(difference.mean()),
          "linf_noise_floor": float(noise.max(axis=1).mean()),
          "images": int(len(x)), "draws": 2 * half}


def run(exp):
  """Table 1: the choice of f_b."""
  s = exp.settings
  columns = {"untrained": exp.models.fb_untrained}
  for epochs in s["fb_snapshots"]:
    columns[f"{epochs} epoch{'s' if epochs > 1 else ''}"] = (
        lambda e=epochs: exp.models.fb_standard(e))
  columns["adv. trained"] = exp.models.fb_adversarial
  rows = {}
  for label, get_fb in columns.items():
    f_b, fb_name = get_fb()
    model = exp.models.defended(f_b, fb_name, 0.2, 13, "sweep")
    spec = {"f_b": fb_name}
    layer = adv_layer.find_transforms(model)[0]
    rows[label] = {
        "f_b": fb_name,
        "fb_clean": exp.cached(f"fb_clean-{fb_name}", spec,
                               lambda f=f_b: exp.clean(f, draws=1)),
        "clean": exp.cached(f"clean-{fb_name}", spec, lambda m=model: exp.clean(m)),
        "bpda_identity": exp.cached(
            f"bpda_i-{fb_name}", [spec, s["bpda"], s["bpda_i_eot"]],
            lambda m=model: exp.score_adv(m, exp.bpda_pgd(
                m, "bpda_identity", eot_samples=s["bpda_i_eot"]))),
        "distance": exp.cached(
            f"distance-{fb_name}", [spec, s["distance_images"],
                                    s["distance_draws"]],
            lambda l=layer: expected_transform_distance(
                l, exp.x[:s["distance_images"]], s["distance_draws"], exp.seed)),
    }
  labels = list(rows)
  paper = reference.PAPER["table1"]
  paper_bpda = dict(zip(paper["columns"], paper["bpda_identity"]))
  plot = exp.path("table1.png")
  attack = "BPDA-I " + experiment.bpda_text(exp, s["bpda_i_eot"])
  plots.plot_bars(plot, labels, {
      "clean": [rows[k]["clean"]["mean"] for k in labels],
      "BPDA-I": [rows[k]["bpda_identity"]["mean"] for k in labels],
      "BPDA-I (paper)": [paper_bpda.get(k, float("nan")) for k in labels],
      "‖x − E g(x)‖∞ (x100 %)": [rows[k]["distance"]["linf"] for k in labels],
      "mean |x − E g(x)| (x100 %)": [rows[k]["distance"]["mean_abs"]
                                     for k in labels]},
                 experiment.caption(exp, attack, s["num_examples_eot"]))
  return exp.write({"rows": rows, "attack": attack}, [plot])


def summary_lines(result):
  """Markdown lines of the Table 1 section of the summary."""
  paper = reference.PAPER["table1"]
  rows = result["rows"]
  labels = list(rows)
  paper_index = {c: i for i, c in enumerate(paper["columns"])}
  lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]

  def row(title, values):
    lines.append(f"| {title} | " + " | ".join(values) + " |")

  def paper_value(key, label, fmt):
    index = paper_index.get(label)
    return "-" if index is None else fmt(paper[key][index])

  row("f_b's own standard acc. (ours)",
      [markdown.pct(rows[k]["fb_clean"]["mean"]) for k in labels])
  row("Standard acc. (ours)",
      [markdown.pct(rows[k]["clean"]["mean"]) for k in labels])
  row("Standard acc. (paper)",
      [paper_value("clean", k, markdown.pct) for k in labels])
  row("BPDA-I acc. (ours)",
      [markdown.pct(rows[k]["bpda_identity"]["mean"]) for k in labels])
  row("BPDA-I acc. (paper)",
      [paper_value("bpda_identity", k, markdown.pct) for k in labels])
  row("‖x − E g(x)‖∞ (ours)", [f"{rows[k]['distance']['linf']:.3f}" for k in labels])
  row("noise floor of that (ours)",
      [f"{rows[k]['distance']['linf_noise_floor']:.3f}" for k in labels])
  row("‖x − E g(x)‖∞ (paper)",
      [paper_value("linf", k, lambda v: f"{v:.3f}") for k in labels])
  row("mean \\|x − E g(x)\\| (ours)",
      [f"{rows[k]['distance']['mean_abs']:.4f}" for k in labels])
  distance = next(iter(rows.values()))["distance"]
  lines += ["", f"BPDA-I: {result['attack']}. E g(x) over {distance['draws']} "
            f"draws on {distance['images']} images (paper: 5000 draws).",
            markdown.training_line(result, "sweep") + "."]
  return lines
