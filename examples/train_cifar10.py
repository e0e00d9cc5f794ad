r"""Trains the defended model f_a(g(x)) on CIFAR-10 and prints its clean accuracy.

Xiao & Zheng (CVPR 2020), Sec. 3.2: g moves every input to an LL-PGD
adversarial example of a pretrained, frozen f_b (Δ = 0.2, N = 13, step Δ/6);
f_a is trained on g(x) with SGD, and g runs at inference too. The run
checkpoints every epoch (rerun the same command to resume a killed run) and
writes the whole defended model as a `.keras` file.

Example (after `python examples/pretrain_fb.py --preset=smoke`):

  python examples/train_cifar10.py --preset=smoke

`--fb=untrained` uses a freshly initialised f_b (Table 1's first column).
Presets (adv_layer.training.PRESETS): smoke, cpu, paper; every flag left
unset takes the preset's value.

`--cached_draws=K` first computes K independent draws of g over the raw
training images into `--cache_dir` (resumable: rerun to continue), then
trains f_a on them, each epoch a fresh pick among the K draws, cropped and
flipped (adv_layer.gcache explains why the draws are taken on raw images).
The saved model is still f_a(g(x)) with the real transform in front.

`--defense` picks what is trained: `transform` (the default), the defended
f_a(g(x)); `none`, the same f_a on clean images (Table 3's "No defense");
`madry`, the same f_a adversarially trained with the preset's `madry_*`
attack (Table 3's "Madry et al."; FGSM from a random start in `strong_cpu`).
The baselines need no f_b.
"""

import os

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import time

from absl import app
from absl import flags
import keras

from adv_layer import data
from adv_layer import gcache
from adv_layer import models
from adv_layer import training
from adv_layer import transform
from attacks import preflight

FLAGS = flags.FLAGS
# What `--defense` trains, and the default output file name of each.
DEFENSES = {"transform": "defended", "none": "undefended", "madry": "madry"}
flags.DEFINE_enum("preset", "smoke", list(training.PRESETS), "Settings preset.")
flags.DEFINE_enum("defense", "transform", list(DEFENSES),
                  "transform: f_a(g(x)); none / madry: the baseline f_a, "
                  "trained on clean / adversarial images.")
flags.DEFINE_string("fb", None,
                    "Pretrained f_b: a .keras path (default: runs/<preset>/"
                    "f_b.keras), zoo:NAME for a published one, or "
                    "'untrained'.")
flags.DEFINE_integer("epochs", None, "Training epochs.")
flags.DEFINE_integer("batch_size", None, "Global batch size.")
flags.DEFINE_integer("train_examples", None,
                     "Train on the first N training images (0: all).")
flags.DEFINE_integer("test_examples", None,
                     "Evaluate on the first N test images (0: all).")
flags.DEFINE_enum("fa_model", None, list(models.MODELS), "Architecture of f_a.")
flags.DEFINE_integer("width", None, "Width of f_a (filters of its first stage).")
flags.DEFINE_float("learning_rate", None, "Initial SGD learning rate.")
flags.DEFINE_float("epsilon", None, "L-inf radius Delta of the transform g.")
flags.DEFINE_integer("steps", None, "LL-PGD steps N of the transform g.")
flags.DEFINE_float("step_size", None, "Step of g (default: epsilon / 6).")
flags.DEFINE_enum("target", None, list(transform.TARGETS), "Target mode of g.")
flags.DEFINE_float("madry_epsilon", None,
                   "L-inf budget of the Madry baseline's training attack.")
flags.DEFINE_integer("madry_steps", None,
                     "PGD steps of the Madry baseline's training attack.")
flags.DEFINE_float("madry_step_size", None,
                   "Step of the Madry baseline's training attack.")
flags.DEFINE_string("dataset", "cifar10", "tfds image classification dataset.")
flags.DEFINE_string("data_dir", None,
                    "tfds data directory (default: $TFDS_DATA_DIR, else "
                    "~/tensorflow_datasets; downloads when online).")
flags.DEFINE_string("output", None,
                    "Output .keras path (default: runs/<preset>/defended.keras).")
flags.DEFINE_string("checkpoint_dir", None,
                    "Per-epoch backup folder (default: next to --output).")
flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES),
                  "tf.distribute strategy (multi_worker reads TF_CONFIG).")
flags.DEFINE_integer("cached_draws", 0,
                     "Train f_a on K precomputed draws of g (0: a fresh draw "
                     "of g per step).", lower_bound=0)
