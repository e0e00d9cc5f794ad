"""Surrogate models of black-box transfer, trained afresh for any defense.

A surrogate has the defended model's architecture with fresh weights and
without its defense (`fresh_classifier`: every `AdversarialTransform`, and
every layer named to drop, becomes the identity), trained on clean data (the
undefended base model of Croce et al. 2022) or with PGD
(`surrogate_from_defended`, `surrogate_settings`); `train_surrogates` gives
an evaluation the surrogates its attacks need, given, reused or trained.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from adv_layer import data
from adv_layer import training
from adv_layer.layer import AdversarialTransform
from attacks import common
from attacks import preflight
from attacks import registry

__all__ = [
    "fresh_classifier", "surrogate_from_defended", "surrogate_settings",
    "train_surrogate", "train_surrogates"
]


def _reseeded(config, rng):
  """`config` with every "seed" entry redrawn from `rng` (None: unseeded)."""
  if isinstance(config, dict):
    return {key: (None if rng is None else int(rng.integers(2**31 - 1)))
            if key == "seed" else _reseeded(value, rng)
            for key, value in config.items()}
  if isinstance(config, (list, tuple)):
    return type(config)(_reseeded(value, rng) for value in config)
  return config


def fresh_classifier(model, seed=None, drop=()):
  """A new, untrained copy of `model`'s architecture without any transform g.

  Clones a Sequential or functional `model` layer by layer (nested models
  too): each `AdversarialTransform`, and each layer named in `drop`, becomes
  an identity layer, every other layer is rebuilt from its config with every
  seed in it (initialisers, dropout, ...) redrawn from `seed`. For a defended
  model f_a(g(·)) this is f_a's architecture, the source of an undefended or
  adversarially trained black-box surrogate; for a preprocessing defense,
  with its non-differentiable layers in `drop`, it is the classifier behind
  them. The original model is not changed.

  Args:
    model: a Sequential or functional `keras.Model`, defended or not.
    seed: integer seed of the new weights; None leaves them unseeded.
    drop: names of further layers to replace with the identity (e.g. the
      BPDA-wrapped layers of `attacks.evaluation.check_model`; a nested path
      names its last part).

  Returns:
    A `keras.Model` with the input and output shapes of `model`.

  Raises:
    ValueError: for a subclassed model (it cannot be cloned).
  """
  rng = None if seed is None else np.random.default_rng(seed % 2**32)

  dropped = {name.split("/")[-1] for name in drop}

  def clone_layer(layer):
    if isinstance(layer, AdversarialTransform) or layer.name in dropped:
      return keras.layers.Identity(name=layer.name)
    return layer.__class__.from_config(_reseeded(layer.get_config(), rng))

  try:
    return keras.models.clone_model(model, clone_function=clone_layer,
                                    recursive=True)
  except ValueError as error:
    raise ValueError("`model` must be a Sequential or functional keras.Model. "
                     f"Received: model={model.name!r}") from error


def surrogate_settings(preset="smoke", adversarial=False):
  """The `train_surrogate` settings matching a training preset.

  The surrogate gets the preset's f_a schedule (epochs, learning-rate drop,
  batch size, SGD) and, when `adversarial`, f_b's PGD adversarial training
  (ε, steps, step size; Madry PGD-7 at 8/255 for "strong_cpu" and "paper").
  `train_examples` (None: the whole split) is for the caller's data loader.

  Args:
    preset: a name of `adv_layer.training.PRESETS` ("smoke" for CI, "cpu",
      "strong_cpu" or "paper" for real runs).
    adversarial: train with PGD adversarial training.

  Returns:
    A dict: `train_examples` and the keyword arguments of `train_surrogate`.

  Raises:
    ValueError: for an unknown preset.
  """
  settings = training.get_preset(preset)
  result = {key: settings[key] for key in (
      "train_examples", "epochs", "lr_drop_epoch", "batch_size",
      "learning_rate", "momentum")}
  result["adversarial"] = bool(adversarial)
  if adversarial:
    result.update(epsilon=settings["fb_epsilon"], steps=settings["fb_steps"],
                  step_size=settings["fb_step_size"])
  return result


def train_surrogate(architecture, train_images, train_labels, epochs=1,
                    batch_size=128, learning_rate=0.1, momentum=0.9,
                    lr_drop_epoch=None, adversarial=False, epsilon=8 / 255,
                    steps=7, step_size=None, augment=True, seed=None,
                    verbose=0):
  """Trains a black-box transfer source on clean or PGD adversarial examples.

  The model is a fresh copy of `architecture` (`fresh_classifier`: any
  transform g removed) or `architecture(seed)` for a builder; SGD with
  momentum on logits cross-entropy (`adv_layer.training.compile_sgd`),
  shuffled (and augmented with random crops and flips) every epoch, and with
  `adversarial` Madry PGD adversarial training
  (`adv_layer.training.AdversarialTrainer`). Settings for real runs:
  `surrogate_settings(preset)`.

  Args:
    architecture: a `keras.Model` whose architecture is copied (e.g. the
      defended model f_a(g(·))), or a function `seed -> keras.Model`.
    train_images: float images `(n, height, width, channels)` in [0, 1].
    train_labels: int labels `(n,)`.
    epochs: passes over the data.
    batch_size: images per step.
    learning_rate: initial SGD rate.
    momentum: SGD momentum.
    lr_drop_epoch: epoch after which the rate is divided by 10, or None.
    adversarial: train on PGD examples of the true labels.
    epsilon: L∞ budget of the training attack.
    steps: PGD steps of the training attack.
    step_size: PGD step; None means `epsilon / 4`.
    augment: random crop (4-pixel padding) and horizontal flip (CIFAR-10).
    seed: integer seed of the weights, the data order, the augmentation and
      the attack's starts; None draws them.
    verbose: Keras verbosity of `fit`.

  Returns:
    The trained classifier, a `keras.Model` (logits out).

  Raises:
    ValueError: for a bad argument (named in the message).

  Example:
    >>> surrogate = train_surrogate(defended, images, labels, epochs=30, seed=0)
    >>> x_adv = transfer(surrogate, x, y, momentum=1.0, diversity_prob=0.5)
  """
  common.check_number("epochs", epochs, minimum=1, integer=True)
  common.check_number("batch_size", batch_size, minimum=1, integer=True)
  train_images = np.asarray(train_images, np.float32)
  train_labels = np.asarray(train_labels).astype(np.int32).reshape(-1)
  if train_images.ndim < 2 or len(train_images) != len(train_labels):
    raise ValueError("`train_images` and `train_labels` must hold the same "
                     f"number of examples. Received: train_images.shape="
                     f"{train_images.shape}, train_labels.shape="
                     f"{train_labels.shape}")
  weight_seed, data_seed, attack_seed = common.seeds(seed, 3)
  if isinstance(architecture, keras.Model):
    classifier = fresh_classifier(architecture, weight_seed)
  else:
    classifier = architecture(weight_seed)
  dataset = tf.data.Dataset.from_tensor_slices((train_images, train_labels))
  if augment:
    dataset = data.finish(dataset, batch_size, training=True, seed=data_seed)
  else:
    dataset = dataset.shuffle(len(train_labels), seed=data_seed,
                              reshuffle_each_iteration=True).batch(batch_size)
  model = classifier
  if adversarial:
    model = training.AdversarialTrainer(classifier, epsilon=epsilon, steps=steps,
                                        step_size=step_size, seed=attack_seed,
                                        name="surrogate_pgd_trainer")
  training.compile_sgd(model, learning_rate, momentum, lr_drop_epoch,
                       training.steps_per_epoch(dataset))
  model.fit(dataset, epochs=epochs, shuffle=False, verbose=verbose)
  return classifier


def surrogate_from_defended(model, train_images, train_labels, adversarial=False,
                            seed=None, drop=(), **train_kwargs):
  """Trains f_a's architecture afresh, without g: a black-box transfer source.

  The defended model is f_a(g(·)); the surrogate is a new copy of f_a
  (`fresh_classifier`) trained on clean data (the undefended base model of
  Croce et al. 2022) or, with `adversarial`, by PGD adversarial training. It
  shares no weights with the model under attack. Any other defense works the
  same way with its non-differentiable layers named in `drop` (its random
  layers stay, as augmentation of the surrogate's training).

  Args:
    model: a Sequential or functional model containing `AdversarialTransform`,
      or any other model (randomized, or with `drop` naming its masked
      layers).
    train_images: float training images in [0, 1].
    train_labels: int labels.
    adversarial: PGD adversarial training instead of clean training.
    seed: integer seed of the surrogate's training; None draws one.
    **train_kwargs: further `train_surrogate` arguments (`epochs`, ...; see
      `surrogate_settings`).

  Returns:
    The trained surrogate, a `keras.Model` (logits out).

  Raises:
    ValueError: for a bad training argument, or a subclassed model.

  Example:
    >>> settings = surrogate_settings("cpu")
    >>> images, labels = adv_layer.data.load_arrays(
    ...     "cifar10", f"train[:{settings.pop('train_examples')}]")
    >>> surrogate = surrogate_from_defended(model, images, labels, seed=0,
    ...                                     **settings)
  """
  architecture = lambda weight_seed: fresh_classifier(model, weight_seed, drop)
  return train_surrogate(architecture, train_images, train_labels,
                         adversarial=adversarial, seed=seed, **train_kwargs)
def train_surrogates(model, names, report_dir, given, train_data,
                     preset="cpu", seed=0, drop=()):
  """The surrogates of black-box transfer: given, trained here, or None.

  A surrogate a planned attack needs and none was given is reused from
  `report_dir` (trained by an earlier run or shard) or trained on
  `train_data`: the model's architecture with fresh weights, every
  `AdversarialTransform` and BPDA-wrapped layer left out
  (`fresh_classifier`), on clean data or with PGD, and saved in
  `report_dir`.

  Args:
    model: the model under attack.
    names: the resolved attack names.
    report_dir: the evaluation's folder.
    given: dict field ("surrogate", "adversarial_surrogate") -> a model, a
      path or None.
    train_data: `(images, labels)` to train on, or None (train nothing).
    preset: training preset (`surrogate_settings`).
    seed: training seed.
    drop: the model's BPDA-wrapped layers (left out of a surrogate).

  Returns:
    `(models, paths)`: dicts field -> model (or None) and -> path (or None).
  """
  needed = {registry.REGISTRY[name].needs_surrogate for name in names}
  models, paths = {}, {}
  for field, adversarial in (("surrogate", False),
                             ("adversarial_surrogate", True)):
    source = given.get(field)
    saved = os.path.join(report_dir, f"{field}.keras")
    if source is None and field in needed and os.path.exists(saved):
      source = saved  # Trained by an earlier run or shard: reuse it.
    if source is None and field in needed and train_data is not None:
      settings = surrogate_settings(preset, adversarial=adversarial)
      count = settings.pop("train_examples")
      images, labels = train_data
      images, labels = images[:count or None], labels[:count or None]
      print(f"Training the {field.replace('_', ' ')} ({preset} preset, "
            f"{len(labels)} images; pass --{field} to skip) ...")
      # One line per epoch (Keras verbose=2): its time, loss and accuracy.
      trained = surrogate_from_defended(model, images, labels,
                                        seed=seed, drop=drop, verbose=2,
                                        **settings)
      trained.save(saved)
      source = saved
    paths[field] = source if isinstance(source, str) else (
        None if source is None else getattr(source, "name", field))
    models[field] = (preflight.load_model(source, field)
                     if isinstance(source, str) else source)
  return models, paths
