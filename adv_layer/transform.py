"""The adversarial transformation g(x) of Xiao & Zheng (CVPR 2020), Sec. 3.2.

One pure function, `ll_pgd`, runs the LL-PGD loop of eqs. (2)-(3):

    x'_0 = Π[x + δ],            δ ~ U[-Δ, Δ] per pixel (random start)
    x'_t = Π[x'_{t-1} - ε · sign(∇ ℓ(f_b(x'_{t-1}), y_LL))],   t = 1..N

where Π projects onto the L∞ ball of radius Δ around x intersected with the
value range, and y_LL = argmin f_b(x) is f_b's least-likely class for the
clean input. The layer (`adv_layer.layer`) calls it, and the attacks reuse it
with the two non-differentiable operators (`sign_fn`, `project_fn`) swapped for
smooth surrogates, so the defense and its attacks cannot drift apart.
`adv_layer.training.AdversarialTrainer` runs the same loop to make Madry PGD
examples (ascend the loss of given `labels`).

Called eagerly with the exact operators, `ll_pgd` runs its loop as one
compiled `tf.function` (traced once per f_b, settings and image shape, with
an open batch size), as fast as a call inside the user's own function.
Calls with surrogate operators run as written (eagerly or in the caller's
graph), since each surrogate would need a trace of its own.

Counting f_b's passes: inside `counting_passes(f_b, counter)` every forward
pass of f_b that this module makes in the calling thread (`logits_float32`,
`input_gradient`, the loop of `ll_pgd`, compiled or not) adds its batch size
to `counter`. The compiled loop takes the counter as an argument, so counting
keeps it compiled and a trace never holds on to an old counter.

Non-finite gradients: where f_b's input gradient is NaN or ±inf, that entry
is treated as 0 (no step on that pixel in that iteration), so one bad pixel
cannot poison g(x) through `sign(NaN) = NaN`.
"""

import contextlib
import numbers
import threading

import keras
import tensorflow as tf

TARGETS = ("least_likely", "untargeted", "random")


def validate_transform_args(epsilon, steps, step_size, target, value_range):
  """Checks the transform's hyperparameters and resolves the step size.

  Args:
    epsilon: L∞ radius Δ of the transform; must be > 0.
    steps: number N of LL-PGD steps; an integer >= 1.
    step_size: step ε of each signed step, or None for `epsilon / 6` (paper).
    target: one of `TARGETS`.
    value_range: `(low, high)` of valid pixel values, `low < high`.

  Returns:
    The step size as a float.

  Raises:
    ValueError: if any argument is out of its domain, naming it and its value.
  """
  if not isinstance(epsilon, numbers.Real) or not epsilon > 0:
    raise ValueError(f"`epsilon` must be a number > 0. Received: epsilon={epsilon!r}")
  if (isinstance(steps, bool) or not isinstance(steps, numbers.Integral)
      or steps < 1):
    raise ValueError(f"`steps` must be an integer >= 1. Received: steps={steps!r}")
  if step_size is None:
    step_size = epsilon / 6.0
  if not isinstance(step_size, numbers.Real) or not step_size > 0:
    raise ValueError(
        f"`step_size` must be a number > 0 or None. Received: step_size={step_size!r}")
  if target not in TARGETS:
    raise ValueError(f"`target` must be one of {TARGETS}. Received: target={target!r}")
  if (not isinstance(value_range, (tuple, list)) or len(value_range) != 2
      or not value_range[0] < value_range[1]):
    raise ValueError(
        "`value_range` must be a pair (low, high) with low < high. "
        f"Received: value_range={value_range!r}")
  return float(step_size)


