r"""Is our suite at least as strong as a peer toolbox's attacks?

Runs cleverhans' own tf2 attacks (`projected_gradient_descent`,
`momentum_iterative_method`) on the same images and the same budget as a
finished `attack_eval.py` report, through our gradient estimators (cleverhans
has no notion of BPDA or EOT: its `model_fn` is our estimator-backed model,
with EOT done by averaging the logits of K tiled draws). Each result is scored
like the suite (R fresh draws, strict accuracy) and compared per example with
the suite's worst case: an image the suite calls robust but a peer attack
fools is a weakness of the suite.

Example:

  python examples/compare_toolbox.py --model=runs/demo/defended.keras \
      --report=runs/demo/report/report.json --out=runs/demo/toolbox.json
"""

import os

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import json

from absl import app
from absl import flags
from cleverhans.tf2.attacks.momentum_iterative_method import momentum_iterative_method
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
import keras
import numpy as np
import tensorflow as tf

import adv_layer  # Registers AdversarialTransform for load_model.
from adv_layer import data
from attacks import model_fns
from attacks import preflight
from attacks import scoring

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("model", None, "The model that was attacked: a .keras "
                      "path or zoo:NAME for a published model (adv_layer.zoo).")
  flags.DEFINE_string("report", None, "report.json of attack_eval.py on it.")
  flags.DEFINE_string("out", None, "Where to write the comparison JSON.")
  flags.DEFINE_string("data_dir", None, "tfds data directory.")
  flags.mark_flags_as_required(["model", "report"])


def eot_logits_fn(model_fn, eot_samples):
  """Mean logits over `eot_samples` tiled draws: EOT for a toolbox without it."""

  def averaged(x):
    tiled = tf.tile(x, [eot_samples] + [1] * (len(x.shape) - 1))
    logits = tf.reshape(model_fn(tiled), [eot_samples, tf.shape(x)[0], -1])
    return tf.reduce_mean(logits, axis=0)

  return averaged


def peer_attacks(model, defended, budget, seed):
  """The cleverhans attacks to run: name -> (x, y) -> x_adv."""
  epsilon, steps = budget["epsilon"], budget["steps"]
  step_size = 2.5 * epsilon / steps
  low, high = budget["value_range"]
  sources = {"": lambda x: model(x, training=False)}
  if defended:
    sources = {
        f"_{name}": eot_logits_fn(
            model_fns.defended_model_fn(model, name, seed=seed),
            budget["eot_samples"])
        for name in ("bpda_identity", "bpda")
    }
  attacks = {}
  for suffix, model_fn in sources.items():
    attacks["cleverhans_pgd" + suffix] = (
        lambda x, y, f=model_fn: projected_gradient_descent(
            f, x, epsilon, step_size, steps, np.inf, clip_min=low,
            clip_max=high, y=y, rand_init=True, rand_minmax=epsilon,
            sanity_checks=False))
    attacks["cleverhans_mim" + suffix] = (
        lambda x, y, f=model_fn: momentum_iterative_method(
            f, x, epsilon, step_size, steps, np.inf, clip_min=low,
            clip_max=high, y=y, sanity_checks=False))
  return attacks


def compare(model, report, x, y):
  """Scores every peer attack and compares it with the suite per example.

  Args:
    model: the attacked Keras model.
    report: the parsed report.json of the suite run on `x`, `y`.
    x: the same images (float32, [0, 1]).
    y: their labels.

  Returns:
    A JSON-ready dict.
  """
  seed, draws, budget = report["seed"], report["draws"], report["budget"]
  suite_robust = np.asarray(report["worst_case"]["robust"], bool)
  defended = bool(adv_layer.find_transforms(model))
  rows = {}
  for name, attack in peer_attacks(model, defended, budget, seed).items():
    tf.random.set_seed(seed)
    x_adv = attack(tf.constant(x), tf.constant(y))
    result = scoring.score(model, x_adv.numpy(), y, draws=draws, seed=seed)
    peer_robust = np.asarray(result.robust, bool)
    rows[name] = {
        "mean_accuracy": result.mean_accuracy,
        "strict_accuracy": result.strict_accuracy,
        "fooled_by_peer_only": int(np.sum(suite_robust & ~peer_robust)),
    }
  suite_strict = float(np.mean(suite_robust))
  return {
      "data": report["meta"].get("data"), "images": int(len(x)), "seed": seed,
      "draws": draws, "budget": budget,
      "suite_worst_case_strict": suite_strict,
      "peer_attacks": rows,
      "suite_at_least_as_strong": all(
          suite_strict <= r["strict_accuracy"] for r in rows.values()),
  }


def main(argv):
  del argv
  with open(FLAGS.report, encoding="utf-8") as f:
    report = json.load(f)
  meta = report["meta"]
  x, y = data.load_arrays(meta["dataset"], meta["split"], data_dir=FLAGS.data_dir)
  model = preflight.load_model(FLAGS.model)  # A .keras path or zoo:NAME.
  result = compare(model, report, x, y)
  print(f"suite worst case (strict): {result['suite_worst_case_strict']:.1%}")
  for name, row in result["peer_attacks"].items():
    print(f"{name:32s} mean {row['mean_accuracy']:.1%} strict "
          f"{row['strict_accuracy']:.1%} fooled only by it: "
          f"{row['fooled_by_peer_only']}")
  print(f"suite at least as strong: {result['suite_at_least_as_strong']}")
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
