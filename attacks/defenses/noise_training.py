"""Classifiers a defense trains: on noisy images, or on thermometer codes.

Randomized smoothing needs a base classifier that classifies noisy images
well: Cohen, Rosenfeld and Kolter train it with N(0, σ²) noise added to every
training image (no clipping) and smooth it with the same σ at test time.
`train_noise_augmented` trains `adv_layer.models` classifiers that way with
`adv_layer.training` (the paper's SGD, checkpoints and resume) on the
augmented CIFAR-10 pipeline of `adv_layer.data` (crop and flip, then noise);
`attacks.defenses.builders.smoothed` wraps the result.

Thermometer encoding (Buckman et al. 2018) is a defense only with a
classifier trained on the codes: `train_thermometer` trains
`ThermometerEncoding` and a classifier behind it as one model, on the same
pipeline and presets.

`PRESETS` holds the sizes: `smoke` (tests and demos: seconds to minutes on
2 CPU cores, near chance), `cpu` (about 10 minutes on 2 CPU cores), `paper`
(Cohen et al.'s schedule on this package's ResNet18: they train a ResNet-110
for 90 epochs, SGD 0.1 divided by 10 every 30 epochs; `adv_layer.training`
drops the rate once, at epoch 30).
"""

import time

from absl import flags
import keras

from adv_layer import data
from adv_layer import models
from adv_layer import training
from attacks import common
from attacks.defenses import layers
from attacks.defenses import stochastic

__all__ = ["PRESETS", "define_flags", "noisy_trainer", "preset_settings",
           "train_from_flags", "train_noise_augmented", "train_thermometer"]

PRESETS = {
    "smoke": dict(model="small_cnn", width=8, epochs=1, train_examples=512,
                  batch_size=128, learning_rate=0.1, lr_drop_epoch=None),
    "cpu": dict(model="small_cnn", width=32, epochs=4, train_examples=20_000,
                batch_size=128, learning_rate=0.1, lr_drop_epoch=3),
    "paper": dict(model="resnet18", width=64, epochs=90, train_examples=None,
                  batch_size=128, learning_rate=0.1, lr_drop_epoch=30),
}


def noisy_trainer(classifier, sigma, seed):
  """`classifier` behind one fresh N(0, sigma²) draw per image (training).

  Args:
    classifier: the Keras classifier to train (logits out).
    sigma: noise standard deviation.
    seed: integer seed of the noise.

  Returns:
    A functional model `NoiseDraws(sigma, draws=1) -> classifier` sharing
    the classifier's weights.
  """
  inputs = keras.Input(tuple(classifier.input_shape[1:]))
  noisy = stochastic.NoiseDraws(sigma=sigma, draws=1, seed=seed,
                                name="training_noise")(inputs)
  return keras.Model(inputs, classifier(noisy), name="noise_augmented")


def train_noise_augmented(preset="smoke", sigma=0.25, output=None, seed=0,
                          train_data=None, num_classes=10,
                          input_shape=(32, 32, 3), data_dir=None,
                          checkpoint_dir=None, verbose=1, **overrides):
  """Trains a classifier on noisy images; returns it (and saves it).

  Args:
    preset: a key of `PRESETS`.
    sigma: noise standard deviation (Cohen et al.: 0.12, 0.25, 0.5, 1.0).
    output: `.keras` path of the trained classifier (without the noise), or
      None.
    seed: seed of the initialisation, the data order and the noise.
    train_data: a finite dataset of `(images, labels)` batches; None loads
      the preset's first CIFAR-10 training images, augmented.
    num_classes: classes of the classifier.
    input_shape: its input shape.
    data_dir: tfds data directory (None: TFDS_DATA_DIR or tfds' own).
    checkpoint_dir: backup folder: a killed run resumes from it.
    verbose: Keras verbosity.
    **overrides: preset keys to change (`epochs=2`, ...); None keeps one.

  Returns:
    The trained classifier (logits out).

  Raises:
    ValueError: for an unknown preset or key, or a bad sigma.
  """
  settings = preset_settings(preset, overrides)
  common.check_number("sigma", sigma, minimum=0, strict=True)
  keras.utils.set_random_seed(seed)
  classifier = models.build_model(
      settings["model"], num_classes=num_classes, input_shape=input_shape,
      width=settings["width"], seed=seed)
  _fit(noisy_trainer(classifier, sigma, seed), settings, train_data,
       data_dir, seed, checkpoint_dir, verbose)
  if output is not None:
    training.save_model(classifier, output)
  return classifier


