"""Auto-PGD, L∞ (Croce & Hein, ICML 2020), with EOT and restarts.

Follows the reference implementation (AutoAttack's `autopgd_base.py`) where
it makes the paper's Algorithm 1 concrete:

- step size η starts at 2ε; x¹ = Π[x⁰ + η sign(∇f(x⁰))];
- later steps add momentum α = 0.75:
  z = Π[xᵏ + η sign(∇f(xᵏ))],
  xᵏ⁺¹ = Π[xᵏ + α (z − xᵏ) + (1 − α)(xᵏ − xᵏ⁻¹)];
- checkpoints at integer lengths: the first after max(⌊0.22 N⌋, 1) steps,
  each later one `max(⌊0.03 N⌋, 1)` shorter, never under max(⌊0.06 N⌋, 1)
  (N = 20: 4, 7, 9, 10, 11, ...; N = 100: 22, 41, 57, 70, 80, 87, 93, 99);
- at a checkpoint, per example, η is halved and the iterate restarts from
  the highest-loss point (with its gradient) when (1) at most ρ = 0.75 of the
  steps since the last checkpoint increased the loss over the previous
  iterate's, or (2) η was not halved at the last checkpoint and the highest
  loss has not grown since; condition (2) is off at the first checkpoint;
- after a restart the momentum term is (best point − the iterate before the
  abandoned one) and the loss trace keeps comparing consecutive iterates;
- the random start is x + ε u / ‖u‖∞, u uniform in [−1, 1]ᵈ per example
  (one coordinate at the ball's surface), clipped to the value range;
- restarts and target classes run only on the examples not yet misclassified
  in every draw.

Losses: `"ce"`, `"dlr"` (untargeted, >= 3 classes) and `"dlr_targeted"`
(APGD-T, >= 4 classes, one run per target: the highest-scoring classes other
than y, at most 9).

Where a random model makes the reference's choices weak, this code departs
from it on purpose:

- the step control reads the loss averaged over the EOT draws (the reference
  reads the loss of the last draw only);
- per example the result is the best point over all iterates and runs:
  misclassified in the largest fraction of EOT draws first, then the highest
  loss (the reference keeps the last point misclassified in one draw);
- target classes are ranked once by the logits averaged over `eot_samples`
  draws of the clean images (the reference re-ranks them with one fresh draw
  before each target, so a random model can repeat one target and skip
  another); on a deterministic model both give the same targets;
- the first increase is counted against the start's loss, as in the paper
  (the reference compares it with an unwritten zero entry of its trace).
"""

import tensorflow as tf

from attacks import common
from attacks import model_fns
from attacks import pgd as pgd_lib

__all__ = ["apgd", "checkpoints", "halve_step", "random_start", "target_classes"]

LOSSES = ("ce", "dlr", "dlr_targeted")
MIN_CLASSES = {"ce": 2, "dlr": 3, "dlr_targeted": 4}
MOMENTUM = 0.75
RHO = 0.75
MAX_TARGETS = 9


def checkpoints(steps):
  """The iterations at which APGD may halve its step, as the reference counts them.

  The first checkpoint comes after `max(int(0.22 * steps), 1)` iterations;
  each later interval is `max(int(0.03 * steps), 1)` shorter than the one
  before, but never shorter than `max(int(0.06 * steps), 1)`.

  Args:
    steps: the iteration budget N.

  Returns:
    The sorted checkpoints in (0, steps].
  """
  length = max(int(0.22 * steps), 1)
  shortest = max(int(0.06 * steps), 1)
  decrement = max(int(0.03 * steps), 1)
  marks, mark = [], length
  while mark <= steps:
    marks.append(mark)
    length = max(length - decrement, shortest)
    mark += length
  return marks


def halve_step(increases, length, reduced_at_last, best_at_last, best_loss):
  """Per example, whether APGD halves its step at a checkpoint.

  Args:
    increases: `(batch,)` count of steps since the last checkpoint whose loss
      exceeded the previous iterate's.
    length: steps since the last checkpoint.
    reduced_at_last: `(batch,)` bool, the step was halved at the last
      checkpoint (True before the first one).
    best_at_last: `(batch,)` highest loss at the last checkpoint.
    best_loss: `(batch,)` highest loss now.

  Returns:
    `(batch,)` bool: condition (1), `increases <= ρ · length`, or condition
    (2), not halved last time and no higher loss since.
  """
  oscillating = increases <= RHO * length
  flat = tf.logical_and(tf.logical_not(reduced_at_last), best_at_last >= best_loss)
  return tf.logical_or(oscillating, flat)