def project(x_adv, x, epsilon, value_range):
  """Projects onto {x' : ‖x' − x‖∞ ≤ epsilon} ∩ value range (the exact Π).

  Args:
    x_adv: candidate images.
    x: centre images, same shape.
    epsilon: L∞ radius.
    value_range: `(low, high)`, or None to project onto the ball only (eq. 3
      as written; the authors' code never clips to [0, 1]).

  Returns:
    The projected images.
  """
  x_adv = tf.clip_by_value(x_adv, x - epsilon, x + epsilon)
  if value_range is None:
    return x_adv
  return tf.clip_by_value(x_adv, value_range[0], value_range[1])


def stateless_seed(seed):
  """Draws the seed of one stateless random op, distinct on each replica.

  Under a `tf.distribute` strategy every replica reads the same generator
  state, so without this each replica would draw the same random start for
  its shard of the batch; folding in the replica id decorrelates them. Outside
  a strategy the seed is the one `keras.random` would use, so draws match it.

  Args:
    seed: an integer (the same seed every time), a
      `keras.random.SeedGenerator` (advanced by one per call) or an integer
      tensor of shape `(2,)` (a stateless seed, used as it is).

  Returns:
    An int32 tensor of shape `(2,)` for `tf.random.stateless_*` ops.
  """
  if isinstance(seed, keras.random.SeedGenerator):
    drawn = seed.next()
  elif tf.is_tensor(seed):
    drawn = seed
  else:
    drawn = tf.constant([seed, 0], tf.int64)
  # Same int64 -> int32 reduction as keras.random (XLA wants int32 seeds).
  drawn = tf.cast(tf.math.floormod(tf.cast(drawn, tf.int64), tf.int32.max - 1),
                  tf.int32)
  context = tf.distribute.get_replica_context()
  if context is not None and context.num_replicas_in_sync > 1:
    drawn = tf.random.experimental.stateless_fold_in(
        drawn, context.replica_id_in_sync_group)
  return drawn


def uniform_noise(shape, epsilon, seed=None):
  """Draws the random start δ ~ U[-epsilon, epsilon].

  Args:
    shape: shape of δ.
    epsilon: half-width of the interval.
    seed: None (a fresh draw on every run), an integer (the same draw every
      time), a `keras.random.SeedGenerator` (a new, reproducible draw per
      call, distinct on each `tf.distribute` replica) or a stateless seed
      tensor of shape `(2,)`.

  Returns:
    A float32 tensor of the given shape.
  """
  if seed is None:
    return tf.random.uniform(shape, -epsilon, epsilon, dtype=tf.float32)
  return tf.random.stateless_uniform(
      shape, stateless_seed(seed), -epsilon, epsilon, dtype=tf.float32)


def target_labels(logits, target, seed=None):
  """Labels the inner loop steers toward (or away from) and the step direction.

  Args:
    logits: f_b's logits on the clean input, shape `(batch, classes)`.
    target: one of `TARGETS`.
    seed: seed for the `"random"` mode (see `uniform_noise`).

  Returns:
    `(labels, direction)`: int32 labels and +1.0 (ascend the loss, untargeted)
    or -1.0 (descend it, targeted).
  """
  if target == "least_likely":
    return tf.argmin(logits, axis=-1, output_type=tf.int32), -1.0
  predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
  if target == "untargeted":
    return predicted, 1.0
  num_classes = tf.shape(logits)[-1]
  shift_shape = tf.shape(predicted)
  if seed is None:
    shift = tf.random.uniform(shift_shape, 1, num_classes, dtype=tf.int32)
  else:
    shift = tf.random.stateless_uniform(
        shift_shape, stateless_seed(seed), 1, num_classes, dtype=tf.int32)
  return (predicted + shift) % num_classes, -1.0


def logits_float32(f_b, x):
  """Calls f_b in inference mode and returns float32 logits (a counted pass)."""
  return _logits(f_b, x, pass_counter(f_b))


def _logits(f_b, x, counter):
  """`logits_float32`, adding the batch size to `counter` unless it is None."""
  if counter is not None:
    counter.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
  return tf.cast(f_b(x, training=False), tf.float32)


