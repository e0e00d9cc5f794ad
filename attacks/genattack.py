"""GenAttack, L∞ (Alzantot et al., GECCO 2019), untargeted, batched over images.

The genetic score-based attack of the paper's Table 2 (Sec. 4.2). Each image
keeps a population of points of its epsilon ball; fitness is the margin
max_{j≠y} z_j − z_y (higher is better for the attacker). Each generation keeps
the elite, draws parents by softmax(fitness / temperature), mixes them by a
fitness-weighted uniform crossover and mutates pixels with adaptive rate and
range (both shrink while the best fitness stalls), all projected back onto the
ball and the value range. An image stops once its elite is misclassified.

With `query_draws` = M > 1 it knows the model is random: a member's fitness
is its margin averaged over M draws, the elite (the incumbent) is scored again
on fresh draws in every generation it survives, and an image stops only when
most of its elite's M draws and most of M fresh draws misclassify it
(`attacks.query_scores`).
"""

import numpy as np
import tensorflow as tf

from attacks import common
from attacks import query_scores
from attacks import square

# Alzantot et al.'s adaptive scaling: rate = max(min_rate, 0.5 · 0.9^plateaus),
# range = max(min_range, 0.4 · 0.9^plateaus).
RATE_START, RANGE_START, DECAY = 0.5, 0.4, 0.9


def fitness(model_fn, members, y, draws=1):
  """Margin fitness of members `(n, pop, ...)` over `draws` draws each.

  Returns:
    `(scores, fooled)`: arrays `(n, pop)`, the fitness max_{j≠y} z_j − z_y
    averaged over the draws and the fraction of draws misclassified.
  """
  n, population = members.shape[:2]
  flat = members.reshape((n * population,) + members.shape[2:])
  margin, fooled = query_scores.draw_scores(model_fn, flat,
                                            np.repeat(y, population), draws)
  return -margin.reshape(n, population), fooled.reshape(n, population)


def select_parents(scores, temperature, count, rng):
  """Draws `count` parent indices per image with probability softmax(s / T).

  Returns:
    `(indices, probs)`: int array `(n, count)` and the probabilities `(n, pop)`.
  """
  logits = scores / temperature
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  cumulative = np.cumsum(probs, axis=1)
  draws = rng.uniform(size=(scores.shape[0], count, 1))
  indices = np.minimum((draws > cumulative[:, None, :]).sum(axis=2),
                       scores.shape[1] - 1)
  return indices, probs


def next_generation(x, members, scores, epsilon, rate, spread, temperature,
                    value_range, rng):
  """Elite plus crossed-over, mutated children, projected onto the ball.

  Args:
    x: clean images `(n, ...)`.
    members: population `(n, pop, ...)`.
    scores: fitness `(n, pop)`.
    epsilon: L∞ budget.
    rate: per-image mutation probability `(n,)`.
    spread: per-image mutation range as a fraction of epsilon `(n,)`.
    temperature: sampling temperature.
    value_range: `(low, high)`.
    rng: NumPy generator.

  Returns:
    The new population, float32, same shape as `members`.
  """
  n, population = members.shape[:2]
  extra = (1,) * (members.ndim - 2)
  rows = np.arange(n)[:, None]
  elite = members[np.arange(n), scores.argmax(axis=1)]
  children = population - 1
  first, probs = select_parents(scores, temperature, children, rng)
  second, _ = select_parents(scores, temperature, children, rng)
  p_first, p_second = probs[rows, first], probs[rows, second]
  share = (p_first / (p_first + p_second)).reshape((n, children) + extra)
  pick = rng.uniform(size=(n, children) + members.shape[2:]) < share
  child = np.where(pick, members[rows, first], members[rows, second])
  mutate = rng.uniform(size=child.shape) < rate.reshape((n, 1) + extra)
  bound = (spread * epsilon).reshape((n, 1) + extra)
  noise = rng.uniform(-1.0, 1.0, size=child.shape) * bound
  child = child + mutate * noise
  centre = x[:, None]
  child = np.clip(np.clip(child, centre - epsilon, centre + epsilon), *value_range)
  return np.concatenate([elite[:, None], child], axis=1).astype(np.float32)


