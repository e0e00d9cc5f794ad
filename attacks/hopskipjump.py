"""HopSkipJumpAttack, L∞ (Chen, Jordan & Wainwright, IEEE S&P 2020), batched.

The decision-based attack of the paper's Table 2 (Sec. 4.2; the paper ran
foolbox's implementation with its defaults). It sees only the predicted label.
From a misclassified starting point it alternates a binary search to the
decision boundary, a Monte-Carlo estimate of the boundary's normal, and a
geometric step search along sign(normal), shrinking the L∞ distance to x.

HopSkipJump minimises the distance rather than working inside a budget; this
L∞-budgeted version stops an image once its boundary point lies within
`epsilon` of x and then returns, not that boundary point (misclassified by a
hair, so by about one draw in two of a random model), but the point pushed
out to the full epsilon radius along the path the boundary search took,
when fresh draws misclassify it at least as often (`push_out`). An image
whose boundary point stayed farther away is returned clipped to the ball,
which may be correctly classified.

With `query_draws` = M > 1 it knows the model is random: every decision of
the searches is the majority label of M draws (M queries), and the pushed
point is chosen on M fresh draws. The gradient estimate keeps one draw per
direction: its average over directions averages over draws too.
"""

import numpy as np
import tensorflow as tf

from attacks import common
from attacks import query_scores
from attacks import square

# Random uniform images tried per input to find a misclassified start.
INIT_TRIES = 100
# Bisection rounds of the blend search that pulls that start toward x.
INIT_SEARCH_STEPS = 10
# Most halvings of the step size before giving up on a step.
MAX_HALVINGS = 20


def is_adversarial(model_fn, points, y, draws=1):
  """Decision oracle: True where most of `draws` draws misclassify a point.

  Misclassified means a margin z_y − max_{j≠y} z_j below 0; each point costs
  `draws` queries.
  """
  _, fooled = query_scores.draw_scores(model_fn, points, y, draws)
  return query_scores.mostly(fooled)


def clip_to(x, points, radius, value_range):
  """Clips `points` to the L∞ ball of per-image `radius` around x."""
  radius = radius.reshape((-1,) + (1,) * (x.ndim - 1))
  clipped = np.clip(points, x - radius, x + radius)
  return np.clip(clipped, *value_range).astype(np.float32)


def linf(a, b):
  """Per-image L∞ distance."""
  return np.abs(a - b).reshape(a.shape[0], -1).max(axis=1)


def initialize(model_fn, x, y, value_range, rng, draws=1):
  """Finds misclassified starting points: uniform noise, then a blend search.

  Every decision is the majority of `draws` draws.

  Returns:
    `(start, found)`: float32 starts (x where none was found) and a bool mask.
  """
  start, found = x.copy(), np.zeros(len(x), bool)
  for _ in range(INIT_TRIES):
    todo = np.flatnonzero(~found)
    if todo.size == 0:
      break
    noise = rng.uniform(*value_range, size=x[todo].shape).astype(np.float32)
    hit = is_adversarial(model_fn, noise, y[todo], draws)
    start[todo[hit]], found[todo[hit]] = noise[hit], True
  idx = np.flatnonzero(found)
  low, high = np.zeros(idx.size), np.ones(idx.size)
  for _ in range(INIT_SEARCH_STEPS):
    mid = (low + high) / 2
    weight = mid.reshape((-1,) + (1,) * (x.ndim - 1))
    blend = ((1 - weight) * x[idx] + weight * start[idx]).astype(np.float32)
    hit = is_adversarial(model_fn, blend, y[idx], draws)
    high, low = np.where(hit, mid, high), np.where(hit, low, mid)
  weight = high.reshape((-1,) + (1,) * (x.ndim - 1))
  start[idx] = ((1 - weight) * x[idx] + weight * start[idx]).astype(np.float32)
  return start, found


def boundary_search(model_fn, x, points, y, theta, value_range, draws=1):
  """L∞ binary search over the clip radius between x and adversarial `points`.

  Finds per image the smallest radius r (up to tolerance min(θ·d∞, θ)) such
  that clip(points, x ± r) is still misclassified (on most of `draws` draws).

  Returns:
    `(boundary, distance)`: the adversarial boundary points and their L∞
    distances to x.
  """
  # float64: in float32, a bracket of one ulp can exceed the tolerance while
  # its midpoint rounds back onto an end, and the search never ends.
  high = linf(points, x).astype(np.float64)
  low = np.zeros_like(high)
  tolerance = np.minimum(high * theta, theta)
  while True:
    todo = np.flatnonzero((high - low) > tolerance)
    if todo.size == 0:
      break
    mid = (high[todo] + low[todo]) / 2
    hit = is_adversarial(
        model_fn, clip_to(x[todo], points[todo], mid, value_range), y[todo],
        draws)
    high[todo] = np.where(hit, mid, high[todo])
    low[todo] = np.where(hit, low[todo], mid)
  boundary = clip_to(x, points, high, value_range)
  return boundary, linf(boundary, x)


