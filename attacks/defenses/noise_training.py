"""A classifier trained on Gaussian-noise-augmented images (Cohen et al. 2019).

Randomized smoothing needs a base classifier that classifies noisy images
well: Cohen, Rosenfeld and Kolter train it with N(0, σ²) noise added to every
training image (no clipping) and smooth it with the same σ at test time.
`train_noise_augmented` trains `adv_layer.models` classifiers that way with
`adv_layer.training` (the paper's SGD, checkpoints and resume) on the
augmented CIFAR-10 pipeline of `adv_layer.data` (crop and flip, then noise);
`attacks.defenses.builders.smoothed` wraps the result.

`PRESETS` holds the sizes: `smoke` (tests and demos: seconds to minutes on
2 CPU cores, near chance), `cpu` (about 10 minutes on 2 CPU cores), `paper`
(Cohen et al.'s schedule on this package's ResNet18: they train a ResNet-110
for 90 epochs, SGD 0.1 divided by 10 every 30 epochs; `adv_layer.training`
drops the rate once, at epoch 30).
"""

import keras

from adv_layer import data
from adv_layer import models
from adv_layer import training
from attacks import common
from attacks.defenses import stochastic

__all__ = ["PRESETS", "noisy_trainer", "train_noise_augmented"]

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
  common.check_number("sigma", sigma, minimum=0, strict=True)
  keras.utils.set_random_seed(seed)
  classifier = models.build_model(
      settings["model"], num_classes=num_classes, input_shape=input_shape,
      width=settings["width"], seed=seed)
  if train_data is None:
    count = settings["train_examples"]
    train_data = data.load_tfds(
        "cifar10", split=data.first_examples("train", count),
        batch_size=settings["batch_size"], training=True, data_dir=data_dir,
        seed=seed)
  training.train(noisy_trainer(classifier, sigma, seed), train_data,
                 settings["epochs"], learning_rate=settings["learning_rate"],
                 lr_drop_epoch=settings["lr_drop_epoch"],
                 checkpoint_dir=checkpoint_dir, verbose=verbose)
  if output is not None:
    training.save_model(classifier, output)
  return classifier
