"""`AdversarialTransform`: the defense of Xiao & Zheng (CVPR 2020) as a Keras layer."""

import contextlib
import contextvars

import keras
import numpy as np
import tensorflow as tf
# The one way to tell at trace time that a graph is being compiled by XLA,
# which drops the layer's run-time input checks.
from tensorflow.python.ops import control_flow_util

from adv_layer import transform

INT32_MAX = 2**31 - 1
# Images of the output probe that tells logits from probabilities.
PROBE_IMAGES = 8
# How far each row of softmax probabilities may stray from summing to 1
# (float16 rounding under mixed precision).
PROBABILITY_ATOL = 2e-3
# Outputs spread over less than this are constant (e.g. float noise around
# the all-zero logits of zero-initialised weights): they prove nothing.
CONSTANT_SPREAD = 1e-4
# True while `from_config` rebuilds a saved layer: its f_b holds initial
# weights until the saved ones load, so the output probe would judge those.
_LOADING = contextvars.ContextVar("adversarial_transform_loading",
                                  default=False)


def require_tensorflow_backend(owner):
  """Raises if Keras does not run on TensorFlow.

  Args:
    owner: name of the caller, for the message.

  Raises:
    RuntimeError: on any other Keras backend.
  """
  backend = keras.backend.backend()
  if backend != "tensorflow":
    raise RuntimeError(
        f"{owner} needs the TensorFlow Keras backend (set KERAS_BACKEND=tensorflow). "
        f"Received: keras.backend.backend()={backend!r}")


def in_xla_context():
  """Whether the graph being built is compiled by XLA (`jit_compile=True`)."""
  if tf.executing_eagerly():
    return False
  return control_flow_util.GraphOrParentsInXlaContext(
      tf.compat.v1.get_default_graph())


def os_entropy_seed():
  """A stateless seed drawn from OS entropy at every run, never replayable.

  A stateful random op whose two seed attributes are 0 seeds its generator
  from the operating system when its kernel is created, whatever the global
  seed (`tf.random.set_seed`) or the state saved in a model file.

  Returns:
    An int32 tensor of shape `(2,)`.
  """
  return tf.raw_ops.RandomUniformInt(
      shape=[2], minval=tf.constant(0), maxval=tf.constant(INT32_MAX),
      seed=0, seed2=0)


def ends_in_softmax(model):
  """Whether `model`'s last layer applies a softmax (probabilities, not logits)."""
  layers = getattr(model, "layers", None)
  last = layers[-1] if layers else model
  if isinstance(last, keras.layers.Softmax):
    return True
  activation = getattr(last, "activation", None)
  return getattr(activation, "__name__", "") == "softmax"


def probability_kind(outputs, atol=PROBABILITY_ATOL):
  """What kind of probabilities a model's outputs look like, if any.

  Logits are unconstrained; probabilities are never negative nor above 1.
  Outputs count as probabilities when every entry is finite and in [0, 1] and
  they are not constant (spread over at least `CONSTANT_SPREAD`): `"softmax"`
  when each row also sums to 1 (within `atol`), `"sigmoid"` otherwise.
  Constant outputs (e.g. an f_b with zero-initialised weights, whose logits
  are all 0) carry no information and never count, nor do non-finite or
  empty ones.

  Args:
    outputs: a model's outputs on a batch, array-like `(batch, ...)`; each
      image's entries form one row.
    atol: the tolerance on the row sums.

  Returns:
    `"softmax"`, `"sigmoid"` or None (looks like logits).

  Example:
    >>> probability_kind([[0.2, 0.8], [0.5, 0.5]])
    'softmax'
    >>> probability_kind([[-1.3, 2.0], [0.4, 0.1]]) is None
    True
  """
  values = np.asarray(outputs, np.float64)
  if values.ndim == 0 or values.size == 0:
    return None
  rows = values.reshape(len(values), -1)
  if not np.all(np.isfinite(rows)) or np.ptp(rows) < CONSTANT_SPREAD:
    return None
  if rows.min() < 0 or rows.max() > 1:
    return None
  if rows.shape[1] > 1 and np.all(np.abs(rows.sum(axis=1) - 1) <= atol):
    return "softmax"
  return "sigmoid"


