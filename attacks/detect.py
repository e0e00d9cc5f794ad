"""What an evaluation must know about any Keras defense, found from its behaviour.

AutoAttack's checks (Croce & Hein, 2020) warn about a randomized model and
zero gradients; the suite acts on them (EOT, BPDA, a SUSPECT verdict), for any
model, without knowing its layers:

- `is_randomized`: two inference passes on the same images disagree.
- `seed_generators`, `seeded`, `replay_is_exact`: the randomness the
  evaluation can seed (every `keras.random.SeedGenerator` of the model, Keras'
  global generator for `keras.random` ops without a seed, and
  `AdversarialTransform`'s pinned draws), a context that seeds it all and
  restores it, and whether that makes two passes identical (it does not for a
  layer drawing from stateful `tf.random` ops, whose kernels keep their own
  state: the evaluation then says that replay is not exact).
- `masked_layers`, `input_gradient_status`: layers (and the whole model)
  whose input gradient is None, zero or not finite (Athalye et al., 2018):
  candidates for BPDA (`attacks.bpda`).

What TensorFlow 2.21 gives (checked in `tests/detect_test.py`): None for
`tf.round`, `tf.floor`, `tf.math.ceil`, `tf.math.rint`, `//`, a cast to an
integer dtype and back (`tf.image.adjust_jpeg_quality`, `convert_image_dtype`
to uint8), `tf.stop_gradient`, `tf.where` between constants, an argmax;
zero for `tf.sign` and `tf.stop_gradient(f(x)) + 0 * x`; inf for `tf.sqrt`
and `tf.math.log` at 0.

Every probe saves and restores the states of the model's seed generators, so
it shifts no draws a later attack or evaluation sees.
"""

import contextlib
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from adv_layer.layer import AdversarialTransform
from adv_layer.layer import pinned_draws
from attacks import bpda
from attacks import common

__all__ = [
    "MASK_REASONS", "MaskedLayer", "input_gradient_status", "is_randomized",
    "masked_layers", "replay_is_exact", "seed_generators", "seeded"
]

# Why a layer's input gradient is useless to a gradient attack.
MASK_REASONS = ("none", "zero", "nonfinite")


@dataclasses.dataclass(frozen=True)
class MaskedLayer:
  """A layer whose input gradient is None, zero or not finite.

  Attributes:
    name: the layer's name.
    path: its path from the top model, `"outer/inner"` for a layer inside the
      nested model `outer` (as `attacks.bpda.wrap_layers` takes it).
    reason: one of `MASK_REASONS`.
  """
  name: str
  path: str
  reason: str


def _probe_images(x, probe_images):
  common.check_number("probe_images", probe_images, minimum=1, integer=True)
  x = tf.convert_to_tensor(x)
  if x.shape.rank is None or x.shape.rank < 1 or x.shape[0] == 0:
    raise ValueError("`x` must be a non-empty batch of images. "
                     f"Received: x.shape={tuple(x.shape)}")
  return x[:probe_images]


def _float_probe(x, probe_images):
  """The probe images (`_probe_images`); TypeError unless floating point."""
  x = _probe_images(x, probe_images)
  if not x.dtype.is_floating:
    raise TypeError("`x` must hold float images. "
                    f"Received: x.dtype={x.dtype.name}")
  return x


def _inference_call(layer, *args, **kwargs):
  """`layer(*args, **kwargs)` with `training=False` where it is accepted."""
  if bpda.accepts(layer, "training"):
    kwargs["training"] = False
  return layer(*args, **kwargs)


def _float_tensors(structure):
  return [t for t in tf.nest.flatten(structure)
          if tf.is_tensor(t) and t.dtype.is_floating]


def _walk_layers(root):
  """`root` and every layer tracked below it, each once, depth first."""
  found, seen, stack = [], set(), [root]
  while stack:
    layer = stack.pop()
    if id(layer) in seen:
      continue
    seen.add(id(layer))
    found.append(layer)
    children = list(getattr(layer, "_layers", None) or [])
    children += list(getattr(layer, "layers", None) or [])
    stack.extend(reversed(children))
  return found


def seed_generators(model):
  """Every `keras.random.SeedGenerator` reachable from `model`'s layers.

  Keras 3 tracks a generator assigned to a layer attribute in the layer's
  `_seed_generators`; nested layers and models are walked through their
  tracked sub-layers. Attributes holding a generator that Keras did not track
  are found too.

  Args:
    model: a Keras layer or model.

  Returns:
    The generators, each once, in a fixed order (depth first, then attribute
    order).
  """
  found, seen = [], set()
  for layer in _walk_layers(model):
    candidates = list(getattr(layer, "_seed_generators", None) or [])
    candidates += [value for value in vars(layer).values()
                   if isinstance(value, keras.random.SeedGenerator)]
    for generator in candidates:
      if id(generator) not in seen:
        seen.add(id(generator))
        found.append(generator)
  return found


