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
- `masked_layers`, `input_gradient_status`: layers, raw ops of a functional
  graph (and the whole model) whose input gradient is None, zero or not
  finite, or shattered: non-zero but not the slope of the layer's forward
  pass at an attack's step size, found by comparing autodiff's directional
  derivatives with central finite differences of the forward pass along
  random sign directions (Athalye et al., 2018): candidates for BPDA
  (`attacks.bpda`).

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
    "FD_STEP", "MASK_REASONS", "MaskedLayer", "finite_difference_agreement",
    "input_gradient_status", "is_randomized", "is_shattered", "masked_layers",
    "replay_is_exact", "seed_generators", "seeded"
]

# Why a layer's input gradient is useless to a gradient attack.
MASK_REASONS = ("none", "zero", "nonfinite", "shattered")
# The finite-difference step of the shattered-gradient check: a PGD step
# at epsilon 8/255 (AutoAttack's and Madry et al.'s 2/255).
FD_STEP = 2 / 255
# Random sign directions per probe image of that check.
FD_DIRECTIONS = 4
# A gradient is shattered when its directional derivatives (one per image
# and direction) have a cosine below SHATTERED_COSINE with the finite
# differences, or a norm off by more than SHATTERED_SCALE either way. A
# smooth or piecewise-linear layer (conv, dense, batch norm, ReLU, pooling,
# resizing, additive noise under one seed) gives a cosine near 1 and a scale
# near 1 at this step: only the few units within one step of a kink differ.
# A 16-level quantizer whose backward pass is the identity gives a cosine
# near 0.5 (about a quarter of its pixels cross a level within one step) and
# is flagged, which costs nothing: BPDA with the identity gives the same
# gradient.
SHATTERED_COSINE = 0.5
SHATTERED_SCALE = 4.0


@dataclasses.dataclass(frozen=True)
class MaskedLayer:
  """A layer (or raw op) whose input gradient is masked (`MASK_REASONS`).

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


def _keeps_batch(outputs, images):
  """Whether every output has one row per input image."""
  return all(len(o.shape) > 0 and o.shape[0] == images
             for o in tf.nest.flatten(outputs))


def _per_image_total(outputs, directions, per_image=True):
  """Σ output · d over each image's entries: shape (images,), float32.

  With `per_image` False (a layer that changes the batch size, e.g. noisy
  copies of each image or their mean), the sum over the whole batch, shape
  (1,).
  """
  total = 0.0
  for output, direction in zip(tf.nest.flatten(outputs), directions):
    product = tf.cast(tf.convert_to_tensor(output), tf.float32) * direction
    if per_image:
      total += tf.reduce_sum(tf.reshape(product, [tf.shape(product)[0], -1]),
                             axis=1)
    else:
      total += tf.reshape(tf.reduce_sum(product), [1])
  return total


def finite_difference_agreement(fn, x, seed, step=FD_STEP,
                                directions=FD_DIRECTIONS, owner=None):
  """How autodiff's directional derivatives of `fn` at `x` match the forward.

  For a seeded random projection F_i(z) = Σ fn(z)_i · d of image i's
  outputs and random sign directions v_k, compares a_ik = <∇F_i(x), v_k>
  with the central difference f_ik = (F_i(x + h v_k) - F_i(x - h v_k)) / 2h
  at h = `step`; for a `fn` that changes the batch size (noisy copies of
  each image, their mean), F is the whole batch's projection (one number
  per direction). Every call of `fn` runs inside `seeded(owner, seed)`, so a
  random layer draws the same randomness each time.

  Args:
    fn: a function of one float tensor `(images, ...)`.
    x: its input.
    seed: seed of d, the directions and the layer's draws.
    step: h.
    directions: directions per image.
    owner: the layer or model whose draws `seeded` fixes (None: none).

  Returns:
    `(cosine, scale)`: the cosine of the vectors (a_ik) and (f_ik) and
    |f| / |a|; None when the autodiff gradient is None or zero, or when two
    seeded passes differ (randomness that cannot be seeded: no comparison).
  """
  x = tf.cast(tf.convert_to_tensor(x), tf.float32)
  scope = (lambda: seeded(owner, seed)) if owner is not None else (
      contextlib.nullcontext)
  with scope():
    first = fn(x)
  with scope():
    again = fn(x)
  if not _outputs_equal(first, again):
    return None
  projections = [tf.random.stateless_normal(tf.shape(o), seed=[seed, 7 + n])
                 for n, o in enumerate(tf.nest.flatten(first))]
  per_image = _keeps_batch(first, x.shape[0])
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(x)
    with scope():
      total = tf.reduce_sum(_per_image_total(fn(x), projections, per_image))
  gradient = tape.gradient(total, x)
  if gradient is None or not bool(tf.reduce_any(tf.not_equal(gradient, 0))):
    return None
  analytic, numeric = [], []
  for k in range(directions):
    v = tf.sign(tf.random.stateless_uniform(tf.shape(x), seed=[seed, 100 + k],
                                            minval=-1.0, maxval=1.0))
    slope = tf.reshape(gradient * v, [tf.shape(x)[0], -1])
    analytic.append(tf.reduce_sum(slope, axis=1) if per_image else
                    tf.reshape(tf.reduce_sum(slope), [1]))
    with scope():
      plus = _per_image_total(fn(x + step * v), projections, per_image)
    with scope():
      minus = _per_image_total(fn(x - step * v), projections, per_image)
    numeric.append((plus - minus) / (2 * step))
  a = tf.concat(analytic, 0).numpy().astype(np.float64)
  f = tf.concat(numeric, 0).numpy().astype(np.float64)
  a_norm, f_norm = np.linalg.norm(a), np.linalg.norm(f)
  if not (np.isfinite(a_norm) and np.isfinite(f_norm)) or a_norm == 0:
    return None
  cosine = float(a @ f / (a_norm * f_norm)) if f_norm > 0 else 0.0
  return cosine, float(f_norm / a_norm)


def is_shattered(agreement):
  """Whether `finite_difference_agreement`'s result shows shattering."""
  if agreement is None:
    return False
  cosine, scale = agreement
  return (cosine < SHATTERED_COSINE or scale > SHATTERED_SCALE or
          scale < 1 / SHATTERED_SCALE)


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


