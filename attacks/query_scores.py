"""Queries of the score-based attacks, and their scores on a random model.

The defended model f_a(g(x)) is random: every query draws a fresh random start
of g, so one query's margin (or label) is one sample of a random variable. A
query attack that trusts one draw stops on a lucky misclassification and
compares later candidates with a lucky-low score (docs/EVALUATION.md,
randomized models). The helpers here make the query attacks
randomness-aware with `query_draws` = M:

- a candidate's score is its margin z_y − max_{j≠y} z_j averaged over M draws
  (`draw_scores`; the M copies go through the model in one tiled batch, so
  each copy gets its own draw);
- an accepted candidate is re-scored at once on M fresh draws, and that fresh
  mean is kept as the incumbent's score: the draws that selected a candidate
  are biased low by the selection, fresh ones are not (`accept`);
- an image counts as broken only when most of the candidate's M draws and
  most of M fresh draws misclassify it.

Query accounting: scoring one point over M draws costs M queries against the
query budget (a query is one image through the model, whatever it is for).
With M = 1 (a deterministic model) a query is its own confirmation: no fresh
draws are spent and the attacks behave as their single-draw versions.
"""

import numpy as np
import tensorflow as tf

from attacks import common

__all__ = [
    "QUERY_CHUNK", "accept", "check_query_draws", "confirm", "draw_margins",
    "draw_scores", "margins", "mostly", "query_logits"
]

# Most images per `model_fn` call: bounds memory when a query batch is large
# (SPSA, HopSkipJump gradient estimation, GenAttack populations, M draws).
QUERY_CHUNK = 2048


def check_query_draws(query_draws):
  """Raises ValueError unless `query_draws` is an integer >= 1."""
  return common.check_number("query_draws", query_draws, minimum=1,
                             integer=True)


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


def draw_margins(model_fn, x, y, draws):
  """Margins of each image on `draws` draws of the model (`draws · n` queries).

  Args:
    model_fn: images -> logits.
    x: float32 images `(n, ...)`.
    y: int labels `(n,)`.
    draws: M, draws per image.

  Returns:
    float32 array `(draws, n)`.
  """
  n = x.shape[0]
  if n == 0:
    return np.zeros((draws, 0), np.float32)
  tiled = np.concatenate([x] * draws, 0) if draws > 1 else x
  logits = query_logits(model_fn, tiled)
  return margins(logits, np.tile(y, draws)).reshape(draws, n)


def draw_scores(model_fn, x, y, draws):
  """Mean margin over `draws` draws and the fraction of draws misclassified.

  Args:
    model_fn: images -> logits.
    x: float32 images `(n, ...)`.
    y: int labels `(n,)`.
    draws: M, draws per image (M queries each).

  Returns:
    `(score, fooled)`: float arrays `(n,)`, the mean margin (lower is better
    for the attacker) and the fraction of the M draws with a negative margin.
  """
  per_draw = draw_margins(model_fn, x, y, draws)
  return per_draw.mean(axis=0), np.mean(per_draw < 0, axis=0)


def mostly(fooled):
  """True where a fraction of draws misclassified is a strict majority."""
  return np.asarray(fooled) > 0.5


def confirm(model_fn, points, y, fooled, draws):
  """Which points are broken: misclassified on most draws, then on fresh ones.

  A point whose own `draws` draws mostly misclassify it is scored again on
  `draws` fresh draws (with `draws` > 1) and counts as broken only when most
  of those misclassify it too; with `draws` = 1 its one draw decides.

  Args:
    model_fn: images -> logits.
    points: float32 points `(n, ...)`.
    y: their labels `(n,)`.
    fooled: their fractions of draws misclassified `(n,)`.
    draws: M.

  Returns:
    `(done, spent)`: bool array `(n,)` and int array `(n,)` of the queries
    spent on fresh draws (0 or M).
  """
  done = mostly(fooled)
  spent = np.zeros(len(points), np.int64)
  if draws == 1:
    return done, spent
  check = np.flatnonzero(done)
  _, fresh_fooled = draw_scores(model_fn, points[check], y[check], draws)
  done[check] = mostly(fresh_fooled)
  spent[check] = draws
  return done, spent


def accept(model_fn, x_best, best, index, candidates, score, fooled, y,
           draws):
  """Keeps the candidates that beat their incumbent; re-scores them afresh.

  Candidate k (of image `index[k]`) replaces the incumbent when its score is
  lower than the incumbent's stored score. With `draws` > 1 every accepted
  candidate is scored again on `draws` fresh draws and that fresh mean margin
  is stored, so a lucky-low selection score never stays the bar later
  candidates must beat; the image is done when most of the candidate's own
  draws and most of the fresh draws misclassify it. With `draws` = 1 the
  candidate's score is stored and a negative margin means done.

  Args:
    model_fn: images -> logits.
    x_best: incumbents of all images `(N, ...)`, updated in place.
    best: their stored scores `(N,)`, updated in place (inf: no incumbent).
    index: int array `(n,)`, the images the candidates belong to.
    candidates: float32 points `(n, ...)`.
    score: their mean margins over `draws` draws `(n,)`.
    fooled: their fractions of draws misclassified `(n,)`.
    y: labels of all images `(N,)`.
    draws: M.

  Returns:
    `(done, spent)`: bool array `(n,)` of the candidates' images now broken,
    and int array `(n,)` of queries spent on re-scoring (0 or M).
  """
  better = score < best[index]
  x_best[index[better]] = candidates[better]
  done = better & mostly(fooled)
  spent = np.zeros(len(index), np.int64)
  if draws == 1:
    best[index[better]] = score[better]
    return done, spent
  fresh, fresh_fooled = draw_scores(model_fn, candidates[better],
                                    y[index[better]], draws)
  best[index[better]] = fresh
  done[better] &= mostly(fresh_fooled)
  spent[better] = draws
  return done, spent