def gen_attack(model_fn, x, y, epsilon=8 / 255, population=6, generations=1000,
               mutation_rate=0.1, mutation_range=0.15, temperature=0.1,
               value_range=(0.0, 1.0), seed=None, query_draws=1):
  """GenAttack (L∞, untargeted): a genetic search of the epsilon ball.

  The population starts uniformly inside the ball; each generation costs
  `population · query_draws` queries per image still to break, plus
  `query_draws` to confirm a mostly misclassified elite on fresh draws when
  `query_draws` > 1, so an image uses at most `population · generations`
  queries with `query_draws` = 1 and `(population + 1) · query_draws ·
  generations` otherwise. Mutation probability and range start at 0.5 and
  0.4·epsilon and decay by 0.9 per generation without improvement of the
  best fitness, down to `mutation_rate` and `mutation_range`·epsilon
  (Alzantot et al.'s adaptive parameter scaling).
  On a randomized model every query is a fresh draw: the elite is scored
  again in each generation, so its score is never a stale lucky one.

  Args:
    model_fn: float32 images -> logits; only its outputs are used.
    x: images `(batch, ...)` inside `value_range`.
    y: int labels `(batch,)`; None uses the model's predictions.
    epsilon: L∞ budget.
    population: members per image, >= 2.
    generations: most generations.
    mutation_rate: lowest per-pixel mutation probability, in (0, 1].
    mutation_range: lowest mutation range as a fraction of epsilon, > 0.
    temperature: parent-sampling temperature of softmax(fitness / T).
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the search; None draws one.
    query_draws: M, draws of a random model averaged per fitness; 1 for a
      deterministic model.

  Returns:
    float32 tf.Tensor of the shape of `x`, inside the ball and `value_range`.

  Raises:
    ValueError: for a bad argument (named in the message).
    TypeError: for integer images.

  Example:
    >>> x_adv = gen_attack(model, images, labels, generations=200, seed=0)
  """
  x, y, value_range = square.prepare(model_fn, x, y, epsilon, value_range,
                                     seed)
  common.check_number("population", population, minimum=2, integer=True)
  common.check_number("generations", generations, minimum=1, integer=True)
  common.check_number("mutation_rate", mutation_rate, minimum=0, strict=True)
  if mutation_rate > 1:
    raise ValueError("`mutation_rate` must be in (0, 1]. "
                     f"Received: mutation_rate={mutation_rate!r}")
  common.check_number("mutation_range", mutation_range, minimum=0, strict=True)
  common.check_number("temperature", temperature, minimum=0, strict=True)
  query_scores.check_query_draws(query_draws)
  if epsilon == 0:
    return tf.constant(x)
  rng = square.attack_rng(seed)
  n = x.shape[0]
  members = rng.uniform(-epsilon, epsilon,
                        size=(n, population) + x.shape[1:]) + x[:, None]
  members = np.clip(members, *value_range).astype(np.float32)
  scores = np.full((n, population), -np.inf, np.float32)
  best, plateaus = np.full(n, -np.inf), np.zeros(n)
  result = members[:, 0].copy()
  active = np.arange(n)
  for _ in range(generations):
    scores[active], fooled = fitness(model_fn, members[active], y[active],
                                     query_draws)
    leader = scores[active].argmax(axis=1)
    top = scores[active].max(axis=1)
    result[active] = members[active, leader]
    plateaus[active] = np.where(top > best[active], plateaus[active],
                                plateaus[active] + 1)
    best[active] = np.maximum(best[active], top)
    done, _ = query_scores.confirm(model_fn, result[active], y[active],
                                   fooled[np.arange(active.size), leader],
                                   query_draws)
    active = active[~done]
    if active.size == 0:
      break
    rate = np.maximum(mutation_rate, RATE_START * DECAY**plateaus[active])
    spread = np.maximum(mutation_range, RANGE_START * DECAY**plateaus[active])
    members[active] = next_generation(x[active], members[active],
                                      scores[active], epsilon, rate, spread,
                                      temperature, value_range, rng)
  return tf.constant(result)