def masked_layers(model, x, probe_images=4, seed=0, step=FD_STEP):
  """Layers and raw ops whose input gradient is masked (`MASK_REASONS`).

  The model runs once in inference mode on the first `probe_images` images,
  recording each layer's actual inputs (nested Sequential and functional
  models are entered, and their layers probed in turn); each layer is then
  called again on its inputs and the gradient of Σ output · d (d a seeded
  random direction) with respect to its floating inputs is checked: None for
  every input -> `"none"`, any non-finite entry -> `"nonfinite"`, all
  exactly zero -> `"zero"`. A layer with one floating input whose gradient
  passes is then compared with finite differences of its forward pass at
  `step` (`finite_difference_agreement`): disagreement -> `"shattered"`.
  Keras ops called directly in a functional graph (`keras.ops.round(x)`) are
  probed the same way and listed by their op name (BPDA cannot wrap them:
  they are not layers). Input layers, `AdversarialTransform` layers (they
  have their own estimators, `attacks.estimators`) and calls without a
  floating input are skipped; a top model that is not a graph (subclassed)
  is probed as one layer, and it and `attacks.bpda.BPDA` wrappers (whose
  backward pass is a surrogate on purpose) without the finite-difference
  comparison.
  A layer that is called twice is listed once (its first masked call).

  Args:
    model: a Keras model.
    x: float images, shape `(images, ...)`.
    probe_images: images used.
    seed: seed of the random directions.
    step: the finite-difference step (an attack's step size).

  Returns:
    A list of `MaskedLayer`, in the order the layers run.

  Raises:
    TypeError: for images that are not floating point.
  """
  x = _float_probe(x, probe_images)
  found, reported = [], set()
  counter = [0]

  def check(operation, args, kwargs, path):
    counter[0] += 1
    call = lambda values: _inference_call(operation, *values, **kwargs)
    reason = _gradient_reason(call, args, seed, counter[0])
    watched = _float_tensors(args)
    # A BPDA wrapper's backward pass is by design not its forward's slope.
    if (reason == "ok" and operation is not model and len(watched) == 1 and
        len(tf.nest.flatten(args)) == 1 and
        not isinstance(operation, bpda.BPDA)):
      agreement = finite_difference_agreement(
          lambda value: call((value,)), watched[0], seed + counter[0],
          step=step, owner=operation)
      reason = "shattered" if is_shattered(agreement) else "ok"
    if reason in MASK_REASONS and id(operation) not in reported:
      reported.add(id(operation))
      found.append(MaskedLayer(operation.name, path, reason))

  def probe(current, inputs, prefix):
    calls = _layer_calls(current, inputs)
    if calls is None:  # Not a graph model: probed as one layer.
      calls = [(current, (inputs,), {})]
    for operation, args, kwargs in calls:
      if (not isinstance(operation, keras.Operation) or isinstance(
          operation, (keras.layers.InputLayer, AdversarialTransform))):
        continue
      path = f"{prefix}{operation.name}"
      if bpda.is_graph_model(operation) and operation is not current:
        # Keyword arguments of a nested model's node are its masks (None here).
        probe(operation, args[0] if len(args) == 1 else args, f"{path}/")
      else:
        check(operation, args, kwargs, path)

  with _probing(model):
    probe(model, x, "")
  return found