def looks_like_probabilities(outputs, atol=PROBABILITY_ATOL):
  """Whether a model's outputs look like probabilities rather than logits.

  True when every entry is finite and in [0, 1] and the outputs are not
  constant: a softmax head (rows summing to 1) or a sigmoid head
  (`probability_kind` tells which). Logits are unconstrained; probe a model
  with images spread over its input range (`probe_images`), where logits
  that all fall in [0, 1] are unlikely.

  Args:
    outputs: a model's outputs on a batch, array-like `(batch, ...)`.
    atol: the tolerance on the row sums.

  Returns:
    A bool.
  """
  return probability_kind(outputs, atol) is not None


def probe_images(shape, value_range=(0.0, 1.0), count=PROBE_IMAGES):
  """A fixed batch of probe images spread over `value_range`.

  The first image is all `low`, the second all `high`, the rest uniform in
  the range from a fixed seed (the global random state is not touched), so
  the same shape and range always give the same batch.

  Args:
    shape: the shape of one image.
    value_range: `(low, high)` of the pixel values.
    count: the number of images, at least 2.

  Returns:
    float32 array `(count, *shape)`.
  """
  low, high = float(value_range[0]), float(value_range[1])
  rng = np.random.default_rng(0)
  images = rng.uniform(low, high, size=(count,) + tuple(shape))
  images[0], images[1] = low, high
  return images.astype(np.float32)


def _known_image_shape(shape):
  """`shape` without its batch axis as a tuple of ints, or None if unknown."""
  if shape is None:
    return None
  dims = tuple(shape)[1:]
  if any(d is None for d in dims):
    return None
  return tuple(int(d) for d in dims)


