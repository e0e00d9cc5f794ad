r"""Input-preprocessing defenses from the literature, as Keras layers.

Known-broken defenses, kept as the evaluation's own test of strength: each
goes in front of a classifier (e.g. the published
`cifar10/resnet18_undefended`), and `examples/attack_eval.py` must drive it
to a few percent at ε 8/255 with EOT and BPDA, as published.

| layer | paper | randomized | broken by |
|---|---|---|---|
| `RandomResizePad` | Xie et al. 2018 | yes | EOT (Athalye et al. 2018) |
| `BitDepthJpeg` | Guo et al. 2018 | no | BPDA (Athalye et al. 2018) |
| `Jpeg` | Dziugaite et al. 2016; Das et al. 2017 | no | BPDA |
| `GaussianNoise` | (textbook randomized defense) | yes | EOT |
| `FeatureSqueeze` | Xu, Evans, Qi 2018 | no | BPDA |
| `MedianSmoothing` | Xu, Evans, Qi 2018 | no | gradient attacks as they are |
| `ThermometerEncoding` | Buckman et al. 2018 | no | BPDA, soft surrogate (Athalye et al. 2018) |

Every layer takes float images in [0, 1], NHWC, and returns float32 images in
[0, 1] of the same shape (`ThermometerEncoding`: `levels` codes per
channel); it transforms in training and in inference alike
(a defense runs in `predict`: `training` is ignored). The random layers keep
an integer `seed` in their config and draw every random number from a
`keras.random.SeedGenerator`: two layers with the same seed give the same
outputs call after call, and each call of a layer draws afresh. The
generator's state is not saved in a `.keras` file, so a reloaded model starts
again from its seed.

Registration: every layer is registered under the package
"attacks.defenses" (the name new `.keras` files record) and under
"examples.defenses", the package of the first release of these layers, so
files saved then keep loading once `attacks.defenses` (or
`examples.defenses`, which imports it) is imported.

References:
  Xie, Wang, Zhang, Ren, Yuille, "Mitigating adversarial effects through
    randomization", ICLR 2018.
  Guo, Rana, Cisse, van der Maaten, "Countering adversarial images using
    input transformations", ICLR 2018.
  Xu, Evans, Qi, "Feature squeezing: detecting adversarial examples in deep
    neural networks", NDSS 2018.
  Buckman, Roy, Raffel, Goodfellow, "Thermometer encoding: one hot way to
    resist adversarial examples", ICLR 2018.
  Athalye, Carlini, Wagner, "Obfuscated gradients give a false sense of
    security: circumventing defenses to adversarial examples", ICML 2018.
"""

import keras
import tensorflow as tf

from adv_layer import layer
from attacks import common
from attacks import transfer

__all__ = [
    "BitDepthJpeg", "FeatureSqueeze", "GaussianNoise", "ImageDefense",
    "Jpeg", "LEGACY_PACKAGE", "MedianSmoothing", "PACKAGE",
    "RandomResizePad", "SoftThermometer", "ThermometerEncoding",
    "median_filter", "register",
]

PACKAGE = "attacks.defenses"
# The package the layers were registered under before they moved here.
LEGACY_PACKAGE = "examples.defenses"
# Xie et al. (2018): a 299 x 299 input resized to r x r, r in [299, 331),
# then zero-padded to 331 x 331 at a random offset.
XIE_MIN_SIZE, XIE_PADDED_SIZE = 299, 331


def register(cls):
  """Registers `cls` under `LEGACY_PACKAGE`, then under `PACKAGE`.

  Both names load (`keras.saving.get_registered_object`); the last
  registration is the name a saved file records.

  Args:
    cls: a Keras layer class with `get_config`.

  Returns:
    `cls`.
  """
  keras.saving.register_keras_serializable(package=LEGACY_PACKAGE)(cls)
  return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


