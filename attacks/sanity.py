"""Sanity checks printed with every robustness report (flags, never silent).

`run_checks` runs the extra attack runs some checks need (the strongest
white-box attack at other epsilons and with twice its steps, restarts and
EOT samples), measures gradients (`gradient_stats`) and the spread of
per-draw gradients around their EOT mean (`eot_gradient_diagnostics`), and
returns every check's `Flag` (`attacks.verdict`, where the checks and the
verdict live; their names are reachable here too).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from attacks import common
from attacks import scoring
from attacks import suite
# The checks and the verdict, also reachable here.
# pylint: disable=unused-import,g-multiple-import
from attacks.verdict import (
    LARGE_EPSILON, MASKING_SIGNS, NOT_A_SHORTFALL, NOT_RUN, OK, TRIPPED, Flag,
    cheap_checks,
    check_convergence, check_eot_gradients, check_failures,
    check_gradient_masking, check_gradients, check_large_epsilon,
    check_masked_layers, check_monotone_epsilon, check_nonfinite_outputs,
    check_robust_le_clean, format_flags, masking_signs, nonfinite_counts,
    shortfalls, verdict)
# pylint: enable=unused-import,g-multiple-import

__all__ = [
    "DIAGNOSTIC_IMAGES", "DIAGNOSTIC_STEPS", "EPSILON_SWEEP", "draw_noise",
    "eot_diagnostics", "eot_gradient_diagnostics", "epsilon_sweep",
    "first_images", "gradient_stats", "reference_attack", "run_checks"
]

EPSILON_SWEEP = (2 / 255, 4 / 255, 8 / 255, 16 / 255)
# EOT gradient diagnostics: a few steps on the first images.
DIAGNOSTIC_STEPS = 3
DIAGNOSTIC_IMAGES = 16


def _ce(logits, y):
  return common.ce_loss(tf.cast(logits, tf.float32), y)


def _ce_gradient(model_fn, x, y):
  """The input gradient of the summed CE loss, one model call (zero if cut).

  Through `common.chunk_loss_gradient`, so a model_fn that computes its own
  gradient (the compiled path of `attacks.model_fns.DefendedModelFn`) does.
  """
  return common.chunk_loss_gradient(model_fn, x, y, _ce)[1]


def gradient_stats(model_fn, x, y):
  """Counts non-finite values and all-zero per-example gradients of the CE loss.

  One draw; a gradient path cut by the model (e.g. `tf.stop_gradient`) counts
  as zero.

  Args:
    model_fn: images -> logits, differentiable (through an estimator).
    x: float32 images.
    y: int labels.

  Returns:
    dict with `nonfinite` (count of NaN/inf entries), `zero_examples` (images
    whose gradient is exactly zero), `images` and `mean_abs`.
  """
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.convert_to_tensor(y, tf.int32)
  grad = np.asarray(_ce_gradient(model_fn, x, y)).reshape(len(x), -1)
  finite = np.isfinite(grad)
  return {
      "nonfinite": int(np.sum(~finite)),
      "zero_examples": int(np.sum(np.all(grad == 0, axis=1))),
      "images": int(len(x)),
      "mean_abs": float(np.mean(np.abs(np.where(finite, grad, 0.0)))),
  }


def eot_gradient_diagnostics(model_fn, x, y, samples, steps=DIAGNOSTIC_STEPS,
                             epsilon=8 / 255, value_range=(0.0, 1.0)):
  """Per-step spread of per-draw gradients around their EOT mean.

  Walks `steps` signed steps of size epsilon / 4 along the EOT-mean gradient
  of the CE loss (PGD with EOT from x, projected on the ball) and, at x and
  after each step, takes K = `samples` per-draw gradients g_k (the batch
  tiled K times in one call, each copy its own draw) and their mean m:

  - `relative_variance`: mean_k ||g_k - m||^2 / ||m||^2, per image, averaged
    over images. Divided by K it is the noise-to-signal ratio of the EOT
    mean itself.
  - `cosine`: cos(g_k, m), averaged over draws and images.

  Images whose mean gradient is exactly zero are left out of both figures.

  Args:
    model_fn: images -> logits, differentiable, a fresh draw per image.
    x: float32 images.
    y: int labels.
    samples: K, draws per gradient (>= 2 for a spread).
    steps: signed steps taken (figures at steps + 1 points).
    epsilon: L∞ radius of the walk.
    value_range: `(low, high)` of valid pixel values.

  Returns:
    dict with per-point lists `relative_variance` and `cosine` (None where
    every mean gradient is zero), `samples`, `steps` and `images`.

  Raises:
    ValueError: for `samples < 2` or a bad `steps`.
  """
  common.check_number("samples", samples, minimum=2, integer=True)
  common.check_number("steps", steps, minimum=0, integer=True)
  x = tf.convert_to_tensor(x, tf.float32)
  y_tiled = tf.tile(tf.convert_to_tensor(y, tf.int32), [samples])
  ones = [1] * (len(x.shape) - 1)
  x_adv = x
  figures = {"relative_variance": [], "cosine": []}
  for step in range(steps + 1):
    tiled = tf.tile(x_adv, [samples] + ones)
    grads = np.asarray(_ce_gradient(model_fn, tiled, y_tiled)).reshape(
        samples, len(x), -1)
    mean = grads.mean(axis=0)
    norm = np.linalg.norm(mean, axis=-1)
    valid = norm > 0
    spread, cosine = None, None
    if np.any(valid):
      draws, centre, size = grads[:, valid], mean[valid], norm[valid]
      spread = float(np.mean(
          np.mean(np.sum((draws - centre) ** 2, axis=-1), axis=0) / size**2))
      draw_norm = np.maximum(np.linalg.norm(draws, axis=-1), 1e-30)
      cosine = float(np.mean(np.sum(draws * centre, axis=-1) /
                             (draw_norm * size)))
    figures["relative_variance"].append(spread)
    figures["cosine"].append(cosine)
    if step < steps:
      direction = tf.sign(tf.reshape(tf.constant(mean), x.shape))
      x_adv = common.project(x_adv + epsilon / 4 * direction, x, epsilon,
                             value_range)
  return dict(figures, samples=samples, steps=steps, images=int(len(x)))


def reference_attack(suite_result, field=None):
  """The strongest white-box run of a suite (None if it ran none).

  Ties (same strict and mean accuracy) go to the cheapest run in counted
  passes (the model's and f_b's; seconds would make the choice depend on the
  machine's load), then to the first in report order, so the sanity reruns
  do not repeat an expensive attack for nothing and the report repeats.

  Args:
    suite_result: a `suite.SuiteResult`.
    field: only consider attacks whose budget has this field (e.g.
      "restarts"), or None.

  Returns:
    An `AttackResult` or None.
  """
  white = [r for r in suite_result.results if r.kind == suite.WHITE_BOX and
           (field is None or field in r.budget)]
  return min(white, key=lambda r: (r.score.strict_accuracy,
                                   r.score.mean_accuracy,
                                   r.model_passes + r.f_b_passes),
             default=None)


def epsilon_sweep(target, reference, x, y, suite_result,
                  epsilons=EPSILON_SWEEP + (LARGE_EPSILON,), rerun=suite.rerun):
  """Mean accuracy of the reference attack at each epsilon (reusing its own).

  `rerun` runs the attack with a changed budget (`suite.rerun`'s signature).
  """
  budget = suite_result.budget
  curve = {}
  for epsilon in epsilons:
    if epsilon == budget.epsilon:
      curve[epsilon] = reference.score.mean_accuracy
    else:
      curve[epsilon] = rerun(target, reference.name, x, y, budget,
                             suite_result.seed, suite_result.draws,
                             epsilon=epsilon).score.mean_accuracy
  return curve


def draw_noise(score):
  """Slack for comparing mean accuracies of runs scored on independent draws.

  Every attack run is scored with its own draws, so two runs on the same
  images differ by draw noise alone even when their images classify alike:
  twice the standard deviation of the difference of two independent R-draw
  means, with each image's per-draw variance p_i (1 - p_i) taken from
  `score` (usually the clean images'). Zero on a deterministic model.

  Args:
    score: a `scoring.Score`.

  Returns:
    A float.
  """
  p = score.per_example_mean
  if not p.size:
    return 0.0
  return float(2 * np.sqrt(2 * np.sum(p * (1 - p)) / score.draws) / p.size)


def convergence_flag(target, suite_result, x, y, what, run, extras,
                     tolerance=0.0, rerun=suite.rerun):
  """Reruns the strongest white-box attack taking `what` with 2x of it."""
  reference = reference_attack(suite_result, field=what)
  if not run or reference is None:
    return check_convergence(None, None, what)
  budget = suite_result.budget
  doubled = rerun(target, reference.name, x, y, budget, suite_result.seed,
                  suite_result.draws, **{what: 2 * getattr(budget, what)})
  extras[f"doubled_{what}"] = {"attack": reference.name,
                               "accuracy": doubled.score.mean_accuracy}
  return check_convergence(reference.score.mean_accuracy,
                           doubled.score.mean_accuracy, what,
                           tolerance=tolerance, attack=reference.name)


def eot_diagnostics(target, suite_result, x, y):
  """`eot_gradient_diagnostics` through the strongest EOT attack's estimator.

  On the first `DIAGNOSTIC_IMAGES` images with the suite's EOT samples (at
  least 2); None on a deterministic model or without such an attack.
  """
  reference = reference_attack(suite_result, field="eot_samples")
  if not target.randomized or reference is None:
    return None
  budget = suite_result.budget
  # On a model without a transform the display name is a family's, and the
  # gradient is the model's own (through BPDA where it wraps layers).
  estimator = (suite.REGISTRY[reference.name].estimator if target.defended
               else None)
  model_fn = target.white_box_fn(estimator, seed=suite_result.seed)
  diagnostics = eot_gradient_diagnostics(
      model_fn, x[:DIAGNOSTIC_IMAGES], y[:DIAGNOSTIC_IMAGES],
      max(2, budget.eot_samples), epsilon=budget.epsilon,
      value_range=budget.value_range)
  return dict(diagnostics, attack=reference.name)


def first_images(suite_result, count):
  """`suite_result` with every score restricted to its first `count` images.

  The extra sanity runs on a subset compare against the suite's own runs on
  the same images.

  Args:
    suite_result: a `suite.SuiteResult`.
    count: images kept (see `scoring.first_images`).

  Returns:
    A `suite.SuiteResult`; its `worst` figures are those of all images.
  """
  return dataclasses.replace(
      suite_result, clean=scoring.first_images(suite_result.clean, count),
      results=[dataclasses.replace(r, score=scoring.first_images(r.score, count))
               for r in suite_result.results])


def run_checks(target, suite_result, x, y, convergence=True, images=None,
               rerun=suite.rerun):
  """Runs every sanity check on a suite's output (extra attack runs included).

  Reruns the strongest white-box attack at epsilon in {2, 4, 8, 16}/255 and
  0.5 and with 2x steps, the strongest white-box attack that takes restarts
  with 2x restarts and, on a randomized model, the strongest EOT attack with
  2x EOT samples; measures one-draw gradients of every estimator the suite
  used and the spread of per-draw gradients around their EOT mean over a few
  steps (`eot_gradient_diagnostics`). Comparisons of mean accuracies allow
  the draw noise of the clean images (`draw_noise`), since every run is
  scored with its own draws.

  Args:
    target: the `suite.Target` the suite ran on.
    suite_result: a `suite.SuiteResult`.
    x: the suite's images.
    y: their labels.
    convergence: run the 2x steps / restarts / EOT samples reruns.
    images: run the extra attack runs (epsilon sweep, 2x reruns) and the
      gradient statistics on the first `images` images only, compared with
      the suite's runs on the same images; None: on all of them. The other
      checks always use every image.
    rerun: runs the attack with a changed budget, with `suite.rerun`'s
      signature (e.g. `runner.stored_rerun`, which keeps each result).

  Returns:
    `(flags, extras)`: a list of `Flag` and a dict with the epsilon curve
    (`accuracy_vs_epsilon`), the gradient statistics (`gradients`,
    `eot_gradients`), the reruns' figures, `sanity_images` (the images of
    the extra runs) and `sanity_clean_accuracy` (their clean mean
    accuracy). An extra run that raises is flagged (`sanity-runs-failed`)
    and its check left "not run"; the report is still written.

  Raises:
    ValueError: if `images` is not None nor an integer in [1, len(x)],
      naming the value received.
  """
  noise = draw_noise(suite_result.clean)
  *flags, masking = cheap_checks(suite_result, tolerance=noise)
  white = [r.name for r in suite_result.results if r.kind == suite.WHITE_BOX]
  if images is not None:
    common.check_number("images", images, minimum=1, integer=True)
    if images > len(x):
      raise ValueError(f"`images` must be at most the {len(x)} images of the "
                       f"suite. Received: images={images!r}")
    suite_result = first_images(suite_result, images)
    x, y = x[:images], y[:images]
    noise = draw_noise(suite_result.clean)
  extras = {"draw_noise": noise, "sanity_images": int(len(x)),
            "sanity_clean_accuracy": suite_result.clean.mean_accuracy}
  errors = {}

  def guarded(label, run, default=None):
    """`run()`; on an error, `default` and the error recorded under `label`."""
    try:
      return run()
    except Exception as error:  # pylint: disable=broad-except
      errors[label] = f"{type(error).__name__}: {error}"
      return default

  reference = reference_attack(suite_result)
  extras["reference_attack"] = reference.name if reference else None
  curve = {}
  if reference is not None:
    curve = guarded("epsilon sweep", lambda: epsilon_sweep(
        target, reference, x, y, suite_result, rerun=rerun), {})
  extras["accuracy_vs_epsilon"] = {str(e): a for e, a in sorted(curve.items())}
  flags.append(check_monotone_epsilon(
      {e: a for e, a in curve.items() if e != LARGE_EPSILON}, tolerance=noise))
  flags.append(check_large_epsilon(curve.get(LARGE_EPSILON)))
  flags.append(masking)
  if target.defended:
    # White-box attacks on g itself (target selection) use no estimator.
    estimators = sorted({suite.REGISTRY[name].estimator for name in white}
                        - {None})
  else:  # White-box attacks differentiate the model directly.
    estimators = ["direct"] if white else []
  stats = {}
  for e in estimators:
    stats[e] = guarded(f"gradients of {e}", lambda e=e: gradient_stats(
        target.white_box_fn(e, seed=suite_result.seed), x, y))
  extras["gradients"] = {e: v for e, v in stats.items() if v is not None}
  flags.append(check_gradients(extras["gradients"]))
  extras["eot_gradients"] = guarded("EOT gradient diagnostics", lambda: (
      eot_diagnostics(target, suite_result, x, y)))
  flags.append(check_eot_gradients(extras["eot_gradients"]))
  # EOT samples matter only on a randomized model.
  for what in ("steps", "restarts") + (
      ("eot_samples",) if target.randomized else ()):
    flags.append(guarded(
        f"2x {what}", lambda what=what: convergence_flag(
            target, suite_result, x, y, what, convergence, extras,
            tolerance=noise, rerun=rerun),
        check_convergence(None, None, what)))
  flags.insert(1, check_failures(errors, name="sanity-runs-failed",
                                 what="sanity run"))
  return flags, extras
