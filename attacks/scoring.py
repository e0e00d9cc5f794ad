"""Scoring final adversarial images on a randomized defense.

The defended model f_a(g(x)) is random: g starts from a fresh draw of noise on
every call. An adversarial image is therefore scored with R fresh draws of the
model (the paper's metric, Sec. 4, applied per draw), and two figures are
reported (docs/EVALUATION.md):

- mean accuracy: the fraction of (image, draw) pairs classified correctly;
- strict accuracy: the fraction of images classified correctly in *every* draw.

Each image also gets its success probability over draws (the fraction of draws
that misclassify it), and every accuracy a 95% Clopper-Pearson interval over
the images (`clopper_pearson`):

- strict accuracy: the exact binomial interval of k robust images out of n;
- mean accuracy: the same interval at k = n * mean accuracy (a fractional
  count; the beta-quantile form of the interval is continuous in k). Each
  image is one trial and its fraction of correct draws its outcome: the R
  draws of one image are not independent trials (they share the image), so
  they do not narrow the interval. A fraction in [0, 1] with mean p varies at
  most as much as a Bernoulli(p) outcome, so this interval is at least as wide
  as one that modelled the fractions themselves.

Both intervals cover the choice of images (and, for the mean, of the R
draws); they do not cover the attack's own randomness.

Non-finite outputs: a row of logits with a NaN or infinite entry predicts no
class (label -1), so it is never a correct prediction (`np.argmax` of an
all-NaN row is 0, which would count every image of class 0 as correct).
`Score.nonfinite` counts such (draw, image) pairs; the report shows it as
`nonfinite_outputs` when it is above 0.

Reproducibility: the draws of every `AdversarialTransform` inside a Keras model
come from the layer's `keras.random.SeedGenerator` while pinned. `score` pins
the layers and sets those generators to states derived from its own `seed` for
the duration of the scoring and restores both afterwards, so the same seed
gives the same draws (and the same figures) regardless of what ran before. A
plain `model_fn` (not a `keras.Model`) is called as is; its randomness is its
own.
"""

import dataclasses

import keras
import numpy as np
from scipy import stats
import tensorflow as tf

from adv_layer.layer import pinned_draws
from attacks import common

__all__ = [
    "CONFIDENCE", "DRAWS", "Score", "clopper_pearson", "first_images",
    "predict_labels", "reseeded", "score", "score_labels"
]

CONFIDENCE = 0.95
DRAWS = 20  # R of the final verdict.


