"""Auto-PGD, L∞ (Croce & Hein, ICML 2020), with EOT and restarts.

Written from the paper's description (its Algorithm 1 and Sec. 3):

- step size η starts at 2ε; x¹ = Π[x⁰ + η sign(∇f(x⁰))];
- later steps add momentum α = 0.75:
  z = Π[xᵏ + η sign(∇f(xᵏ))],
  xᵏ⁺¹ = Π[xᵏ + α (z − xᵏ) + (1 − α)(xᵏ − xᵏ⁻¹)];
- checkpoints wⱼ = ⌈pⱼ N⌉ with p₀ = 0, p₁ = 0.22,
  pⱼ₊₁ = pⱼ + max(pⱼ − pⱼ₋₁ − 0.03, 0.06);
- at a checkpoint, per example, η is halved and the iterate restarts from
  the best point so far when (1) fewer than ρ = 0.75 of the steps since the
  last checkpoint increased the loss, or (2) η was not reduced at the last
  checkpoint and the best loss has not grown since.

Losses: `"ce"`, `"dlr"` and `"dlr_targeted"` (APGD-T, which runs once per
target class: the highest-scoring classes other than y, at most 9). Per example
the result is the best point over all runs: misclassified (in the largest
fraction of EOT draws) first, then the highest loss.
"""

import math

import tensorflow as tf

from attacks import common
from attacks import estimators
from attacks import pgd as pgd_lib

__all__ = ["apgd", "checkpoints"]

LOSSES = ("ce", "dlr", "dlr_targeted")
MOMENTUM = 0.75
RHO = 0.75
MAX_TARGETS = 9


def checkpoints(steps):
  """The iterations wⱼ = ⌈pⱼ · steps⌉ at which APGD may halve its step.

  Args:
    steps: the iteration budget N.

  Returns:
    A sorted list of distinct checkpoints in (0, steps].
  """
  fractions = [0.0, 0.22]
  while fractions[-1] < 1.0:
    fractions.append(fractions[-1] +
                     max(fractions[-1] - fractions[-2] - 0.03, 0.06))
  # Rounding first keeps float error from pushing e.g. 0.41 * 100 up to 42.
  points = sorted({math.ceil(round(p * steps, 9)) for p in fractions[1:] if p <= 1.0})
  return [w for w in points if 0 < w <= steps]


def apgd_run(model_fn, x, y, y_target, x_start, loss_fn, epsilon, steps,
             eot_samples, chunk_size, value_range):
  """One APGD run from `x_start`.

  Returns:
    `(best_x, best_wrong, best_loss)`: per example the best iterate
    (misclassified first, then loss) with its draw-misclassification rate and
    loss.
  """
  marks = set(checkpoints(steps))
  project = lambda v: common.project(v, x, epsilon, value_range)
  evaluate = lambda v: pgd_lib.loss_gradient(model_fn, v, y, loss_fn, eot_samples,
                                             chunk_size, y_target)
  eta = tf.fill(tf.shape(y), 2.0 * epsilon)
  x_prev = x_cur = x_start
  loss, grad, wrong = evaluate(x_cur)
  best_x, best_wrong, best_loss = x_cur, wrong, loss
  # Highest loss reached (f_max), its point and its gradient: the restart point.
  max_x, max_loss, max_grad = x_cur, loss, grad
  increases = tf.zeros_like(loss)
  last_mark, reduced_at_last, max_at_last = 0, tf.zeros_like(loss, tf.bool), max_loss
  for k in range(steps):
    eta_image = tf.reshape(eta, [-1] + [1] * (len(x.shape) - 1))
    z = project(x_cur + eta_image * tf.sign(grad))
    if k == 0:
      x_next = z
    else:
      x_next = project(x_cur + MOMENTUM * (z - x_cur) + (1 - MOMENTUM) * (x_cur - x_prev))
    new_loss, new_grad, new_wrong = evaluate(x_next)
    increases += tf.cast(new_loss > loss, tf.float32)
    improved = pgd_lib.better(new_wrong, new_loss, best_wrong, best_loss)
    best_x = pgd_lib.keep_best(improved, x_next, best_x)
    best_wrong = tf.where(improved, new_wrong, best_wrong)
    best_loss = tf.where(improved, new_loss, best_loss)
    higher = new_loss > max_loss
    max_x = pgd_lib.keep_best(higher, x_next, max_x)
    max_grad = pgd_lib.keep_best(higher, new_grad, max_grad)
    max_loss = tf.where(higher, new_loss, max_loss)
    x_prev, x_cur, loss, grad = x_cur, x_next, new_loss, new_grad
    if k + 1 in marks:
      stalled = increases < RHO * (k + 1 - last_mark)
      flat = tf.logical_and(tf.logical_not(reduced_at_last),
                            tf.equal(max_at_last, max_loss))
      halve = tf.logical_or(stalled, flat)
      eta = tf.where(halve, eta / 2.0, eta)
      x_cur = pgd_lib.keep_best(halve, max_x, x_cur)
      x_prev = pgd_lib.keep_best(halve, max_x, x_prev)
      grad = pgd_lib.keep_best(halve, max_grad, grad)
      loss = tf.where(halve, max_loss, loss)
      increases = tf.zeros_like(increases)
      last_mark, reduced_at_last, max_at_last = k + 1, halve, max_loss
  return best_x, best_wrong, best_loss