flags.DEFINE_string("cache_dir", None,
                    "Folder of the cached draws (default: runs/<preset>/"
                    "g_cache_<K>).")
flags.DEFINE_integer("cache_batch_size", 256,
                     "Images per call of g while precomputing the cache.",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of initialisation, data order and g.")
flags.DEFINE_integer("verbose", 1, "Keras verbosity (1: progress bars).")


def settings():
  """The preset with the flags that were set applied."""
  return training.get_preset(
      FLAGS.preset, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
      train_examples=FLAGS.train_examples, test_examples=FLAGS.test_examples,
      fa_model=FLAGS.fa_model, fa_width=FLAGS.width,
      learning_rate=FLAGS.learning_rate, epsilon=FLAGS.epsilon,
      steps=FLAGS.steps, step_size=FLAGS.step_size, target=FLAGS.target,
      madry_epsilon=FLAGS.madry_epsilon, madry_steps=FLAGS.madry_steps,
      madry_step_size=FLAGS.madry_step_size)


def output_paths(strategy):
  """The f_b path, the .keras output path (the chief writes it), backups.

  The backup folder is this worker's own (`training.per_worker_path`).
  """
  fb = FLAGS.fb or os.path.join("runs", FLAGS.preset, "f_b.keras")
  output = FLAGS.output or os.path.join(
      "runs", FLAGS.preset, DEFENSES[FLAGS.defense] + ".keras")
  backup = FLAGS.checkpoint_dir or os.path.splitext(output)[0] + "_backup"
  return fb, output, training.per_worker_path(backup, strategy)


def load_fb(path, preset, image_shape, num_classes):
  """Loads the pretrained f_b, or builds an untrained one for `untrained`.

  Raises:
    FileNotFoundError: if `path` does not exist.
  """
  if path == "untrained":
    return models.build_model(preset["fb_model"], num_classes=num_classes,
                              input_shape=image_shape, width=preset["fb_width"],
                              seed=FLAGS.seed + 1)
  if path.startswith("zoo:"):  # A published f_b, e.g. zoo:cifar10/small_vgg_fgsm_rs.
    return preflight.load_model(path, "fb")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No pretrained f_b at {path!r}: run examples/pretrain_fb.py first, or "
        f"pass --fb=PATH, --fb=zoo:NAME (or --fb=untrained). Received: "
        f"fb={path!r}")
  return keras.saving.load_model(path)


def cached_training(model, f_a, preset, backup, output, strategy):
  """Trains f_a on cached draws of g, then saves the whole f_a(g(x)).

  Args:
    model: the defended model (`training.defended_model`).
    f_a: its classifier, the model trained here.
    preset: the settings.
    backup: f_a's per-epoch backup folder.
    output: `.keras` path of the defended model.
    strategy: the `tf.distribute` strategy in use.

  Returns:
    The `keras.callbacks.History` of f_a's training.

  Raises:
    ValueError: under MultiWorkerMirroredStrategy (workers would race on one
      cache folder).
  """
  if training.is_multi_worker(strategy):
    raise ValueError(
        "--cached_draws does not run under --strategy=multi_worker (the "
        "workers would write one cache folder at once). Received: "
        f"cached_draws={FLAGS.cached_draws}, strategy={FLAGS.strategy!r}")
  folder = FLAGS.cache_dir or os.path.join(
      "runs", FLAGS.preset, f"g_cache_{FLAGS.cached_draws}")
  raw_images = data.load_tfds(
      FLAGS.dataset, data.first_examples("train", preset["train_examples"]),
      FLAGS.cache_batch_size, data_dir=FLAGS.data_dir)
  gcache.precompute_draws(
      model.get_layer("adversarial_transform"), raw_images, folder,
      draws=FLAGS.cached_draws, seed=FLAGS.seed,
      batch_size=FLAGS.cache_batch_size, verbose=FLAGS.verbose)
  train_data = gcache.cached_training_data(folder, preset["batch_size"],
                                           seed=FLAGS.seed)
  history = training.train(
      f_a, train_data, preset["epochs"], learning_rate=preset["learning_rate"],
      momentum=preset["momentum"], lr_drop_epoch=preset["lr_drop_epoch"],
      checkpoint_dir=backup, verbose=FLAGS.verbose)
  training.save_from_chief(model, output, strategy)
  return history


def augmented_training_data(preset):
  """The preset's training images, shuffled, cropped and flipped (seeded)."""
  return data.load_tfds(
      FLAGS.dataset, data.first_examples("train", preset["train_examples"]),
      preset["batch_size"], training=True, data_dir=FLAGS.data_dir,
      seed=FLAGS.seed)