def input_gradient(f_b, x_adv, labels):
  """∇_x Σ_i ℓ(f_b(x_i), labels_i) with ℓ the softmax cross-entropy.

  Only the input is watched: no gradient reaches f_b's weights. Non-finite
  entries (NaN, ±inf) of the gradient are set to 0 (see the module docstring).
  Its forward pass of f_b is counted (`counting_passes`).

  Args:
    f_b: the frozen model (logits out).
    x_adv: float32 images.
    labels: int32 labels.

  Returns:
    The gradient, same shape as `x_adv`, every entry finite.
  """
  return _input_gradient(f_b, x_adv, labels, pass_counter(f_b))


def _input_gradient(f_b, x_adv, labels, counter):
  """`input_gradient`, its pass added to `counter` unless it is None."""
  with tf.GradientTape() as tape:
    tape.watch(x_adv)
    loss = tf.reduce_sum(
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=_logits(f_b, x_adv, counter)))
  return finite_or_zero(tape.gradient(loss, x_adv))


def finite_or_zero(grad):
  """`grad` with its NaN and inf entries set to 0 (bit for bit elsewhere).

  One bad pixel then makes no step on that pixel instead of turning the
  whole step into NaN (the transform's loop and every attack's gradient,
  `attacks.common`, use it).
  """
  return tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))


def ll_pgd(f_b,
           x,
           epsilon=0.2,
           steps=13,
           step_size=None,
           target="least_likely",
           random_start=True,
           value_range=(0.0, 1.0),
           seed=None,
           noise=None,
           sign_fn=tf.sign,
           project_fn=project,
           clip_to_range=True,
           labels=None):
  """Runs the adversarial transformation g(x) (paper eqs. (2)-(3)).

  Args:
    f_b: a Keras model returning logits; called with `training=False`.
    x: float images in `value_range`, shape `(batch, ...)`.
    epsilon: L∞ radius Δ (paper: 0.2 for [0, 1] images).
    steps: number N of signed steps (paper: 13).
    step_size: step ε; None means `epsilon / 6` (paper).
    target: `"least_likely"` (paper: descend the loss toward argmin f_b(x)),
      `"untargeted"` (ascend the loss of f_b's predicted class, as in the
      authors' notebook) or `"random"` (descend toward a random class other
      than the predicted one).
    random_start: start at x + δ, δ ~ U[-Δ, Δ]; False starts at x.
    value_range: `(low, high)` of valid pixel values; every iterate stays in it.
    seed: seed of the random start and of the `"random"` target: None, an
      integer, a `keras.random.SeedGenerator` or a stateless seed tensor of
      shape `(2,)` (see `uniform_noise`).
    noise: optional explicit δ, same shape as `x`; overrides the random draw
      (used by attacks that must replay one draw). Ignored when
      `random_start=False`.
    sign_fn: the sign operator; attacks pass a smooth surrogate.
    project_fn: `(x_adv, x, epsilon, value_range) -> x_adv`, the projection
      Π; attacks pass one with a surrogate derivative.
    clip_to_range: keep every iterate in `value_range` (default). False
      projects onto the Δ-ball only, as eq. (3) and the authors' code do: the
      output may then leave `value_range` by up to Δ (`project_fn` receives
      `value_range=None`).
    labels: optional int labels, shape `(batch,)`, used instead of the ones
      `target` would choose; `target` still sets the direction: ascend their
      loss with `"untargeted"` (Madry PGD on true labels, as
      `AdversarialTrainer` does), descend it (steer toward them) otherwise
      (the target-selection attack fixes g's target this way).

  Returns:
    g(x) as a float32 tensor of the shape of `x`.

  Raises:
    ValueError: for hyperparameters out of their domain.

  Example:
    >>> g_x = ll_pgd(f_b, images, epsilon=0.2, steps=13, seed=0)
  """
  step_size = validate_transform_args(epsilon, steps, step_size, target,
                                      value_range)
  settings = dict(epsilon=float(epsilon), steps=int(steps),
                  step_size=step_size, target=target,
                  random_start=bool(random_start),
                  value_range=(tuple(float(v) for v in value_range)
                               if clip_to_range else None))
  exact = sign_fn is tf.sign and project_fn is project
  counter = pass_counter(f_b)
  if exact and not tf.inside_function():
    x = tf.cast(x, tf.float32)
    noise, labels = (None if v is None else tf.convert_to_tensor(v)
                     for v in (noise, labels))
    # Traced once with an open batch size, so no batch size traces again.
    _compiled_loop.get_concrete_function(
        f_b, _open_batch(x), seed, _open_batch(noise), _open_batch(labels),
        counter, **settings)
    return _compiled_loop(f_b, x, seed, noise, labels, counter, **settings)
  return _loop(f_b, x, seed, noise, labels, counter, sign_fn=sign_fn,
               project_fn=project_fn, **settings)