class ImageDefense(keras.layers.Layer):
  """Base of the image defenses: argument and input checks shared by all.

  Subclasses implement `defend(images)` on float32 images in [0, 1]; `call`
  checks the input and casts it. `randomized` says whether the layer draws
  random numbers (and so takes a `seed`). All opt out of XLA
  (`supports_jit = False`, so `jit_compile="auto"` compiles `predict` without
  it on a GPU): under XLA the same seed draws other numbers (measured), and
  XLA has no JPEG kernels.

  Args:
    **kwargs: base `keras.layers.Layer` arguments (`name`, ...).

  Raises:
    RuntimeError: on a Keras backend other than TensorFlow.
  """

  randomized = False

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    layer.require_tensorflow_backend(type(self).__name__)
    self.supports_jit = False

  def init_seed(self, seed):
    """Keeps the integer `seed` and makes the layer's seed generator."""
    if seed is not None:
      common.check_number("seed", seed, integer=True)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  def build(self, input_shape):
    if len(input_shape) != 4:
      raise ValueError(
          f"{type(self).__name__} takes images (batch, height, width, "
          f"channels). Received: input_shape={tuple(input_shape)}")
    super().build(input_shape)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape)

  def call(self, inputs, training=None):
    """The defended images; `training` is ignored (active in both modes)."""
    del training
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    if "float" not in dtype:
      raise TypeError(
          f"{type(self).__name__} takes float images in [0, 1]; convert "
          f"integer images first (x / 255). Received: inputs.dtype={dtype}")
    return self.defend(tf.cast(inputs, tf.float32))

  def defend(self, images):
    """The defense on float32 images in [0, 1] (implemented by subclasses)."""
    raise NotImplementedError


