"""SPSA attack, L∞ (Uesato et al., ICML 2018), batched over images.

A score-based black-box attack added to the paper's query-based attacks
(Sec. 4.2). cleverhans' TF2 SPSA takes one image at a time; this version runs
the whole batch at once: every step estimates the gradient of the margin loss
by simultaneous perturbation (antithetic Rademacher directions), takes an Adam
step on it, and projects onto the L∞ ball and the value range. Each image
stops once it is misclassified, and each returns its best iterate (the
lowest-scoring point it visited), not its last. With `query_draws` = M > 1 it
knows the model is random: iterates are scored over M draws and an accepted
best iterate is re-scored on M fresh draws (`attacks.query_scores`).
"""

import numpy as np
import tensorflow as tf

from attacks import common
from attacks import query_scores
from attacks import square

ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_EPSILON = 1e-8
# Model evaluations per gradient estimate in cleverhans' SPSA (its
# `spsa_samples` default), the reference this attack meets by default.
REFERENCE_SAMPLES = 128


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
  logits = query_scores.query_logits(model_fn, points)
  loss = query_scores.margins(logits, np.repeat(y, samples)).reshape(n, samples)
  difference = (loss[:, :pairs] - loss[:, pairs:]) / (2.0 * delta)
  weights = difference.reshape((n, pairs) + (1,) * (x_adv.ndim - 1))
  return np.mean(weights * v, axis=1)


def spsa(model_fn, x, y, epsilon=8 / 255, steps=100, samples=REFERENCE_SAMPLES,
         delta=0.01, learning_rate=0.01, value_range=(0.0, 1.0), seed=None,
         query_draws=1):
  """SPSA (L∞): Adam descent of the margin loss on SPSA gradient estimates.

  Starts from a uniform random point of the ball, then for up to `steps`
  steps: estimate the gradient of m = z_y − max_{j≠y} z_j with `samples`
  evaluations, take an Adam step (β = 0.9, 0.999), project onto the ball and
  the value range, and score the new iterate: its margin averaged over
  `query_draws` draws. An iterate scoring below the image's best becomes the
  best (`query_scores.accept`: with `query_draws` > 1 re-scored on fresh
  draws). An image stops once its best is misclassified (on most of its
  draws and of the fresh draws when `query_draws` > 1); every image returns
  its best iterate.

  On a random model each of the `samples` evaluations of a gradient estimate
  is one draw: averaging over directions averages over draws too, and M
  draws of one direction would cost as much as M directions.

  Queries per image: at most steps · samples for the gradients plus
  (1 + steps) · query_draws for the scores, doubled when `query_draws` > 1
  (fresh re-scores of accepted iterates).

  Args:
    model_fn: float32 images -> logits; only its outputs are used.
    x: images `(batch, ...)` inside `value_range`.
    y: int labels `(batch,)`; None uses the model's predictions.
    epsilon: L∞ budget.
    steps: most Adam steps.
    samples: model evaluations per gradient estimate; even, >= 2. The
      default is cleverhans' 128.
    delta: SPSA perturbation size δ.
    learning_rate: Adam learning rate.
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the start and the directions; None draws one.
    query_draws: M, draws of a random model averaged per score of an
      iterate; 1 for a deterministic model.

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
  query_scores.check_query_draws(query_draws)
  if epsilon == 0:
    return tf.constant(x)
  rng = square.attack_rng(seed)
  noise = rng.uniform(-epsilon, epsilon, size=x.shape).astype(np.float32)
  x_adv = np.array(common.project(x + noise, x, epsilon, value_range))
  x_best, best = x_adv.copy(), np.full(len(x), np.inf, np.float32)
  score, fooled = query_scores.draw_scores(model_fn, x_adv, y, query_draws)
  done, _ = query_scores.accept(model_fn, x_best, best, np.arange(len(x)),
                                x_adv, score, fooled, y, query_draws)
  first, second = np.zeros_like(x), np.zeros_like(x)
  for step in range(1, steps + 1):
    active = np.flatnonzero(~done)
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
    score, fooled = query_scores.draw_scores(model_fn, x_adv[active], y[active],
                                             query_draws)
    done[active], _ = query_scores.accept(model_fn, x_best, best, active,
                                          x_adv[active], score, fooled, y,
                                          query_draws)
  return tf.constant(x_best.astype(np.float32))