def random_start(x, epsilon, value_range, seed=None):
  """The reference's random start: x + ε u / ‖u‖∞, u ~ U[−1, 1]ᵈ per example.

  Args:
    x: float32 images `(batch, ...)`.
    epsilon: L∞ budget.
    value_range: `(low, high)`.
    seed: integer seed, or None.

  Returns:
    Points at L∞ distance ε from x before clipping to `value_range`.
  """
  if seed is None:
    u = tf.random.uniform(tf.shape(x), -1.0, 1.0)
  else:
    u = tf.random.stateless_uniform(tf.shape(x), [seed, 0], -1.0, 1.0)
  norm = tf.reduce_max(tf.abs(u), axis=list(range(1, len(x.shape))), keepdims=True)
  return common.project(x + epsilon * u / (norm + 1e-12), x, epsilon, value_range)


def apgd_run(model_fn, x, y, y_target, x_start, loss_fn, epsilon, steps,
             eot_samples, chunk_size, value_range, expectation="loss"):
  """One APGD run from `x_start` (`expectation` as in `pgd.loss_gradient`).

  Returns:
    `(best_x, best_wrong, best_loss)`: per example the best iterate
    (misclassified first, then loss) with its draw-misclassification rate and
    loss.
  """
  marks = set(checkpoints(steps))
  project = lambda v: common.project(v, x, epsilon, value_range)
  evaluate = lambda v: pgd_lib.loss_gradient(model_fn, v, y, loss_fn, eot_samples,
                                             chunk_size, y_target,
                                             expectation=expectation)
  eta = tf.fill(tf.shape(y), 2.0 * epsilon)
  x_prev = x_cur = x_start
  loss, grad, wrong = evaluate(x_cur)
  best_x, best_wrong, best_loss = x_cur, wrong, loss
  # Highest loss reached (f_max), its point and its gradient: the restart point.
  max_x, max_loss, max_grad = x_cur, loss, grad
  increases = tf.zeros_like(loss)
  last_mark, reduced_at_last, max_at_last = 0, tf.ones_like(loss, tf.bool), max_loss
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
      halve = halve_step(increases, k + 1 - last_mark, reduced_at_last, max_at_last,
                         max_loss)
      eta = tf.where(halve, eta / 2.0, eta)
      # As the reference: x_prev and the loss trace stay those of the iterates.
      x_cur = pgd_lib.keep_best(halve, max_x, x_cur)
      grad = pgd_lib.keep_best(halve, max_grad, grad)
      increases = tf.zeros_like(increases)
      last_mark, reduced_at_last, max_at_last = k + 1, halve, max_loss
  return best_x, best_wrong, best_loss


def mean_logits(model_fn, x, eot_samples=1, chunk_size=None):
  """Logits averaged over `eot_samples` draws (the batch tiled, in chunks).

  A chunk holds at most `chunk_size` images, or the batch when None.
  """
  tiled = tf.tile(x, [eot_samples] + [1] * (len(x.shape) - 1))
  chunk = x.shape[0] if chunk_size is None else max(1, int(chunk_size))
  logits = tf.concat([model_fn(tiled[start:start + chunk])
                      for start in range(0, tiled.shape[0], chunk)], 0)
  return tf.reduce_mean(tf.reshape(logits, [eot_samples, x.shape[0], -1]), 0)


