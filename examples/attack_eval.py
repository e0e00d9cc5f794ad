r"""Worst-case robustness report of a Keras classifier, defended or not.

Runs the attack suite of `attacks.suite` (Xiao & Zheng, CVPR 2020, Sec. 4, plus
adaptive attacks) on the first test images, scores every adversarial image
with fresh draws of the model, runs the sanity checks of `attacks.sanity` and
writes report.json, report.md and PNG plots into --report_dir. For a model
containing `AdversarialTransform` the white-box attacks go through BPDA,
BPDA-I and EOT; for a plain classifier they run on the model directly.

Example (after `python examples/train_cifar10.py --preset=smoke`):

  python examples/attack_eval.py --model=runs/smoke/defended.keras \
      --attacks=adaptive --num_examples=100 --steps=20 --eot_samples=4

Prints the table (like the paper's Table 3), the sanity flags and the
worst-case robust accuracy.
"""

import os

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import time

from absl import app
from absl import flags
import keras
import numpy as np
import tqdm

import adv_layer  # Registers AdversarialTransform for load_model.
from adv_layer import data
from attacks import report
from attacks import sanity
from attacks import suite

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "The .keras model to attack (logits out).")
flags.DEFINE_string("surrogate", None,
                    "Optional .keras model trained independently, the source "
                    "of the black-box transfer attack.")
flags.DEFINE_list("attacks", ["adaptive"],
                  "Attack names and/or presets: " + ", ".join(suite.PRESETS) +
                  "; attacks: " + ", ".join(suite.REGISTRY))
flags.DEFINE_string("epsilon", "8/255",
                    "L-inf budget on [0, 1] images, a number or a fraction.")
flags.DEFINE_integer("num_examples", 100, "Attack the first N test images.")
flags.DEFINE_integer("eot_samples", 8, "Draws of g averaged per gradient.")
flags.DEFINE_integer("steps", 20, "Iterations of gradient attacks.")
flags.DEFINE_integer("restarts", 1, "Random restarts of the attacks that take them.")
flags.DEFINE_integer("queries", 1000, "Queries per image of query-based attacks.")
flags.DEFINE_integer("draws", 5, "Draws of the model scoring each image.")
flags.DEFINE_integer("seed", 0, "Seed of the attacks and the scoring draws.")
flags.DEFINE_string("report_dir", "runs/attack_eval", "Output folder.")
flags.DEFINE_string("dataset", "cifar10", "tfds image classification dataset.")
flags.DEFINE_string("split", "test", "tfds split the images come from.")
flags.DEFINE_string("data_dir", None,
                    "tfds data directory (default: $TFDS_DATA_DIR, else "
                    "~/tensorflow_datasets).")
flags.DEFINE_string("data_name", None,
                    "Name of the data in the report (default: 'CIFAR-10 (JPEG "
                    "copy)' for cifar10, else --dataset).")
flags.DEFINE_integer("reparam_images", 512,
                     "Training images for the reparameterization attack's h.")
flags.DEFINE_list("eot_curve", ["1", "2", "4", "8"],
                  "EOT samples of the accuracy-vs-EOT plot (BPDA-I+EOT PGD; "
                  "defended models only; empty: no plot).")
flags.DEFINE_integer("grid_images", 4, "Rows of the x / g(x) / E[g(x)] grid.")
flags.DEFINE_integer("grid_samples", 32, "Draws averaged for E[g(x)].")
flags.DEFINE_bool("convergence", True,
                  "Rerun the strongest white-box attack with 2x steps and "
                  "2x restarts (the convergence sanity check).")
flags.DEFINE_bool("keep_going", True,
                  "Record an attack that raises as failed (flagged in the "
                  "report) and run the others.")
flags.mark_flag_as_required("model")


def parse_epsilon(text):
  """Reads "8/255" or "0.031" as a float.

  Raises:
    ValueError: for anything else, naming the flag.
  """
  try:
    if "/" in text:
      numerator, denominator = text.split("/")
      return float(numerator) / float(denominator)
    return float(text)
  except ValueError as error:
    raise ValueError(f"`epsilon` must be a number or a fraction like 8/255. "
                     f"Received: epsilon={text!r}") from error


