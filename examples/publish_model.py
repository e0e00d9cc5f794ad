r"""Publishes a trained model into the zoo (`adv_layer.zoo`) with its card.

Measures the clean accuracy on the first --test_examples test images (draws
of g pinned to seed 0 for a defended model), then `zoo.publish` saves the
model and its card (`adv_layer/zoo_models/README.md` lists the keys) and
measures the card's 500-image check on the saved file. The training wall
time is summed from the training logs (`--log`: every Keras "N/N - Ts - ..."
epoch line and every "g cache: ... (N images, R images/s)" line of the
cached draws, as N / R; all resumed runs together) unless --wall_time_s
gives it.

Example:

  python examples/publish_model.py --model=/work/runs_fast/f_b.keras \
      --name=cifar10/small_vgg_fgsm_rs --log=/work/runs_fast/pretrain_fb.log \
      --description="small VGG (the paper's f_b), FGSM-RS 8/255 ..." \
      --training_command="python examples/pretrain_fb.py --preset=strong_cpu"
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import re

from absl import app
from absl import flags
import keras

import adv_layer  # pylint: disable=unused-import  (registers the layer)
from adv_layer import data
from adv_layer import zoo

FLAGS = flags.FLAGS
EPOCH_LINE = re.compile(r"^\s*\d+/\d+ - (\d+)s - ")
CACHE_LINE = re.compile(
    r"^g cache: draw \d+/\d+, shard \d+ \((\d+) images, ([\d.]+) images/s\)")


def define_flags():
  """Defines the program's flags (called before `app.run`)."""
  flags.DEFINE_string("model", None, "The trained .keras model.")
  flags.DEFINE_string("name", None, "Zoo name, 'dataset/model'.")
  flags.DEFINE_string("description", None, "The card's description.")
  flags.DEFINE_string("training_command", None, "The command(s) that trained it.")
  flags.DEFINE_integer("seed", 0, "The training seed.")
  flags.DEFINE_multi_string("log", [], "Training logs (Keras verbose=2, g "
                            "cache lines) whose times sum to the wall time.")
  flags.DEFINE_float("wall_time_s", None, "Training wall time (default: from "
                     "--log).")
  flags.DEFINE_string("machine", "2 CPU cores (AMD EPYC, AVX-512), no GPU",
                      "Where it was trained.")
  flags.DEFINE_integer("test_examples", 10000,
                       "Test images of the card's clean accuracy.")
  flags.DEFINE_string("data_name", "CIFAR-10 (JPEG copy)", "The data in words.")
  flags.DEFINE_string("dataset", "cifar10", "tfds dataset name.")
  flags.DEFINE_string("root", zoo.ZOO_DIR, "The zoo folder.")
  flags.DEFINE_string("data_dir", None, "tfds data directory.")
  for name in ("model", "name", "description", "training_command"):
    flags.mark_flag_as_required(name)


def logged_seconds(paths):
  """The training time in logs: Keras `verbose=2` epochs and g cache shards.

  A cache shard's time is its images over its logged rate (the rate has one
  decimal: the sum is within 0.2% of the clock).

  Raises:
    ValueError: if the logs hold no epoch line.
  """
  total, epochs = 0.0, 0
  for path in paths:
    with open(path) as f:
      for line in f:
        match = EPOCH_LINE.match(line)
        if match:
          total += float(match.group(1))
          epochs += 1
        match = CACHE_LINE.match(line)
        if match:
          total += float(match.group(1)) / float(match.group(2))
  if not epochs:
    raise ValueError(f"No epoch lines ('N/N - Ts - ...') in the logs. "
                     f"Received: log={paths!r}")
  return total


def main(argv):
  del argv
  if FLAGS.wall_time_s is None and not FLAGS.log:
    raise ValueError("Give --wall_time_s or --log. Received: neither")
  wall = (FLAGS.wall_time_s if FLAGS.wall_time_s is not None
          else logged_seconds(FLAGS.log))
  x, y = data.load_arrays(FLAGS.dataset, f"test[:{FLAGS.test_examples}]",
                          data_dir=FLAGS.data_dir)
  model = keras.saving.load_model(FLAGS.model, compile=False)
  accuracy = zoo.measure_accuracy(model, x, y, seed=0)
  entry = zoo.publish(keras.saving.load_model(FLAGS.model, compile=False),
                      FLAGS.name, {
                          "description": FLAGS.description,
                          "data": FLAGS.data_name, "dataset": FLAGS.dataset,
                          "training_command": FLAGS.training_command,
                          "seed": FLAGS.seed, "clean_accuracy": accuracy,
                          "test_images": len(y), "wall_time_s": wall,
                          "machine": FLAGS.machine},
                      root=FLAGS.root, data_dir=FLAGS.data_dir)
  print(f"Published {FLAGS.name}: clean accuracy {100 * accuracy:.2f}% on "
        f"{len(y)} test images, check {100 * entry['check']['accuracy']:.2f}% "
        f"on {entry['check']['split']}, wall time {wall / 3600:.2f} h")


if __name__ == "__main__":
  define_flags()
  app.run(main)