def estimate_direction(model_fn, boundary, y, evals, delta, value_range, rng):
  """Monte-Carlo estimate of the boundary normal (HopSkipJump eq. (9)).

  Draws `evals` uniform directions u per image (unit L2 norm), queries
  boundary + δ·u, and averages u weighted by the baseline-corrected decision
  φ − mean(φ) with φ = ±1 (or ±mean(u) when every φ agrees). Directions are
  drawn in chunks so memory stays bounded.

  Returns:
    float32 array of the shape of `boundary`.
  """
  n, shape = boundary.shape[0], boundary.shape[1:]
  chunk = max(1, query_scores.QUERY_CHUNK // n)
  sum_u = np.zeros_like(boundary)
  sum_phi_u = np.zeros_like(boundary)
  sum_phi = np.zeros(n)
  delta = delta.reshape((-1,) + (1,) * len(shape))
  for start in range(0, evals, chunk):
    count = min(chunk, evals - start)
    u = rng.uniform(-1.0, 1.0, size=(n, count) + shape).astype(np.float32)
    u /= np.sqrt(np.sum(u**2, axis=tuple(range(2, u.ndim)), keepdims=True))
    moved = np.clip(boundary[:, None] + delta[:, None] * u, *value_range)
    u = (moved - boundary[:, None]) / delta[:, None]
    phi = 2.0 * is_adversarial(model_fn, moved.reshape((n * count,) + shape),
                               np.repeat(y, count)).reshape(n, count) - 1.0
    phi_u = phi.reshape((n, count) + (1,) * len(shape)) * u
    sum_u += u.sum(axis=1)
    sum_phi_u += phi_u.sum(axis=1)
    sum_phi += phi.sum(axis=1)
  mean_phi = (sum_phi / evals).reshape((-1,) + (1,) * len(shape))
  centred = sum_phi_u / evals - mean_phi * sum_u / evals
  agreed = np.where(mean_phi > 0, sum_u, -sum_u) / evals
  return np.where(np.abs(mean_phi) == 1.0, agreed, centred).astype(np.float32)


def step_search(model_fn, boundary, direction, y, size, value_range, draws=1):
  """Geometric step-size search: halve the step until still misclassified.

  Misclassified means on most of `draws` draws.

  Returns:
    The new points (the boundary point where no step size worked).
  """
  points = boundary.copy()
  todo = np.arange(len(boundary))
  size = size.copy()
  for _ in range(MAX_HALVINGS):
    scale = size[todo].reshape((-1,) + (1,) * (boundary.ndim - 1))
    candidate = np.clip(boundary[todo] + scale * direction[todo],
                        *value_range).astype(np.float32)
    hit = is_adversarial(model_fn, candidate, y[todo], draws)
    points[todo[hit]] = candidate[hit]
    todo = todo[~hit]
    if todo.size == 0:
      break
    size[todo] /= 2
  return points


def hop_skip_jump(model_fn, x, y, epsilon=8 / 255, iterations=64,
                  initial_evals=100, max_evals=10000, gamma=1.0,
                  value_range=(0.0, 1.0), seed=None, query_draws=1):
  """HopSkipJumpAttack (L∞, untargeted), budgeted to an epsilon ball.

  Per image: find a misclassified start (uniform noise, then a blend search
  toward x); then for each iteration t = 1..`iterations`: binary-search the
  boundary, estimate its normal from min(initial_evals·√t, max_evals)
  decisions at radius δ (0.1·range at t = 1, then d·θ·dist with
  θ = gamma / d²), step along its sign with step size dist/√t halved until
  misclassified. Defaults follow foolbox, which the paper used. An image stops
  once its boundary point is within `epsilon` and is returned pushed out to
  distance `epsilon` (`push_out`); images already misclassified are returned
  unchanged; images with no misclassified start are returned unchanged; the
  others are returned projected onto the epsilon ball.

  Queries per image: each decision of the start, binary and step searches
  costs `query_draws`, each direction of a normal estimate 1, and the
  choice of the returned point 2 · `query_draws`.

  Args:
    model_fn: float32 images -> logits; only its decisions (whether the
      margin z_y − max_{j≠y} z_j is negative) are used.
    x: images `(batch, ...)` inside `value_range`.
    y: int labels `(batch,)`; None uses the model's predictions.
    epsilon: L∞ budget of the returned points.
    iterations: most HopSkipJump iterations.
    initial_evals: decisions per gradient estimate at the first iteration.
    max_evals: cap on decisions per gradient estimate.
    gamma: binary-search tolerance parameter γ.
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the random draws; None draws one.
    query_draws: M, draws of a random model whose majority is one decision;
      1 for a deterministic model.

  Returns:
    float32 tf.Tensor of the shape of `x`, inside the ball and `value_range`.

  Raises:
    ValueError: for a bad argument (named in the message).
    TypeError: for integer images.

  Example:
    >>> x_adv = hop_skip_jump(model, images, labels, iterations=20, seed=0)
  """
  x, y, value_range = square.prepare(model_fn, x, y, epsilon, value_range,
                                     seed)
  common.check_number("iterations", iterations, minimum=1, integer=True)
  common.check_number("initial_evals", initial_evals, minimum=1, integer=True)
  common.check_number("max_evals", max_evals, minimum=1, integer=True)
  common.check_number("gamma", gamma, minimum=0, strict=True)
  query_scores.check_query_draws(query_draws)
  if epsilon == 0:
    return tf.constant(x)
  rng = square.attack_rng(seed)
  best = x.copy()
  todo = np.flatnonzero(~is_adversarial(model_fn, x, y, query_draws))
  if todo.size:
    start, found = initialize(model_fn, x[todo], y[todo], value_range, rng,
                              query_draws)
    todo = todo[found]
  if todo.size:
    settings = (iterations, initial_evals, max_evals, gamma, value_range,
                query_draws)
    boundary, source = approach(model_fn, x[todo], start[found], y[todo],
                                epsilon, settings, rng)
    best[todo] = push_out(model_fn, x[todo], boundary, source, y[todo],
                          epsilon, value_range, query_draws)
  return tf.convert_to_tensor(common.project(best, x, epsilon, value_range))


def push_out(model_fn, x, boundary, source, y, epsilon, value_range, draws):
  """The returned points: out at radius epsilon where that stays adversarial.

  A boundary point b within `epsilon` of x lies between x and the adversarial
  `source` its binary search started from (b = clip(source, x ± d)). The
  pushed point goes on along that path to radius `epsilon`:
  clip(x + s·(source − x), x ± epsilon) with s = max(1, epsilon / d∞(source,
  x)), so it lies at L∞ distance `epsilon` (unless the value range cuts it).
  It is returned when at least as many of `draws` fresh draws misclassify
  it as misclassify b; otherwise b. Images whose b lies beyond `epsilon`
  get b clipped to the ball.

  Args:
    model_fn: images -> logits.
    x: clean images `(n, ...)`.
    boundary: their last boundary points.
    source: the adversarial points those boundary searches started from.
    y: labels `(n,)`.
    epsilon: L∞ budget.
    value_range: `(low, high)`.
    draws: M, draws per image for each of the two points.

  Returns:
    float32 points `(n, ...)`.
  """
  radius = np.full(len(x), epsilon)
  result = clip_to(x, boundary, radius, value_range)
  inside = np.flatnonzero(linf(boundary, x) <= epsilon)
  if inside.size == 0:
    return result
  reach = np.maximum(1.0, epsilon / np.maximum(linf(source[inside], x[inside]),
                                               1e-12))
  scale = reach.reshape((-1,) + (1,) * (x.ndim - 1))
  far = x[inside] + scale * (source[inside] - x[inside])
  pushed = clip_to(x[inside], far, radius[inside], value_range)
  _, pushed_fooled = query_scores.draw_scores(model_fn, pushed, y[inside],
                                              draws)
  _, boundary_fooled = query_scores.draw_scores(model_fn, result[inside],
                                                y[inside], draws)
  better = pushed_fooled >= boundary_fooled
  result[inside[better]] = pushed[better]
  return result


def approach(model_fn, x, start, y, epsilon, settings, rng):
  """HopSkipJump iterations from misclassified `start` points toward x.

  Args:
    model_fn: images -> logits.
    x: clean images `(n, ...)`, n >= 1.
    start: misclassified starting points, same shape.
    y: labels `(n,)`.
    epsilon: an image stops once its boundary point is this close.
    settings: `(iterations, initial_evals, max_evals, gamma, value_range,
      draws)`.
    rng: NumPy generator.

  Returns:
    `(boundary, source)`: the last boundary point of each image
    (misclassified) and the adversarial point its binary search started
    from, float32.
  """
  iterations, initial_evals, max_evals, gamma, value_range, draws = settings
  dims = int(np.prod(x.shape[1:]))
  theta = gamma / dims**2
  boundary, distance = boundary_search(model_fn, x, start, y, theta,
                                       value_range, draws)
  best, source = boundary.copy(), start.copy()
  todo = np.arange(len(x))
  for t in range(1, iterations + 1):
    keep = distance > epsilon
    todo, boundary, distance = todo[keep], boundary[keep], distance[keep]
    if todo.size == 0:
      break
    delta = (np.full(todo.size, 0.1 * (value_range[1] - value_range[0]))
             if t == 1 else dims * theta * distance)
    evals = int(min(initial_evals * np.sqrt(t), max_evals))
    direction = np.sign(estimate_direction(model_fn, boundary, y[todo], evals,
                                           delta, value_range, rng))
    moved = step_search(model_fn, boundary, direction, y[todo],
                        distance / np.sqrt(t), value_range, draws)
    boundary, distance = boundary_search(model_fn, x[todo], moved, y[todo],
                                         theta, value_range, draws)
    best[todo], source[todo] = boundary, moved
  return best, source
