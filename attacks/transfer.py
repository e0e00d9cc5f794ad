"""Transfer attacks (paper Sec. 4.2, and the cheaper-defense transfer).

A transfer attack runs PGD on a *source* model and replays the result on the
target; `transfer` does the first half, the caller (the suite) scores the
result on f_a(g(·)) with fresh draws of g. Sources:

- white-box transfer (WT, paper Fig. 6): f_a alone, `classifier_model_fn`;
- black-box transfer (paper Table 2): an independently trained model, e.g.
  f_a's architecture trained afresh on clean data or with PGD adversarial
  training (`attacks.surrogates`);
- cheaper-defense transfer (Croce et al., 2022; paper Appendix A.3): the
  same model with a cheaper transform g_k of k LL-PGD steps, attacked through
  BPDA with EOT, `cheaper_defense_model_fn`.

Two options make the crafted images transfer better: momentum (MI-FGSM, Dong
et al. 2018: the step follows the sign of a running sum of L1-normalised
gradients, `momentum_update`) and input diversity (DI, Xie et al. 2019: each
gradient is taken at a randomly shrunk and padded copy of the image,
`input_diversity`).
"""

import numpy as np
import tensorflow as tf

from attacks import common
from attacks import model_fns
from attacks import pgd
from attacks import reparam

__all__ = [
    "cheaper_defense_model_fn", "classifier_model_fn", "diverse_model_fn",
    "diversity_draw", "input_diversity", "momentum_update", "resize_and_pad",
    "transfer"
]


def transfer(source_model_fn, x, y, epsilon=8 / 255, steps=20, step_size=None,
             restarts=1, eot_samples=1, value_range=(0.0, 1.0), seed=None,
             momentum=0.0, diversity_prob=0.0, diversity_scale=0.9,
             random_start=True, chunk_size=None):
  """Crafts adversarial examples on a source model, for replay on a target.

  L∞ PGD with cross-entropy loss on `source_model_fn`; the target is never
  queried. Without momentum and input diversity this is `attacks.pgd.pgd`
  (best point per example over steps and restarts). With either, each
  restart runs

    v ← μ · v + ∇ / ‖∇‖₁,   x' ← Π[x' + step_size · sign(v)]

  (MI-FGSM, Dong et al. 2018; μ = `momentum`, v starts at 0), the gradient
  ∇ taken at `input_diversity(x')` when `diversity_prob` > 0 (DI, Xie et al.
  2019), and keeps its final iterate, as the papers do: a point pushed past
  the source's boundary transfers better than the first one across it.
  Restarts are ranked per example on the source without the diversity
  (misclassified in more draws first, then higher loss). The papers'
  settings are `momentum=1.0, diversity_prob=0.5, random_start=False,
  step_size=epsilon / steps`.

  Args:
    source_model_fn: images -> logits of the source, differentiable.
    x: float images `(batch, height, width, channels)` inside `value_range`
      (any rank without input diversity).
    y: int labels `(batch,)`; None uses the source's predictions.
    epsilon: L∞ budget.
    steps: PGD iterations per restart.
    step_size: PGD step; None means `2.5 * epsilon / steps`.
    restarts: PGD restarts (the best per example on the source is kept).
    eot_samples: draws averaged per gradient when the source is random (and
      of the input diversity: each copy gets its own draw).
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the starts, the diversity draws and a
      `DefendedModelFn` source's draws; None draws one.
    momentum: μ >= 0, the decay of the gradient sum (0: no momentum).
    diversity_prob: probability p in [0, 1] that an image is shrunk and
      padded before each gradient (0: no input diversity).
    diversity_scale: smallest size of a shrunk image, as a fraction in
      (0, 1] of its height and width (0.9: 299 of 330 in Xie et al.).
    random_start: start each restart at a uniform point of the ball (else at
      x, as MI-FGSM and DI do).
    chunk_size: most images per `source_model_fn` call (bounds EOT memory).

  Returns:
    float32 tf.Tensor of the shape of `x`, inside the ball and `value_range`.

  Raises:
    ValueError: for a bad argument (named in the message).
    TypeError: for integer images.

  Example:
    >>> x_adv = transfer(classifier_model_fn(model), x, y, steps=50, seed=0)
    >>> attacks.scoring.score(model, x_adv, y, draws=5, seed=0)  # replay
    >>> x_adv = transfer(surrogate, x, y, momentum=1.0, diversity_prob=0.5)
  """
  common.check_number("momentum", momentum, minimum=0)
  check_diversity(diversity_prob, diversity_scale)
  if momentum == 0 and diversity_prob == 0:
    return pgd.pgd(source_model_fn, x, y, epsilon=epsilon, step_size=step_size,
                   steps=steps, restarts=restarts, random_start=random_start,
                   loss="ce", eot_samples=eot_samples, chunk_size=chunk_size,
                   value_range=value_range, seed=seed)
  value_range = common.validate_attack_args(epsilon, step_size, steps, restarts,
                                            value_range, eot_samples)
  x, y = common.check_images_labels(x, y, value_range)
  if diversity_prob > 0 and x.shape.rank != 4:
    raise ValueError("Input diversity needs NHWC images. "
                     f"Received: x.shape={tuple(x.shape)}")
  if epsilon == 0:
    return x
  if step_size is None:
    step_size = 2.5 * epsilon / steps
  if y is None:
    y = pgd.prediction_labels(source_model_fn, x)
  best_x = x
  best_wrong = tf.fill(tf.shape(y), -1.0)
  best_loss = tf.fill(tf.shape(y), -float("inf"))
  for run_seed in common.seeds(seed, restarts):
    model_fns.reseed(source_model_fn, run_seed)
    gradient_fn = source_model_fn
    if diversity_prob > 0:
      gradient_fn = diverse_model_fn(source_model_fn, diversity_prob,
                                     diversity_scale, value_range[0], run_seed)
    x_adv = common.random_init(x, epsilon, value_range, run_seed) if random_start else x
    velocity = tf.zeros_like(x)
    for _ in range(steps):
      _, grad, _ = pgd.loss_gradient(gradient_fn, x_adv, y, common.ce_loss,
                                     eot_samples, chunk_size)
      velocity = momentum_update(velocity, grad, momentum)
      x_adv = common.project(x_adv + step_size * tf.sign(velocity), x, epsilon,
                             value_range)
    loss, _, wrong = pgd.loss_gradient(source_model_fn, x_adv, y, common.ce_loss,
                                       eot_samples, chunk_size)
    improved = pgd.better(wrong, loss, best_wrong, best_loss)
    best_x = pgd.keep_best(improved, x_adv, best_x)
    best_wrong = tf.where(improved, wrong, best_wrong)
    best_loss = tf.where(improved, loss, best_loss)
  return best_x