def _global_generator():
  """Keras' generator for `keras.random` ops called with `seed=None`."""
  from keras.src.random import seed_generator  # pylint: disable=g-import-not-at-top
  return seed_generator.global_seed_generator()


def _derived_state(seed, index, dtype):
  """A generator state for stream `index` of `seed`, distinct per index."""
  value = int(np.random.SeedSequence([seed, index]).generate_state(1)[0]) % 2**31
  return np.array([value, 0]).astype(dtype)


@contextlib.contextmanager
def _states_kept(generators):
  """Restores the states of `generators` on exit (also on error)."""
  saved = [generator.state.numpy() for generator in generators]
  try:
    yield
  finally:
    for generator, state in zip(generators, saved):
      generator.state.assign(state)


@contextlib.contextmanager
def _probing(model):
  with _states_kept(seed_generators(model) + [_global_generator()]):
    yield


@contextlib.contextmanager
def seeded(model, seed):
  """Seeds every draw of `model` the evaluation can seed; restores on exit.

  Inside the context, generator i of `seed_generators(model)` starts from a
  state derived from `(seed, i)` (so no two generators share a stream), Keras'
  global generator (used by `keras.random` ops given no seed) from a stream
  of its own, and every `AdversarialTransform` is pinned as
  `adv_layer.layer.pinned_draws` pins it (which sets its generator's state its
  own way, as `attacks.scoring.reseeded` does). On exit (also on error)
  every state and pin is restored, so the context shifts no later draws. The
  same seed gives the same outputs whatever ran before; stateful `tf.random`
  ops (e.g. `tf.random.normal` without a generator) are not seeded
  (`replay_is_exact` tells).

  Args:
    model: a Keras model.
    seed: a non-negative integer.

  Yields:
    None.

  Raises:
    ValueError: for a seed that is not a non-negative integer.
  """
  common.check_number("seed", seed, minimum=0, integer=True)
  generators = seed_generators(model)
  global_generator = _global_generator()
  everything = generators + [global_generator]
  with _states_kept(everything):
    for index, generator in enumerate(generators):
      generator.state.assign(
          _derived_state(seed, index, generator.state.dtype))
    global_generator.state.assign(
        _derived_state(seed, len(generators), global_generator.state.dtype))
    with pinned_draws(model, seed):
      yield


def _outputs_equal(first, second):
  first, second = tf.nest.flatten(first), tf.nest.flatten(second)
  return len(first) == len(second) and all(
      np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
      for a, b in zip(first, second))


def is_randomized(model, x, passes=2, probe_images=8):
  """Whether inference passes on the same images disagree anywhere.

  Exact comparison of `passes` calls `model(x, training=False)` on the first
  `probe_images` images. The generators' states are restored afterwards, and
  `AdversarialTransform` draws are left unpinned (their inference draws fold
  in OS entropy), so a randomized model shows as one.

  Args:
    model: a Keras model (or a callable images -> outputs).
    x: images, shape `(images, ...)`.
    passes: number of passes compared, >= 2.
    probe_images: images used.

  Returns:
    True if any two passes differ.

  Raises:
    ValueError: for `passes < 2`, a bad `probe_images` or an empty `x`.
  """
  common.check_number("passes", passes, minimum=2, integer=True)
  x = _probe_images(x, probe_images)
  with _probing(model):
    first = _inference_call(model, x)
    for _ in range(passes - 1):
      if not _outputs_equal(first, _inference_call(model, x)):
        return True
  return False


def replay_is_exact(model, x, seed=0, probe_images=8):
  """Whether two passes, each inside `seeded(model, seed)`, are identical.

  False for randomness the evaluation cannot seed, e.g. a layer drawing from
  stateful `tf.random` ops: the evaluation then states that replay is not
  exact.

  Args:
    model: a Keras model.
    x: images, shape `(images, ...)`.
    seed: the seed of both passes.
    probe_images: images used.

  Returns:
    True if the two seeded passes agree bit for bit.
  """
  x = _probe_images(x, probe_images)
  outputs = []
  for _ in range(2):
    with seeded(model, seed):
      outputs.append(_inference_call(model, x))
  return _outputs_equal(*outputs)