def target_classes(model_fn, x, y, count):
  """Per example, the `count` highest-scoring classes other than `y`."""
  logits = model_fn(x)
  logits -= 1e9 * tf.one_hot(y, tf.shape(logits)[-1])
  return tf.math.top_k(logits, k=count).indices


def apgd(model_fn,
         x,
         y,
         epsilon=8 / 255,
         steps=100,
         restarts=1,
         loss="ce",
         eot_samples=1,
         chunk_size=None,
         value_range=(0.0, 1.0),
         seed=None):
  """APGD-CE / APGD-DLR / APGD-DLR-targeted in L∞ (Croce & Hein, 2020).

  Args:
    model_fn: images -> logits, differentiable with `tf.GradientTape`.
    x: float images in `value_range`, shape `(batch, ...)`.
    y: int labels `(batch,)`; None uses the model's predictions.
    epsilon: L∞ budget.
    steps: iterations N per run (checkpoints scale with N).
    restarts: random starts per run (per target class for `dlr_targeted`).
    loss: `"ce"`, `"dlr"` or `"dlr_targeted"` (needs >= 4 classes; tries the
      min(9, classes − 1) highest-scoring wrong classes as targets).
    eot_samples: random draws K averaged per gradient (EOT).
    chunk_size: most images per `model_fn` call (bounds EOT memory).
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the random starts and of `model_fn`'s draws; the
      same seed repeats the attack.

  Returns:
    Adversarial images, float32, shape of `x`, inside the ball and range.

  Raises:
    ValueError: for arguments out of their domain, naming the argument.
    TypeError: for integer images.

  Example:
    >>> x_adv = apgd(model, x, y, loss="dlr_targeted", steps=100, seed=0)
  """
  value_range = common.validate_attack_args(epsilon, None, steps, restarts,
                                            value_range, eot_samples)
  pgd_lib.check_loss(loss, LOSSES)
  x, y = common.check_images_labels(x, y, value_range)
  if epsilon == 0:
    return x
  if y is None:
    y = pgd_lib.prediction_labels(model_fn, x)
  targets = [None]
  loss_fn = pgd_lib.LOSSES[loss] if loss in pgd_lib.LOSSES else common.dlr_loss
  if loss == "dlr_targeted":
    classes = int(model_fn(x[:1]).shape[-1])
    if classes < 4:
      raise ValueError("`loss='dlr_targeted'` needs a model with >= 4 classes. "
                       f"Received: loss={loss!r}")
    ranked = target_classes(model_fn, x, y, min(MAX_TARGETS, classes - 1))
    targets = [ranked[:, i] for i in range(ranked.shape[1])]
  best_x = x
  best_wrong = tf.fill(tf.shape(y), -1.0)
  best_loss = tf.fill(tf.shape(y), -float("inf"))
  run_seeds = iter(common.seeds(seed, restarts * len(targets)))
  for y_target in targets:
    for _ in range(restarts):
      run_seed = next(run_seeds)
      estimators.reseed(model_fn, run_seed)
      start = common.random_init(x, epsilon, value_range, run_seed)
      run_x, run_wrong, run_loss = apgd_run(model_fn, x, y, y_target, start, loss_fn,
                                            epsilon, steps, eot_samples, chunk_size,
                                            value_range)
      if y_target is not None:  # Losses of different targets do not compare.
        run_loss = tf.zeros_like(run_loss)
      improved = pgd_lib.better(run_wrong, run_loss, best_wrong, best_loss)
      best_x = pgd_lib.keep_best(improved, run_x, best_x)
      best_wrong = tf.where(improved, run_wrong, best_wrong)
      best_loss = tf.where(improved, run_loss, best_loss)
  return best_x