def median_filter(images, size):
  """A `size` x `size` median filter per channel, edges reflected.

  The window of pixel (i, j) spans rows i - size//2 ... i - size//2 + size -
  1 (columns alike) of the image reflected at its edges (d c b a | a b c d);
  the filter keeps the window's value of rank size²//2 in sorted order (the
  upper of the two middle values of an even window, as
  `scipy.ndimage.median_filter` does). The output is one of the window's
  input values, so the gradient, where the ranks are strict, is the
  upstream gradient routed to the selected pixel.

  Args:
    images: float tensor `(batch, height, width, channels)`.
    size: side of the window, a positive int (1: the images unchanged).

  Returns:
    The filtered images, same shape and dtype.
  """
  if size == 1:
    return images
  before = size // 2
  after = size - 1 - before
  padded = tf.pad(images, [[0, 0], [before, after], [before, after], [0, 0]],
                  mode="SYMMETRIC")
  height, width = tf.shape(images)[1], tf.shape(images)[2]
  # The size² shifted copies, one per window offset: (size², b, h, w, c).
  shifted = tf.stack([
      padded[:, row:row + height, col:col + width, :]
      for row in range(size) for col in range(size)])
  return tf.sort(shifted, axis=0)[(size * size) // 2]


def _check_window(layer, argument, size, input_shape):
  """Raises ValueError when a `size` x `size` window exceeds the image."""
  side = min(input_shape[1], input_shape[2])
  if side is not None and size > side:
    raise ValueError(
        f"{type(layer).__name__} needs a median window no larger than the "
        f"image. Received: {argument}={size}, "
        f"input_shape={tuple(input_shape)}")


@register
class RandomResizePad(ImageDefense):
  """Random resizing and padding (Xie et al. 2018), scaled to small images.

  Xie et al. resize a 299 x 299 image to r x r, r uniform in [299, 331), and
  zero-pad it to 331 x 331 at a uniformly random offset; the resized image
  takes r/331 in [0.903, 1) of the side of the padded one, and the padding is
  1 to 32 pixels. Here the padded image has the input's size (the classifier
  keeps its input shape), so each image is shrunk to r x r, r uniform in
  {min_size, ..., max_size}, and placed at a uniform offset (top, left) in
  {0, ..., size - r}², the rest `pad_value`. The defaults scale the paper's
  range to the input side `size`: min_size = round(size · 299/331) and
  max_size = size - 1 (331 is excluded in the paper), i.e. r in {29, 30, 31}
  and 1 to 3 pixels of padding for CIFAR-10's 32 x 32 (r/32 in [0.906,
  0.969]). A non-square image loses the same number of pixels, size - r
  with size its shorter side, on both sides.

  Resizing is nearest-neighbour (half-pixel centres, as `tf.image.resize`),
  by `attacks.transfer.resize_and_pad`, the DI transform of the transfer
  attacks: one vectorised gather over the batch, no per-image loop. Nearest
  neighbour keeps the value range exactly (each output pixel is an input
  pixel or the padding) and, for one draw, the output is linear in the input:
  the gradient is the upstream gradient scattered back to the copied pixels,
  exact wherever it is taken (a gather), so the layer is random but not
  non-differentiable, the case EOT answers. Xie et al. describe the padding
  as zeros; Athalye et al.'s reimplementation resized bilinearly
  (`tf.image.crop_and_resize`) and padded with 0.5 (their code notes the
  value as unstated); this layer pads with `pad_value`, 0 by default.

  Xie et al. pair it with an ensemble-adversarially-trained Inception-ResNet;
  Athalye et al. (2018, Table 1) attack the randomization alone with EOT and
  report 0% accuracy on ImageNet at ε = 0.031 (L∞).

  Input shape: `(batch, height, width, channels)`, float in [0, 1].
  Output shape: the same, float32 in [0, 1].

  Args:
    min_size: smallest side r of the resized image, in pixels; None: the
      paper's ratio, round(size · 299/331).
    max_size: largest side r, in pixels, at most the input's shorter side;
      None: size - 1.
    pad_value: value of the padding.
    seed: integer seed of the draws, or None (Keras draws one).
    **kwargs: base `keras.layers.Layer` arguments.

  Raises:
    ValueError: for a bad size, pad value or seed (when built: a size that
      does not fit the input).

  Example:
    >>> defended = keras.Sequential([keras.Input((32, 32, 3)),
    ...                              RandomResizePad(seed=0), classifier])
  """

  randomized = True

  def __init__(self, min_size=None, max_size=None, pad_value=0.0, seed=None,
               **kwargs):
    super().__init__(**kwargs)
    for name, value in (("min_size", min_size), ("max_size", max_size)):
      if value is not None:
        common.check_number(name, value, minimum=1, integer=True)
    if min_size is not None and max_size is not None and min_size > max_size:
      raise ValueError("`min_size` must be at most `max_size`. Received: "
                       f"min_size={min_size}, max_size={max_size}")
    common.check_number("pad_value", pad_value)
    if not 0.0 <= pad_value <= 1.0:
      raise ValueError(f"`pad_value` must be in [0, 1]. Received: "
                       f"pad_value={pad_value!r}")
    self.min_size = min_size
    self.max_size = max_size
    self.pad_value = float(pad_value)
    self.init_seed(seed)
    self.side = self.sizes = None  # Set by `build`.

  def build(self, input_shape):
    super().build(input_shape)
    side = min(input_shape[1], input_shape[2])
    low = (self.min_size if self.min_size is not None else
           int(round(side * XIE_MIN_SIZE / XIE_PADDED_SIZE)))
    high = self.max_size if self.max_size is not None else side - 1
    if not 1 <= low <= high <= side:
      raise ValueError(
          f"RandomResizePad needs 1 <= min_size <= max_size <= {side} (the "
          f"input's shorter side). Received: min_size={low}, max_size={high}, "
          f"input_shape={tuple(input_shape)}")
    self.side = side
    self.sizes = (low, high)

  def draw(self, batch):
    """One draw per image: `(shrink, top, left)`, int32 tensors `(batch,)`.

    The resized side is r = size - shrink; top and left are the offsets.

    Args:
      batch: the number of images (an int or a scalar tensor).

    Returns:
      The three tensors; the seed generator advances by one.
    """
    low, high = self.sizes
    uniform = keras.random.uniform(tf.stack([batch, 3]),
                                   seed=self.seed_generator)
    size = low + tf.cast(tf.floor(uniform[:, 0] * (high - low + 1)), tf.int32)
    shrink = self.side - tf.minimum(size, high)
    top, left = (tf.minimum(tf.cast(tf.floor(uniform[:, i] * tf.cast(
        shrink + 1, tf.float32)), tf.int32), shrink) for i in (1, 2))
    return shrink, top, left

  def apply(self, images, shrink, top, left):
    """Images resized and padded as one draw of `draw` says."""
    return transfer.resize_and_pad(images, shrink, top, left, self.pad_value)

  def defend(self, images):
    return self.apply(images, *self.draw(tf.shape(images)[0]))

  def get_config(self):
    config = super().get_config()
    config.update({"min_size": self.min_size, "max_size": self.max_size,
                   "pad_value": self.pad_value, "seed": self.seed})
    return config


@register
class BitDepthJpeg(ImageDefense):
  """Bit-depth reduction then JPEG compression (Guo et al. 2018).

  Each image is reduced to `bits` bits per channel, round(x · L) / L with
  L = 2^bits - 1, then JPEG-compressed at `quality` and decoded
  (`tf.image.adjust_jpeg_quality`: through uint8, default DCT method). JPEG
  encodes one image at a time: the compression runs under `tf.map_fn` over
  the batch. Guo et al. study each transformation on its own (bit-depth
  reduction, JPEG, cropping-rescaling, total variation, quilting); this
  layer chains two of them. The defaults follow Athalye et al.'s
  reimplementation: 3 bits (theirs truncates the uint8 value to its top 3
  bits; this layer rounds to 2^bits levels spanning [0, 1]) and quality 75
  (the level their code says Guo et al. specify).

  Deterministic, and not differentiable: the uint8 round trip of the JPEG
  step cuts the graph, so `tf.GradientTape.gradient` of the output with
  respect to the input is None (tested), and the rounding alone would give
  zero gradients almost everywhere. This is the non-differentiable part an
  evaluation must wrap with BPDA (backward pass = identity).

  Athalye et al. (2018, Table 1) break Guo et al.'s transformations with
  BPDA (EOT as well for the random ones), attacking each alone (without the
  adversarial training Guo et al. also propose): 0% accuracy on ImageNet at
  an L2 distance of 0.005 (the threat model their Table 1 lists).

  Input shape: `(batch, height, width, channels)`, float in [0, 1], 1 or 3
  channels. Output shape: the same, float32 in [0, 1].

  Args:
    bits: bits per channel kept, 1 to 8.
    quality: JPEG quality, 0 to 100.
    **kwargs: base `keras.layers.Layer` arguments.

  Raises:
    ValueError: for bad `bits` or `quality` (when built: a channel count
      other than 1 or 3).
  """

  def __init__(self, bits=3, quality=75, **kwargs):
    super().__init__(**kwargs)
    common.check_number("bits", bits, minimum=1, integer=True)
    if bits > 8:
      raise ValueError(f"`bits` must be in [1, 8]. Received: bits={bits!r}")
    common.check_number("quality", quality, minimum=0, integer=True)
    if quality > 100:
      raise ValueError(
          f"`quality` must be in [0, 100]. Received: quality={quality!r}")
    self.bits = bits
    self.quality = quality

  def build(self, input_shape):
    super().build(input_shape)
    if input_shape[-1] not in (1, 3):
      raise ValueError(
          "BitDepthJpeg compresses images with 1 or 3 channels. Received: "
          f"input_shape={tuple(input_shape)}")

  def reduce_bits(self, images):
    """Bit-depth reduction: round(x · L) / L, L = 2^bits - 1, x clipped."""
    levels = float(2**self.bits - 1)
    return tf.round(tf.clip_by_value(images, 0.0, 1.0) * levels) / levels

  def compress(self, images):
    """JPEG round trip at `quality`, image by image."""
    return tf.map_fn(
        lambda image: tf.image.adjust_jpeg_quality(image, self.quality),
        images, fn_output_signature=tf.float32)

  def defend(self, images):
    return self.compress(self.reduce_bits(images))

  def get_config(self):
    config = super().get_config()
    config.update({"bits": self.bits, "quality": self.quality})
    return config


@register
class Jpeg(BitDepthJpeg):
  """JPEG compression alone (Dziugaite et al. 2016; Das et al. 2017).

  `BitDepthJpeg` at 8 bits: round(x · 255) / 255 is the uint8 rounding the
  JPEG encoder applies anyway, then the JPEG round trip at `quality`.
  Dziugaite, Ghahramani and Roy (2016) found that JPEG compression undoes
  small FGSM perturbations; Das et al. (2017) propose it as a defense
  (with retraining on compressed images, not done here). Deterministic and
  not differentiable, like `BitDepthJpeg`: an evaluation wraps it with BPDA.

  Input shape: `(batch, height, width, channels)`, float in [0, 1], 1 or 3
  channels. Output shape: the same, float32 in [0, 1].

  Args:
    quality: JPEG quality, 0 to 100.
    bits: bits per channel kept before compressing (8: none dropped).
    **kwargs: base `keras.layers.Layer` arguments.

  Raises:
    ValueError: for bad `quality` or `bits`.
  """

  def __init__(self, quality=75, bits=8, **kwargs):
    super().__init__(bits=bits, quality=quality, **kwargs)


@register
class GaussianNoise(ImageDefense):
  """Gaussian noise at inference: clip(x + N(0, sigma²), 0, 1) per pixel.

  Unlike `keras.layers.GaussianNoise` (a regulariser, off at inference),
  the noise is drawn in every call, `predict` included: a textbook
  randomized defense. It is differentiable almost everywhere (the clip
  passes no gradient where it saturates) and random, so a gradient attack on
  one draw sees a noisy gradient; EOT (averaging the gradient over draws,
  Athalye et al. 2018) removes that obstacle. Athalye et al. do not evaluate
  this layer as such; their EOT is the attack its randomness calls for.

  The default sigma, 0.03, is the largest of {0.02, 0.03, 0.05} that keeps
  the clean accuracy of `cifar10/resnet18_undefended` (trained without
  noise) within 1.5 points, measured on the first 200 CIFAR-10 test images
  (`clean_accuracy`, draws of seeds 0, 1, 2): 88.5% without noise; 87.5%,
  87.5%, 87.5% at 0.02; 87.5%, 87.0%, 87.0% at 0.03; 83.0%, 82.0%, 82.5% at
  0.05.

  Input shape: `(batch, height, width, channels)`, float in [0, 1].
  Output shape: the same, float32 in [0, 1].

  Args:
    sigma: standard deviation of the noise, > 0.
    seed: integer seed of the draws, or None (Keras draws one).
    **kwargs: base `keras.layers.Layer` arguments.

  Raises:
    ValueError: for a bad `sigma` or seed.
  """

  randomized = True

  def __init__(self, sigma=0.03, seed=None, **kwargs):
    super().__init__(**kwargs)
    common.check_number("sigma", sigma, minimum=0, strict=True)
    self.sigma = float(sigma)
    self.init_seed(seed)

  def defend(self, images):
    noise = keras.random.normal(tf.shape(images), stddev=self.sigma,
                                seed=self.seed_generator)
    return tf.clip_by_value(images + noise, 0.0, 1.0)

  def get_config(self):
    config = super().get_config()
    config.update({"sigma": self.sigma, "seed": self.seed})
    return config


@register
class FeatureSqueeze(ImageDefense):
  """Feature squeezing (Xu, Evans, Qi 2018): bit-depth reduction, then a median filter.

  Xu et al. squeeze CIFAR-10 images three ways, each on its own: bit depth
  reduced to 5 bits, 2 x 2 median smoothing and non-local means (13-3-2),
  and flag an input as adversarial when a squeezed copy's prediction moves
  too far from the original's. Used as a defense that classifies (no
  detector), this layer chains the first two squeezers, as Athalye et al.
  and others attack "squeeze then classify" preprocessing: round(x · L) / L
  with L = 2^bits - 1, then a `median_size` x `median_size` median filter
  per channel. The filter reads the window rows i - m//2 ... i - m//2 + m -
  1 (and the same for columns), m = `median_size`, reflecting the image at
  its edges (d c b a | a b c d), and keeps the value of rank m²//2 in the
  sorted window: the upper of the two middle values of an even window, as
  `scipy.ndimage.median_filter`, which Xu et al.'s code calls, does.

  Deterministic and not differentiable: the rounding passes no gradient
  (`tf.GradientTape.gradient` is None), so an evaluation wraps it with BPDA
  (backward pass = identity). The model checks of `attacks.model_checks`
  find this on their own.

  Input shape: `(batch, height, width, channels)`, float in [0, 1].
  Output shape: the same, float32 in [0, 1].

  Args:
    bits: bits per channel kept, 1 to 8 (Xu et al.'s CIFAR-10 setting: 5).
    median_size: side of the median window, 1 (off) or more (theirs: 2).
    **kwargs: base `keras.layers.Layer` arguments.

  Raises:
    ValueError: for bad `bits` or `median_size` (when built: a window larger
      than the image).
  """

  def __init__(self, bits=5, median_size=2, **kwargs):
    super().__init__(**kwargs)
    common.check_number("bits", bits, minimum=1, integer=True)
    if bits > 8:
      raise ValueError(f"`bits` must be in [1, 8]. Received: bits={bits!r}")
    common.check_number("median_size", median_size, minimum=1, integer=True)
    self.bits = bits
    self.median_size = median_size

  def build(self, input_shape):
    super().build(input_shape)
    _check_window(self, "median_size", self.median_size, input_shape)

  def reduce_bits(self, images):
    """Bit-depth reduction: round(x · L) / L, L = 2^bits - 1, x clipped."""
    levels = float(2**self.bits - 1)
    return tf.round(tf.clip_by_value(images, 0.0, 1.0) * levels) / levels

  def median(self, images):
    """The median filter of the class docstring, channel by channel."""
    return median_filter(images, self.median_size)

  def defend(self, images):
    return self.median(self.reduce_bits(images))

  def get_config(self):
    config = super().get_config()
    config.update({"bits": self.bits, "median_size": self.median_size})
    return config


@register
class MedianSmoothing(ImageDefense):
  """Spatial smoothing (Xu, Evans, Qi 2018): a median filter alone.

  One of Xu et al.'s squeezers on its own: a `size` x `size` median filter
  per channel (`median_filter`: edges reflected, the upper middle value of an
  even window), and the filtered image classified. Xu et al. try 2 x 2 and
  3 x 3 windows on CIFAR-10 and keep 2 x 2, the default here;
  `FeatureSqueeze` chains that window with a 5-bit reduction. Behind
  `cifar10/resnet18_undefended`, on the first 200 CIFAR-10 (JPEG copy) test
  images: 88.5% clean without the filter (size 1), 82.5% with 2 x 2, 70.0%
  with 3 x 3 (`python -m examples.defenses --defense=median_smoothing
  --size=K --output=...`).

  Deterministic and differentiable almost everywhere: each output pixel is
  one of its window's input pixels, and the gradient (through `tf.sort`)
  routes the upstream gradient to that pixel. No BPDA is needed; an attack
  differentiates through the filter as it is.

  Input shape: `(batch, height, width, channels)`, float in [0, 1].
  Output shape: the same, float32 in [0, 1].

  Args:
    size: side of the median window, 1 (off) or more.
    **kwargs: base `keras.layers.Layer` arguments.

  Raises:
    ValueError: for a bad `size` (when built: a window larger than the
      image).
  """

  def __init__(self, size=2, **kwargs):
    super().__init__(**kwargs)
    common.check_number("size", size, minimum=1, integer=True)
    self.size = size

  def build(self, input_shape):
    super().build(input_shape)
    _check_window(self, "size", self.size, input_shape)

  def defend(self, images):
    return median_filter(images, self.size)

  def get_config(self):
    config = super().get_config()
    config.update({"size": self.size})
    return config


@register
class ThermometerEncoding(ImageDefense):
  """Thermometer encoding of each pixel (Buckman, Roy, Raffel, Goodfellow 2018).

  Each channel value x in [0, 1] falls in the bucket b = min(floor(L·x),
  L - 1) of L = `levels` equal buckets and becomes L binary values, the k-th
  1 when k <= b (k = 0 ... L - 1): 0 -> [1, 0, ..., 0], 1 -> [1, ..., 1].
  The codes of a pixel's channels are laid side by side, channel-major: an
  image `(h, w, c)` becomes `(h, w, c·L)`. A classifier is then trained on
  the codes (Buckman et al. use 16 levels on CIFAR-10; the discretization
  is the defense, and it has no input gradient). On images on the uint8
  grid the buckets equal those of Buckman et al.'s code, which scales x by
  0.99999 before the floor.

  Deterministic and not differentiable: `tf.GradientTape.gradient` of the
  output with respect to the input is None. The output has `levels` times
  the input's channels, so identity BPDA does not apply; `bpda_backward`
  gives the differentiable surrogate Athalye et al. (2018) attack it with
  (`SoftThermometer`), which `attacks.bpda.wrap_layers` and the
  evaluation's model checks use for this layer. Athalye et al. (Table 1)
  report 0% accuracy for the encoding alone (without the adversarial
  training Buckman et al. also propose) on CIFAR-10 at L∞ 0.031.

  Input shape: `(batch, height, width, channels)`, float in [0, 1].
  Output shape: `(batch, height, width, channels · levels)`, float32 0 or 1.

  Args:
    levels: number of buckets L, 2 or more.
    **kwargs: base `keras.layers.Layer` arguments.

  Raises:
    ValueError: for bad `levels`.
  """

  def __init__(self, levels=16, **kwargs):
    super().__init__(**kwargs)
    common.check_number("levels", levels, minimum=2, integer=True)
    self.levels = levels

  def compute_output_shape(self, input_shape):
    return _coded_shape(input_shape, self.levels)

  def defend(self, images):
    levels = float(self.levels)
    bucket = tf.minimum(tf.floor(tf.clip_by_value(images, 0.0, 1.0) * levels),
                        levels - 1.0)
    codes = tf.cast(tf.range(levels) <= bucket[..., None], tf.float32)
    return _merge_levels(codes)

  def bpda_backward(self):
    """The differentiable surrogate of BPDA for this layer."""
    return SoftThermometer(levels=self.levels, name=f"{self.name}_soft")

  def get_config(self):
    config = super().get_config()
    config.update({"levels": self.levels})
    return config


@register
class SoftThermometer(ThermometerEncoding):
  """The differentiable surrogate of `ThermometerEncoding` (BPDA).

  The k-th code of a value x is clip(L·x - k + 1, 0, 1): 0 up to x =
  (k - 1)/L, a ramp to 1 at x = k/L, where the hard code switches to 1, and
  1 after (the k = 0 code is 1 everywhere, as the hard one). Athalye et al.
  (2018) attack the thermometer encoding through this relaxation; it is the
  backward pass, never the forward, of an evaluation.

  Input shape: `(batch, height, width, channels)`, float.
  Output shape: `(batch, height, width, channels · levels)`, float32 in
  [0, 1].

  Args:
    levels: number of buckets L, 2 or more.
    **kwargs: base `keras.layers.Layer` arguments.

  Raises:
    ValueError: for bad `levels`.
  """

  def defend(self, images):
    levels = float(self.levels)
    return _merge_levels(tf.clip_by_value(
        levels * images[..., None] - tf.range(levels) + 1.0, 0.0, 1.0))

  def bpda_backward(self):
    """None: the surrogate is differentiable itself."""
    return None


def _coded_shape(input_shape, levels):
  """The shape of `levels` codes per channel of `input_shape`."""
  channels = input_shape[-1]
  return (*input_shape[:-1], None if channels is None else channels * levels)


def _merge_levels(codes):
  """`(b, h, w, c, L)` codes as `(b, h, w, c·L)`, channel-major."""
  shape = tf.shape(codes)
  merged = tf.reshape(codes, tf.concat([shape[:-2], [shape[-2] * shape[-1]]],
                                       0))
  static = codes.shape
  if static[-2] is not None:
    merged.set_shape([*static[:-2], static[-2] * static[-1]])
  return merged