def train_thermometer(preset="smoke", levels=16, output=None, seed=0,
                      train_data=None, num_classes=10,
                      input_shape=(32, 32, 3), data_dir=None,
                      checkpoint_dir=None, verbose=1, **overrides):
  """Trains a classifier on thermometer codes (Buckman et al. 2018).

  The model is `ThermometerEncoding(levels)` then a classifier of the
  preset taking the codes (`levels` times the channels); it is trained,
  saved and returned whole, since the encoding is the defense (Buckman et
  al. train a wide ResNet on 16-level codes of CIFAR-10; the presets'
  models are smaller).

  Args:
    preset: a key of `PRESETS`.
    levels: buckets of the encoding.
    output: `.keras` path of the trained model (encoding included), or
      None.
    seed: seed of the initialisation and the data order.
    train_data: a finite dataset of `(images, labels)` batches; None loads
      the preset's first CIFAR-10 training images, augmented.
    num_classes: classes of the classifier.
    input_shape: the image shape.
    data_dir: tfds data directory (None: TFDS_DATA_DIR or tfds' own).
    checkpoint_dir: backup folder: a killed run resumes from it.
    verbose: Keras verbosity.
    **overrides: preset keys to change (`epochs=2`, ...); None keeps one.

  Returns:
    The trained model, images in, logits out.

  Raises:
    ValueError: for an unknown preset or key, or bad levels.
  """
  settings = preset_settings(preset, overrides)
  keras.utils.set_random_seed(seed)
  encoding = layers.ThermometerEncoding(levels=levels, name="thermometer")
  classifier = models.build_model(
      settings["model"], num_classes=num_classes,
      input_shape=tuple(input_shape[:-1]) + (input_shape[-1] * levels,),
      width=settings["width"], seed=seed)
  model = keras.Sequential([keras.Input(tuple(input_shape)), encoding,
                            classifier], name="thermometer_encoded")
  _fit(model, settings, train_data, data_dir, seed, checkpoint_dir, verbose)
  if output is not None:
    training.save_model(model, output)
  return model


def preset_settings(preset, overrides):
  """`PRESETS[preset]` with `overrides` (None values keep the preset's).

  Raises:
    ValueError: for an unknown preset or key.
  """
  if preset not in PRESETS:
    raise ValueError(f"`preset` must be one of {sorted(PRESETS)}. "
                     f"Received: preset={preset!r}")
  settings = dict(PRESETS[preset])
  for key, value in overrides.items():
    if key not in settings:
      raise ValueError(f"Unknown preset key; expected one of "
                       f"{sorted(settings)}. Received: {key}={value!r}")
    if value is not None:
      settings[key] = value
  return settings


def _fit(trainer, settings, train_data, data_dir, seed, checkpoint_dir,
         verbose):
  """Trains `trainer` as `settings` say, on `train_data` or CIFAR-10's."""
  if train_data is None:
    train_data = data.load_tfds(
        "cifar10", split=data.first_examples("train",
                                             settings["train_examples"]),
        batch_size=settings["batch_size"], training=True, data_dir=data_dir,
        seed=seed)
  training.train(trainer, train_data, settings["epochs"],
                 learning_rate=settings["learning_rate"],
                 lr_drop_epoch=settings["lr_drop_epoch"],
                 checkpoint_dir=checkpoint_dir, verbose=verbose)


def define_flags(default_output):
  """Defines the flags both training programs take (before `app.run`).

  Args:
    default_output: the default of --output.
  """
  flags.DEFINE_enum("preset", "smoke", list(PRESETS), "Settings preset.")
  flags.DEFINE_string("output", default_output,
                      "Where to save the classifier (.keras).")
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


def train_from_flags(train, **arguments):
  """Runs `train` with the flags of `define_flags`; prints where it saved.

  Args:
    train: `train_noise_augmented` or `train_thermometer`.
    **arguments: its own arguments (`sigma=`, `levels=`).

  Returns:
    `(model, test)`: the trained model and the first --test_examples
    CIFAR-10 test images (a dataset), or None for 0.
  """
  values = flags.FLAGS
  start = time.perf_counter()
  backup = (values.checkpoint_dir or
            values.output[:-len(".keras")] + ".backup")
  model = train(values.preset, output=values.output, seed=values.seed,
                data_dir=values.data_dir, checkpoint_dir=backup,
                verbose=values.verbose, epochs=values.epochs,
                train_examples=values.train_examples, **arguments)
  print(f"Saved {values.output} ({time.perf_counter() - start:.0f} s)")
  test = None
  if values.test_examples:
    test = data.load_tfds("cifar10", f"test[:{values.test_examples}]",
                          batch_size=500, data_dir=values.data_dir)
  return model, test
