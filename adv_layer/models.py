"""Model builders: the paper's f_b (small VGG), its f_a (ResNet18), a small CPU f_a.

Xiao & Zheng (CVPR 2020), Sec. 4 "Common experiment setups": f_a is a ResNet18
and f_b "a small VGG-style network" (Appendix A.1; the authors' code uses conv
widths 64-M-128-M-64-64-M-128-128-M with batch norm, then dense 512-512-classes).
Every builder returns a functional `keras.Model` mapping float images to
*logits* (no softmax), as `AdversarialTransform` and the attacks expect, and
takes a `seed` that fixes every initialiser (same seed -> same weights).
Batch norm uses PyTorch's defaults (momentum 0.1 there, 0.9 in Keras terms;
epsilon 1e-5), as the authors' PyTorch code does; Keras' 0.99 leaves the
moving statistics far from the data after short CPU runs.
"""

import itertools
import numbers

import keras

# The paper's f_b: 3x3 conv widths, "M" = 2x2 max-pool (Appendix A.1).
SMALL_VGG_LAYERS = (64, "M", 128, "M", 64, 64, "M", 128, 128, "M")
SMALL_VGG_DENSE = (512, 512)
# CIFAR ResNet18: (filters multiplier, first stride) of its four stages.
RESNET18_STAGES = ((1, 1), (2, 2), (4, 2), (8, 2))
BLOCKS_PER_STAGE = 2
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class _Initialisers:
  """Hands out a fresh, distinctly seeded initialiser for each layer.

  Args:
    seed: integer seed, or None for unseeded (random) initialisers.
  """

  def __init__(self, seed):
    self._seeds = itertools.count(seed) if seed is not None else None

  def _next_seed(self):
    return next(self._seeds) if self._seeds is not None else None

  def he(self):
    """A He-normal initialiser (convolutions and hidden dense layers)."""
    return keras.initializers.HeNormal(seed=self._next_seed())

  def glorot(self):
    """A Glorot-uniform initialiser (the logits layer)."""
    return keras.initializers.GlorotUniform(seed=self._next_seed())


def _check_common(num_classes, input_shape, seed):
  """Validates the arguments every builder shares.

  Raises:
    ValueError: naming the bad argument and its value.
  """
  if (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
      or num_classes < 2):
    raise ValueError(
        f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}")
  if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3 or
      not all(isinstance(d, numbers.Integral) and d > 0 for d in input_shape)):
    raise ValueError("`input_shape` must be (height, width, channels) of positive "
                     f"integers. Received: input_shape={input_shape!r}")
  if seed is not None and (isinstance(seed, bool) or
                           not isinstance(seed, numbers.Integral)):
    raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")


def _check_integer_width(width):
  """Raises ValueError unless `width` (a filter count) is an integer >= 1."""
  if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
    raise ValueError(f"`width` must be an integer >= 1. Received: width={width!r}")


def _scaled(units, width):
  """`units * width`, rounded, at least 1."""
  return max(1, int(round(units * width)))


def _batch_norm():
  """Batch norm with PyTorch's defaults (see the module docstring)."""
  return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


def _conv_bn_relu(x, filters, init, strides=1, relu=True):
  """3x3 convolution (no bias) -> batch norm -> optional ReLU."""
  x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                          use_bias=False, kernel_initializer=init.he())(x)
  x = _batch_norm()(x)
  return keras.layers.ReLU()(x) if relu else x


def small_vgg(num_classes=10, input_shape=(32, 32, 3), width=1.0, seed=None):
  """The paper's f_b: a small VGG-style network with batch norm (Appendix A.1).

  Conv 64-M-128-M-64-64-M-128-128-M (3x3 conv, batch norm, ReLU; M = 2x2
  max-pool), flatten, dense 512-512 with ReLU, then `num_classes` logits.

  Args:
    num_classes: number of classes (logits).
    input_shape: `(height, width, channels)` of the images.
    width: multiplier of every conv and hidden dense width (1.0 = the paper;
      smaller values for CPU runs).
    seed: integer seed of every initialiser, or None.

  Returns:
    A functional `keras.Model` named "small_vgg", images -> logits.

  Raises:
    ValueError: for arguments out of their domain.

  Example:
    >>> f_b = small_vgg(seed=0)
    >>> f_b.output_shape
    (None, 10)
  """
  _check_common(num_classes, input_shape, seed)
  if not isinstance(width, numbers.Real) or not width > 0:
    raise ValueError(f"`width` must be a number > 0. Received: width={width!r}")
  init = _Initialisers(seed)
  inputs = keras.Input(tuple(input_shape))
  x = inputs
  for layer in SMALL_VGG_LAYERS:
    if layer == "M":
      x = keras.layers.MaxPooling2D(2)(x)
    else:
      x = _conv_bn_relu(x, _scaled(layer, width), init)
  x = keras.layers.Flatten()(x)
  for units in SMALL_VGG_DENSE:
    x = keras.layers.Dense(_scaled(units, width), activation="relu",
                           kernel_initializer=init.he())(x)
  outputs = keras.layers.Dense(num_classes, kernel_initializer=init.glorot())(x)
  return keras.Model(inputs, outputs, name="small_vgg")


