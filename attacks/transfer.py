"""Transfer attacks (paper Sec. 4.2, and the cheaper-defense transfer).

A transfer attack runs PGD on a *source* model and replays the result on the
target; `transfer` does the first half, the caller (the suite) scores the
result on f_a(g(·)) with fresh draws of g. Sources:

- white-box transfer (WT, paper Fig. 6): f_a alone, `classifier_model_fn`;
- black-box transfer (paper Table 2): an independently trained model;
- cheaper-defense transfer (Croce et al., 2022; paper Appendix A.3): the
  same model with a cheaper transform g_k of k LL-PGD steps, attacked through
  BPDA with EOT, `cheaper_defense_model_fn`.
"""

from attacks import estimators
from attacks import pgd
from attacks import reparam


def transfer(source_model_fn, x, y, epsilon=8 / 255, steps=20, step_size=None,
             restarts=1, eot_samples=1, value_range=(0.0, 1.0), seed=None):
  """Crafts adversarial examples on a source model, for replay on a target.

  L∞ PGD with a random start and cross-entropy loss (`attacks.pgd.pgd`) on
  `source_model_fn`; the target is never queried.

  Args:
    source_model_fn: images -> logits of the source, differentiable.
    x: float images `(batch, ...)` inside `value_range`.
    y: int labels `(batch,)`; None uses the source's predictions.
    epsilon: L∞ budget.
    steps: PGD iterations per restart.
    step_size: PGD step; None means `2.5 * epsilon / steps`.
    restarts: PGD restarts (the best per example on the source is kept).
    eot_samples: draws averaged per gradient when the source is random.
    value_range: `(low, high)` of valid pixel values.
    seed: integer seed of the starts (and of a `DefendedModelFn` source's
      draws); None draws one.

  Returns:
    float32 tf.Tensor of the shape of `x`, inside the ball and `value_range`.

  Raises:
    ValueError: for a bad argument (named in the message).
    TypeError: for integer images.

  Example:
    >>> x_adv = transfer(classifier_model_fn(model), x, y, steps=50, seed=0)
    >>> attacks.scoring.score(model, x_adv, y, draws=5, seed=0)  # replay
  """
  return pgd.pgd(source_model_fn, x, y, epsilon=epsilon, step_size=step_size,
                 steps=steps, restarts=restarts, random_start=True, loss="ce",
                 eot_samples=eot_samples, value_range=value_range, seed=seed)


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
  return estimators.defended_model_fn(model, estimator, seed=seed, steps=steps,
                                      **estimator_kwargs)
