"""Square Attack, L∞ (Andriushchenko et al., ECCV 2020), batched over images.

A score-based black-box attack added to the paper's query-based attacks
(Sec. 4.2): random search over vertical-stripe and square-shaped ±epsilon
perturbations, accepting a change when the margin loss drops. Each image
stops querying once it is misclassified.

Also holds the small query helpers the other query-based attacks share
(`query_logits`, `margins`, `attack_rng`).
"""

import numpy as np
import tensorflow as tf

from attacks import common
from attacks import estimators

# Most images per `model_fn` call: bounds memory when a query batch is large
# (SPSA, HopSkipJump gradient estimation, GenAttack populations).
QUERY_CHUNK = 2048

# Square Attack's schedule for the fraction p of pixels changed per query:
# (fraction of the query budget reached, divisor of p_init) pairs, after the
# original schedule written for a 10,000-query budget.
P_SCHEDULE = ((0.001, 1), (0.005, 2), (0.02, 4), (0.05, 8), (0.1, 16),
              (0.2, 32), (0.4, 64), (0.6, 128), (0.8, 256), (1.0, 512))


def attack_rng(seed):
  """A NumPy generator: seeded (repeatable) or, for None, fresh entropy.

  Negative integer seeds (e.g. from `common.seeds`) are taken modulo 2**32.
  """
  return np.random.default_rng(None if seed is None else seed % 2**32)


def query_logits(model_fn, x):
  """Logits of `model_fn` on images `x` as float32 NumPy, in bounded chunks.

  Args:
    model_fn: images -> logits (may be random: each call a fresh draw).
    x: float32 NumPy images, shape `(n, ...)`.

  Returns:
    float32 array of shape `(n, classes)`.
  """
  parts = []
  for start in range(0, x.shape[0], QUERY_CHUNK):
    chunk = tf.constant(x[start:start + QUERY_CHUNK], tf.float32)
    parts.append(np.asarray(tf.cast(model_fn(chunk), tf.float32)))
  return np.concatenate(parts, 0)


def margins(logits, y):
  """Per-example margin z_y − max_{j≠y} z_j; negative means misclassified.

  Args:
    logits: float array `(n, classes)`.
    y: int array `(n,)`.

  Returns:
    float32 array `(n,)`.
  """
  rows = np.arange(logits.shape[0])
  true = logits[rows, y]
  others = logits.copy()
  others[rows, y] = -np.inf
  return (true - others.max(axis=1)).astype(np.float32)


def prepare(model_fn, x, y, epsilon, value_range, seed):
  """Checks a query attack's common arguments; reseeds a random model_fn.

  A `DefendedModelFn` restarts its random draws from `seed` (see
  `estimators.reseed`), so a seeded attack on a random model repeats. Labels
  `y=None` become the model's own predictions (one query per image).

  Returns:
    `(x, y, value_range)`: float32 and int32 NumPy arrays and the range.

  Raises:
    ValueError: for a bad epsilon, value range, images or labels.
    TypeError: for integer images.
  """
  value_range = common.validate_attack_args(epsilon, value_range=value_range)
  x, y = common.check_images_labels(x, y, value_range)
  estimators.reseed(model_fn, seed)
  x = np.array(x)
  if y is None:
    return x, np.argmax(query_logits(model_fn, x), axis=1), value_range
  return x, np.array(y), value_range


def p_fraction(p_init, query, queries):
  """Fraction of pixels to change at `query` of `queries` (the p schedule)."""
  progress = query / queries
  for limit, divisor in P_SCHEDULE:
    if progress <= limit:
      return p_init / divisor
  return p_init / P_SCHEDULE[-1][1]


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


def square(model_fn, x, y, epsilon=8 / 255, queries=1000, p_init=0.05,
           value_range=(0.0, 1.0), seed=None):
  """Square Attack (L∞): score-based random search on the margin loss.

  Starts from vertical ±epsilon stripes (one query), then for up to
  `queries − 1` more queries per image proposes resetting one random square
  window (side √(p·h·w), p following the original schedule from `p_init`) to
  ±epsilon per channel and keeps the proposal when the margin z_y − max_{j≠y}
  z_j drops. An image stops once its margin is negative. On a randomized
  model every query is a fresh draw, so the kept margins are single-draw
  estimates; the caller re-scores the result with fresh draws.

  Args:
    model_fn: NHWC float32 images -> logits; only its outputs are used.
    x: images `(batch, h, w, c)` inside `value_range`.
    y: int labels `(batch,)`; None uses the model's predictions.
    epsilon: L∞ budget.
    queries: most model evaluations per image (the start included).
    p_init: initial fraction of pixels changed per query, in (0, 1].
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the random search; None draws one.

  Returns:
    float32 tf.Tensor of the shape of `x`, inside the ball and `value_range`.

  Raises:
    ValueError: for a bad argument (named in the message).
    TypeError: for integer images.

  Example:
    >>> x_adv = square(model, images, labels, epsilon=8/255, queries=5000, seed=0)
  """
  x, y, value_range = prepare(model_fn, x, y, epsilon, value_range, seed)
  common.check_number("queries", queries, minimum=1, integer=True)
  common.check_number("p_init", p_init, minimum=0, strict=True)
  if p_init > 1:
    raise ValueError(f"`p_init` must be in (0, 1]. Received: p_init={p_init!r}")
  if x.ndim != 4:
    raise ValueError("`x` must be a batch of NHWC images. "
                     f"Received: x.shape={x.shape}")
  if epsilon == 0:
    return tf.constant(x)
  rng = attack_rng(seed)
  x_best = stripes_init(x, epsilon, value_range, rng)
  best = margins(query_logits(model_fn, x_best), y)
  height, width = x.shape[1:3]
  for query in range(1, queries):
    active = np.flatnonzero(best >= 0)
    if active.size == 0:
      break
    p = p_fraction(p_init, query, queries)
    side = int(np.clip(round(np.sqrt(p * height * width)), 1,
                       max(min(height, width) - 1, 1)))
    proposal = square_proposal(x[active], x_best[active], epsilon, side,
                               value_range, rng)
    loss = margins(query_logits(model_fn, proposal), y[active])
    better = loss < best[active]
    x_best[active[better]] = proposal[better]
    best[active[better]] = loss[better]
  return tf.constant(x_best)
