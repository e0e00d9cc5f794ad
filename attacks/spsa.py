"""SPSA attack, L∞ (Uesato et al., ICML 2018), batched over images.

A score-based black-box attack added to the paper's query-based attacks
(Sec. 4.2). cleverhans' TF2 SPSA takes one image at a time; this version runs
the whole batch at once: every step estimates the gradient of the margin loss
by simultaneous perturbation (antithetic Rademacher directions), takes an Adam
step on it, and projects onto the L∞ ball and the value range. Each image
stops once it is misclassified.
"""

import numpy as np
import tensorflow as tf

from attacks import common
from attacks import square

ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_EPSILON = 1e-8


def spsa_gradient(model_fn, x_adv, y, samples, delta, rng,
                  value_range=(0.0, 1.0)):
  """SPSA estimate of the margin loss's input gradient, per image.

  Uses `samples // 2` antithetic pairs x ± delta·v with v Rademacher:
  ĝ = mean_v [ (m(x + δv) − m(x − δv)) / (2δ) · v ].

  Args:
    model_fn: images -> logits.
    x_adv: current points `(n, ...)`, float32.
    y: labels `(n,)`.
    samples: model evaluations per image (an even number).
    delta: finite-difference step δ.
    rng: NumPy generator.
    value_range: `(low, high)`; query points are clipped to it, since a
      defended model refuses inputs outside its value range.

  Returns:
    float32 array of the shape of `x_adv`.
  """
  n, pairs = x_adv.shape[0], samples // 2
  v = rng.choice([-1.0, 1.0], size=(n, pairs) + x_adv.shape[1:]).astype(np.float32)
  points = np.concatenate([x_adv[:, None] + delta * v, x_adv[:, None] - delta * v],
                          axis=1).reshape((n * samples,) + x_adv.shape[1:])
  points = np.clip(points, value_range[0], value_range[1])
  loss = square.margins(square.query_logits(model_fn, points),
                        np.repeat(y, samples)).reshape(n, samples)
  difference = (loss[:, :pairs] - loss[:, pairs:]) / (2.0 * delta)
  weights = difference.reshape((n, pairs) + (1,) * (x_adv.ndim - 1))
  return np.mean(weights * v, axis=1)


def spsa(model_fn, x, y, epsilon=8 / 255, steps=100, samples=128, delta=0.01,
         learning_rate=0.01, value_range=(0.0, 1.0), seed=None):
  """SPSA (L∞): Adam descent of the margin loss on SPSA gradient estimates.

  Starts from a uniform random point of the ball, then for up to `steps`
  steps: estimate the gradient of m = z_y − max_{j≠y} z_j with `samples`
  evaluations, take an Adam step (β = 0.9, 0.999), project onto the ball and
  the value range, and evaluate the new point (one more query). An image stops
  once it is misclassified, keeping that point. Queries per image: at most
  1 + steps · (samples + 1).

  Args:
    model_fn: float32 images -> logits; only its outputs are used.
    x: images `(batch, ...)` inside `value_range`.
    y: int labels `(batch,)`; None uses the model's predictions.
    epsilon: L∞ budget.
    steps: most Adam steps.
    samples: model evaluations per gradient estimate; even, >= 2.
    delta: SPSA perturbation size δ.
    learning_rate: Adam learning rate.
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the start and the directions; None draws one.

  Returns:
    float32 tf.Tensor of the shape of `x`, inside the ball and `value_range`.

  Raises:
    ValueError: for a bad argument (named in the message).
    TypeError: for integer images.

  Example:
    >>> x_adv = spsa(model, images, labels, steps=100, samples=128, seed=0)
  """
  x, y, value_range = square.prepare(model_fn, x, y, epsilon, value_range,
                                     seed)
  common.check_number("steps", steps, minimum=1, integer=True)
  common.check_number("samples", samples, minimum=2, integer=True)
  if samples % 2:
    raise ValueError(f"`samples` must be even. Received: samples={samples!r}")
  common.check_number("delta", delta, minimum=0, strict=True)
  common.check_number("learning_rate", learning_rate, minimum=0, strict=True)
  if epsilon == 0:
    return tf.constant(x)
  rng = square.attack_rng(seed)
  noise = rng.uniform(-epsilon, epsilon, size=x.shape).astype(np.float32)
  x_adv = np.array(common.project(x + noise, x, epsilon, value_range))
  loss = square.margins(square.query_logits(model_fn, x_adv), y)
  first, second = np.zeros_like(x), np.zeros_like(x)
  for step in range(1, steps + 1):
    active = np.flatnonzero(loss >= 0)
    if active.size == 0:
      break
    grad = spsa_gradient(model_fn, x_adv[active], y[active], samples, delta, rng,
                         value_range)
    first[active] = ADAM_BETA1 * first[active] + (1 - ADAM_BETA1) * grad
    second[active] = ADAM_BETA2 * second[active] + (1 - ADAM_BETA2) * grad**2
    corrected = (first[active] / (1 - ADAM_BETA1**step)) / (
        np.sqrt(second[active] / (1 - ADAM_BETA2**step)) + ADAM_EPSILON)
    moved = x_adv[active] - learning_rate * corrected
    x_adv[active] = np.asarray(
        common.project(moved, x[active], epsilon, value_range))
    loss[active] = square.margins(square.query_logits(model_fn, x_adv[active]),
                                  y[active])
  return tf.constant(x_adv.astype(np.float32))
