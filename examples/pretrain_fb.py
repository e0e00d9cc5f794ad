r"""Pretrains f_b, the model the adversarial transformation g attacks.

Xiao & Zheng (CVPR 2020), Sec. 3.4 and Table 1: f_b is a small VGG-style
network, preferably adversarially trained (PGD, Madry et al. 2018). The run
checkpoints every epoch (rerun the same command to resume a killed run) and
writes f_b as a `.keras` file for `train_cifar10.py`.

Example (the smoke preset, a few minutes on a CPU):

  python examples/pretrain_fb.py --preset=smoke

Presets (adv_layer.training.PRESETS): smoke, cpu, paper; every flag left
unset takes the preset's value.
"""

import os

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import time

from absl import app
from absl import flags

from adv_layer import data
from adv_layer import models
from adv_layer import training

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "smoke", list(training.PRESETS), "Settings preset.")
flags.DEFINE_bool("adversarial", None,
                  "PGD adversarial training of f_b (default: the preset's).")
flags.DEFINE_integer("epochs", None, "Training epochs.")
flags.DEFINE_integer("batch_size", None, "Global batch size.")
flags.DEFINE_integer("train_examples", None,
                     "Train on the first N training images (0: all).")
flags.DEFINE_integer("test_examples", None,
                     "Evaluate on the first N test images (0: all).")
flags.DEFINE_float("width", None, "Width multiplier of f_b.")
flags.DEFINE_float("learning_rate", None, "Initial SGD learning rate.")
flags.DEFINE_float("epsilon", None, "L-inf budget of PGD adversarial training.")
flags.DEFINE_integer("steps", None, "PGD steps of adversarial training.")
flags.DEFINE_float("step_size", None, "PGD step size of adversarial training.")
flags.DEFINE_string("dataset", "cifar10", "tfds image classification dataset.")
flags.DEFINE_string("data_dir", None,
                    "tfds data directory (default: $TFDS_DATA_DIR, else "
                    "~/tensorflow_datasets; downloads when online).")
flags.DEFINE_string("output", None,
                    "Output .keras path (default: runs/<preset>/f_b.keras).")
flags.DEFINE_string("checkpoint_dir", None,
                    "Per-epoch backup folder (default: next to --output).")
flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES),
                  "tf.distribute strategy (multi_worker reads TF_CONFIG).")
flags.DEFINE_integer("seed", 0, "Seed of initialisation, data order, attacks.")
flags.DEFINE_integer("verbose", 1, "Keras verbosity (1: progress bars).")


def settings():
  """The preset with the flags that were set applied."""
  return training.get_preset(
      FLAGS.preset, fb_adversarial=FLAGS.adversarial, fb_epochs=FLAGS.epochs,
      batch_size=FLAGS.batch_size, train_examples=FLAGS.train_examples,
      test_examples=FLAGS.test_examples, fb_width=FLAGS.width,
      learning_rate=FLAGS.learning_rate, fb_epsilon=FLAGS.epsilon,
      fb_steps=FLAGS.steps, fb_step_size=FLAGS.step_size)


def output_paths(strategy):
  """The .keras output path (the chief writes it) and this worker's backups."""
  output = FLAGS.output or os.path.join("runs", FLAGS.preset, "f_b.keras")
  backup = FLAGS.checkpoint_dir or os.path.splitext(output)[0] + "_backup"
  return output, training.per_worker_path(backup, strategy)


def main(argv):
  del argv
  strategy = training.make_strategy(FLAGS.strategy)  # First: multi-worker setup.
  preset = settings()
  output, backup = output_paths(strategy)
  image_shape, num_classes = data.dataset_spec(FLAGS.dataset, FLAGS.data_dir)
  train_data = data.load_tfds(
      FLAGS.dataset, data.first_examples("train", preset["train_examples"]),
      preset["batch_size"], training=True, data_dir=FLAGS.data_dir,
      seed=FLAGS.seed)
  test_data = data.load_tfds(
      FLAGS.dataset, data.first_examples("test", preset["test_examples"]),
      preset["batch_size"], data_dir=FLAGS.data_dir)
  start = time.time()
  with strategy.scope():
    f_b = models.build_model(preset["fb_model"], num_classes=num_classes,
                             input_shape=image_shape, width=preset["fb_width"],
                             seed=FLAGS.seed)
    training.train_classifier(
        f_b, train_data, preset["fb_epochs"],
        adversarial=preset["fb_adversarial"], epsilon=preset["fb_epsilon"],
        steps=preset["fb_steps"], step_size=preset["fb_step_size"],
        seed=FLAGS.seed, output=output, learning_rate=preset["learning_rate"],
        momentum=preset["momentum"], lr_drop_epoch=preset["fb_lr_drop_epoch"],
        checkpoint_dir=backup, verbose=FLAGS.verbose)
  kind = "adversarially trained" if preset["fb_adversarial"] else "standard"
  print(f"Pretrained f_b ({preset['fb_model']}, width {preset['fb_width']}, "
        f"{kind}) in {time.time() - start:.0f} s; saved to {output}")
  print(f"Clean accuracy of f_b on {FLAGS.dataset} test images: "
        f"{training.accuracy(f_b, test_data):.4f}")


if __name__ == "__main__":
  app.run(main)
