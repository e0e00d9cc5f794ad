"""Scoring final adversarial images on a randomized defense.

The defended model f_a(g(x)) is random: g starts from a fresh draw of noise on
every call. An adversarial image is therefore scored with R fresh draws of the
model (the paper's metric, Sec. 4, applied per draw), and two figures are
reported (DESIGN.md, evaluation rules):

- mean accuracy: the fraction of (image, draw) pairs classified correctly;
- strict accuracy: the fraction of images classified correctly in *every* draw.

Reproducibility: the draws of every `AdversarialTransform` inside a Keras model
come from the layer's `keras.random.SeedGenerator`. `score` sets those
generators to states derived from its own `seed` for the duration of the
scoring and restores them afterwards, so the same seed gives the same draws
(and the same figures) regardless of what ran before. A plain `model_fn`
(not a `keras.Model`) is called as is; its randomness is its own.
"""

import contextlib
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from adv_layer.layer import find_transforms
from attacks import common

__all__ = ["Score", "predict_labels", "reseeded", "score", "score_labels"]


@dataclasses.dataclass(frozen=True)
class Score:
  """Accuracy of one set of images under R draws of a randomized model.

  Attributes:
    correct: bool array `(draws, images)`, correct in draw r for image i.
    mean_accuracy: mean of `correct` (over draws and images).
    strict_accuracy: fraction of images correct in every draw.
    robust: bool array `(images,)`, correct in every draw (strict).
    per_example_mean: float array `(images,)`, fraction of draws correct.
    draws: R.
    seed: the seed of the draws (None: unseeded).
  """
  correct: np.ndarray
  mean_accuracy: float
  strict_accuracy: float
  robust: np.ndarray
  per_example_mean: np.ndarray
  draws: int
  seed: object = None

  def to_dict(self):
    """The figures as a JSON-ready dict (per-example booleans as 0/1 lists)."""
    return {
        "mean_accuracy": self.mean_accuracy,
        "strict_accuracy": self.strict_accuracy,
        "draws": self.draws,
        "seed": self.seed,
        "robust": [int(v) for v in self.robust],
        "per_example_mean": [float(v) for v in self.per_example_mean],
    }


def score_labels(predictions, y, seed=None):
  """Scores predicted labels of R draws against the true labels.

  Args:
    predictions: int array `(draws, images)` of predicted classes.
    y: int array `(images,)` of true classes.
    seed: recorded in the result.

  Returns:
    A `Score`.

  Raises:
    ValueError: if the shapes do not match.
  """
  predictions = np.asarray(predictions)
  y = np.asarray(y)
  if predictions.ndim != 2 or predictions.shape[1] != y.shape[0]:
    raise ValueError(
        f"`predictions` must have shape (draws, {y.shape[0]}). "
        f"Received: predictions.shape={predictions.shape}")
  correct = predictions == y[None, :]
  robust = np.all(correct, axis=0)
  return Score(
      correct=correct,
      mean_accuracy=float(np.mean(correct)) if correct.size else 0.0,
      strict_accuracy=float(np.mean(robust)) if robust.size else 0.0,
      robust=robust,
      per_example_mean=np.mean(correct, axis=0),
      draws=int(correct.shape[0]),
      seed=seed)


@contextlib.contextmanager
def reseeded(model, seed):
  """Sets every `AdversarialTransform` in `model` to draws derived from `seed`.

  The generators' states are restored on exit, so scoring does not shift the
  draws an attack or a later evaluation sees.

  Args:
    model: a Keras model (other callables are left alone), or None.
    seed: an integer; None leaves the generators untouched.

  Yields:
    None.
  """
  layers = find_transforms(model) if isinstance(model, keras.Model) else []
  if seed is None or not layers:
    yield
    return
  generators = [layer.seed_generator for layer in layers]
  saved = [generator.state.numpy() for generator in generators]
  for generator, layer_seed in zip(generators, common.seeds(seed, len(layers))):
    generator.state.assign(
        np.array([layer_seed, 0]).astype(generator.state.dtype))
  try:
    yield
  finally:
    for generator, state in zip(generators, saved):
      generator.state.assign(state)


def predict_labels(model_fn, x, batch_size=256):
  """Predicted classes of one draw of `model_fn`, in batches.

  Args:
    model_fn: a Keras model (called with `training=False`) or images -> logits.
    x: float32 images.
    batch_size: most images per call.

  Returns:
    int array `(images,)`.
  """
  common.check_number("batch_size", batch_size, minimum=1, integer=True)
  call = model_fn
  if isinstance(model_fn, keras.Model):
    call = lambda images: model_fn(images, training=False)
  labels = []
  for start in range(0, len(x), batch_size):
    logits = call(tf.convert_to_tensor(x[start:start + batch_size], tf.float32))
    labels.append(np.argmax(np.asarray(logits), axis=-1))
  return np.concatenate(labels) if labels else np.zeros([0], np.int64)


def score(model_fn, x, y, draws=5, seed=0, batch_size=256):
  """Scores images with `draws` fresh draws of a (randomized) model.

  Args:
    model_fn: a Keras model (its transforms are reseeded, see `reseeded`) or a
      callable images -> logits.
    x: float images, shape `(images, ...)`.
    y: int labels, shape `(images,)`.
    draws: R, the number of independent draws (default 5).
    seed: integer seed of the draws; None leaves the model's generators as
      they are.
    batch_size: most images per model call.

  Returns:
    A `Score`.

  Raises:
    ValueError: for `draws < 1`, a bad `batch_size` or mismatched labels.

  Example:
    >>> s = score(defended_model, x_adv, y, draws=5, seed=0)
    >>> s.mean_accuracy, s.strict_accuracy
  """
  common.check_number("draws", draws, minimum=1, integer=True)
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if y.shape != (len(x),):
    raise ValueError(f"`y` must have shape ({len(x)},). Received: y.shape={y.shape}")
  with reseeded(model_fn, seed):
    predictions = [predict_labels(model_fn, x, batch_size) for _ in range(draws)]
  return score_labels(np.stack(predictions), y, seed=seed)
