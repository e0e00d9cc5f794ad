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

import time

from absl import app
from absl import flags

from adv_layer import data
from adv_layer import training
from attacks.defenses import noise_training

FLAGS = flags.FLAGS


def define_flags():
  """Defines the program's flags (called before `app.run`)."""
  flags.DEFINE_enum("preset", "smoke", list(noise_training.PRESETS),
                    "Settings preset.")
  flags.DEFINE_float("sigma", 0.25, "Noise standard deviation.")
  flags.DEFINE_string("output", "runs/leaderboard/models/noise_augmented"
                      ".keras", "Where to save the classifier (.keras).")
  flags.DEFINE_string("checkpoint_dir", None, "Backups (default: the output "
                      "path with .backup instead of .keras).")
  flags.DEFINE_integer("epochs", None, "Training epochs.")
  flags.DEFINE_integer("train_examples", None, "First N training images.")
  flags.DEFINE_integer("test_examples", 1000, "Test images of the clean "
                       "accuracy check (0: none).", lower_bound=0)
  flags.DEFINE_string("data_dir", None, "tfds data directory (default: "
                      "TFDS_DATA_DIR or tfds' own).")
  flags.DEFINE_integer("seed", 0, "Seed of initialisation, data and noise.")
  flags.DEFINE_integer("verbose", 2, "Keras verbosity.")


def main(argv):
  del argv
  start = time.perf_counter()
  backup = FLAGS.checkpoint_dir or FLAGS.output[:-len(".keras")] + ".backup"
  classifier = noise_training.train_noise_augmented(
      FLAGS.preset, sigma=FLAGS.sigma, output=FLAGS.output, seed=FLAGS.seed,
      data_dir=FLAGS.data_dir, checkpoint_dir=backup, verbose=FLAGS.verbose,
      epochs=FLAGS.epochs, train_examples=FLAGS.train_examples)
  print(f"Saved {FLAGS.output} ({time.perf_counter() - start:.0f} s)")
  if FLAGS.test_examples:
    test = data.load_tfds("cifar10", f"test[:{FLAGS.test_examples}]",
                          batch_size=500, data_dir=FLAGS.data_dir)
    noisy = noise_training.noisy_trainer(classifier, FLAGS.sigma, FLAGS.seed)
    print(f"Accuracy on {FLAGS.test_examples} test images: clean "
          f"{training.accuracy(classifier, test):.4f}, one noisy draw "
          f"{training.accuracy(noisy, test):.4f}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