def momentum_update(velocity, grad, momentum):
  """One MI-FGSM accumulation: `momentum · velocity + grad / ‖grad‖₁`.

  The L1 norm is taken per example over all other axes (Dong et al. 2018,
  eq. (6)); an all-zero gradient adds nothing.

  Args:
    velocity: the running sum, shape of `grad`.
    grad: the loss gradient, `(batch, ...)`.
    momentum: μ, the decay factor.

  Returns:
    The new running sum, float32, shape of `grad`.
  """
  grad = tf.cast(grad, tf.float32)
  norm = tf.reduce_sum(tf.abs(grad), axis=tf.range(1, tf.rank(grad)),
                       keepdims=True)
  return momentum * velocity + grad / tf.maximum(norm, 1e-12)


def check_diversity(diversity_prob, diversity_scale):
  """Raises ValueError unless p is in [0, 1] and the scale in (0, 1]."""
  common.check_number("diversity_prob", diversity_prob, minimum=0)
  if diversity_prob > 1:
    raise ValueError("`diversity_prob` must be in [0, 1]. "
                     f"Received: diversity_prob={diversity_prob!r}")
  common.check_number("diversity_scale", diversity_scale, minimum=0, strict=True)
  if diversity_scale > 1:
    raise ValueError("`diversity_scale` must be in (0, 1]. "
                     f"Received: diversity_scale={diversity_scale!r}")


def diversity_draw(shape, diversity_prob, diversity_scale, generator):
  """Draws DI's random shrink and padding offsets, one set per image.

  With probability `diversity_prob` an image of height H and width W is
  shrunk by d pixels (d uniform in {0, ..., ⌊(1 − scale) · min(H, W)⌋}) to
  (H − d) × (W − d), then placed at offset (top, left), each uniform in
  {0, ..., d}; otherwise d = top = left = 0 (the identity).

  Args:
    shape: the images' shape `(batch, height, width, channels)`; height and
      width must be Python integers, the batch may be a scalar tensor.
    diversity_prob: probability p that an image is transformed.
    diversity_scale: smallest relative size of a shrunk image.
    generator: a `tf.random.Generator`.

  Returns:
    `(shrink, top, left)`: int32 tensors of shape `(batch,)`.
  """
  batch, height, width = shape[0], shape[1], shape[2]
  most = int(np.floor((1.0 - diversity_scale) * min(height, width) + 1e-9))
  applied = generator.uniform([batch]) < diversity_prob
  shrink = generator.uniform([batch], 0, most + 1, dtype=tf.int32)
  shrink = tf.where(applied, shrink, 0)
  top, left = (tf.cast(tf.floor(generator.uniform([batch]) *
                                tf.cast(shrink + 1, tf.float32)), tf.int32)
               for _ in range(2))
  return shrink, tf.minimum(top, shrink), tf.minimum(left, shrink)


