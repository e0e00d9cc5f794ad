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
holds is f_a's, not N times f_b's (`attacks.model_fns.bytes_per_image`
estimates it; EOT picks its chunk from it, `attacks.common.eot_chunk_size`).
The estimators that differentiate the loop (`"unrolled"`,
`"straight_through"`, `"bpda_exact_path"`) hold it by necessity.

`steps` replaces the layer's N, giving the cheaper defense g_k of the
cheaper-defense transfer attack. `attacks.model_fns.defended_model_fn` wraps
a whole model as a `model_fn` whose every call draws fresh δ per image, so
Expectation over Transformation is `attacks.common.eot_loss_gradient` on a
tiled batch.

Example:
  >>> with use_estimator(model, "bpda_identity"):
  ...   grad = tape.gradient(loss(model(x)), x)
"""

import contextlib
import numbers

import tensorflow as tf
from adv_layer import transform
from adv_layer.layer import find_transforms

__all__ = [
    "ESTIMATORS", "LOOP_ESTIMATORS", "SIGN_SURROGATES", "attach",
    "bpda_transform", "draw_noise", "estimator_fn", "exact_transform",
    "sign_with_derivative", "substitute_transform", "surrogate_project",
    "surrogate_sign", "transform_layers", "use_estimator"
]

ESTIMATORS = ("bpda", "bpda_identity", "unrolled", "exact", "straight_through",
              "bpda_exact_path")
# Estimators whose backward differentiates the unrolled loop (second order
# through f_b): their memory grows with the number of steps N.
LOOP_ESTIMATORS = ("bpda", "unrolled", "straight_through", "bpda_exact_path")
SIGN_SURROGATES = ("softsign", "tanh")


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


def draw_noise(layer, x, seed):
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

  return attach(exact, x, surrogate_vjp)


def attach(exact, x, backward):
  """Returns `exact` (a value of the same shape as `x`) with `backward` as VJP."""

  @tf.custom_gradient
  def attached(x):
    return tf.identity(exact), backward

  return attached(x)


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
    noise = draw_noise(layer, x, seed)
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
      return attach(exact, x, lambda upstream: upstream)
    return attach(exact, x, tf.zeros_like)

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


