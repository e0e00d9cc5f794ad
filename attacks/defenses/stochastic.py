r"""Randomness inside the network: activation pruning and noise ensembles.

Two defenses whose draws happen after the input, as Keras layers:

- `StochasticActivationPruning` (Dhillon et al. 2018): after an activation,
  keep each unit with a probability that grows with its magnitude and scale
  the survivors up so that the expected output is the input. Inserted after
  every ReLU of a pretrained classifier without retraining
  (`attacks.defenses.builders.with_activation_pruning`).
- `NoiseDraws` and `MeanSoftmax` (Cohen, Rosenfeld, Kolter 2019): K noisy
  copies of each image, N(0, σ²) added, go through the classifier and the
  softmax outputs are averaged: the smoothed classifier's class
  probabilities (the "soft" smoothed classifier; Cohen et al. predict by a
  vote of hard labels with abstention). `attacks.defenses.builders.smoothed`
  assembles them around a classifier trained on noisy images.

Each random layer keeps an integer `seed` and draws from a
`keras.random.SeedGenerator` (two layers with one seed draw alike; every call
draws afresh) and opts out of XLA, as the preprocessing layers of
`attacks.defenses.layers` do.

References:
  Dhillon, Azizzadenesheli, Lipton, Bernstein, Kossaifi, Khanna, Anandkumar,
    "Stochastic activation pruning for robust adversarial defense", ICLR
    2018.
  Cohen, Rosenfeld, Kolter, "Certified adversarial robustness via randomized
    smoothing", ICML 2019.
"""

import keras
import tensorflow as tf

from adv_layer import layer
from attacks import common
from attacks.defenses import layers

__all__ = ["MeanSoftmax", "NoiseDraws", "StochasticActivationPruning"]

# Below this a probability counts as zero (no unit is kept with it).
_TINY = 1e-12


@keras.saving.register_keras_serializable(package=layers.PACKAGE)
class StochasticActivationPruning(keras.layers.Layer):
  """Stochastic activation pruning (SAP, Dhillon et al. 2018, Algorithm 1).

  For each example, the activations h of the layer's input (every axis but
  the batch) define p_j = |h_j| / Σ_k |h_k|; r = round(ratio · n) units are
  drawn with replacement from p (n the example's activation count), each
  unit drawn at least once is kept and scaled by 1 / P(kept), with
  P(kept) = 1 - (1 - p_j)^r, and the rest are set to 0. The expected output
  equals h. The draw of which units survive is made in one step, a uniform
  number per unit against P(kept): the units are independent here, where
  the r draws of the paper make them slightly dependent; the probability
  each unit is kept is the paper's. Dhillon et al. apply SAP to the ReLU
  activation maps at every layer; `ratio` = 1 draws as many samples as the
  layer has activations (their 100% sampling rate; Athalye et al.'s
  reimplementation draws twice as many).

  Random in training and in inference; differentiable where it is defined
  (the scale 1 / P(kept) depends on h), so a one-draw gradient is noisy but
  not masked: EOT is the adaptive attack (Athalye et al. 2018, Table 1: 0%
  on CIFAR-10 at ε 0.031, L∞).

  Input shape: any, `(batch, ...)`. Output shape: the same.

  Args:
    ratio: samples drawn per activation of an example, > 0.
    seed: integer seed of the draws, or None (Keras draws one).
    **kwargs: base `keras.layers.Layer` arguments.

  Raises:
    ValueError: for a bad ratio or seed.
  """

  randomized = True

  def __init__(self, ratio=1.0, seed=None, **kwargs):
    super().__init__(**kwargs)
    layer.require_tensorflow_backend(type(self).__name__)
    common.check_number("ratio", ratio, minimum=0, strict=True)
    if seed is not None:
      common.check_number("seed", seed, integer=True)
    self.ratio = float(ratio)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)
    self.supports_jit = False

  def compute_output_shape(self, input_shape):
    return tuple(input_shape)

  def keep_probability(self, inputs):
    """P(kept) of every unit, the shape of `inputs` (float32)."""
    inputs = tf.cast(inputs, tf.float32)
    axes = list(range(1, len(inputs.shape)))
    magnitude = tf.abs(inputs)
    total = tf.reduce_sum(magnitude, axis=axes, keepdims=True)
    p = magnitude / tf.maximum(total, _TINY)
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[1:]), tf.float32)
    samples = tf.maximum(tf.round(self.ratio * count), 1.0)
    # 1 - (1 - p)^r, computed as -expm1(r log1p(-p)); p < 1 kept away from 1.
    return -tf.math.expm1(samples * tf.math.log1p(-tf.minimum(p, 1 - 1e-7)))

  def call(self, inputs, training=None):
    """Pruned and rescaled activations; `training` is ignored."""
    del training
    keep = self.keep_probability(inputs)
    uniform = keras.random.uniform(tf.shape(keep), seed=self.seed_generator)
    kept = (uniform < keep) & (keep > _TINY)
    safe = tf.where(kept, keep, tf.ones_like(keep))
    scaled = tf.where(kept, tf.cast(inputs, tf.float32) / safe,
                      tf.zeros_like(keep))
    return tf.cast(scaled, inputs.dtype)

  def get_config(self):
    config = super().get_config()
    config.update({"ratio": self.ratio, "seed": self.seed})
    return config