def _loop(f_b, x, seed, noise, labels, counter, epsilon, steps, step_size,
          target, random_start, value_range, sign_fn=tf.sign,
          project_fn=project):
  """The LL-PGD loop of `ll_pgd` on validated settings.

  `value_range` is None when iterates are not clipped to the range; f_b's
  passes are added to `counter` unless it is None.
  """
  x = tf.cast(x, tf.float32)
  noise_seed = target_seed = seed
  if tf.is_tensor(seed):  # One stateless seed: split it for the two draws.
    noise_seed, target_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
  if labels is None:
    labels, direction = target_labels(_logits(f_b, x, counter), target,
                                      target_seed)
  else:
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    direction = 1.0 if target == "untargeted" else -1.0
  if not random_start:
    x_adv = x
  else:
    if noise is None:
      noise = uniform_noise(tf.shape(x), epsilon, noise_seed)
    x_adv = project_fn(x + tf.cast(noise, tf.float32), x, epsilon, value_range)
  for _ in range(steps):
    grad = _input_gradient(f_b, x_adv, labels, counter)
    x_adv = project_fn(x_adv + direction * step_size * sign_fn(grad), x,
                       epsilon, value_range)
  return x_adv


# One trace per (f_b, seed object, settings, noise/labels/counter given or
# not, image shape), with an open batch size (`ll_pgd` traces it so; a trace
# per batch size would cost seconds each for a real f_b). A counter is an
# argument (a resource), so any counter reuses a trace.
_compiled_loop = tf.function(_loop, reduce_retracing=True)


def _open_batch(tensor):
  """`tensor`'s spec with the batch size left open; None and scalars stay."""
  if tensor is None or tensor.shape.rank == 0:
    return tensor
  return tf.TensorSpec([None] + tensor.shape[1:], tensor.dtype)


# f_b's pass counters of `counting_passes`, per thread (evaluation replicas
# run in threads, each counting its own copy of f_b): id(f_b) -> tf.Variable.
_counters = threading.local()


def pass_counter(f_b):
  """The counter `counting_passes` set for `f_b` in this thread, or None."""
  return getattr(_counters, "by_model", {}).get(id(f_b))


@contextlib.contextmanager
def counting_passes(f_b, counter):
  """Adds the batch size of each pass of `f_b` made here to `counter`.

  Covers every forward pass of f_b made through this module in the calling
  thread while active (the transform's 1 + N passes per image, N of them
  with an input gradient; `logits_float32`; `input_gradient`), eagerly,
  compiled by `ll_pgd`, or traced into a caller's function while active.

  Args:
    f_b: the model whose passes to count.
    counter: a scalar int64 `tf.Variable`.

  Yields:
    None.
  """
  by_model = _counters.__dict__.setdefault("by_model", {})
  previous = by_model.get(id(f_b))
  by_model[id(f_b)] = counter
  try:
    yield
  finally:
    if previous is None:
      del by_model[id(f_b)]
    else:
      by_model[id(f_b)] = previous
