r"""Our APGD against the reference APGD (AutoAttack) on one deterministic model.

Runs `attacks.apgd.apgd` and AutoAttack's own `APGDAttack` /
`APGDAttack_targeted` (the `pyautoattack` package, PyTorch) on the same
images, the same model and the same budget, and prints both robust
accuracies for each loss, iteration count and ε. The reference attacks the
very Keras model: a `torch.autograd.Function` whose forward and backward call
TensorFlow, so both attacks see identical logits and gradients.

The model is a `.keras` classifier (`--model`), or, by default, a small CNN
trained here for 4 epochs on 4,000 CIFAR-10 (JPEG copy) images. Robust
accuracy counts an image when it is classified correctly before and after the
attack (as AutoAttack counts it).

The peer is not a dependency of this project: install it by hand first
(`pip install torch pyautoattack`); nothing in CI runs this program.

Example:

  python examples/compare_apgd.py --split="test[:100]" --epsilons=1,2 \
      --steps=20,100 --losses=ce,dlr,dlr_targeted --seeds=0,1 \
      --out=runs/compare_apgd.json
"""

import os

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import importlib.util
import json
import sys
import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from adv_layer import data
from attacks import apgd
from attacks import preflight

FLAGS = flags.FLAGS
# The peer's packages (PyTorch and AutoAttack's), installed by hand.
PEER_PACKAGES = ("torch", "pyautoattack")


def define_flags():
  flags.DEFINE_string("model", None, "A classifier (logits out): a .keras path "
                      "or zoo:NAME (adv_layer.zoo); None trains the small CNN.")
  flags.DEFINE_string("split", "test[:100]", "CIFAR-10 images attacked.")
  flags.DEFINE_list("epsilons", ["1", "2"], "L∞ budgets, in units of 1/255.")
  flags.DEFINE_list("steps", ["20", "100"], "Iterations N.")
  flags.DEFINE_list("losses", ["ce", "dlr", "dlr_targeted"], "APGD losses.")
  flags.DEFINE_list("seeds", ["0", "1"], "Seeds; each attack runs once per seed.")
  flags.DEFINE_string("data_dir", None, "tfds data directory.")
  flags.DEFINE_string("out", None, "Where to write the comparison JSON.")


def train_model(data_dir=None, seed=0):
  """A small CNN trained 4 epochs on the first 4,000 CIFAR-10 training images."""
  x_train, y_train = data.load_arrays("cifar10", "train[:4000]", data_dir=data_dir)
  keras.utils.set_random_seed(seed)
  model = keras.Sequential([
      keras.Input((32, 32, 3)),
      keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
      keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
      keras.layers.Flatten(),
      keras.layers.Dense(10),
  ])
  model.compile(keras.optimizers.Adam(2e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x_train, y_train, batch_size=64, epochs=4, verbose=0, shuffle=False)
  return model


def torch_module(model):
  """The Keras `model` as a PyTorch callable: TensorFlow forward and backward."""
  import torch  # pylint: disable=g-import-not-at-top  (optional peer only)

  class KerasFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, images):
      ctx.save_for_backward(images)
      logits = model(tf.constant(images.detach().numpy()), training=False)
      return torch.from_numpy(np.array(logits, np.float32))

    @staticmethod
    def backward(ctx, upstream):
      images, = ctx.saved_tensors
      x = tf.constant(images.detach().numpy())
      with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
      grad = tape.gradient(logits, x, output_gradients=tf.constant(upstream.numpy()))
      return torch.from_numpy(np.array(grad, np.float32))

  return KerasFunction.apply


def reference_apgd(model, x, y, epsilon, steps, loss, seed):
  """AutoAttack's APGD (one restart, 9 targets for `dlr_targeted`) on `model`."""
  import torch  # pylint: disable=g-import-not-at-top  (optional peer only)
  from pyautoattack import autopgd_base  # pylint: disable=g-import-not-at-top

  kwargs = dict(n_iter=steps, norm="Linf", n_restarts=1, eps=epsilon, seed=seed,
                device="cpu")
  if loss == "dlr_targeted":
    attack = autopgd_base.APGDAttack_targeted(torch_module(model),
                                              n_target_classes=9, **kwargs)
  else:
    attack = autopgd_base.APGDAttack(torch_module(model), loss=loss, **kwargs)
  x_adv = attack.perturb(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))
  return x_adv.detach().numpy()