@keras.saving.register_keras_serializable(package=layers.PACKAGE)
class NoiseDraws(layers.ImageDefense):
  """`draws` noisy copies of each image: x + N(0, sigma²), not clipped.

  The output holds the copies of image 0, then those of image 1, ...:
  shape `(batch · draws, height, width, channels)`; `MeanSoftmax(draws)`
  after the classifier averages them back to one row per image. As in Cohen
  et al. (2019), the noise is added without clipping, so values leave
  [0, 1]. `draws=1` is the noise augmentation of training.

  Input shape: `(batch, height, width, channels)`, float in [0, 1].
  Output shape: `(batch · draws, height, width, channels)`, float32.

  Args:
    sigma: noise standard deviation, > 0 (Cohen et al.: 0.12, 0.25, 0.5,
      1.0 on CIFAR-10).
    draws: copies per image, >= 1.
    seed: integer seed of the draws, or None (Keras draws one).
    **kwargs: base `keras.layers.Layer` arguments.

  Raises:
    ValueError: for a bad sigma, draw count or seed.
  """

  randomized = True

  def __init__(self, sigma=0.25, draws=1, seed=None, **kwargs):
    super().__init__(**kwargs)
    common.check_number("sigma", sigma, minimum=0, strict=True)
    common.check_number("draws", draws, minimum=1, integer=True)
    self.sigma = float(sigma)
    self.draws = draws
    self.init_seed(seed)

  def compute_output_shape(self, input_shape):
    batch = input_shape[0]
    return (None if batch is None else batch * self.draws,
            *tuple(input_shape[1:]))

  def defend(self, images):
    copies = tf.repeat(images, self.draws, axis=0)
    noise = keras.random.normal(tf.shape(copies), stddev=self.sigma,
                                seed=self.seed_generator)
    return copies + noise

  def get_config(self):
    config = super().get_config()
    config.update({"sigma": self.sigma, "draws": self.draws,
                   "seed": self.seed})
    return config


@keras.saving.register_keras_serializable(package=layers.PACKAGE)
class MeanSoftmax(keras.layers.Layer):
  """Logits of the mean softmax over groups of `draws` consecutive rows.

  Takes `(batch · draws, classes)` logits, returns `(batch, classes)`:
  log(mean over the group of softmax(logits)), whose softmax is that mean
  (a log-probability is a valid logit). Deterministic and differentiable.

  Args:
    draws: rows per group, >= 1.
    **kwargs: base `keras.layers.Layer` arguments.

  Raises:
    ValueError: for a bad draw count, or input that is not 2-D.
  """

  def __init__(self, draws=1, **kwargs):
    super().__init__(**kwargs)
    common.check_number("draws", draws, minimum=1, integer=True)
    self.draws = draws

  def build(self, input_shape):
    if len(input_shape) != 2:
      raise ValueError("MeanSoftmax takes logits (rows, classes). Received: "
                       f"input_shape={tuple(input_shape)}")
    super().build(input_shape)

  def compute_output_shape(self, input_shape):
    rows = input_shape[0]
    return (None if rows is None else rows // self.draws, input_shape[1])

  def call(self, inputs):
    logits = tf.cast(inputs, tf.float32)
    grouped = tf.reshape(logits, [-1, self.draws, tf.shape(logits)[-1]])
    mean = tf.reduce_mean(tf.nn.softmax(grouped, axis=-1), axis=1)
    return tf.math.log(tf.maximum(mean, 1e-30))

  def get_config(self):
    config = super().get_config()
    config.update({"draws": self.draws})
    return config
