"""L∞ projected gradient descent with random restarts (Madry et al., 2018).

Works on any differentiable `model_fn`: a plain classifier, or a defended
model wrapped by `attacks.model_fns.defended_model_fn` (BPDA, BPDA-I,
unrolled), with the gradient averaged over `eot_samples` random draws (EOT,
paper Sec. 3.3). Per example it returns the best point seen over all steps and
restarts: misclassified (in the largest fraction of draws) first, then the
highest loss.
"""

import functools

import tensorflow as tf

from attacks import common
from attacks import model_fns

__all__ = ["LOSSES", "loss_gradient", "pgd", "prediction_labels"]

LOSSES = {"ce": common.ce_loss, "dlr": common.dlr_loss,
          "margin": common.margin_loss}


def check_loss(loss, choices):
  """Returns `loss` if it is one of `choices`, else raises ValueError."""
  if loss not in choices:
    raise ValueError(f"`loss` must be one of {tuple(choices)}. Received: loss={loss!r}")
  return loss


def prediction_labels(model_fn, x):
  """The model's own predictions, used when no labels are given."""
  return tf.argmax(model_fn(x), axis=-1, output_type=tf.int32)


def loss_gradient(model_fn, x, y, loss_fn, eot_samples=1, chunk_size=None,
                  y_target=None, expectation="loss", memory_budget=None):
  """EOT loss, gradient and misclassification rate at `x`.

  One vectorised `common.eot_loss_gradient` call; the logits it computes are
  also used to count, per example, the fraction of draws misclassified.

  Args:
    model_fn: images -> logits.
    x: float32 images.
    y: int32 true labels.
    loss_fn: `(logits, y)` or, with `y_target`, `(logits, y, y_target)` ->
      per-example loss to ascend.
    eot_samples: draws K averaged.
    chunk_size: most images per `model_fn` call (None: from the memory
      budget, see `common.eot_loss_gradient`).
    y_target: int32 target labels, or None.
    expectation: `"loss"` (mean of per-draw losses) or `"softmax"` (the loss
      of the mean softmax over draws), see `common.eot_loss_gradient`.
    memory_budget: bytes for one chunk's activations, or None (default).

  Returns:
    `(loss, grad, wrong)`: mean loss `(batch,)`, mean gradient (shape of
    `x`) and the fraction of draws with argmax != y `(batch,)`; with
    `expectation="softmax"`, whether the mean output's argmax != y.
  """
  labels = (y,) if y_target is None else (y, y_target)
  if expectation == "loss":
    loss, grad, logits = common.eot_loss_gradient(
        model_fn, x, labels, _unpacking(loss_fn), eot_samples, chunk_size,
        expectation, memory_budget, return_logits=True)
    wrong = tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32),
                         tf.tile(y, [eot_samples]))
    draws = eot_samples
  else:
    wrong = []

    def tracked(logits, labels):
      wrong.append(tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32),
                                labels[0]))
      return loss_fn(logits, *labels)

    loss, grad = common.eot_loss_gradient(model_fn, x, labels, tracked,
                                          eot_samples, chunk_size, expectation,
                                          memory_budget)
    wrong, draws = tf.concat(wrong, 0), 1
  wrong = tf.reshape(tf.cast(wrong, tf.float32), [draws, -1])
  return loss, grad, tf.reduce_mean(wrong, 0)


@functools.lru_cache(maxsize=64)
def _unpacking(loss_fn):
  """`(logits, labels) -> loss_fn(logits, *labels)`, one object per `loss_fn`.

  The same object for the same `loss_fn`, so a model_fn that compiles its
  loss and gradient (`attacks.model_fns.DefendedModelFn`) traces it once.
  """
  return lambda logits, labels: loss_fn(logits, *labels)


def better(wrong, loss, best_wrong, best_loss):
  """Per example: more often misclassified, or as often with a higher loss."""
  return tf.logical_or(
      wrong > best_wrong, tf.logical_and(tf.equal(wrong, best_wrong), loss > best_loss))


def keep_best(mask, new, old):
  """Where `mask` (per example), take `new`, else `old`."""
  shape = tf.concat([tf.shape(mask), tf.ones([tf.rank(new) - 1], tf.int32)], 0)
  return tf.where(tf.reshape(mask, shape), new, old)


def pgd(model_fn,
        x,
        y,
        epsilon=8 / 255,
        step_size=None,
        steps=20,
        restarts=1,
        random_start=True,
        loss="ce",
        eot_samples=1,
        chunk_size=None,
        value_range=(0.0, 1.0),
        seed=None,
        expectation="loss",
        memory_budget=None):
  """L∞ PGD: `x ← Π[x + step_size · sign(∇ loss)]`, best of `restarts` runs.

  Args:
    model_fn: images -> logits, differentiable with `tf.GradientTape`.
    x: float images in `value_range`, shape `(batch, ...)`.
    y: int labels `(batch,)`; None uses the model's predictions.
    epsilon: L∞ budget.
    step_size: step per iteration; None means `2.5 * epsilon / steps`.
    steps: iterations per restart.
    restarts: independent runs; the best per example is kept.
    random_start: start each run at a uniform point of the ball (else at x).
    loss: `"ce"`, `"dlr"` (untargeted) or `"margin"`.
    eot_samples: random draws K averaged per gradient (EOT).
    chunk_size: most images per `model_fn` call (bounds EOT memory); None
      picks it from `memory_budget`.
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the random starts and of `model_fn`'s draws
      (see `model_fns.reseed`); the same seed repeats the attack.
    expectation: `"loss"` ascends the mean of per-draw losses, `"softmax"`
      the loss of the mean softmax over the K draws (the expected output).
    memory_budget: bytes for one chunk's activations; None uses
      `common.DEFAULT_MEMORY_BUDGET`.

  Returns:
    Adversarial images, float32, shape of `x`, inside the ball and range.

  Raises:
    ValueError: for arguments out of their domain, naming the argument.
    TypeError: for integer images.

  Example:
    >>> x_adv = pgd(model, x, y, epsilon=8 / 255, steps=20, restarts=2, seed=0)
  """
  value_range = common.validate_attack_args(epsilon, step_size, steps, restarts,
                                            value_range, eot_samples)
  loss_fn = LOSSES[check_loss(loss, LOSSES)]
  x, y = common.check_images_labels(x, y, value_range)
  if epsilon == 0:
    return x
  if step_size is None:
    step_size = 2.5 * epsilon / steps
  if y is None:
    y = prediction_labels(model_fn, x)
  best_x = x
  best_wrong = tf.fill(tf.shape(y), -1.0)
  best_loss = tf.fill(tf.shape(y), -float("inf"))
  for run_seed in common.seeds(seed, restarts):
    model_fns.reseed(model_fn, run_seed)
    x_adv = common.random_init(x, epsilon, value_range, run_seed) if random_start else x
    for step in range(steps + 1):
      value, grad, wrong = loss_gradient(
          model_fn, x_adv, y, loss_fn, eot_samples, chunk_size,
          expectation=expectation, memory_budget=memory_budget)
      improved = better(wrong, value, best_wrong, best_loss)
      best_x = keep_best(improved, x_adv, best_x)
      best_wrong = tf.where(improved, wrong, best_wrong)
      best_loss = tf.where(improved, value, best_loss)
      if step < steps:
        x_adv = common.project(x_adv + step_size * tf.sign(grad), x, epsilon,
                               value_range)
  return best_x
