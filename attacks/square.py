"""Square Attack, L∞ (Andriushchenko et al., ECCV 2020), batched over images.

A score-based black-box attack added to the paper's query-based attacks
(Sec. 4.2): random search over vertical-stripe and square-shaped ±epsilon
perturbations, accepting a change when the margin loss drops. Each image
stops querying once it is misclassified. With `query_draws` = M > 1 it knows
the model is random: it scores a proposal by its margin averaged over M
draws, re-scores an accepted one on M fresh draws (`attacks.query_scores`),
and stops an image only when most of both sets of draws misclassify it.

The size of the squares follows AutoAttack's Square (p_init = 0.8, the
piecewise-constant schedule of p keyed to the iteration index as for a
10,000-query budget, not rescaled to a smaller one, as AutoAttack runs it).

Also holds the helpers the other query-based attacks share (`attack_rng`,
`prepare`).
"""

import numpy as np
import tensorflow as tf

from attacks import common
from attacks import model_fns
from attacks import query_scores

# AutoAttack's schedule of the fraction p of pixels changed per proposal, as
# (last iteration, divisor) pairs: p = p_init / divisor up to and including
# that iteration index (proposals counted from 0), p_init / P_LAST_DIVISOR
# after the last one.
P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32),
              (4000, 64), (6000, 128), (8000, 256))
P_LAST_DIVISOR = 512


def attack_rng(seed):
  """A NumPy generator: seeded (repeatable) or, for None, fresh entropy.

  Negative integer seeds (e.g. from `common.seeds`) are taken modulo 2**32.
  """
  return np.random.default_rng(None if seed is None else seed % 2**32)


def prepare(model_fn, x, y, epsilon, value_range, seed):
  """Checks a query attack's common arguments; reseeds a random model_fn.

  A `DefendedModelFn` restarts its random draws from `seed` (see
  `model_fns.reseed`), so a seeded attack on a random model repeats. Labels
  `y=None` become the model's own predictions (one query per image).

  Returns:
    `(x, y, value_range)`: float32 and int32 NumPy arrays and the range.

  Raises:
    ValueError: for a bad epsilon, value range, images or labels.
    TypeError: for integer images.
  """
  value_range = common.validate_attack_args(epsilon, value_range=value_range)
  x, y = common.check_images_labels(x, y, value_range)
  model_fns.reseed(model_fn, seed)
  x = np.array(x)
  if y is None:
    labels = np.argmax(query_scores.query_logits(model_fn, x), axis=1)
    return x, labels, value_range
  return x, np.array(y), value_range


def p_fraction(p_init, iteration):
  """Fraction of pixels to change at proposal `iteration` (from 0).

  AutoAttack's Square schedule for its 10,000-query budget, not rescaled: at
  a smaller budget the squares stay as large as they are at the start of a
  full-length run.
  """
  for limit, divisor in P_SCHEDULE:
    if iteration <= limit:
      return p_init / divisor
  return p_init / P_LAST_DIVISOR


def stripes_init(x, epsilon, value_range, rng):
  """Square Attack's start: vertical stripes of ±epsilon per column and channel."""
  batch, _, width, channels = x.shape
  signs = rng.choice([-1.0, 1.0], size=(batch, 1, width, channels))
  return np.clip(x + epsilon * signs, *value_range).astype(np.float32)


def square_proposal(x, x_best, epsilon, side, value_range, rng):
  """Each image's best point with one random side×side window reset to ±epsilon.

  The window gets one sign per channel. A window identical to the current one
  would waste a query, so such draws are redrawn (a few times at most).

  Args:
    x: clean images `(n, h, w, c)`.
    x_best: current points, same shape.
    epsilon: L∞ budget.
    side: window side in pixels.
    value_range: `(low, high)`.
    rng: NumPy generator.

  Returns:
    The proposals, float32, same shape.
  """
  n, height, width, channels = x.shape
  rows = rng.integers(0, height - side + 1, size=n)
  cols = rng.integers(0, width - side + 1, size=n)
  window = (np.arange(side)[None, :, None] + rows[:, None, None],
            np.arange(side)[None, None, :] + cols[:, None, None])
  index = np.arange(n)[:, None, None]
  clean = x[index, window[0], window[1]]
  current = x_best[index, window[0], window[1]]
  signs = rng.choice([-1.0, 1.0], size=(n, 1, 1, channels))
  for _ in range(10):
    new = np.clip(clean + epsilon * signs, *value_range)
    same = np.all(np.abs(new - current) < 1e-7, axis=(1, 2, 3))
    if not same.any():
      break
    signs[same] = rng.choice([-1.0, 1.0], size=(int(same.sum()), 1, 1, channels))
  proposal = x_best.copy()
  proposal[index, window[0], window[1]] = np.clip(clean + epsilon * signs,
                                                  *value_range)
  return np.clip(proposal, x - epsilon, x + epsilon).astype(np.float32)


