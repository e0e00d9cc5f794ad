"""An attack on g's choice of target class (an attack built for this defense).

g(x) steers every input toward y_LL = argmin f_b(x), f_b's least-likely
class of the input itself (paper Sec. 3.2). The attacker controls x, hence
y_LL, hence where g sends the image. `target_selection` exploits it in two
phases:

1. choose: for every class c of f_b, run g with its target fixed at c
   (`steered_transform`) on the clean x over `eot_samples` draws, and score
   f_a on the result: the class c* whose g output f_a misclassifies in the
   most draws (then with the highest cross-entropy) is the one to hand g;
2. steer: L∞ PGD in the ε ball on f_b alone, ascending the margin
   min_{j≠c*} f_b(x')_j − f_b(x')_{c*}, positive once c* is f_b's
   least-likely class of x', so that g(x') steers toward c*.

Per example it returns the iterate with the largest margin.
"""

import tensorflow as tf

from adv_layer import transform
from attacks import common
from attacks import estimators
from attacks import model_fns
from attacks import pgd

__all__ = ["choose_targets", "steered_transform", "target_selection"]


def steered_transform(layer, x, labels, noise=None):
  """g(x) with its target fixed at `labels` instead of argmin f_b(x).

  The layer's own loop (`adv_layer.ll_pgd` through `layer.transform`) with
  explicit `labels`; with `labels = argmin f_b(x)` it is g, bit for bit.

  Args:
    layer: an `AdversarialTransform` with `target="least_likely"`.
    x: float32 images in the layer's value range.
    labels: int32 target classes, shape `(batch,)`.
    noise: the random start δ, shape of `x` (ignored without random start).

  Returns:
    The transformed images, float32, without a gradient path.
  """
  x = tf.stop_gradient(tf.cast(x, tf.float32))
  return tf.stop_gradient(layer.transform(x, labels=labels, noise=noise))


def _single_transform(model):
  """The one `AdversarialTransform` of `model`, steering to the least likely."""
  layers = estimators.transform_layers(model)
  if len(layers) != 1:
    raise ValueError("`model` must contain exactly one AdversarialTransform. "
                     f"Received: {len(layers)} in model={model.name!r}")
  if layers[0].target != "least_likely":
    raise ValueError("The target-selection attack needs a transform with "
                     f"target='least_likely'. Received: target={layers[0].target!r}")
  return layers[0]


def choose_targets(model, x, y, eot_samples=1, seed=None):
  """Per example, the class whose use as g's target hurts f_a the most.

  Args:
    model: a Keras model f_a(g(·)) with one `AdversarialTransform`.
    x: float32 images.
    y: int32 true labels.
    eot_samples: draws of g's random start per candidate class.
    seed: integer seed of the draws (the same draws for every class).

  Returns:
    int32 classes of f_b, shape `(batch,)`.
  """
  layer = _single_transform(model)
  classes = int(transform.logits_float32(layer.f_b, x[:1]).shape[-1])
  tiled_x = tf.tile(x, [eot_samples] + [1] * (len(x.shape) - 1))
  tiled_y = tf.tile(y, [eot_samples])
  noise = transform.uniform_noise(tf.shape(tiled_x), layer.epsilon, seed)
  best_wrong = tf.fill(tf.shape(y), -1.0)
  best_loss = tf.fill(tf.shape(y), -float("inf"))
  best = tf.zeros_like(y)
  for c in range(classes):
    labels = tf.fill(tf.shape(tiled_y), c)
    steer = lambda l, v, labels=labels: steered_transform(l, v, labels, noise)
    with estimators.substitute_transform(model, steer):
      logits = tf.cast(model(tiled_x, training=False), tf.float32)
    wrong = tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32), tiled_y)
    wrong = tf.reduce_mean(tf.reshape(tf.cast(wrong, tf.float32),
                                      [eot_samples, -1]), 0)
    loss = tf.reduce_mean(
        tf.reshape(common.ce_loss(logits, tiled_y), [eot_samples, -1]), 0)
    better = tf.logical_or(
        wrong > best_wrong,
        tf.logical_and(tf.equal(wrong, best_wrong), loss > best_loss))
    best = tf.where(better, c, best)
    best_wrong = tf.where(better, wrong, best_wrong)
    best_loss = tf.where(better, loss, best_loss)
  return best


def least_likely_margin(logits, targets):
  """min_{j≠t} z_j − z_t: positive iff `targets` is the least-likely class."""
  others = logits + 1e9 * tf.one_hot(targets, tf.shape(logits)[-1])
  return tf.reduce_min(others, -1) - tf.gather(logits, targets, batch_dims=1)


def target_selection(model,
                     x,
                     y,
                     epsilon=8 / 255,
                     step_size=None,
                     steps=20,
                     eot_samples=1,
                     random_start=True,
                     value_range=(0.0, 1.0),
                     seed=None):
  """Pushes x so that g steers it toward a class f_a gets wrong.

  Args:
    model: a Keras model f_a(g(·)) with one `AdversarialTransform` whose
      target is `"least_likely"` (the paper's g).
    x: float images in `value_range`, shape `(batch, ...)`.
    y: int labels `(batch,)`; None uses the model's predictions (one seeded
      draw of g).
    epsilon: L∞ budget.
    step_size: step of the steering PGD; None means `2.5 * epsilon / steps`.
    steps: iterations of the steering PGD.
    eot_samples: draws of g per candidate class when choosing the target.
    random_start: start the steering PGD at a uniform point of the ball.
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the draws and the random start; the same seed
      repeats the attack.

  Returns:
    Adversarial images, float32, shape of `x`, inside the ball and range.

  Raises:
    ValueError: for arguments out of their domain, or a model without exactly
      one least-likely `AdversarialTransform`.
    TypeError: for integer images.

  Example:
    >>> x_adv = target_selection(model, x, y, steps=20, eot_samples=4, seed=0)
  """
  value_range = common.validate_attack_args(epsilon, step_size, steps, None,
                                            value_range, eot_samples)
  layer = _single_transform(model)
  x, y = common.check_images_labels(x, y, value_range)
  if epsilon == 0:
    return x
  if step_size is None:
    step_size = 2.5 * epsilon / steps
  choose_seed, start_seed = common.seeds(seed, 2)
  if y is None:
    scorer = model_fns.defended_model_fn(model, "exact", seed=choose_seed)
    y = tf.argmax(scorer(x), axis=-1, output_type=tf.int32)
  targets = choose_targets(model, x, y, eot_samples, choose_seed)
  x_adv = (common.random_init(x, epsilon, value_range, start_seed)
           if random_start else x)
  best_x = x_adv
  best_margin = tf.fill(tf.shape(y), -float("inf"))
  for step in range(steps + 1):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(x_adv)
      margin = least_likely_margin(transform.logits_float32(layer.f_b, x_adv),
                                   targets)
    improved = margin > best_margin
    best_x = pgd.keep_best(improved, x_adv, best_x)
    best_margin = tf.where(improved, margin, best_margin)
    if step < steps:
      grad = tape.gradient(margin, x_adv)
      x_adv = common.project(x_adv + step_size * tf.sign(grad), x, epsilon,
                             value_range)
  return best_x
