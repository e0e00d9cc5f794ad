"""Shared pieces of every attack: argument checks, projection, losses, EOT gradients.

Vocabulary (the same as `adv_layer`): `epsilon` (L∞ budget), `step_size`,
`steps`, `restarts`, `value_range`, `seed`, `eot_samples`. A `model_fn` maps a
float32 image batch to logits and is differentiable with `tf.GradientTape`
(for a defended model, through whichever gradient estimator is active).
"""

import math
import numbers

import keras
import tensorflow as tf

from adv_layer.transform import finite_or_zero
from adv_layer.transform import project

__all__ = [
    "DEFAULT_MEMORY_BUDGET", "EXPECTATIONS", "activation_bytes",
    "check_images_labels", "check_number", "check_value_range", "ce_loss",
    "chunk_loss_gradient", "dlr_loss", "eot_chunk_size", "eot_loss_gradient",
    "margin_loss",
    "model_bytes_per_image", "parse_epsilon", "project", "random_init", "seeds",
    "validate_attack_args"
]

# Bytes one EOT chunk may hold by default (activations kept for its gradient).
DEFAULT_MEMORY_BUDGET = 2 * 2**30
# What EOT averages: the per-draw loss, or the softmax before the loss.
EXPECTATIONS = ("loss", "softmax")


def check_number(name, value, minimum=None, integer=False, strict=False):
  """Raises ValueError unless `value` is a number (>= or > `minimum`).

  Args:
    name: the argument's name, for the message.
    value: the value received.
    minimum: lower bound, or None.
    integer: require an integer.
    strict: require `value > minimum` instead of `>=`.

  Returns:
    `value`, unchanged.

  Raises:
    ValueError: naming the argument and the value received.
  """
  kind = numbers.Integral if integer else numbers.Real
  ok = isinstance(value, kind) and not isinstance(value, bool)
  if ok and minimum is not None:
    ok = value > minimum if strict else value >= minimum
  if not ok:
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
    what = "an integer" if integer else "a number"
    raise ValueError(f"`{name}` must be {what}{bound}. Received: {name}={value!r}")
  return value


def parse_epsilon(text, name="epsilon"):
  """Reads an L∞ radius written "8/255" or "0.031" (a command-line flag).

  Args:
    text: the string.
    name: the flag's name, for the message.

  Returns:
    The radius as a float, >= 0.

  Raises:
    ValueError: for anything else (a zero denominator, a negative value),
      naming the flag and the text received.
  """
  try:
    numerator, slash, denominator = text.partition("/")
    value = float(numerator) / (float(denominator) if slash else 1.0)
  except (ValueError, ZeroDivisionError) as error:
    raise ValueError(f"`{name}` must be a number or a fraction like 8/255. "
                     f"Received: {name}={text!r}") from error
  if not value >= 0:
    raise ValueError(f"`{name}` must be >= 0. Received: {name}={text!r}")
  return value


def check_value_range(value_range):
  """Raises ValueError unless `value_range` is a pair `(low, high)`, low < high."""
  if (not isinstance(value_range, (tuple, list)) or len(value_range) != 2 or
      not value_range[0] < value_range[1]):
    raise ValueError("`value_range` must be a pair (low, high) with low < high. "
                     f"Received: value_range={value_range!r}")
  return (float(value_range[0]), float(value_range[1]))


def validate_attack_args(epsilon, step_size=None, steps=None, restarts=None,
                         value_range=(0.0, 1.0), eot_samples=None):
  """Checks the common attack arguments (None skips a check).

  Raises:
    ValueError: naming the first bad argument and its value.
  """
  check_number("epsilon", epsilon, minimum=0)
  if step_size is not None:
    check_number("step_size", step_size, minimum=0, strict=True)
  if steps is not None:
    check_number("steps", steps, minimum=1, integer=True)
  if restarts is not None:
    check_number("restarts", restarts, minimum=1, integer=True)
  if eot_samples is not None:
    check_number("eot_samples", eot_samples, minimum=1, integer=True)
  return check_value_range(value_range)