@keras.saving.register_keras_serializable(package="adv_layer")
class AdversarialTransform(keras.layers.Layer):
  """Moves each input to an adversarial example of a frozen model f_b.

  Implements g(x) of Xiao & Zheng, "Resisting Adversarial Examples by
  Adversarial Examples" (CVPR 2020), Sec. 3.2: least-likely-class PGD on f_b
  from a random start inside a large L∞ ball (Δ = 0.2 on [0, 1] images). Put it
  in front of any classifier f_a; the model is then f_a(g(x)).

  Unlike Keras' random preprocessing layers, the transform runs in training
  *and* inference (`training` is ignored; it is a defense, not augmentation),
  and f_b is always called with `training=False` (batch norm in inference
  mode). f_b stays frozen even when the outer model is set trainable. The
  output carries no gradient path to the input; attacks build their own
  (`attacks.estimators`). The loop runs in float32 on the unrounded inputs
  whatever the layer's dtype policy (no autocast); the output is cast to the
  layer's compute dtype. Called eagerly, the loop runs as a compiled
  `tf.function` (see `adv_layer.ll_pgd`). Under `tf.distribute`, each
  replica draws its own random start.

  Randomness: g is a random defense and its claim assumes the attacker
  cannot predict the random start. `seed` makes *training* reproducible
  (calls with `training=True` draw from it). Inference calls (`predict`,
  `training=False` or None, an exported SavedModel, a reloaded `.keras`
  file) fold fresh OS entropy into every draw, so no file or seed replays
  them, unless the draws are pinned: `pin_seed=True` at construction, or
  `pin_draws()` for a while (evaluations pin and reseed, see
  `attacks.scoring.reseeded`). The integer `seed` is kept in the config (a
  resumed training run continues its sequence); it does not replay inference.

  f_b must return logits: the layer refuses an f_b whose last layer applies
  a softmax, and one whose outputs on a fixed probe batch spread over
  `value_range` (`probe_images`) look like probabilities
  (`looks_like_probabilities`: a softmax or sigmoid head, also nested or in a
  `Lambda`). The probe runs at construction when f_b's input shape is known,
  else when the layer is built; not when a saved layer loads (its f_b holds
  initial weights until the saved ones load, and it was probed when made).

  A batch of 0 images gives an empty batch (f_b is not called; the seed
  generator still advances by one, as on every call).

  Input checks: integer images raise at once; inputs outside `value_range`
  or not finite raise at run time (`tf.errors.InvalidArgumentError`). XLA
  drops run-time assertions, so the layer opts out of XLA
  (`supports_jit = False`: Keras then compiles `fit`/`predict` without XLA,
  also for `jit_compile=True`), and tracing it inside a user's own
  `tf.function(jit_compile=True)` raises a `ValueError`.

  Args:
    f_b: a built Keras model mapping images to logits (not probabilities).
    epsilon: L∞ radius Δ of the transform.
    steps: number N of LL-PGD steps.
    step_size: step of each signed step; None means `epsilon / 6`.
    target: `"least_likely"` (paper), `"untargeted"` or `"random"`.
    random_start: start from x + U[-Δ, Δ] noise (paper) or from x.
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the random starts of training calls (and of
      inference calls while pinned); None draws one.
    pin_seed: pin inference draws to the seed's sequence, also in saved and
      exported copies (reproducible, and so replayable by an attacker who
      reads the seed). Default False: inference draws fold in OS entropy.
    clip_to_range: keep every iterate of g in `value_range` (default). False
      projects onto the Δ-ball only, as eq. (3) and the authors' code do, so
      the output may leave `value_range` by up to Δ (docs/FIDELITY.md).
    **kwargs: base layer arguments (`name`, `dtype`, ...).

  Input shape:
    `(batch, *f_b.input_shape[1:])`, float, values inside `value_range`.

  Output shape:
    Same as the input.

  Raises:
    ValueError: for hyperparameters out of their domain, an f_b that is not a
      Keras model, ends in a softmax or returns probabilities on the probe.
    RuntimeError: on a non-TensorFlow Keras backend.

  Example:
    >>> f_b = adv_layer.models.small_vgg()   # pretrained, logits out
    >>> model = keras.Sequential([
    ...     keras.Input((32, 32, 3)),
    ...     adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=13, seed=0),
    ...     adv_layer.models.resnet18()])
    >>> model.compile("sgd", "sparse_categorical_crossentropy")
  """

  def __init__(self,
               f_b,
               epsilon=0.2,
               steps=13,
               step_size=None,
               target="least_likely",
               random_start=True,
               value_range=(0.0, 1.0),
               seed=None,
               pin_seed=False,
               clip_to_range=True,
               **kwargs):
    require_tensorflow_backend("AdversarialTransform")
    # No autocast: under a mixed policy the loop must see the float32 images,
    # not their float16 rounding (it would move the ball's centre).
    kwargs.setdefault("autocast", False)
    super().__init__(**kwargs)
    if not isinstance(f_b, keras.Model):
      raise ValueError(f"`f_b` must be a keras.Model. Received: f_b={f_b!r}")
    if ends_in_softmax(f_b):
      raise ValueError(
          "`f_b` must return logits, but its last layer applies a softmax; drop "
          f"the softmax. Received: f_b={f_b.name!r}")
    self.step_size = transform.validate_transform_args(
        epsilon, steps, step_size, target, value_range)
    self.f_b = f_b
    # A saved layer was probed when it was made (see `from_config`).
    self._probed = _LOADING.get()
    self.f_b.trainable = False
    self.epsilon = float(epsilon)
    self.steps = int(steps)
    self.target = target
    self.random_start = bool(random_start)
    self.value_range = (float(value_range[0]), float(value_range[1]))
    self.seed = seed
    self.pin_seed = bool(pin_seed)
    self.clip_to_range = bool(clip_to_range)
    self.seed_generator = keras.random.SeedGenerator(seed)
    # 1 while inference draws follow `seed_generator` alone (pinned), 0 while
    # they fold in OS entropy; a variable, so compiled functions see changes.
    self.pinned = self.add_weight(
        shape=(), dtype="int32", trainable=False, name="pinned",
        initializer=keras.initializers.Constant(int(self.pin_seed)))
    # XLA drops the run-time input checks: Keras compiles without it.
    self.supports_jit = False
    # Set by `attacks.estimators.use_estimator` while an attack runs: a
    # callable (layer, x) -> g(x) with a differentiable backward pass.
    self.gradient_estimator = None
    if getattr(f_b, "inputs", None):
      self._probe_f_b(f_b.inputs[0].shape)

  def _probe_f_b(self, input_shape):
    """Refuses an f_b whose outputs on `probe_images` look like probabilities.

    Runs once, eagerly, when the image shape is fully known (else it waits
    for `build`). An f_b that fails on the probe is left to fail, with its
    own error, when the layer is called.

    Args:
      input_shape: f_b's input shape (batch axis first).

    Raises:
      ValueError: if the outputs look like probabilities.
    """
    image_shape = _known_image_shape(input_shape)
    if self._probed or image_shape is None:
      return
    self._probed = True
    images = probe_images(image_shape, self.value_range)
    try:
      with tf.init_scope():
        outputs = np.asarray(
            tf.cast(self.f_b(tf.constant(images), training=False), tf.float32))
    except Exception:  # pylint: disable=broad-except
      return
    kind = probability_kind(outputs)
    if kind is not None:
      what = ("each row summing to 1: a softmax" if kind == "softmax" else
              "a sigmoid or other squashing")
      raise ValueError(
          "`f_b` must return logits, but its outputs on a probe batch look "
          f"like probabilities (every entry in [0, 1], {what} head, maybe "
          "nested or in a Lambda); drop the final activation. "
          f"Received: f_b={self.f_b.name!r}")

  @property
  def trainable(self):
    return self._trainable

  @trainable.setter
  def trainable(self, value):
    keras.layers.Layer.trainable.fset(self, value)
    # The outer model's setter cascades into nested layers: f_b stays frozen.
    if hasattr(self, "f_b"):
      self.f_b.trainable = False

  @property
  def metrics(self):
    """The layer's own metrics, none of f_b's.

    A compiled f_b (e.g. one loaded from a `.keras` file) carries its own
    loss tracker and compile metrics; f_b is frozen and never trained or
    evaluated here, so they would only show up, unbuilt, among the metrics
    of the model around this layer and make its `fit` fail.
    """
    return list(self._metrics)

  @property
  def draws_pinned(self):
    """Whether inference draws follow the seed generator alone (replayable)."""
    return bool(int(self.pinned.numpy()))

  def pin_draws(self, pinned=True):
    """Pins (or unpins) inference draws to the seed generator's sequence.

    Evaluations pin the draws and reseed the generator so that a seeded
    evaluation repeats; `attacks.scoring.reseeded` does both and restores.

    Args:
      pinned: True to pin, False to fold OS entropy in again.
    """
    self.pinned.assign(int(bool(pinned)))

  def load_own_variables(self, store):
    """Restores the pin; files saved before the layer had one hold nothing.

    Args:
      store: the layer's saved variables (`{"0": pinned}`), or an empty store
        from an older file, which keeps the pin given by `pin_seed`.
    """
    if len(store.keys()) == 0:
      return
    super().load_own_variables(store)

  def build(self, input_shape):
    expected = (tuple(self.f_b.input_shape[1:])
                if getattr(self.f_b, "inputs", None) else None)
    received = tuple(input_shape[1:])
    if expected is not None and any(
        e is not None and r is not None and e != r
        for e, r in zip(expected, received)) or (
            expected is not None and len(expected) != len(received)):
      raise ValueError(
          "Input shape does not match f_b's input shape "
          f"{(None,) + expected}. Received: input_shape={tuple(input_shape)}")
    if not self.f_b.built:
      self.f_b.build(input_shape)
    self._probe_f_b(input_shape)
    self.built = True

  def compute_output_shape(self, input_shape):
    return input_shape

  def _checked_inputs(self, inputs):
    dtype = tf.as_dtype(inputs.dtype)
    if not dtype.is_floating:
      raise TypeError(
          "AdversarialTransform expects float images with values in "
          f"{self.value_range}; convert integer images first (e.g. x / 255). "
          f"Received: inputs.dtype={dtype.name}")
    if in_xla_context():
      raise ValueError(
          "AdversarialTransform cannot run inside an XLA-compiled function "
          "(jit_compile=True): XLA drops its run-time input checks, so "
          "out-of-range or non-finite images would be silently transformed. "
          "Call it from a function compiled without XLA (Keras' fit and "
          "predict do so for this layer). Received: jit_compile=True")
    x = tf.cast(inputs, tf.float32)
    low, high = self.value_range
    finite = tf.reduce_all(tf.math.is_finite(x))
    x_min, x_max = tf.reduce_min(x), tf.reduce_max(x)
    check = tf.debugging.Assert(
        tf.logical_and(finite, tf.logical_and(x_min >= low, x_max <= high)),
        [f"AdversarialTransform inputs must be finite and lie in value_range="
         f"{self.value_range}. Received: inputs all finite, min, max =",
         finite, x_min, x_max])
    with tf.control_dependencies([check]):
      return tf.identity(x)

  def call(self, inputs, training=None):
    """Returns g(inputs), in training and inference alike.

    `training` only chooses where the random start comes from (see the class
    docstring); the transform always runs.
    """
    x = self._checked_inputs(inputs)
    empty = lambda: tf.zeros(tf.shape(x), self.compute_dtype)
    if self.gradient_estimator is not None:
      if x.shape[0] == 0:
        return empty()
      return tf.cast(self.gradient_estimator(self, x), self.compute_dtype)
    seed = self.draw_seed(training)
    if x.shape[0] == 0:
      return empty()
    run = lambda: tf.cast(self.transform(x, seed=seed), self.compute_dtype)
    if x.shape[0] is None:  # Traced for any batch size: 0 skips f_b.
      outputs = tf.cond(tf.shape(x)[0] > 0, run, empty)
    else:
      outputs = run()
    return tf.stop_gradient(outputs)

  def draw_seed(self, training=None):
    """The stateless seed of one call's draws (advances the generator).

    Args:
      training: True for a training call (the seeded sequence); otherwise
        OS entropy is folded in unless the draws are pinned.

    Returns:
      An int32 tensor of shape `(2,)`.
    """
    seed = transform.stateless_seed(self.seed_generator)
    if training:
      return seed
    return tf.cond(
        self.pinned > 0, lambda: seed,
        lambda: tf.random.experimental.stateless_fold_in(
            seed, os_entropy_seed()[0]))

  def transform(self, x, **overrides):
    """Runs g on float32 images with this layer's settings.

    Args:
      x: float32 images in `value_range`.
      **overrides: keyword arguments of `adv_layer.ll_pgd` that replace the
        layer's own (e.g. `noise`, `sign_fn`, `project_fn`, `steps`).

    Returns:
      g(x), float32, with whatever gradient path `ll_pgd` gives.
    """
    kwargs = dict(
        epsilon=self.epsilon,
        steps=self.steps,
        step_size=self.step_size,
        target=self.target,
        random_start=self.random_start,
        value_range=self.value_range,
        clip_to_range=self.clip_to_range,
        seed=self.seed_generator)
    kwargs.update(overrides)
    return transform.ll_pgd(self.f_b, x, **kwargs)

  def get_config(self):
    config = super().get_config()
    config.update({
        "f_b": keras.saving.serialize_keras_object(self.f_b),
        "epsilon": self.epsilon,
        "steps": self.steps,
        "step_size": self.step_size,
        "target": self.target,
        "random_start": self.random_start,
        "value_range": list(self.value_range),
        "seed": self.seed,
        "pin_seed": self.pin_seed,
        "clip_to_range": self.clip_to_range,
    })
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["f_b"] = keras.saving.deserialize_keras_object(config["f_b"])
    config["value_range"] = tuple(config["value_range"])
    # No output probe: f_b's saved weights load only after the layer is made
    # and built, and a probe of its initial weights could refuse a valid file.
    token = _LOADING.set(True)
    try:
      return cls(**config)
    finally:
      _LOADING.reset(token)


