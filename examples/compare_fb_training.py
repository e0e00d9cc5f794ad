r"""Clean and PGD accuracy of f_b checkpoints side by side.

Compares ways of adversarially training f_b (e.g. Madry PGD-7 against FGSM
with a random start, "fast adversarial training") at equal epochs: each
checkpoint is scored on the same first test images, clean and under L∞ PGD
(cross-entropy, random start, `--restarts` runs), with 95% Clopper-Pearson
intervals. A checkpoint is a `.keras` f_b, or a per-epoch backup
(`*.weights.h5`) written by `pretrain_fb.py`'s adversarial trainer, loaded
into the architecture of --model/--width.

Example (the PGD-7 and FGSM-RS runs of the strong_cpu preset after 7 epochs):

  python examples/compare_fb_training.py \
      --checkpoints=pgd7_epoch7=/work/runs_pgd7_ep7/latest.weights.h5 \
      --checkpoints=fgsm_rs_epoch7=/work/runs_fast/epoch_7.weights.h5 \
      --examples=1000 --pgd_steps=20
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import json
import time

from absl import app
from absl import flags
import keras
import numpy as np

import adv_layer  # pylint: disable=unused-import  (registers the layer)
from adv_layer import data
from adv_layer import models
from adv_layer import training
from attacks import common
from attacks import pgd
from attacks import scoring

FLAGS = flags.FLAGS


def define_flags():
  """Defines the program's flags (called before `app.run`)."""
  flags.DEFINE_multi_string("checkpoints", [],
                            "NAME=PATH of a .keras f_b or a trainer backup "
                            "(.weights.h5); repeat the flag.")
  flags.DEFINE_string("model", "small_vgg", "Architecture of the backups.")
  flags.DEFINE_float("width", 1.0, "Width multiplier of the backups' model.")
  flags.DEFINE_integer("examples", 1000, "First N test images.")
  flags.DEFINE_string("epsilon", "8/255", "L∞ radius of the PGD evaluation.")
  flags.DEFINE_integer("pgd_steps", 20, "PGD steps (step 2.5 eps / steps).")
  flags.DEFINE_integer("restarts", 1, "PGD random restarts.")
  flags.DEFINE_integer("seed", 0, "Seed of the PGD random starts.")
  flags.DEFINE_string("data_dir", None, "tfds data directory.")
  flags.DEFINE_string("json_out", None, "Also write the rows to this file.")


def load_checkpoint(path, model_name, width, input_shape, num_classes):
  """f_b from a `.keras` file or from an adversarial trainer's backup.

  Args:
    path: a `.keras` file (the architecture arguments are then unused) or a
      `.weights.h5` backup of `training.AdversarialTrainer`.
    model_name, width: the backup's architecture (`models.build_model`).
    input_shape: image shape.
    num_classes: classes.

  Returns:
    The `keras.Model` f_b (logits out).

  Raises:
    ValueError: for a path that is neither.
  """
  if path.endswith(".keras"):
    return keras.saving.load_model(path, compile=False)
  if not path.endswith(".weights.h5"):
    raise ValueError(f"A checkpoint must be a .keras or .weights.h5 file. "
                     f"Received: path={path!r}")
  f_b = models.build_model(model_name, num_classes=num_classes,
                           input_shape=input_shape, width=width, seed=0)
  trainer = training.AdversarialTrainer(f_b, name="pgd_trainer")
  trainer.load_weights(path)
  return f_b


def percent_with_interval(correct):
  """"75.0% [19.4, 99.4]": a boolean array's mean and 95% interval, in %."""
  low, high = scoring.clopper_pearson(int(np.sum(correct)), len(correct))
  return f"{100 * np.mean(correct):.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def evaluate(f_b, x, y, epsilon, steps, restarts, seed, batch_size=250):
  """Per-image clean and PGD correctness of a deterministic f_b.

  Args:
    f_b: the model (logits out).
    x: float32 images in [0, 1].
    y: int labels.
    epsilon, steps, restarts, seed: the PGD attack (`attacks.pgd.pgd`).
    batch_size: images per attack batch.

  Returns:
    Two boolean arrays: correct on x; correct on x and on its PGD image.
  """
  clean = np.argmax(f_b.predict(x, batch_size=batch_size, verbose=0), -1) == y
  x_adv = np.concatenate([
      pgd.pgd(f_b, x[i:i + batch_size], y[i:i + batch_size], epsilon=epsilon,
              steps=steps, restarts=restarts, seed=seed).numpy()
      for i in range(0, len(x), batch_size)])
  robust = np.argmax(f_b.predict(x_adv, batch_size=batch_size, verbose=0),
                     -1) == y
  return clean, robust & clean


def main(argv):
  del argv
  if not FLAGS.checkpoints:
    raise ValueError("Give at least one --checkpoints=NAME=PATH. Received: "
                     "checkpoints=[]")
  epsilon = common.parse_epsilon(FLAGS.epsilon)
  common.check_number("examples", FLAGS.examples, minimum=1, integer=True)
  specs = [spec.partition("=") for spec in FLAGS.checkpoints]
  for spec, (name, equals, path) in zip(FLAGS.checkpoints, specs):
    if not (name and equals and path):
      raise ValueError(f"Each --checkpoints must read NAME=PATH. Received: "
                       f"checkpoints={spec!r}")
  x, y = data.load_arrays("cifar10", f"test[:{FLAGS.examples}]",
                          data_dir=FLAGS.data_dir)
  rows = []
  for name, _, path in specs:
    start = time.perf_counter()
    f_b = load_checkpoint(path, FLAGS.model, FLAGS.width, x.shape[1:], 10)
    clean, robust = evaluate(f_b, x, y, epsilon, FLAGS.pgd_steps,
                             FLAGS.restarts, FLAGS.seed)
    rows.append({"name": name, "path": path, "clean": float(clean.mean()),
                 "pgd": float(robust.mean()),
                 "clean_text": percent_with_interval(clean),
                 "pgd_text": percent_with_interval(robust),
                 "seconds": time.perf_counter() - start})
  print(f"CIFAR-10 (JPEG copy), first {len(x)} test images; PGD-"
        f"{FLAGS.pgd_steps} CE, eps {FLAGS.epsilon}, step 2.5 eps/steps, "
        f"{FLAGS.restarts} restart(s), seed {FLAGS.seed}; 95% Clopper-Pearson")
  print(f"{'checkpoint':<24} {'clean':>22} {'PGD':>22}")
  for row in rows:
    print(f"{row['name']:<24} {row['clean_text']:>22} {row['pgd_text']:>22}")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