def load_images(split, count):
  """The first `count` images of `split` as float32 [0, 1] arrays."""
  return data.load_arrays(FLAGS.dataset, f"{split}[:{count}]",
                          data_dir=FLAGS.data_dir)


def data_name():
  if FLAGS.data_name:
    return FLAGS.data_name
  return "CIFAR-10 (JPEG copy)" if FLAGS.dataset == "cifar10" else FLAGS.dataset


def eot_curve(target, x, y, budget):
  """Accuracy of BPDA-I+EOT PGD against EOT samples (paper Fig. 7)."""
  samples = [int(k) for k in FLAGS.eot_curve]
  if not target.defended or not samples:
    return None
  curve = {}
  for k in tqdm.tqdm(samples, desc="accuracy vs EOT samples"):
    result = suite.rerun(target, "bpda_identity_eot", x, y, budget, FLAGS.seed,
                         FLAGS.draws, eot_samples=k)
    curve[k] = result.score.mean_accuracy
  return curve


def transform_grid(target, suite_result, x):
  """Columns x / g(x) / E[g(x)] / x_adv (strongest attack) of the first images."""
  rows = min(FLAGS.grid_images, len(x))
  if rows < 1:
    return None
  columns = {"x": x[:rows]}
  if target.defended:
    g_x, mean_g_x = report.transform_views(target.transforms[0], x[:rows],
                                           FLAGS.grid_samples)
    columns["g(x)"] = g_x
    columns[f"E[g(x)] ({FLAGS.grid_samples} draws)"] = mean_g_x
  strongest = suite_result.worst["strongest"]
  for result in suite_result.results:
    if result.name == strongest:
      columns[f"x_adv ({strongest})"] = result.x_adv[:rows]
  return columns


def main(argv):
  del argv
  start = time.perf_counter()
  budget = suite.Budget(
      epsilon=parse_epsilon(FLAGS.epsilon), steps=FLAGS.steps,
      restarts=FLAGS.restarts, eot_samples=FLAGS.eot_samples,
      queries=FLAGS.queries).validate()
  model = keras.saving.load_model(FLAGS.model)
  surrogate = keras.saving.load_model(FLAGS.surrogate) if FLAGS.surrogate else None
  x, y = load_images(FLAGS.split, FLAGS.num_examples)
  names = suite.resolve_attacks(FLAGS.attacks)
  train_images = None
  if "reparam" in names and adv_layer.find_transforms(model):
    train_images, _ = load_images("train", FLAGS.reparam_images)
  target = suite.Target(model, surrogate=surrogate, train_images=train_images)

  with tqdm.tqdm(total=len(suite.planned(target, names)), desc="attacks") as bar:

    def progress(result):
      bar.set_postfix(last=result.name, acc=f"{result.score.mean_accuracy:.3f}")
      bar.update(1)

    suite_result = suite.run_suite(target, x, y, names, budget, seed=FLAGS.seed,
                                   draws=FLAGS.draws, progress=progress,
                                   keep_going=FLAGS.keep_going)
  print("Sanity checks (extra attack runs) ...")
  checks, extras = sanity.run_checks(target, suite_result, x, y,
                                     convergence=FLAGS.convergence)
  curve = eot_curve(target, x, y, budget)
  if curve:
    extras["eot_attack"] = "bpda_identity_eot"
  meta = {
      "data": data_name(), "dataset": FLAGS.dataset,
      "split": f"{FLAGS.split}[:{FLAGS.num_examples}]", "model": FLAGS.model,
      "surrogate": FLAGS.surrogate, "attacks_requested": FLAGS.attacks,
      "elapsed_s": time.perf_counter() - start,
  }
  paths = report.write_report(FLAGS.report_dir, suite_result, checks, extras,
                              meta, grid=transform_grid(target, suite_result, x),
                              eot_curve=curve)
  print(report.print_summary(paths["json"]))
  worst = suite_result.worst
  print(f"\nWorst-case robust accuracy: {100 * worst['strict_accuracy']:.1f}% "
        f"(strict over {FLAGS.draws} draws, {len(x)} images of {data_name()}, "
        f"eps={budget.epsilon * 255:.4g}/255), strongest attack: "
        f"{worst['strongest']}")
  print(f"Report: {os.path.abspath(paths['md'])} "
        f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
  app.run(main)