@contextlib.contextmanager
def pinned_draws(model, seed):
  """Pins every `AdversarialTransform` in `model` to draws derived from `seed`.

  Inference draws fold in OS entropy unless pinned; inside this context they
  are pinned and follow each layer's seed generator, set to a state derived
  from `seed` (layer i of `find_transforms` gets the i-th of `seeds` drawn
  from a generator seeded with `seed`). States and pins are restored on
  exit, so a seeded evaluation shifts no later draws.

  Args:
    model: a Keras model (other objects are left alone), or None.
    seed: an integer; None leaves the layers untouched.

  Yields:
    None.
  """
  layers = find_transforms(model) if isinstance(model, keras.Model) else []
  if seed is None or not layers:
    yield
    return
  saved = [(layer.seed_generator.state.numpy(), layer.draws_pinned)
           for layer in layers]
  generator = tf.random.Generator.from_seed(seed)
  layer_seeds = generator.uniform_full_int([len(layers)], dtype=tf.int32).numpy()
  for layer, layer_seed in zip(layers, layer_seeds):
    state = layer.seed_generator.state
    state.assign(np.array([layer_seed, 0]).astype(state.dtype))
    layer.pin_draws(True)
  try:
    yield
  finally:
    for layer, (state, pinned) in zip(layers, saved):
      layer.seed_generator.state.assign(state)
      layer.pin_draws(pinned)


def find_transforms(model):
  """Returns every `AdversarialTransform` inside `model`, depth first."""
  found = []
  for layer in getattr(model, "layers", []):
    if isinstance(layer, AdversarialTransform):
      found.append(layer)
    elif isinstance(layer, keras.Model):
      found.extend(find_transforms(layer))
  return found