def _gradient_reason(fn, inputs, seed, index):
  """Status of the gradient of Σ fn(inputs) · d (d random) w.r.t. `inputs`.

  Args:
    fn: a function of the nest `inputs`.
    inputs: a nest of tensors; its floating tensors are differentiated.
    seed: seed of the random direction d.
    index: stream of the direction (per layer).

  Returns:
    `"none"`, `"zero"`, `"nonfinite"` or `"ok"`; None when `inputs` hold no
    floating tensor.
  """
  watched = _float_tensors(inputs)
  if not watched:
    return None
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(watched)
    outputs = fn(inputs)
    total = tf.constant(0.0)
    for number, output in enumerate(tf.nest.flatten(outputs)):
      output = tf.cast(tf.convert_to_tensor(output), tf.float32)
      direction = tf.random.stateless_normal(
          tf.shape(output), seed=[seed, index * 1000 + number])
      total += tf.reduce_sum(output * direction)
  gradients = [g for g in tape.gradient(total, watched) if g is not None]
  if not gradients:
    return "none"
  gradients = [tf.convert_to_tensor(g) for g in gradients]
  if not all(bool(tf.reduce_all(tf.math.is_finite(g))) for g in gradients):
    return "nonfinite"
  if all(not bool(tf.reduce_any(tf.not_equal(g, 0))) for g in gradients):
    return "zero"
  return "ok"


def input_gradient_status(model, x, probe_images=4, seed=0):
  """The whole model's input gradient: `"ok"` or one of `MASK_REASONS`.

  The gradient of Σ model(x) · d (d a seeded random direction, outputs cast
  to float32) with respect to the first `probe_images` images, in inference
  mode. A None gradient is reported, never raised.

  Args:
    model: a Keras model (or a callable images -> outputs).
    x: float images, shape `(images, ...)`.
    probe_images: images used.
    seed: seed of the direction.

  Returns:
    `"ok"`, `"none"`, `"zero"` or `"nonfinite"`.

  Raises:
    TypeError: for images that are not floating point.
  """
  x = _float_probe(x, probe_images)
  with _probing(model):
    return _gradient_reason(lambda v: _inference_call(model, v), x, seed, 0)


def _layer_calls(model, inputs):
  """`(layer, args, kwargs)` of each layer call in one inference pass.

  Args:
    model: a Sequential or functional model.
    inputs: its input values.

  Returns:
    The calls in order, or None for another kind of model.
  """
  calls = []
  if isinstance(model, keras.Sequential):
    value = inputs
    for layer in model.layers:
      calls.append((layer, (value,), {}))
      value = _inference_call(layer, value)
    return calls
  if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth"):

    def record(layer, *args, **kwargs):
      calls.append((layer, args, kwargs))
      return _inference_call(layer, *args, **kwargs)

    model._run_through_graph(  # pylint: disable=protected-access
        inputs, operation_fn=lambda layer: layer, call_fn=record)
    return calls
  return None


def masked_layers(model, x, probe_images=4, seed=0):
  """Layers whose input gradient is None, zero or not finite.

  The model runs once in inference mode on the first `probe_images` images,
  recording each layer's actual inputs (nested Sequential and functional
  models are entered, and their layers probed in turn); each layer is then
  called again on its inputs and the gradient of Σ output · d (d a seeded
  random direction) with respect to its floating inputs is checked: None for
  every input -> `"none"`, any non-finite entry -> `"nonfinite"`, all
  exactly zero -> `"zero"`. Input layers, `AdversarialTransform` layers (they
  have their own estimators, `attacks.estimators`), layers without a
  floating input, and Keras ops called directly in a functional graph
  (`keras.ops.round(x)`: not layers, so BPDA cannot wrap them; the whole-model
  check, `input_gradient_status`, still sees them) are skipped. A layer that
  is called twice is listed once (its first masked call).

  Args:
    model: a Keras model.
    x: float images, shape `(images, ...)`.
    probe_images: images used.
    seed: seed of the random directions.

  Returns:
    A list of `MaskedLayer`, in the order the layers run.

  Raises:
    TypeError: for images that are not floating point.
  """
  x = _float_probe(x, probe_images)
  found, reported = [], set()
  counter = [0]

  def probe(current, inputs, prefix):
    calls = _layer_calls(current, inputs)
    if calls is None:  # Not a graph model: probed as one layer.
      calls = [(current, (inputs,), {})]
    for layer, args, kwargs in calls:
      if (not isinstance(layer, keras.layers.Layer) or
          isinstance(layer, (keras.layers.InputLayer, AdversarialTransform))):
        continue
      path = f"{prefix}{layer.name}"
      if bpda.is_graph_model(layer) and layer is not current:
        # Keyword arguments of a nested model's node are its masks (None here).
        probe(layer, args[0] if len(args) == 1 else args, f"{path}/")
        continue
      counter[0] += 1
      reason = _gradient_reason(
          lambda values, layer=layer, kwargs=kwargs: _inference_call(
              layer, *values, **kwargs), args, seed, counter[0])
      if reason in MASK_REASONS and id(layer) not in reported:
        reported.add(id(layer))
        found.append(MaskedLayer(layer.name, path, reason))

  with _probing(model):
    probe(model, x, "")
  return found
