"""Gradient estimators for the adversarial transformation g (paper Secs. 3.3, 4.1).

g(x) (`adv_layer.transform.ll_pgd`) has no useful derivative: its steps use
sign(·) and a clip. An attack therefore differentiates a model that contains
`AdversarialTransform` through one of these estimators, all built on the SAME
`ll_pgd` function the layer runs (reached through
`AdversarialTransform.transform(x, **overrides)`):

- `"bpda"`: forward = the exact g(x) for one random draw δ; backward = the
  vector-Jacobian product through the unrolled smooth surrogate of the same
  loop with the same δ: sign(z) → softsign(z / T) or tanh(z / T), and the
  projection Π → `surrogate_project` (exact forward, derivative of eq. (5)).
  The surrogate's VJP differentiates f_b's input gradient, i.e. second order
  (nested tapes).
- `"bpda_identity"` (BPDA-I): forward exact, backward of g = identity.
- `"unrolled"`: plain autodiff through the loop as written. `tf.sign` has a
  zero gradient, so every f_b term vanishes and only the clips remain: the
  Jacobian is diagonal with entries in {0, 1} (1 where a pixel is not pinned
  to the value range, see `estimators_test`). This is what "automatic
  differentiation" in Sec. 3.3 amounts to.
- `"exact"`: forward exact, no gradient, for scoring: like `tf.stop_gradient`
  but still connected, so `tape.gradient` returns zeros rather than None (an
  attack on it runs and the zero-gradient sanity check can see it).
- `"straight_through"`: forward = the exact g(x), computed by the loop
  itself; backward = autodiff through the exact iterates with
  d sign(u)/du := 1/T (`temperature`, default 1) and the clips' true
  derivatives. Unlike `"unrolled"`, f_b's second-order terms survive: each
  step contributes I − (ε/T)·H(x'_t), H the input Hessian of f_b's loss.
  With T = 1 that term is small next to I wherever ε‖H‖ ≪ 1, and the
  gradient is close to `"unrolled"`'s; a T near the typical |∇ℓ| makes it
  count.
- `"bpda_exact_path"`: BPDA as eq. (5) describes it: the Jacobian of the
  smooth surrogate step, evaluated at the exact iterates of g (not along the
  surrogate's own trajectory, as `"bpda"` does): sign keeps its exact
  forward and takes the surrogate's derivative, Π is `surrogate_project`.

The exact forward of `"bpda"`, `"bpda_identity"` and `"exact"` runs on an
input cut by `tf.stop_gradient` (`exact_transform`), so no gradient tape
records its N inner forward/backward passes of f_b: the memory one EOT chunk
holds is f_a's, not N times f_b's (`bytes_per_image` estimates it; EOT picks
its chunk from it, `attacks.common.eot_chunk_size`). The estimators that
differentiate the loop (`"unrolled"`, `"straight_through"`,
`"bpda_exact_path"`) hold it by necessity.

`steps` replaces the layer's N, giving the cheaper defense g_k of the
cheaper-defense transfer attack. `defended_model_fn` wraps a whole model as a
`model_fn` whose every call draws fresh δ per image, so Expectation over
Transformation is `attacks.common.eot_loss_gradient` on a tiled batch.

Example:
  >>> model_fn = defended_model_fn(model, "bpda", sign_surrogate="tanh", seed=0)
  >>> x_adv = attacks.pgd.pgd(model_fn, x, y, eot_samples=8, seed=0)
"""

import contextlib
import numbers

import keras
import tensorflow as tf
# Function call options (the Grappler config of functions called eagerly),
# per thread: `_without_graph_rewrites`.
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context as tf_context

from adv_layer import transform
from adv_layer.layer import find_transforms
from attacks import common

__all__ = [
    "ESTIMATORS", "SIGN_SURROGATES", "DefendedModelFn", "bpda_transform",
    "bytes_per_image", "defended_model_fn", "estimator_fn", "exact_transform",
    "reseed", "sign_with_derivative", "surrogate_project", "substitute_transform", "surrogate_sign",
    "transform_layers", "use_estimator"
]

ESTIMATORS = ("bpda", "bpda_identity", "unrolled", "exact", "straight_through",
              "bpda_exact_path")
