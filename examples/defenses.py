r"""Preprocessing defenses from the literature, saved in front of a classifier.

The layers live in the package, `attacks.defenses.layers` (random resizing
and padding, Xie et al. 2018; bit-depth reduction + JPEG, Guo et al. 2018;
JPEG; Gaussian noise; feature squeezing and median smoothing, Xu et al.
2018); this module re-exports
them under their first names, and importing it registers them, under
"attacks.defenses" and under "examples.defenses", the package name that
`.keras` files saved before the move record: `import examples.defenses` (or
`import attacks.defenses`) before `keras.saving.load_model`, or pass
`--import=examples.defenses` (or `--import=attacks.defenses`) to
`examples/attack_eval.py`. The leaderboard of these and more defenses is
`examples/leaderboard.py`.

As a program, it puts one defense in front of a classifier, saves the
defended model, prints its clean accuracy on the first test images (one
seeded draw) and the command that evaluates it:

  python -m examples.defenses --defense=random_resize_pad \
      --output=runs/defenses/random_resize_pad.keras
"""

import inspect
import os

from absl import app
from absl import flags
import keras
import numpy as np

from adv_layer import data
from attacks import common
from attacks import scoring
from attacks.defenses import builders
from attacks.defenses.layers import BitDepthJpeg
from attacks.defenses.layers import FeatureSqueeze
from attacks.defenses.layers import GaussianNoise
from attacks.defenses.layers import ImageDefense
from attacks.defenses.layers import RandomResizePad

__all__ = [
    "BitDepthJpeg",
    "DEFENSES",
    "FeatureSqueeze",
    "GaussianNoise",
    "ImageDefense",
    "RandomResizePad",
    "build",
    "clean_accuracy",
    "load_classifier",
]

FLAGS = flags.FLAGS
ZOO_PREFIX = "zoo:"
CHECK_BATCH = 100  # Batch size of the accuracy check: part of its draws.
# The layer keyword each program flag sets.
LAYER_FLAGS = ("min_size", "max_size", "bits", "quality", "sigma",
               "median_size", "size")
DEFENSES = builders.PREPROCESSING
build = builders.build
load_classifier = builders.load_classifier


def clean_accuracy(model, x, y, batch_size=CHECK_BATCH):
  """Top-1 accuracy of `model` on `(x, y)`: one pass, in batches of `batch_size`.

  A random defense draws once per batch from its seed generator, so a freshly
  built or loaded model with a fixed seed repeats the figure exactly. A row of
  logits that is not finite counts as wrong (`attacks.scoring.labels_of`).

  Raises:
    ValueError: for images outside [0, 1] or labels not of shape `(images,)`.
  """
  x, y = common.check_images_labels(x, y, (0.0, 1.0))
  logits = model.predict(x, batch_size=batch_size, verbose=0)
  return float(np.mean(scoring.labels_of(logits) == y.numpy()))


def layer_kwargs(name):
  """The defense flags given on the command line, as layer keywords.

  Raises:
    ValueError: for a flag the defense `name` does not take.
  """
  given = {key: FLAGS[key].value for key in LAYER_FLAGS
           if FLAGS[key].value is not None}
  accepted = inspect.signature(DEFENSES[name]).parameters
  for key, value in given.items():
    if key not in accepted:
      raise ValueError(f"--{key} does not apply to --defense={name}. "
                       f"Received: {key}={value!r}")
  return given


def load_check_images():
  """The images of the accuracy check: --data_npz's, or the first test ones."""
  if FLAGS.data_npz:
    with np.load(FLAGS.data_npz) as arrays:
      return arrays["x"][:FLAGS.check_images], arrays["y"][:FLAGS.check_images]
  return data.load_arrays(FLAGS.dataset, f"test[:{FLAGS.check_images}]",
                          data_dir=FLAGS.data_dir)


def main(argv):
  del argv
  classifier = load_classifier(FLAGS.classifier)
  model = build(FLAGS.defense, classifier, seed=FLAGS.seed,
                **layer_kwargs(FLAGS.defense))
  folder = os.path.dirname(FLAGS.output)
  if folder:
    os.makedirs(folder, exist_ok=True)
  model.save(FLAGS.output)
  settings = {key: value for key, value in model.layers[0].get_config().items()
              if key not in keras.layers.Layer().get_config()}
  print(f"Saved {model.name} ({FLAGS.defense} {settings} in front of "
        f"{FLAGS.classifier}) to {FLAGS.output}")
  if FLAGS.check_images:
    x, y = load_check_images()
    saved = keras.saving.load_model(FLAGS.output)
    accuracy = clean_accuracy(saved, x, y)
    source = FLAGS.data_npz or f"{FLAGS.dataset} test"
    print(f"Clean accuracy on {len(y)} {source} images (one draw, seed "
          f"{FLAGS.seed}, batches of {CHECK_BATCH}): {accuracy:.4f}")
  print("Evaluate it with:\n  python examples/attack_eval.py "
        f"--import=examples.defenses --model={FLAGS.output} "
        "--budget=smoke --num_examples=100 "
        f"--report_dir=runs/defenses/{FLAGS.defense}")


def define_flags():
  """Defines the program's flags (called before `app.run`)."""
  flags.DEFINE_enum("defense", None, list(DEFENSES), "The defense to add.")
  flags.DEFINE_string("output", None, "Where to save the defended model "
                      "(.keras).")
  flags.DEFINE_string("classifier", ZOO_PREFIX + "cifar10/resnet18_undefended",
                      "The classifier behind the defense (logits out): "
                      "zoo:NAME or a .keras path.")
  flags.DEFINE_integer("seed", 0, "Seed of a random defense's draws.")
  flags.DEFINE_integer("check_images", 200, "Test images of the clean "
                       "accuracy check (0: no check).", lower_bound=0)
  flags.DEFINE_string("dataset", "cifar10", "tfds dataset of the check.")
  flags.DEFINE_string("data_dir", None, "tfds data directory (default: "
                      "TFDS_DATA_DIR or tfds' own).")
  flags.DEFINE_string("data_npz", None, "An .npz with arrays x (float32 "
                      "images in [0, 1]) and y (labels) to check on instead.")
  flags.DEFINE_integer("min_size", None, "random_resize_pad: smallest side.")
  flags.DEFINE_integer("max_size", None, "random_resize_pad: largest side.")
  flags.DEFINE_integer("bits", None, "bit_depth_jpeg, feature_squeeze: "
                       "bits per channel.")
  flags.DEFINE_integer("quality", None, "bit_depth_jpeg: JPEG quality.")
  flags.DEFINE_float("sigma", None, "gaussian_noise: noise standard "
                     "deviation.")
  flags.DEFINE_integer("median_size", None, "feature_squeeze: side of the "
                       "median window.")
  flags.DEFINE_integer("size", None, "median_smoothing: side of the median "
                       "window.")
  flags.mark_flags_as_required(["defense", "output"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