def _basic_block(x, filters, strides, init):
  """ResNet BasicBlock: two 3x3 convs and a (projected when needed) shortcut."""
  shortcut = x
  y = _conv_bn_relu(x, filters, init, strides=strides)
  y = _conv_bn_relu(y, filters, init, relu=False)
  if strides != 1 or x.shape[-1] != filters:
    shortcut = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                   kernel_initializer=init.he())(x)
    shortcut = _batch_norm()(shortcut)
  return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def resnet18(num_classes=10, input_shape=(32, 32, 3), width=64, seed=None):
  """CIFAR ResNet18 (He et al. 2016), the paper's f_a (Sec. 4).

  3x3 stem convolution (stride 1, no max-pool), four stages of two BasicBlocks
  with `width`, 2x, 4x, 8x filters (strides 1, 2, 2, 2), global average pooling,
  then `num_classes` logits. With `width=64` it has 11,173,962 trainable parameters.

  Args:
    num_classes: number of classes (logits).
    input_shape: `(height, width, channels)` of the images.
    width: filters of the stem and first stage (64 = the standard network).
    seed: integer seed of every initialiser, or None.

  Returns:
    A functional `keras.Model` named "resnet18", images -> logits.

  Raises:
    ValueError: for arguments out of their domain.
  """
  _check_common(num_classes, input_shape, seed)
  _check_integer_width(width)
  init = _Initialisers(seed)
  inputs = keras.Input(tuple(input_shape))
  x = _conv_bn_relu(inputs, width, init)
  for multiplier, first_stride in RESNET18_STAGES:
    for block in range(BLOCKS_PER_STAGE):
      x = _basic_block(x, width * multiplier, first_stride if block == 0 else 1,
                       init)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(num_classes, kernel_initializer=init.glorot())(x)
  return keras.Model(inputs, outputs, name="resnet18")


def small_cnn(num_classes=10, input_shape=(32, 32, 3), width=32, seed=None):
  """A small, fast f_a for CPU runs (not in the paper).

  Conv width-width-M-2width-2width-M-4width (3x3, batch norm, ReLU), global
  average pooling, then `num_classes` logits.

  Args:
    num_classes: number of classes (logits).
    input_shape: `(height, width, channels)` of the images.
    width: filters of the first two convolutions.
    seed: integer seed of every initialiser, or None.

  Returns:
    A functional `keras.Model` named "small_cnn", images -> logits.

  Raises:
    ValueError: for arguments out of their domain.
  """
  _check_common(num_classes, input_shape, seed)
  _check_integer_width(width)
  init = _Initialisers(seed)
  inputs = keras.Input(tuple(input_shape))
  x = inputs
  for filters in (width, width, "M", 2 * width, 2 * width, "M", 4 * width):
    if filters == "M":
      x = keras.layers.MaxPooling2D(2)(x)
    else:
      x = _conv_bn_relu(x, filters, init)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(num_classes, kernel_initializer=init.glorot())(x)
  return keras.Model(inputs, outputs, name="small_cnn")


MODELS = {"small_vgg": small_vgg, "resnet18": resnet18, "small_cnn": small_cnn}


def build_model(name, **kwargs):
  """Builds a model of `MODELS` by name.

  Args:
    name: one of `MODELS` ("small_vgg", "resnet18", "small_cnn").
    **kwargs: the builder's arguments (`num_classes`, `input_shape`, `width`,
      `seed`).

  Returns:
    The `keras.Model`.

  Raises:
    ValueError: for an unknown name or bad builder arguments.
  """
  if name not in MODELS:
    raise ValueError(f"`name` must be one of {tuple(MODELS)}. Received: name={name!r}")
  return MODELS[name](**kwargs)