# Estimators whose backward differentiates the unrolled loop (second order
# through f_b): their memory grows with the number of steps N.
_LOOP_ESTIMATORS = ("bpda", "unrolled", "straight_through", "bpda_exact_path")
SIGN_SURROGATES = ("softsign", "tanh")
# Estimators whose forward is the exact g(x) and whose backward does not read
# f_b: `DefendedModelFn.loss_and_gradient` may run g first and replay it.
_REPLAYABLE_ESTIMATORS = ("bpda_identity", "exact")
# Compiled functions one `DefendedModelFn.loss_and_gradient` keeps at most.
_MAX_TRACES = 8


def surrogate_sign(sign_surrogate="softsign", temperature=1.0):
  """A smooth stand-in for sign(·) (paper Sec. 4.1).

  Args:
    sign_surrogate: `"softsign"` (z / (1 + |z|)) or `"tanh"`.
    temperature: T > 0; the surrogate is applied to z / T, so a small T
      sharpens it toward sign(z).

  Returns:
    A function z -> surrogate(z / T).

  Raises:
    ValueError: for an unknown surrogate or a temperature <= 0.
  """
  if sign_surrogate not in SIGN_SURROGATES:
    raise ValueError(f"`sign_surrogate` must be one of {SIGN_SURROGATES}. "
                     f"Received: sign_surrogate={sign_surrogate!r}")
  if isinstance(temperature, bool) or not isinstance(
      temperature, numbers.Real) or not temperature > 0:
    raise ValueError("`temperature` must be a number > 0. "
                     f"Received: temperature={temperature!r}")
  smooth = tf.math.softsign if sign_surrogate == "softsign" else tf.math.tanh
  return lambda z: smooth(z / temperature)


def sign_with_derivative(smooth):
  """sign(·) with its exact forward and the derivative of `smooth`.

  Args:
    smooth: a differentiable function z -> smooth(z) (e.g. `surrogate_sign`).

  Returns:
    A function z -> tf.sign(z), bit for bit, whose gradient is
    upstream · smooth'(z), smooth' taken at the exact z.
  """

  @tf.custom_gradient
  def sign(z):

    def grad(upstream):
      with tf.GradientTape() as tape:
        tape.watch(z)
        value = smooth(z)
      return tape.gradient(value, z, output_gradients=upstream)

    return tf.sign(z), grad

  return sign


def surrogate_project(x_adv, x, epsilon, value_range):
  """Π with its exact forward and the derivative of the paper's eq. (5).

  With z = x_adv − x the offset from the centre and s(z) = 1/(1 + |z|)^2:

  - a coordinate left unchanged by Π: d/dx_adv = 1, d/dx = 0 (exact);
  - a coordinate clipped to the ball (x ± epsilon): d/dx_adv = s(z) (eq. (5))
    and d/dx = 1 − s(z), so that moving x and x_adv together moves the output
    with them, as the exact Π does;
  - a coordinate clipped to the value range (decision, documented here): the
    value range is part of the feasible set Π projects onto, so it gets the
    same rule as the ball, d/dx_adv = s(z), and d/dx = 0 because the bound
    does not move with x.

  Args:
    x_adv: candidate images.
    x: centre images, same shape.
    epsilon: L∞ radius.
    value_range: `(low, high)`, or None for the ball only (a transform
      built with `clip_to_range=False`).

  Returns:
    `adv_layer.transform.project(x_adv, x, epsilon, value_range)`, bit for
    bit, with the surrogate derivative above.
  """

  @tf.custom_gradient
  def projected(x_adv, x):
    in_ball = tf.clip_by_value(x_adv, x - epsilon, x + epsilon)
    out = (in_ball if value_range is None else
           tf.clip_by_value(in_ball, value_range[0], value_range[1]))

    def grad(upstream):
      offset = x_adv - x
      kept = tf.equal(out, x_adv)
      ball_bound = tf.logical_and(tf.logical_not(kept), tf.equal(out, in_ball))
      slope = tf.where(kept, 1.0, 1.0 / tf.square(1.0 + tf.abs(offset)))
      centre = tf.where(ball_bound, 1.0 - slope, 0.0)
      return upstream * slope, upstream * centre

    return out, grad

  return projected(x_adv, x)


def _draw_noise(layer, x, seed):
  generator = layer.seed_generator if seed is None else seed
  return transform.uniform_noise(tf.shape(x), layer.epsilon, generator)


