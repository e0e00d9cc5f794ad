"""Model functions of a defended model: differentiable through an estimator.

`defended_model_fn(model, estimator)` wraps a Keras model containing
`AdversarialTransform` layers as a `model_fn` (images -> float32 logits)
whose every call draws a fresh random start of g per image and whose
gradient goes through one of `attacks.estimators`' estimators, so
Expectation over Transformation is `attacks.common.eot_loss_gradient` on a
tiled batch. `DefendedModelFn.loss_and_gradient` gives the same bits faster
where it applies (g first, then the rest of the model, the loss and the
input gradient as one compiled function); `bytes_per_image` sizes the EOT
chunks; `reseed` restarts a model_fn's draws for a seeded attack.

Example:
  >>> model_fn = defended_model_fn(model, "bpda", sign_surrogate="tanh", seed=0)
  >>> x_adv = attacks.pgd.pgd(model_fn, x, y, eot_samples=8, seed=0)
"""

import contextlib

import keras
import tensorflow as tf
# Function call options (the Grappler config of functions called eagerly),
# per thread: `_without_graph_rewrites`.
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context as tf_context

from attacks import common
from attacks import estimators

__all__ = [
    "DefendedModelFn", "EXACT_FACTOR", "LOOP_FACTOR", "bytes_per_image",
    "defended_model_fn", "reseed"
]

# Estimators whose forward is the exact g(x) and whose backward does not read
# f_b: `DefendedModelFn.loss_and_gradient` may run g first and replay it.
_REPLAYABLE_ESTIMATORS = ("bpda_identity", "exact")


# Compiled functions one `DefendedModelFn.loss_and_gradient` keeps at most.
_MAX_TRACES = 8


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
    estimator: one of `estimators.ESTIMATORS`.
    steps: overrides every layer's N, or None.

  Returns:
    An integer number of bytes, or None when a layer's output shape is
    unknown (e.g. a subclassed model).
  """
  total = common.activation_bytes(model)
  if total is None:
    return None
  total *= 2
  for layer in estimators.transform_layers(model):
    f_b = common.activation_bytes(layer.f_b)
    if f_b is None:
      return None
    if estimator in estimators.LOOP_ESTIMATORS:
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
    estimator: one of `estimators.ESTIMATORS`.
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
    estimators.transform_layers(model)
    estimators.estimator_fn(estimator, **estimator_kwargs)
    # The transform `loss_and_gradient` replays (the model's structure is
    # fixed, so it is looked up once).
    self._replayed = self._input_transform()

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
    with estimators.use_estimator(self.model, self.estimator, seed=self.seed_generator,
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
    layer = self._replayed
    if layer is None or tf.inside_function():
      return None
    x = tf.cast(images, tf.float32)
    noise = estimators.draw_noise(layer, x, self.seed_generator)
    exact = estimators.exact_transform(layer, x, noise, self.estimator_kwargs.get("steps"))
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
    layers = estimators.transform_layers(self.model)
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
      replay = lambda unused_layer, inputs: estimators.attach(exact, inputs, backward)
      with estimators.substitute_transform(self.model, replay):
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
    estimator: one of `estimators.ESTIMATORS`.
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
