"""Shared pieces of every attack: argument checks, projection, losses, EOT gradients.

Vocabulary (the same as `adv_layer`): `epsilon` (L∞ budget), `step_size`,
`steps`, `restarts`, `value_range`, `seed`, `eot_samples`. A `model_fn` maps a
float32 image batch to logits and is differentiable with `tf.GradientTape`
(for a defended model, through whichever gradient estimator is active).
"""

import numbers

import tensorflow as tf

from adv_layer.transform import project

__all__ = [
    "check_images_labels", "check_number", "check_value_range", "ce_loss",
    "dlr_loss", "eot_loss_gradient", "project", "random_init", "seeds",
    "validate_attack_args"
]


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


def eot_loss_gradient(model_fn, x, y, loss_fn, eot_samples=1, chunk_size=None):
  """Loss and input gradient averaged over `eot_samples` calls of a random model.

  Vectorised Expectation over Transformation: the batch is tiled K times and
  run through `model_fn` in chunks of at most `chunk_size` images, so each
  copy gets its own random draw; the summed gradient is divided by K.

  Args:
    model_fn: images -> logits, differentiable (may be random).
    x: float32 images, shape `(batch, ...)`.
    y: labels passed to `loss_fn`.
    loss_fn: `(logits, y) -> per-example loss` (the attacker ascends it).
    eot_samples: K, the number of draws averaged.
    chunk_size: most images per `model_fn` call; None means `batch * K`.

  Returns:
    `(loss, grad)`: per-example loss averaged over draws, shape `(batch,)`,
    and the averaged gradient, shape of `x`.
  """
  check_number("eot_samples", eot_samples, minimum=1, integer=True)
  batch = tf.shape(x)[0]
  tiled_x = tf.tile(x, [eot_samples] + [1] * (len(x.shape) - 1))
  tiled_y = tf.nest.map_structure(lambda t: tf.tile(t, [eot_samples]), y)
  total = tiled_x.shape[0]
  chunk = total if chunk_size is None else max(1, int(chunk_size))
  losses, grads = [], []
  for start in range(0, total, chunk):
    part_x = tiled_x[start:start + chunk]
    part_y = tf.nest.map_structure(lambda t: t[start:start + chunk], tiled_y)
    with tf.GradientTape() as tape:
      tape.watch(part_x)
      loss = loss_fn(model_fn(part_x), part_y)
      total_loss = tf.reduce_sum(loss)
    grads.append(tape.gradient(total_loss, part_x))
    losses.append(loss)
  loss = tf.reshape(tf.concat(losses, 0), [eot_samples, batch])
  grad = tf.reshape(tf.concat(grads, 0),
                    tf.concat([[eot_samples, batch], tf.shape(x)[1:]], 0))
  return tf.reduce_mean(loss, 0), tf.reduce_sum(grad, 0) / eot_samples