def exact_transform(layer, x, noise, steps=None):
  """The exact g(x) for one random start, recorded by no gradient tape.

  The loop runs on `tf.stop_gradient(x)`, which an enclosing tape does not
  watch, so it keeps none of the loop's N forward/backward passes of f_b
  (only the loop's own inner tapes record, one step at a time), provided it
  does not watch f_b's weights either: Keras' `trainable=False` leaves their
  `tf.Variable`s trainable, so the tape must be built with
  `watch_accessed_variables=False`, as `attacks.common.eot_loss_gradient`
  does.

  Args:
    layer: an `AdversarialTransform`.
    x: float32 images.
    noise: the random start δ, shape of `x`.
    steps: overrides the layer's N, or None.

  Returns:
    g(x), float32, without a gradient path.
  """
  overrides = {} if steps is None else {"steps": steps}
  return layer.transform(tf.stop_gradient(x), noise=noise, **overrides)


def bpda_transform(layer, x, noise, sign_surrogate="softsign", temperature=1.0,
                   steps=None):
  """BPDA through g (paper Sec. 4.1) for one fixed random start.

  Args:
    layer: an `AdversarialTransform`.
    x: float32 images.
    noise: the random start δ, shape of `x` (ignored when the layer has no
      random start).
    sign_surrogate: `"softsign"` or `"tanh"`.
    temperature: T of the sign surrogate.
    steps: overrides the layer's N, or None.

  Returns:
    The exact g(x) with start δ; its gradient is the VJP through the unrolled
    smooth surrogate of the same loop from the same δ.
  """
  sign_fn = surrogate_sign(sign_surrogate, temperature)
  overrides = {} if steps is None else {"steps": steps}
  exact = exact_transform(layer, x, noise, steps)

  def surrogate_vjp(upstream):
    with tf.GradientTape() as tape:
      tape.watch(x)
      smooth = layer.transform(x, noise=noise, sign_fn=sign_fn,
                               project_fn=surrogate_project, **overrides)
    return tape.gradient(smooth, x, output_gradients=upstream)

  return _attach(exact, x, surrogate_vjp)


def _attach(exact, x, backward):
  """Returns `exact` (a value of the same shape as `x`) with `backward` as VJP."""

  @tf.custom_gradient
  def attach(x):
    return tf.identity(exact), backward

  return attach(x)