def clopper_pearson(successes, trials, confidence=CONFIDENCE):
  """The Clopper-Pearson (exact binomial) interval of a proportion.

  `low` is the `(1 - confidence) / 2` quantile of Beta(k, n - k + 1) and
  `high` the `(1 + confidence) / 2` quantile of Beta(k + 1, n - k), with
  `low = 0` at k = 0 and `high = 1` at k = n. A fractional k (a mean over
  draws times n, see the module docstring) uses the same quantiles.

  Args:
    successes: k, a number in [0, trials].
    trials: n, a non-negative integer (n = 0 gives the uninformative (0, 1)).
    confidence: the interval's coverage, in (0, 1).

  Returns:
    `(low, high)` as floats.

  Raises:
    ValueError: for a bad `trials`, `successes` or `confidence`.

  Example:
    >>> clopper_pearson(0, 10)  # (0.0, 1 - 0.025 ** (1 / 10)) = (0.0, 0.3085)
  """
  common.check_number("trials", trials, minimum=0, integer=True)
  if not (isinstance(successes, (int, float, np.number)) and
          0 <= successes <= trials):
    raise ValueError(f"`successes` must be a number in [0, trials={trials}]. "
                     f"Received: successes={successes!r}")
  if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
    raise ValueError("`confidence` must be a float in (0, 1). "
                     f"Received: confidence={confidence!r}")
  tail = (1.0 - confidence) / 2
  low = 0.0 if successes == 0 else stats.beta.ppf(
      tail, successes, trials - successes + 1)
  high = 1.0 if successes == trials else stats.beta.ppf(
      1.0 - tail, successes + 1, trials - successes)
  return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class Score:
  """Accuracy of one set of images under R draws of a randomized model.

  Attributes:
    correct: bool array `(draws, images)`, correct in draw r for image i.
    mean_accuracy: mean of `correct` (over draws and images).
    strict_accuracy: fraction of images correct in every draw.
    robust: bool array `(images,)`, correct in every draw (strict).
    per_example_mean: float array `(images,)`, fraction of draws correct
      (1 - the image's success probability over draws).
    draws: R.
    seed: the seed of the draws (None: unseeded).
    nonfinite: the number of (draw, image) pairs whose output had a
      non-finite entry (NaN or ±inf); each counts as misclassified.
    nonfinite_pairs: bool array `(draws, images)` marking those pairs, or
      None where none was recorded (then `nonfinite` is 0).
  """
  correct: np.ndarray
  mean_accuracy: float
  strict_accuracy: float
  robust: np.ndarray
  per_example_mean: np.ndarray
  draws: int
  seed: object = None
  nonfinite: int = 0
  nonfinite_pairs: np.ndarray = None

  @property
  def images(self):
    """n, the number of images scored."""
    return int(self.robust.size)

  @property
  def mean_interval(self):
    """95% Clopper-Pearson interval of `mean_accuracy` (over images)."""
    return clopper_pearson(self.mean_accuracy * self.images, self.images)

  @property
  def strict_interval(self):
    """95% Clopper-Pearson interval of `strict_accuracy`."""
    return clopper_pearson(int(np.sum(self.robust)), self.images)

  @property
  def per_example_success(self):
    """float array `(images,)`: the fraction of draws misclassifying each."""
    return 1.0 - self.per_example_mean

  def to_dict(self):
    """The figures as a JSON-ready dict (per-example booleans as 0/1 lists).

    The interval keys end in `_ci95` (`CONFIDENCE`); `scoring_seed` is the
    seed of the draws. `nonfinite_outputs` (the `nonfinite` count) is present
    only when some output was not finite, so reports of finite models keep
    their exact form.
    """
    figures = {
        "mean_accuracy": self.mean_accuracy,
        "mean_accuracy_ci95": list(self.mean_interval),
        "strict_accuracy": self.strict_accuracy,
        "strict_accuracy_ci95": list(self.strict_interval),
        "draws": self.draws,
        "scoring_seed": self.seed,
        "robust": [int(v) for v in self.robust],
        "per_example_mean": [float(v) for v in self.per_example_mean],
    }
    if self.nonfinite > 0:
      figures["nonfinite_outputs"] = self.nonfinite
    return figures