def train_baseline(f_a, preset, output, backup):
  """Trains the undefended or the Madry baseline f_a (`--defense`), saves it.

  Args:
    f_a: the fresh classifier.
    preset: the settings.
    output: `.keras` path of the trained classifier.
    backup: its per-epoch backup folder.

  Returns:
    A description of the training data, for the summary line.
  """
  train_data = augmented_training_data(preset)
  madry = training.madry_settings(preset)
  training.train_classifier(
      f_a, train_data, preset["epochs"], adversarial=FLAGS.defense == "madry",
      seed=FLAGS.seed, output=output, learning_rate=preset["learning_rate"],
      momentum=preset["momentum"], lr_drop_epoch=preset["lr_drop_epoch"],
      checkpoint_dir=backup, verbose=FLAGS.verbose, **madry)
  if FLAGS.defense == "none":
    return "clean images"
  return (f"PGD examples (eps {madry['epsilon']:.4f}, {madry['steps']} "
          f"steps of {madry['step_size']:.4f}, random start)")


def train_defended(f_a, preset, fb_path, image_shape, num_classes, output,
                   backup, strategy):
  """Trains f_a behind g (`--defense=transform`) and saves f_a(g(x)).

  Args:
    f_a: the fresh classifier.
    preset: the settings.
    fb_path: `--fb`, a `.keras` path or "untrained".
    image_shape, num_classes: of the dataset.
    output: `.keras` path of the defended model.
    backup: the per-epoch backup folder.
    strategy: the `tf.distribute` strategy in use.

  Returns:
    `(model, description)`: the defended model and a description of its
    training, for the summary line.
  """
  f_b = load_fb(fb_path, preset, image_shape, num_classes)
  model = training.defended_model(
      f_b, f_a, epsilon=preset["epsilon"], steps=preset["steps"],
      step_size=preset["step_size"], target=preset["target"], seed=FLAGS.seed)
  if FLAGS.cached_draws:
    cached_training(model, f_a, preset, backup, output, strategy)
    source = f"{FLAGS.cached_draws} cached draws of g"
  else:
    train_data = augmented_training_data(preset)
    training.train(model, train_data, preset["epochs"],
                   learning_rate=preset["learning_rate"],
                   momentum=preset["momentum"],
                   lr_drop_epoch=preset["lr_drop_epoch"],
                   checkpoint_dir=backup, output=output, verbose=FLAGS.verbose)
    source = "a fresh draw of g per step"
  return model, (f"{source} with f_b={fb_path}, Delta={preset['epsilon']}, "
                 f"N={preset['steps']}")


def main(argv):
  del argv
  strategy = training.make_strategy(FLAGS.strategy)  # First: multi-worker setup.
  if FLAGS.defense != "transform" and FLAGS.cached_draws:
    raise ValueError(
        "--cached_draws caches draws of g, which only --defense=transform "
        f"uses. Received: cached_draws={FLAGS.cached_draws}, "
        f"defense={FLAGS.defense!r}")
  preset = settings()
  fb_path, output, backup = output_paths(strategy)
  image_shape, num_classes = data.dataset_spec(FLAGS.dataset, FLAGS.data_dir)
  test_data = data.load_tfds(
      FLAGS.dataset, data.first_examples("test", preset["test_examples"]),
      preset["batch_size"], data_dir=FLAGS.data_dir)
  start = time.time()
  with strategy.scope():
    f_a = models.build_model(preset["fa_model"], num_classes=num_classes,
                             input_shape=image_shape, width=preset["fa_width"],
                             seed=FLAGS.seed)
    if FLAGS.defense == "transform":
      model, source = train_defended(f_a, preset, fb_path, image_shape,
                                     num_classes, output, backup, strategy)
      name = "f_a(g(x))"
    else:
      model, source = f_a, train_baseline(f_a, preset, output, backup)
      name = f"f_a ({FLAGS.defense} baseline)"
  print(f"Trained {name} ({preset['fa_model']} on {source}) in "
        f"{time.time() - start:.0f} s; saved to {output}")
  test_count = sum(int(y.shape[0]) for _, y in test_data)
  draw = (f" (one draw of g, pinned to seed {FLAGS.seed})"
          if FLAGS.defense == "transform" else "")
  print(f"Clean accuracy of {name} on {test_count} {FLAGS.dataset} test "
        f"images{draw}: "
        f"{training.accuracy(model, test_data, seed=FLAGS.seed):.4f}")


if __name__ == "__main__":
  app.run(main)
