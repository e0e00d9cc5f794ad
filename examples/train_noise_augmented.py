r"""Trains the base classifier of randomized smoothing on noisy CIFAR-10 images.

Cohen, Rosenfeld, Kolter (ICML 2019): the classifier is trained with
N(0, σ²) noise added to every training image and smoothed with the same σ at
test time (`attacks.defenses.builders.smoothed`, the leaderboard's
`randomized_smoothing` entry). Presets: `attacks.defenses.noise_training.
PRESETS` (smoke, cpu, paper); the run checkpoints each epoch into
--checkpoint_dir and resumes when rerun.

  python examples/train_noise_augmented.py --preset=cpu --sigma=0.25 \
      --output=runs/leaderboard/models/noise_augmented.keras
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
  noise_training.define_flags(
      "runs/leaderboard/models/noise_augmented.keras")
  flags.DEFINE_float("sigma", 0.25, "Noise standard deviation.")


def main(argv):
  del argv
  classifier, test = noise_training.train_from_flags(
      noise_training.train_noise_augmented, sigma=FLAGS.sigma)
  if test is not None:
    noisy = noise_training.noisy_trainer(classifier, FLAGS.sigma, FLAGS.seed)
    print(f"Accuracy on {FLAGS.test_examples} test images: clean "
          f"{training.accuracy(classifier, test):.4f}, one noisy draw "
          f"{training.accuracy(noisy, test):.4f}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