def square(model_fn, x, y, epsilon=8 / 255, queries=5000, p_init=0.8,
           value_range=(0.0, 1.0), seed=None, query_draws=1):
  """Square Attack (L∞): score-based random search on the margin loss.

  Starts from vertical ±epsilon stripes, then proposes, for each image still
  to break, its best point with one random square window (side √(p·h·w), p
  following `p_fraction` from `p_init`) reset to ±epsilon per channel, and
  keeps the proposal when its score (the margin z_y − max_{j≠y} z_j averaged
  over `query_draws` draws) is below the incumbent's stored score
  (`query_scores.accept`). An image stops once broken: misclassified
  (query_draws = 1), or misclassified on most of the proposal's draws and of
  `query_draws` fresh draws.

  Queries per image: scoring a point costs `query_draws`; with
  `query_draws` > 1 an accepted point costs `query_draws` more (its fresh
  re-score). An image stops proposing once the next proposal might exceed
  `queries`, so it never spends more.

  Args:
    model_fn: NHWC float32 images -> logits; only its outputs are used.
    x: images `(batch, h, w, c)` inside `value_range`.
    y: int labels `(batch,)`; None uses the model's predictions.
    epsilon: L∞ budget.
    queries: most model evaluations per image (the start included).
    p_init: initial fraction of pixels changed per proposal, in (0, 1].
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the random search; None draws one.
    query_draws: M, draws of a random model averaged per score; 1 for a
      deterministic model.

  Returns:
    float32 tf.Tensor of the shape of `x`, inside the ball and `value_range`.

  Raises:
    ValueError: for a bad argument (named in the message).
    TypeError: for integer images.

  Example:
    >>> x_adv = square(model, images, labels, epsilon=8/255, queries=5000,
    ...                seed=0, query_draws=10)
  """
  x, y, value_range = prepare(model_fn, x, y, epsilon, value_range, seed)
  query_scores.check_query_draws(query_draws)
  # The most one proposal can cost: its score, then a fresh re-score.
  cost = query_draws if query_draws == 1 else 2 * query_draws
  common.check_number("queries", queries, minimum=cost, integer=True)
  common.check_number("p_init", p_init, minimum=0, strict=True)
  if p_init > 1:
    raise ValueError(f"`p_init` must be in (0, 1]. Received: p_init={p_init!r}")
  if x.ndim != 4:
    raise ValueError("`x` must be a batch of NHWC images. "
                     f"Received: x.shape={x.shape}")
  if epsilon == 0:
    return tf.constant(x)
  rng = attack_rng(seed)
  x_best, best = x.copy(), np.full(len(x), np.inf, np.float32)
  start = stripes_init(x, epsilon, value_range, rng)
  score, fooled = query_scores.draw_scores(model_fn, start, y, query_draws)
  done, spent = query_scores.accept(model_fn, x_best, best, np.arange(len(x)),
                                 start, score, fooled, y, query_draws)
  used = query_draws + spent
  height, width = x.shape[1:3]
  iteration = 0
  while True:
    active = np.flatnonzero(~done & (used + cost <= queries))
    if active.size == 0:
      break
    p = p_fraction(p_init, iteration)
    side = int(np.clip(round(np.sqrt(p * height * width)), 1,
                       max(min(height, width) - 1, 1)))
    proposal = square_proposal(x[active], x_best[active], epsilon, side,
                               value_range, rng)
    score, fooled = query_scores.draw_scores(model_fn, proposal, y[active],
                                          query_draws)
    finished, spent = query_scores.accept(model_fn, x_best, best, active,
                                       proposal, score, fooled, y, query_draws)
    done[active] = finished
    used[active] += query_draws + spent
    iteration += 1
  return tf.constant(x_best)
