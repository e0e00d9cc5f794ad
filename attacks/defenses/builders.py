"""Defended models from a classifier: a defense in front, inside or around it.

Every builder takes the classifier (a Keras model, logits out, known input
shape) and an integer `seed` for the draws of a random defense, and returns a
new Keras model that saves and loads with `attacks.defenses` imported:

- `build(name, classifier, seed)`: a preprocessing layer of
  `attacks.defenses.layers` in front (`PREPROCESSING` names them).
- `with_activation_pruning(classifier, seed, ratio)`: SAP after every ReLU,
  the classifier's weights kept (no retraining).
- `smoothed(classifier, seed, sigma, draws)`: the mean softmax of the
  classifier over Gaussian-noise copies of the input.
"""

import keras

from attacks import preflight
from attacks.defenses import layers
from attacks.defenses import stochastic

__all__ = [
    "PREPROCESSING", "build", "load_classifier", "smoothed",
    "with_activation_pruning",
]

PREPROCESSING = {
    "random_resize_pad": layers.RandomResizePad,
    "bit_depth_jpeg": layers.BitDepthJpeg,
    "jpeg": layers.Jpeg,
    "gaussian_noise": layers.GaussianNoise,
    "feature_squeeze": layers.FeatureSqueeze,
    "median_smoothing": layers.MedianSmoothing,
}


def build(name, classifier, seed=0, **kwargs):
  """`classifier` behind the preprocessing defense `name`.

  Args:
    name: a key of `PREPROCESSING`.
    classifier: a Keras classifier with a known input shape (logits out).
    seed: integer seed of a random defense's draws (a deterministic one has
      none and ignores it).
    **kwargs: the defense layer's own arguments (e.g. `sigma=0.03`).

  Returns:
    `keras.Sequential([Input, defense, classifier])`, named
    "<name>_defended".

  Raises:
    ValueError: for an unknown name, or bad layer arguments.

  Example:
    >>> defended = build("gaussian_noise",
    ...                  zoo.load("cifar10/resnet18_undefended"), seed=0)
  """
  if name not in PREPROCESSING:
    raise ValueError("Unknown defense; expected one of "
                     f"{sorted(PREPROCESSING)}. Received: name={name!r}")
  defense = PREPROCESSING[name]
  if defense.randomized:
    kwargs["seed"] = seed
  return keras.Sequential(
      [keras.Input(tuple(classifier.input_shape[1:])),
       defense(name=name, **kwargs), classifier], name=f"{name}_defended")


def _is_relu(operation):
  """Whether a layer is a ReLU (`layers.ReLU` or `Activation("relu")`)."""
  if isinstance(operation, keras.layers.ReLU):
    return True
  return (isinstance(operation, keras.layers.Activation) and
          operation.get_config().get("activation") == "relu")


def with_activation_pruning(classifier, seed=0, ratio=1.0):
  """`classifier` with SAP after every ReLU layer, its weights kept.

  The functional graph is cloned (`keras.models.clone_model` with a
  `call_function` that calls each layer, then a
  `StochasticActivationPruning` after each ReLU layer) and the classifier's
  weights are copied in: no retraining, as Dhillon et al. apply SAP to
  pretrained networks. The i-th inserted layer draws with seed `seed + i`.
  A ReLU fused into another layer (`Conv2D(activation="relu")`) is not a
  layer of its own and gets no SAP.

  Args:
    classifier: a functional or sequential Keras classifier.
    seed: integer seed of the first SAP layer.
    ratio: SAP's samples per activation (`StochasticActivationPruning`).

  Returns:
    A new functional model named "<classifier name>_sap".

  Raises:
    ValueError: for a subclassed model (no graph to clone into) or one
      without a ReLU layer.
  """
  if not isinstance(classifier, keras.Sequential) and not hasattr(
      classifier, "_operations"):
    raise ValueError("with_activation_pruning needs a functional or "
                     "sequential model. Received: "
                     f"classifier={type(classifier).__name__}")
  if not any(_is_relu(op) for op in classifier.layers):
    raise ValueError("with_activation_pruning found no ReLU layer to prune "
                     f"after. Received: classifier={classifier.name!r}")
  inserted = []

  def call_with_pruning(operation, *args, **kwargs):
    outputs = operation(*args, **kwargs)
    if not _is_relu(operation):
      return outputs
    pruning = stochastic.StochasticActivationPruning(
        ratio=ratio, seed=seed + len(inserted),
        name=f"sap_{len(inserted)}")
    inserted.append(pruning)
    return pruning(outputs)

  clone = keras.models.clone_model(classifier,
                                   call_function=call_with_pruning)
  clone.set_weights(classifier.get_weights())
  return keras.Model(clone.inputs, clone.outputs,
                     name=f"{classifier.name}_sap")


def smoothed(classifier, seed=0, sigma=0.25, draws=100):
  """The mean softmax of `classifier` over `draws` noisy copies of the input.

  `NoiseDraws(sigma, draws)` -> classifier -> `MeanSoftmax(draws)`: the soft
  version of Cohen et al.'s smoothed classifier, for a classifier trained on
  images with N(0, sigma²) noise (`attacks.defenses.noise_training`).

  Args:
    classifier: a Keras classifier with a known input shape (logits out).
    seed: integer seed of the noise.
    sigma: noise standard deviation.
    draws: noisy copies per prediction (Cohen et al. predict with 100).

  Returns:
    A functional model named "<classifier name>_smoothed": logits whose
    softmax is the mean softmax.

  Raises:
    ValueError: for a bad sigma or draw count.
  """
  inputs = keras.Input(tuple(classifier.input_shape[1:]))
  noisy = stochastic.NoiseDraws(sigma=sigma, draws=draws, seed=seed,
                                name="noise_draws")(inputs)
  logits = classifier(noisy)
  if isinstance(logits, (list, tuple)):  # A functional model's one output.
    (logits,) = logits
  outputs = stochastic.MeanSoftmax(draws=draws, name="mean_softmax")(logits)
  return keras.Model(inputs, outputs, name=f"{classifier.name}_smoothed")


def load_classifier(spec):
  """A classifier from `zoo:NAME` (`adv_layer.zoo`) or a `.keras` path.

  Raises:
    ValueError: for an unknown zoo name or a file Keras cannot load
      (`attacks.preflight.load_model`, naming --classifier).
    FileNotFoundError: for a missing file.
  """
  return preflight.load_model(spec, flag="classifier")