def _source_index(length, shrink, offset):
  """Nearest-neighbour source index and inside mask along one image axis."""
  position = tf.range(length)[tf.newaxis, :] - offset[:, tf.newaxis]
  size = length - shrink[:, tf.newaxis]
  inside = tf.logical_and(position >= 0, position < size)
  # Half-pixel centres, in integers: floor((position + 1/2) * length / size).
  source = tf.math.floordiv((2 * position + 1) * length, 2 * size)
  return tf.clip_by_value(source, 0, length - 1), inside


def resize_and_pad(images, shrink, top, left, fill=0.0):
  """DI's transform: nearest-neighbour shrink, then pad back to the shape.

  Image b is resized to (H − shrink[b]) × (W − shrink[b]) (nearest
  neighbour, half-pixel centres, as `tf.image.resize`) and placed with its
  top-left corner at (top[b], left[b]); the border is `fill`. Every output
  pixel is an input pixel or `fill`, so the value range is kept, and the
  gradient flows to the pixels that were copied.

  Args:
    images: float images `(batch, height, width, channels)`.
    shrink: int pixels removed from each side length, `(batch,)`.
    top: int row offsets in [0, shrink], `(batch,)`.
    left: int column offsets in [0, shrink], `(batch,)`.
    fill: value of the border (the low end of the value range).

  Returns:
    Images of the shape and dtype of `images`.
  """
  height, width = images.shape[1], images.shape[2]
  rows, rows_inside = _source_index(height, shrink, top)
  cols, cols_inside = _source_index(width, shrink, left)
  gathered = tf.gather(tf.gather(images, rows, axis=1, batch_dims=1), cols,
                       axis=2, batch_dims=1)
  inside = tf.logical_and(rows_inside[:, :, tf.newaxis, tf.newaxis],
                          cols_inside[:, tf.newaxis, :, tf.newaxis])
  return tf.where(inside, gathered, tf.cast(fill, images.dtype))


def input_diversity(images, diversity_prob, diversity_scale, fill, generator):
  """A fresh DI transform of each image (Xie et al. 2019), shape kept.

  Args:
    images: float images `(batch, height, width, channels)`.
    diversity_prob: probability that an image is shrunk and padded.
    diversity_scale: smallest relative size of a shrunk image.
    fill: value of the padding.
    generator: a `tf.random.Generator`.

  Returns:
    `resize_and_pad` of `images` under a fresh `diversity_draw`.
  """
  shape = (tf.shape(images)[0],) + tuple(images.shape[1:])
  shrink, top, left = diversity_draw(shape, diversity_prob, diversity_scale,
                                     generator)
  return resize_and_pad(images, shrink, top, left, fill)


def diverse_model_fn(model_fn, diversity_prob, diversity_scale, fill, seed=None):
  """`model_fn` applied to a fresh `input_diversity` draw at every call.

  Args:
    model_fn: images -> logits.
    diversity_prob: probability that an image is shrunk and padded.
    diversity_scale: smallest relative size of a shrunk image.
    fill: value of the padding.
    seed: integer seed of the draws; None draws one.

  Returns:
    images -> logits of `model_fn` on diversified images, differentiable.
  """
  generator = (tf.random.Generator.from_non_deterministic_state()
               if seed is None else tf.random.Generator.from_seed(seed))
  return lambda images: model_fn(input_diversity(
      images, diversity_prob, diversity_scale, fill, generator))


def classifier_model_fn(model):
  """The model_fn of f_a alone: `model` with every transform g skipped.

  The white-box transfer source (paper Sec. 4.2): the transforms become the
  identity through their `gradient_estimator` hook, so any layer before or
  after them is kept; the model itself is not changed outside the calls.

  Args:
    model: a Keras model containing `AdversarialTransform` layers.

  Returns:
    images -> float32 logits of f_a, differentiable.

  Raises:
    ValueError: if `model` holds no `AdversarialTransform`.
  """
  return reparam.substituted_model_fn(model, lambda layer, x: x)


def cheaper_defense_model_fn(model, steps=1, estimator="bpda", seed=None,
                             **estimator_kwargs):
  """The model_fn of f_a(g_k(·)): each transform cut to `steps` LL-PGD steps.

  The cheaper-defense transfer source: attack it with `transfer(...,
  eot_samples=K)` (BPDA through g_k, fresh draws per call) and replay on the
  full model.

  Args:
    model: a Keras model containing `AdversarialTransform` layers.
    steps: k, the LL-PGD steps of the cheaper transform (e.g. 1 to 3).
    estimator: the gradient estimator through g_k (see `attacks.estimators`).
    seed: integer seed of g_k's draws; None draws one.
    **estimator_kwargs: `sign_surrogate`, `temperature`.

  Returns:
    A `DefendedModelFn`.

  Raises:
    ValueError: for a bad `steps` or estimator setting, or a model without
      a transform.
  """
  return model_fns.defended_model_fn(model, estimator, seed=seed, steps=steps,
                                      **estimator_kwargs)