def ours_apgd(model, x, y, epsilon, steps, loss, seed):
  """`attacks.apgd.apgd` with one restart (9 targets for `dlr_targeted`)."""
  return np.asarray(apgd.apgd(model, x, y, epsilon=epsilon, steps=steps, loss=loss,
                              seed=seed))


def robust(model, x, x_adv, y, epsilon):
  """Per image: correct on `x` and on `x_adv` (which must lie in the ball)."""
  if np.abs(x_adv - x).max() > epsilon + 1e-5:
    raise ValueError(f"An attack left the ball. Received: max |δ| = "
                     f"{np.abs(x_adv - x).max()}, epsilon={epsilon}")
  clean = np.argmax(model(x, training=False), -1) == y
  return clean & (np.argmax(model(x_adv, training=False), -1) == y)


def compare(model, x, y, attacks, epsilons, steps_list, losses, seeds):
  """Robust accuracies of each implementation for every configuration.

  Args:
    model: a deterministic Keras classifier (logits out).
    x: float32 images in [0, 1].
    y: int32 labels.
    attacks: name -> `(model, x, y, epsilon, steps, loss, seed) -> x_adv`.
    epsilons: L∞ budgets.
    steps_list: iteration counts N.
    losses: APGD losses (`"ce"`, `"dlr"`, `"dlr_targeted"`).
    seeds: integer seeds; each attack runs once per seed.

  Returns:
    A list of JSON-ready rows, one per (loss, steps, epsilon), holding per
    attack name its robust accuracy for each seed and its seconds in all.
  """
  rows = []
  for loss in losses:
    for steps in steps_list:
      for epsilon in epsilons:
        row = {"loss": loss, "steps": steps, "epsilon": epsilon}
        for name, attack in attacks.items():
          start = time.time()
          accuracies = [
              float(np.mean(robust(model, x, attack(model, x, y, epsilon, steps, loss,
                                                    seed), y, epsilon)))
              for seed in seeds
          ]
          row[name] = accuracies
          row[name + "_seconds"] = round(time.time() - start, 1)
        logging.info("%s", row)
        rows.append(row)
  return rows


def missing_peer():
  """The install command of the peer's missing packages, or None."""
  missing = [name for name in PEER_PACKAGES
             if importlib.util.find_spec(name) is None]
  return f"pip install {' '.join(missing)}" if missing else None


def main(argv):
  del argv
  install = missing_peer()
  if install:
    print(f"compare_apgd.py: error: the reference APGD needs "
          f"{' and '.join(PEER_PACKAGES)}, not dependencies of this project: "
          f"run `{install}` first.", file=sys.stderr)
    return 1
  x, y = data.load_arrays("cifar10", FLAGS.split, data_dir=FLAGS.data_dir)
  model = (preflight.load_model(FLAGS.model) if FLAGS.model else
           train_model(FLAGS.data_dir))
  clean = float(np.mean(np.argmax(model(x, training=False), -1) == y))
  epsilons = [float(e) / 255 for e in FLAGS.epsilons]
  seeds = [int(s) for s in FLAGS.seeds]
  rows = compare(model, x, y, {"ours": ours_apgd, "reference": reference_apgd},
                 epsilons, [int(s) for s in FLAGS.steps], FLAGS.losses, seeds)
  print(f"CIFAR-10 (JPEG copy) {FLAGS.split}: {len(x)} images, clean accuracy "
        f"{clean:.1%}; robust accuracy per seed {seeds}")
  for row in rows:
    print(f"{row['loss']:13s} N={row['steps']:<4d} eps={row['epsilon'] * 255:g}/255  "
          f"ours {row['ours']}  reference {row['reference']}  "
          f"({row['ours_seconds']} s vs {row['reference_seconds']} s)")
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump({"data": "CIFAR-10 (JPEG copy)", "split": FLAGS.split,
                 "images": int(len(x)), "clean_accuracy": clean, "seeds": seeds,
                 "rows": rows}, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