def target_classes(model_fn, x, y, count, eot_samples=1, chunk_size=None):
  """Per example, the `count` classes other than `y` with the highest mean logits.

  Args:
    model_fn: images -> logits (may be random).
    x: float32 images.
    y: int32 labels `(batch,)`.
    count: targets per example.
    eot_samples: draws averaged before ranking.
    chunk_size: most images per `model_fn` call.

  Returns:
    int32 `(batch, count)`, best-ranked first, all distinct and != y.
  """
  logits = mean_logits(model_fn, x, eot_samples, chunk_size)
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
         seed=None,
         expectation="loss"):
  """APGD-CE / APGD-DLR / APGD-DLR-targeted in L∞ (Croce & Hein, 2020).

  AutoAttack's `rand` version for a random model is APGD-CE and APGD-DLR
  (untargeted), each with `steps=100`, `restarts=1`, `eot_samples=20`.

  Args:
    model_fn: images -> logits, differentiable with `tf.GradientTape`.
    x: float images in `value_range`, shape `(batch, ...)`.
    y: int labels `(batch,)`; None uses the model's predictions.
    epsilon: L∞ budget.
    steps: iterations N per run (checkpoints scale with N).
    restarts: random starts per run (per target class for `dlr_targeted`);
      each runs only on the examples not yet misclassified in every draw.
    loss: `"ce"`, `"dlr"` (untargeted, needs >= 3 classes) or
      `"dlr_targeted"` (needs >= 4 classes; tries the min(9, classes − 1)
      highest-scoring wrong classes as targets).
    eot_samples: random draws K averaged per gradient (EOT).
    chunk_size: most images per `model_fn` call (bounds EOT memory).
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the random starts and of `model_fn`'s draws; the
      same seed repeats the attack.
    expectation: `"loss"` (step control and gradient on the mean of per-draw
      losses) or `"softmax"` (on the loss of the mean softmax over the
      `eot_samples` draws, the expected output), see `pgd.loss_gradient`.

  Returns:
    Adversarial images, float32, shape of `x`, inside the ball and range.

  Raises:
    ValueError: for arguments out of their domain, naming the argument.
    TypeError: for integer images.

  Example:
    >>> x_adv = apgd(model, x, y, loss="dlr", steps=100, eot_samples=20, seed=0)
  """
  value_range = common.validate_attack_args(epsilon, None, steps, restarts,
                                            value_range, eot_samples)
  pgd_lib.check_loss(loss, LOSSES)
  x, y = common.check_images_labels(x, y, value_range)
  if epsilon == 0:
    return x
  classes = int(model_fn(x[:1]).shape[-1])
  if classes < MIN_CLASSES[loss]:
    raise ValueError(f"`loss={loss!r}` needs a model with >= {MIN_CLASSES[loss]} "
                     f"classes; this one has {classes}. Received: loss={loss!r}")
  rank_seed, runs_seed = common.seeds(seed, 2)
  model_fns.reseed(model_fn, rank_seed)
  if y is None:
    y = pgd_lib.prediction_labels(model_fn, x)
  targets = [None]
  loss_fn = pgd_lib.LOSSES[loss] if loss in pgd_lib.LOSSES else common.dlr_loss
  if loss == "dlr_targeted":
    ranked = target_classes(model_fn, x, y, min(MAX_TARGETS, classes - 1),
                            eot_samples, chunk_size)
    targets = [ranked[:, i] for i in range(ranked.shape[1])]
  best_x = x
  best_wrong = tf.fill(tf.shape(y), -1.0)
  best_loss = tf.fill(tf.shape(y), -float("inf"))
  run_seeds = iter(common.seeds(runs_seed, restarts * len(targets)))
  for y_target in targets:
    for _ in range(restarts):
      run_seed = next(run_seeds)
      active = tf.where(best_wrong < 1.0)[:, 0]
      if active.shape[0] == 0:
        return best_x
      part = lambda t: None if t is None else tf.gather(t, active)
      model_fns.reseed(model_fn, run_seed)
      start = random_start(part(x), epsilon, value_range, run_seed)
      run_x, run_wrong, run_loss = apgd_run(model_fn, part(x), part(y), part(y_target),
                                            start, loss_fn, epsilon, steps,
                                            eot_samples, chunk_size, value_range,
                                            expectation)
      if y_target is not None:  # Losses of different targets do not compare.
        run_loss = tf.zeros_like(run_loss)
      improved = pgd_lib.better(run_wrong, run_loss, part(best_wrong), part(best_loss))
      index = active[:, None]
      best_x = tf.tensor_scatter_nd_update(
          best_x, index, pgd_lib.keep_best(improved, run_x, part(best_x)))
      best_wrong = tf.tensor_scatter_nd_update(
          best_wrong, index, tf.where(improved, run_wrong, part(best_wrong)))
      best_loss = tf.tensor_scatter_nd_update(
          best_loss, index, tf.where(improved, run_loss, part(best_loss)))
  return best_x