def estimator_fn(estimator="bpda", sign_surrogate="softsign", temperature=1.0,
                 steps=None, seed=None):
  """The `(layer, x) -> g(x)` hook that implements one estimator.

  Args:
    estimator: one of `ESTIMATORS`.
    sign_surrogate: `"softsign"` or `"tanh"` (`"bpda"`, `"bpda_exact_path"`).
    temperature: T of the sign surrogate (`"bpda"`, `"bpda_exact_path"`);
      `"straight_through"` takes d sign(u)/du := 1/T.
    steps: overrides the layer's N (g_k), or None.
    seed: a `keras.random.SeedGenerator` for the random starts, or None for
      the layer's own generator.

  Returns:
    The hook, for `AdversarialTransform.gradient_estimator`.

  Raises:
    ValueError: for an unknown estimator or bad surrogate settings.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"`estimator` must be one of {ESTIMATORS}. "
                     f"Received: estimator={estimator!r}")
  surrogate_sign(sign_surrogate, temperature)
  if steps is not None and (isinstance(steps, bool) or
                            not isinstance(steps, numbers.Integral) or steps < 1):
    raise ValueError("`steps` must be an integer >= 1 or None. "
                     f"Received: steps={steps!r}")
  overrides = {} if steps is None else {"steps": steps}
  exact_path_sign = sign_with_derivative(
      surrogate_sign(sign_surrogate, temperature))
  straight_through_sign = sign_with_derivative(lambda z: z / temperature)

  def hook(layer, x):
    noise = _draw_noise(layer, x, seed)
    if estimator == "bpda":
      return bpda_transform(layer, x, noise, sign_surrogate, temperature, steps)
    if estimator == "unrolled":
      return layer.transform(x, noise=noise, **overrides)
    if estimator == "straight_through":
      return layer.transform(x, noise=noise, sign_fn=straight_through_sign,
                             **overrides)
    if estimator == "bpda_exact_path":
      return layer.transform(x, noise=noise, sign_fn=exact_path_sign,
                             project_fn=surrogate_project, **overrides)
    exact = exact_transform(layer, x, noise, steps)
    if estimator == "bpda_identity":
      return _attach(exact, x, lambda upstream: upstream)
    return _attach(exact, x, tf.zeros_like)

  return hook


def transform_layers(model):
  """The `AdversarialTransform` layers of `model` (or `[model]` if it is one).

  Raises:
    ValueError: if there is none.
  """
  layers = find_transforms(model) if hasattr(model, "layers") else [model]
  if not layers or not all(hasattr(l, "gradient_estimator") for l in layers):
    raise ValueError("`model` contains no AdversarialTransform layer. "
                     f"Received: model={getattr(model, 'name', model)!r}")
  return layers


@contextlib.contextmanager
def use_estimator(model, estimator="bpda", sign_surrogate="softsign",
                  temperature=1.0, steps=None, seed=None):
  """Makes every `AdversarialTransform` in `model` use a gradient estimator.

  On exit, also when the body raises, each layer gets back the hook it had
  (None outside any attack), so contexts nest.

  Args:
    model: a Keras model (or an `AdversarialTransform` itself).
    estimator: one of `ESTIMATORS`.
    sign_surrogate: `"softsign"` or `"tanh"` (`"bpda"`, `"bpda_exact_path"`).
    temperature: T of the sign surrogate (`"bpda"`, `"bpda_exact_path"`);
      `"straight_through"` takes d sign(u)/du := 1/T.
    steps: overrides every layer's N (the cheaper defense g_k), or None.
    seed: a `keras.random.SeedGenerator` for the random starts, or None for
      each layer's own generator.

  Yields:
    The list of transforms found.

  Raises:
    ValueError: if `model` holds no `AdversarialTransform`, or for bad
      estimator settings.

  Example:
    >>> with use_estimator(model, "bpda_identity"):
    ...   grad = tape.gradient(loss(model(x)), x)
  """
  hook = estimator_fn(estimator, sign_surrogate, temperature, steps, seed)
  with substitute_transform(model, hook) as layers:
    yield layers


@contextlib.contextmanager
def substitute_transform(model, replacement):
  """Runs `replacement` in place of g in every `AdversarialTransform` of `model`.

  Sets each layer's `gradient_estimator` hook; on exit, also when the body
  raises, each layer gets back the hook it had, so contexts nest.

  Args:
    model: a Keras model (or an `AdversarialTransform` itself).
    replacement: `(layer, x) -> images`, used instead of g.

  Yields:
    The transforms found.

  Raises:
    ValueError: if `model` holds no `AdversarialTransform`.
  """
  layers = transform_layers(model)
  previous = [layer.gradient_estimator for layer in layers]
  try:
    for layer in layers:
      layer.gradient_estimator = replacement
    yield layers
  finally:
    for layer, old in zip(layers, previous):
      layer.gradient_estimator = old


# Bytes held per byte of f_b's activations (`common.activation_bytes`): one
# step's forward and backward for the exact forward; per step, forward,
# backward and their second-order record for the estimators that
# differentiate the loop. Conservative: on the paper-width small_vgg (1.38 MiB
# of activations per image) TensorFlow's CPU allocator peaked at 33.7 MiB per
# image for "bpda" and "straight_through" (estimate 72.6) and 0.64 MiB for
# "bpda_identity" (estimate 4.8); tests/memory_test.py bounds the latter.
EXACT_FACTOR = 3
LOOP_FACTOR = 4


def bytes_per_image(model, estimator="bpda", steps=None):
  """Estimated bytes one image holds during an EOT gradient step.

  The outer tape keeps the activations of the model around the transform and
  their gradients (2x `common.activation_bytes(model)`); each transform adds
  f_b's activations times `EXACT_FACTOR` (exact forward, off the tape) or,
  for estimators that differentiate the loop, times `LOOP_FACTOR` per step.

  Args:
    model: a Keras model containing `AdversarialTransform` layers.
    estimator: one of `ESTIMATORS`.
    steps: overrides every layer's N, or None.

  Returns:
    An integer number of bytes, or None when a layer's output shape is
    unknown (e.g. a subclassed model).
  """
  total = common.activation_bytes(model)
  if total is None:
    return None
  total *= 2
  for layer in transform_layers(model):
    f_b = common.activation_bytes(layer.f_b)
    if f_b is None:
      return None
    if estimator in _LOOP_ESTIMATORS:
      total += LOOP_FACTOR * (layer.steps if steps is None else steps) * f_b
    else:
      total += EXACT_FACTOR * f_b
  return total


@contextlib.contextmanager
def _without_graph_rewrites():
  """Runs the functions called eagerly here without Grappler's rewrites.

  Grappler's arithmetic rewrites reorder floating-point operations, so a
  compiled copy of an eager computation would not give the same bits; with
  them off a function runs the eager kernels (the kernel choice is the
  same), in one graph. The setting is per thread (TensorFlow keeps function
  call options per thread) and restored on exit; functions are instantiated
  per setting, so other functions keep theirs.
  """
  context = tf_context.context()
  previous = context.function_call_options
  config = config_pb2.ConfigProto.FromString(previous.config_proto_serialized)
  config.graph_options.rewrite_options.disable_meta_optimizer = True
  context.function_call_options = tf_context.FunctionCallOptions(
      executor_type=previous.executor_type, config_proto=config)
  try:
    yield
  finally:
    context.function_call_options = previous


def reseed(model_fn, seed):
  """Restarts the random draws of `model_fn` from `seed`, if it has draws.

  Attacks call this with their own seed so that a seeded attack on a random
  model repeats exactly; a plain model_fn is left alone.

  Args:
    model_fn: any model_fn; only a `DefendedModelFn` is reseeded.
    seed: an integer, or None (no change).
  """
  if seed is not None and isinstance(model_fn, DefendedModelFn):
    model_fn.reseed(seed)


class DefendedModelFn:
  """A model_fn of a defended model, differentiable through an estimator.

  Each call draws a fresh δ for every image of the batch from its own
  `keras.random.SeedGenerator`, so calling it on a batch tiled K times gives
  K independent draws of g per image (vectorised EOT). EOT gradients
  (`attacks.common.eot_loss_gradient`) go through `loss_and_gradient`, which
  gives the same bits faster where it applies.

  Args:
    model: a Keras model containing `AdversarialTransform` layers.
    estimator: one of `ESTIMATORS`.
    seed: integer seed of the draws; None picks one at random.
    **estimator_kwargs: `sign_surrogate`, `temperature`, `steps`.
  """

  def __init__(self, model, estimator="bpda", seed=None, **estimator_kwargs):
    self.model = model
    self.estimator = estimator
    self.estimator_kwargs = estimator_kwargs
    self.seed_generator = keras.random.SeedGenerator(seed)
    # Compiled loss-and-gradient functions of `loss_and_gradient`.
    self._compiled = {}
    # Fail now, not in the middle of an attack.
    transform_layers(model)
    estimator_fn(estimator, **estimator_kwargs)

  def reseed(self, seed):
    """Restarts the draws as if built with `seed` (an integer)."""
    fresh = keras.random.SeedGenerator(seed)
    self.seed_generator.state.assign(fresh.state.value)

  def bytes_per_image(self):
    """Estimated bytes per image of one EOT step (see `bytes_per_image`)."""
    return bytes_per_image(self.model, self.estimator,
                           self.estimator_kwargs.get("steps"))

  def __call__(self, images):
    """Returns float32 logits of the whole model on float32 `images`."""
    with use_estimator(self.model, self.estimator, seed=self.seed_generator,
                       **self.estimator_kwargs):
      return tf.cast(self.model(images, training=False), tf.float32)

  def loss_and_gradient(self, images, labels, loss_fn):
    """`loss_fn` of one call, its input gradient and the logits, or None.

    The same values, bit for bit, as a tape around `loss_fn(self(images),
    labels)` (`attacks.common.chunk_loss_gradient`), computed faster where
    g's forward is exact and its backward fixed (`"bpda_identity"`,
    `"exact"`) and the model's only transform reads the model's input: g(x)
    runs first, as the call would run it (same draw, same compiled loop,
    same f_b passes counted), then the rest of the model, the loss and the
    backward pass run as one compiled function that replays that g(x). An
    eager tape would also compute the gradients of every weight of the
    model behind g (TensorFlow's convolution gradient computes both), which
    nobody reads; the function computes only the input gradient. It runs
    without Grappler's graph rewrites, which would change the floating-point
    results; its kernels are those of the eager call. One trace per
    `loss_fn`, label structure and image shape (any batch size), and per
    wrapper of the model's `call` (a pass counter of `attacks.suite`); past
    `_MAX_TRACES` of them (e.g. a new `loss_fn` per call) it declines.

    Args:
      images: float32 images.
      labels: a tensor or nest of tensors passed to `loss_fn`.
      loss_fn: `(logits, labels) -> per-example loss`.

    Returns:
      `(loss, grad, logits)`, or None where this path does not apply (the
      caller then records `self` on a tape).
    """
    layer = self._input_transform()
    if layer is None or tf.inside_function():
      return None
    x = tf.cast(images, tf.float32)
    noise = _draw_noise(layer, x, self.seed_generator)
    exact = exact_transform(layer, x, noise, self.estimator_kwargs.get("steps"))
    key = (loss_fn, self.model.__dict__.get("call"), tuple(x.shape[1:]),
           repr(tf.nest.map_structure(lambda t: (t.dtype, t.shape[1:]), labels)))
    step = self._compiled.get(key)
    if step is None:
      if len(self._compiled) >= _MAX_TRACES:  # E.g. a new loss_fn per call.
        return None
      step = self._compile(loss_fn, x, labels)
      self._compiled[key] = step
    with _without_graph_rewrites():
      return step(x, labels, exact)

  def _input_transform(self):
    """The model's transform if it is the only one and reads the model input.

    Returns:
      The `AdversarialTransform`, or None (the estimator differentiates g,
      or the model's structure does not allow replaying g(x)).
    """
    if self.estimator not in _REPLAYABLE_ESTIMATORS:
      return None
    layers = transform_layers(self.model)
    # The model's graph of layer calls (a Sequential keeps a functional one).
    graph = getattr(self.model, "_functional", None) or self.model
    nodes = getattr(graph, "_nodes", None)
    inputs = getattr(graph, "inputs", None)
    if len(layers) != 1 or nodes is None or not inputs or len(inputs) != 1:
      return None
    # Keras keys a node of the graph by its layer's id and its call index.
    own_nodes = layers[0]._inbound_nodes  # pylint: disable=protected-access
    calls = [node for index, node in enumerate(own_nodes)
             if f"{id(layers[0])}_ib-{index}" in nodes]
    # Called once in this model (a layer shared with another model has nodes
    # there too, not in `_nodes`), on the model's input itself.
    if (len(calls) != 1 or len(calls[0].input_tensors) != 1 or
        calls[0].input_tensors[0] is not inputs[0]):
      return None
    return layers[0]

  def _compile(self, loss_fn, x, labels):
    """The compiled `(images, labels, g(images)) -> (loss, grad, logits)`."""
    backward = ((lambda upstream: upstream) if self.estimator == "bpda_identity"
                else tf.zeros_like)

    def step(images, labels, exact):
      replay = lambda unused_layer, inputs: _attach(exact, inputs, backward)
      with substitute_transform(self.model, replay):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
          tape.watch(images)
          logits = tf.cast(self.model(images, training=False), tf.float32)
          loss = loss_fn(logits, labels)
          total_loss = tf.reduce_sum(loss)
      return loss, tape.gradient(total_loss, images), logits

    image_spec = tf.TensorSpec([None] + list(x.shape[1:]), tf.float32)
    label_spec = tf.nest.map_structure(
        lambda t: tf.TensorSpec([None] + list(t.shape[1:]), t.dtype), labels)
    return tf.function(step, input_signature=[image_spec, label_spec, image_spec],
                       autograph=False)


def defended_model_fn(model, estimator="bpda", seed=None, **estimator_kwargs):
  """A model_fn (images -> float32 logits) differentiable through `estimator`.

  Args:
    model: a Keras model containing `AdversarialTransform` layers.
    estimator: one of `ESTIMATORS`.
    seed: integer seed of the random starts of g; None picks one. Attacks
      given a seed reseed it (`reseed`), so a seeded attack repeats.
    **estimator_kwargs: `sign_surrogate`, `temperature`, `steps` (see
      `use_estimator`).

  Returns:
    A `DefendedModelFn`; every call draws fresh δ per image.

  Raises:
    ValueError: for bad estimator settings or a model without a transform.
  """
  return DefendedModelFn(model, estimator, seed=seed, **estimator_kwargs)
