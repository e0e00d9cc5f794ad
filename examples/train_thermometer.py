r"""Trains a classifier on thermometer-encoded CIFAR-10 images.

Buckman, Roy, Raffel, Goodfellow (ICLR 2018): each pixel becomes a 16-level
thermometer code and the classifier is trained on the codes
(`attacks.defenses.ThermometerEncoding`, the leaderboard's `thermometer`
entry). The saved model holds the encoding: images in, logits out. Presets:
`attacks.defenses.noise_training.PRESETS`; the run checkpoints each epoch
into --checkpoint_dir and resumes when rerun.

  python examples/train_thermometer.py --preset=cpu --epochs=10 \
      --train_examples=50000 --levels=16 \
      --output=runs/leaderboard/models/thermometer.keras
"""

import os

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app
from absl import flags

from adv_layer import training
from attacks.defenses import noise_training

FLAGS = flags.FLAGS


def define_flags():
  """Defines the program's flags (called before `app.run`)."""
  noise_training.define_flags("runs/leaderboard/models/thermometer.keras")
  flags.DEFINE_integer("levels", 16, "Buckets of the encoding.",
                       lower_bound=2)


def main(argv):
  del argv
  model, test = noise_training.train_from_flags(
      noise_training.train_thermometer, levels=FLAGS.levels)
  if test is not None:
    print(f"Clean accuracy on {FLAGS.test_examples} test images: "
          f"{training.accuracy(model, test):.4f}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