def score_labels(predictions, y, seed=None, nonfinite=None):
  """Scores predicted labels of R draws against the true labels.

  A label of -1 (no class: `predict_labels` gives it for a non-finite
  output) is never correct.

  Args:
    predictions: int array `(draws, images)` of predicted classes, or -1.
    y: int array `(images,)` of true classes.
    seed: recorded in the result.
    nonfinite: optional bool array `(draws, images)`, True where the output
      was not finite; those pairs count as misclassified and their number is
      recorded (`Score.nonfinite`). None: no pair was.

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
  if nonfinite is not None:
    nonfinite = np.asarray(nonfinite, bool)
    if nonfinite.shape != predictions.shape:
      raise ValueError(
          f"`nonfinite` must have the shape of `predictions`, "
          f"{predictions.shape}. Received: nonfinite.shape={nonfinite.shape}")
    correct = correct & ~nonfinite
  return _from_correct(correct, seed, nonfinite)


def _from_correct(correct, seed, nonfinite=None):
  """A `Score` from bool arrays `(draws, images)`: correct, non-finite."""
  robust = np.all(correct, axis=0)
  if nonfinite is not None and not np.any(nonfinite):
    nonfinite = None
  return Score(
      correct=correct,
      mean_accuracy=float(np.mean(correct)) if correct.size else 0.0,
      strict_accuracy=float(np.mean(robust)) if robust.size else 0.0,
      robust=robust,
      per_example_mean=np.mean(correct, axis=0),
      draws=int(correct.shape[0]),
      seed=seed,
      nonfinite=0 if nonfinite is None else int(np.sum(nonfinite)),
      nonfinite_pairs=nonfinite)


def first_images(score, count):
  """`score` restricted to its first `count` images (same draws).

  Args:
    score: a `Score`.
    count: images kept, 1 to `score.images`.

  Returns:
    A `Score` over `count` images.

  Raises:
    ValueError: if `count` is not an integer in [1, `score.images`].
  """
  common.check_number("count", count, minimum=1, integer=True)
  if count > score.images:
    raise ValueError(f"`count` must be at most the {score.images} images "
                     f"scored. Received: count={count!r}")
  pairs = score.nonfinite_pairs
  return _from_correct(np.asarray(score.correct)[:, :count], score.seed,
                       None if pairs is None else np.asarray(pairs)[:, :count])


def reseeded(model, seed):
  """Pins every `AdversarialTransform` in `model` to draws derived from `seed`.

  Inference draws of the layer fold in OS entropy unless pinned
  (`AdversarialTransform.pin_draws`); inside this context they are pinned and
  follow the layer's seed generator, set to a state derived from `seed`. The
  generators' states and the pins are restored on exit, so scoring does not
  shift the draws an attack or a later evaluation sees. The same context as
  `adv_layer.pinned_draws`, under the suite's name.

  Args:
    model: a Keras model (other callables are left alone), or None.
    seed: an integer; None leaves the layers untouched.

  Returns:
    A context manager.
  """
  return pinned_draws(model, seed)


def predict_labels(model_fn, x, batch_size=256):
  """Predicted classes of one draw of `model_fn`, in batches.

  A row of logits with a non-finite entry (NaN, ±inf) predicts no class: its
  label is -1, never a true class (`np.argmax` of an all-NaN row is 0, which
  would score every image of class 0 as correct).

  Args:
    model_fn: a Keras model (called with `training=False`) or images -> logits.
    x: float32 images.
    batch_size: most images per call.

  Returns:
    int array `(images,)`: the class, or -1 where the output was not finite.
  """
  common.check_number("batch_size", batch_size, minimum=1, integer=True)
  call = model_fn
  if isinstance(model_fn, keras.Model):
    call = lambda images: model_fn(images, training=False)
  labels = []
  for start in range(0, len(x), batch_size):
    labels.append(labels_of(
        call(tf.convert_to_tensor(x[start:start + batch_size], tf.float32))))
  return np.concatenate(labels) if labels else np.zeros([0], np.int64)


def labels_of(logits):
  """The predicted class of each row of `logits`; -1 where it is not finite.

  Args:
    logits: array-like `(images, classes)`.

  Returns:
    int array `(images,)`.
  """
  logits = np.asarray(logits)
  finite = np.all(np.isfinite(logits), axis=-1)
  return np.where(finite, np.argmax(logits, axis=-1), -1)


def score(model_fn, x, y, draws=DRAWS, seed=0, batch_size=256):
  """Scores images with `draws` fresh draws of a (randomized) model.

  Args:
    model_fn: a Keras model (its transforms are reseeded, see `reseeded`) or a
      callable images -> logits.
    x: float images, shape `(images, ...)`.
    y: int labels, shape `(images,)`.
    draws: R, the number of independent draws (default 20, the final
      verdict's).
    seed: integer seed of the draws; None leaves the model's generators as
      they are.
    batch_size: most images per model call.

  Returns:
    A `Score`.

  Raises:
    ValueError: for `draws < 1`, a bad `batch_size` or mismatched labels.

  Example:
    >>> s = score(defended_model, x_adv, y, draws=20, seed=0)
    >>> s.mean_accuracy, s.strict_accuracy, s.strict_interval
  """
  common.check_number("draws", draws, minimum=1, integer=True)
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if y.shape != (len(x),):
    raise ValueError(f"`y` must have shape ({len(x)},). Received: y.shape={y.shape}")
  with reseeded(model_fn, seed):
    predictions = np.stack(
        [predict_labels(model_fn, x, batch_size) for _ in range(draws)])
  return score_labels(predictions, y, seed=seed, nonfinite=predictions < 0)