def check_images_labels(x, y, value_range):
  """Converts and checks a batch of images and labels.

  Args:
    x: float images, shape `(batch, ...)`, inside `value_range`.
    y: integer labels, shape `(batch,)`, or None.
    value_range: `(low, high)`.

  Returns:
    `(x, y)` as float32 and int32 tensors (y may stay None).

  Raises:
    TypeError: for integer images.
    ValueError: for values outside `value_range` or a label count mismatch.
  """
  x = tf.convert_to_tensor(x)
  if not x.dtype.is_floating:
    raise TypeError(f"`x` must hold float images. Received: x.dtype={x.dtype.name}")
  x = tf.cast(x, tf.float32)
  low, high = value_range
  x_min, x_max = float(tf.reduce_min(x)), float(tf.reduce_max(x))
  if x_min < low or x_max > high:
    raise ValueError(f"`x` must lie in value_range={value_range}. "
                     f"Received: x min={x_min}, max={x_max}")
  if y is not None:
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    if y.shape.rank != 1 or y.shape[0] != x.shape[0]:
      raise ValueError(f"`y` must have shape ({x.shape[0]},). "
                       f"Received: y.shape={tuple(y.shape)}")
  return x, y


def seeds(seed, count):
  """Derives `count` independent integer seeds from one seed (None stays None)."""
  if seed is None:
    return [None] * count
  rng = tf.random.Generator.from_seed(seed)
  return [int(s) for s in rng.uniform_full_int([count], dtype=tf.int32).numpy()]


def random_init(x, epsilon, value_range, seed=None):
  """A uniform random point of the L∞ ball around x, clipped to the value range."""
  shape = tf.shape(x)
  if seed is None:
    noise = tf.random.uniform(shape, -epsilon, epsilon)
  else:
    noise = tf.random.stateless_uniform(shape, [seed, 0], -epsilon, epsilon)
  return project(x + noise, x, epsilon, value_range)


def ce_loss(logits, y):
  """Per-example softmax cross-entropy of integer labels `y`."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


def dlr_loss(logits, y, y_target=None):
  """Per-example DLR loss (Croce & Hein 2020); targeted when `y_target` given.

  Untargeted: -(z_y - max_{i≠y} z_i) / (z_π1 - z_π3).
  Targeted:   -(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2).
  Larger is better for the attacker in both cases.
  """
  logits = tf.cast(logits, tf.float32)
  sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")
  num_classes = tf.shape(logits)[-1]
  z_y = tf.gather(logits, y, batch_dims=1)
  if y_target is None:
    others = logits - 1e9 * tf.one_hot(y, num_classes)
    margin = z_y - tf.reduce_max(others, axis=-1)
    scale = sorted_logits[:, 0] - sorted_logits[:, 2]
  else:
    margin = z_y - tf.gather(logits, y_target, batch_dims=1)
    scale = sorted_logits[:, 0] - 0.5 * (sorted_logits[:, 2] + sorted_logits[:, 3])
  return -margin / (scale + 1e-12)


def margin_loss(logits, y):
  """Per-example margin max_{i≠y} z_i − z_y (C&W); positive when misclassified."""
  logits = tf.cast(logits, tf.float32)
  others = logits - 1e9 * tf.one_hot(y, tf.shape(logits)[-1])
  return tf.reduce_max(others, axis=-1) - tf.gather(logits, y, batch_dims=1)


def activation_bytes(model):
  """Bytes of float32 layer outputs of one image through `model`.

  Nested models are counted through their own layers.

  Args:
    model: a built Keras model (Sequential or functional).

  Returns:
    An integer, or None if some layer's output shape is unknown (e.g. a
    subclassed model, or a dimension left as None).
  """
  total = 0
  for layer in getattr(model, "layers", []):
    if isinstance(layer, keras.Model):
      inner = activation_bytes(layer)
      if inner is None:
        return None
      total += inner
      continue
    try:
      outputs = tf.nest.flatten(layer.output)
    except (AttributeError, ValueError):
      return None
    for output in outputs:
      dims = tuple(output.shape)[1:]
      if any(d is None for d in dims):
        return None
      total += 4 * math.prod(dims)
  return total


def eot_chunk_size(bytes_per_image, total, memory_budget=None):
  """Most images per model call so that one EOT chunk fits `memory_budget`.

  Args:
    bytes_per_image: estimated bytes one image holds during a gradient step
      (e.g. `model_fns.bytes_per_image`), or None (unknown: no chunking).
    total: images to run (batch × EOT samples).
    memory_budget: bytes a chunk may hold; None means `DEFAULT_MEMORY_BUDGET`.

  Returns:
    An integer in [1, total].

  Raises:
    ValueError: for a `memory_budget` that is not a number > 0.
  """
  if memory_budget is None:
    memory_budget = DEFAULT_MEMORY_BUDGET
  check_number("memory_budget", memory_budget, minimum=0, strict=True)
  if not bytes_per_image:
    return max(1, total)
  return int(max(1, min(total, memory_budget // bytes_per_image)))


def model_bytes_per_image(model_fn):
  """Estimated bytes per image of one gradient step of `model_fn`, or None."""
  if hasattr(model_fn, "bytes_per_image"):
    return model_fn.bytes_per_image()
  if isinstance(model_fn, keras.Model):
    held = activation_bytes(model_fn)
    return None if held is None else 2 * held
  return None


def eot_loss_gradient(model_fn, x, y, loss_fn, eot_samples=1, chunk_size=None,
                      expectation="loss", memory_budget=None,
                      return_logits=False):
  """Loss and input gradient averaged over `eot_samples` calls of a random model.

  Vectorised Expectation over Transformation: the batch is tiled K times and
  run through `model_fn` in chunks of at most `chunk_size` images, so each
  copy gets its own random draw. The tape watches the input only, not the
  variables a model reads: Keras' `trainable=False` leaves a frozen f_b's
  `tf.Variable`s trainable, and a tape watching them would record every
  pass of f_b inside g, even one whose result is cut by `tf.stop_gradient`.

  - `expectation="loss"`: the loss of each draw, averaged: E[ℓ(f(x))]; its
    gradient is the summed gradient divided by K.
  - `expectation="softmax"`: the loss of the expected output, ℓ(log E[softmax
    f(x)]) (`loss_fn` receives the log of the mean probability over the K
    draws as logits, so CE is −log E[p_y] and DLR or a margin act on the mean
    probabilities). Each chunk then holds all K draws of its images (so at
    least K images), and `loss_fn` is called once per chunk of images, in the
    order of `x`.

  Args:
    model_fn: images -> logits, differentiable (may be random). A
      `DefendedModelFn` (or a Keras model) tells its memory per image.
    x: float32 images, shape `(batch, ...)`.
    y: labels passed to `loss_fn` (a tensor or a nest of `(batch,)` tensors).
    loss_fn: `(logits, y) -> per-example loss` (the attacker ascends it).
    eot_samples: K, the number of draws averaged.
    chunk_size: most images per `model_fn` call; None picks it from
      `memory_budget` and the model's memory per image (`eot_chunk_size`;
      the whole tiled batch when the model cannot tell).
    expectation: one of `EXPECTATIONS`.
    memory_budget: bytes one chunk may hold when `chunk_size` is None; None
      means `DEFAULT_MEMORY_BUDGET`.
    return_logits: also return the logits of every draw (`expectation="loss"`
      only).

  Returns:
    `(loss, grad)`: per-example loss, shape `(batch,)`, and its gradient,
    shape of `x`; with `return_logits`, `(loss, grad, logits)`, the logits of
    the tiled batch, shape `(eot_samples * batch, classes)`, draw-major (row
    `k * batch + i` is draw k of image i).

  Raises:
    ValueError: for a bad `eot_samples`, `chunk_size`, `expectation` or
      `memory_budget`, or `return_logits` with `expectation="softmax"`.
  """
  check_number("eot_samples", eot_samples, minimum=1, integer=True)
  if expectation not in EXPECTATIONS:
    raise ValueError(f"`expectation` must be one of {EXPECTATIONS}. "
                     f"Received: expectation={expectation!r}")
  if return_logits and expectation != "loss":
    raise ValueError("`return_logits` needs `expectation='loss'`. "
                     f"Received: expectation={expectation!r}")
  total = x.shape[0] * eot_samples
  if chunk_size is None:
    chunk = eot_chunk_size(model_bytes_per_image(model_fn), total, memory_budget)
  else:
    chunk = check_number("chunk_size", chunk_size, minimum=1, integer=True)
  if expectation == "softmax":
    return _expected_output_loss_gradient(model_fn, x, y, loss_fn, eot_samples,
                                          max(1, chunk // eot_samples))
  batch = tf.shape(x)[0]
  tiled_x = tf.tile(x, [eot_samples] + [1] * (len(x.shape) - 1))
  tiled_y = tf.nest.map_structure(lambda t: tf.tile(t, [eot_samples]), y)
  losses, grads, logits = [], [], []
  for start in range(0, total, chunk):
    part_x = tiled_x[start:start + chunk]
    part_y = tf.nest.map_structure(lambda t: t[start:start + chunk], tiled_y)
    loss, grad, part_logits = chunk_loss_gradient(model_fn, part_x, part_y,
                                                  loss_fn)
    grads.append(finite_or_zero(grad))
    losses.append(loss)
    logits.append(part_logits)
  loss = tf.reshape(tf.concat(losses, 0), [eot_samples, batch])
  grad = tf.reshape(tf.concat(grads, 0),
                    tf.concat([[eot_samples, batch], tf.shape(x)[1:]], 0))
  mean_loss = tf.reduce_mean(loss, 0)
  mean_grad = tf.reduce_sum(grad, 0) / eot_samples
  if return_logits:
    return mean_loss, mean_grad, tf.concat(logits, 0)
  return mean_loss, mean_grad


def chunk_loss_gradient(model_fn, x, y, loss_fn):
  """Per-example loss, its input gradient and the logits of one model call.

  A `model_fn` with a `loss_and_gradient(x, y, loss_fn)` method (e.g.
  `attacks.model_fns.DefendedModelFn`) computes them itself when it can
  (it returns None when it cannot); otherwise, or inside a `tf.function`,
  a tape watching only `x` records `loss_fn(model_fn(x), y)`.

  Args:
    model_fn: images -> logits.
    x: float32 images (one chunk).
    y: labels (a tensor or a nest), passed to `loss_fn`.
    loss_fn: `(logits, y) -> per-example loss`.

  Returns:
    `(loss, grad, logits)`: the per-example loss, the gradient of its sum
    with respect to `x` (zero where the model cuts the path), and the logits
    `model_fn` returned.
  """
  own = getattr(model_fn, "loss_and_gradient", None)
  if own is not None and not tf.inside_function():
    result = own(x, y, loss_fn)
    if result is not None:
      return result
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(x)
    logits = model_fn(x)
    loss = loss_fn(logits, y)
    total_loss = tf.reduce_sum(loss)
  return loss, tape.gradient(
      total_loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO), logits


def _expected_output_loss_gradient(model_fn, x, y, loss_fn, eot_samples, images):
  """`eot_loss_gradient` with `expectation="softmax"`, `images` per call."""
  log_draws = math.log(eot_samples)
  losses, grads = [], []
  for start in range(0, x.shape[0], images):
    part_x = x[start:start + images]
    part_y = tf.nest.map_structure(lambda t: t[start:start + images], y)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(part_x)
      tiled = tf.tile(part_x, [eot_samples] + [1] * (len(x.shape) - 1))
      logits = tf.cast(model_fn(tiled), tf.float32)
      log_probs = tf.reshape(tf.nn.log_softmax(logits),
                             [eot_samples, tf.shape(part_x)[0], -1])
      log_mean = tf.reduce_logsumexp(log_probs, axis=0) - log_draws
      loss = loss_fn(log_mean, part_y)
      total_loss = tf.reduce_sum(loss)
    grads.append(finite_or_zero(tape.gradient(
        total_loss, part_x,
        unconnected_gradients=tf.UnconnectedGradients.ZERO)))
    losses.append(loss)
  return tf.concat(losses, 0), tf.concat(grads, 0)
