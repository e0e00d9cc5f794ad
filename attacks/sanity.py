"""Sanity checks printed with every robustness report (flags, never silent).

Each check returns a `Flag` whose status is "ok", "FLAG" (the evaluation may be
broken or too weak) or "not run" (its inputs were missing; still printed).
The checks follow DESIGN.md's evaluation rules (plus a flag for attacks that
raised) and Athalye et al. (2018) /
Croce et al. (2022): robust <= clean; accuracy falls as the budget grows; a
large budget (epsilon = 0.5) drives accuracy near 0; a transfer or query-based
attack beating every white-box attack signals gradient masking; an estimator
giving zero or NaN gradients; accuracy still falling with twice the steps,
restarts or EOT samples (not converged); per-draw gradients so spread around
their EOT mean that the mean is mostly noise (`eot_gradient_diagnostics`).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from attacks import common
from attacks import scoring
from attacks import suite

__all__ = [
    "Flag", "DIAGNOSTIC_IMAGES", "DIAGNOSTIC_STEPS", "EPSILON_SWEEP",
    "LARGE_EPSILON", "check_convergence", "check_eot_gradients",
    "check_failures", "check_gradient_masking", "check_gradients",
    "check_large_epsilon", "check_monotone_epsilon", "check_robust_le_clean",
    "draw_noise", "eot_diagnostics", "eot_gradient_diagnostics",
    "epsilon_sweep", "first_images", "format_flags", "gradient_stats",
    "reference_attack", "run_checks"
]

EPSILON_SWEEP = (2 / 255, 4 / 255, 8 / 255, 16 / 255)
LARGE_EPSILON = 0.5
# EOT gradient diagnostics: a few steps on the first images.
DIAGNOSTIC_STEPS = 3
DIAGNOSTIC_IMAGES = 16
OK, TRIPPED, NOT_RUN = "ok", "FLAG", "not run"


@dataclasses.dataclass(frozen=True)
class Flag:
  """The outcome of one sanity check.

  Attributes:
    name: short identifier of the check.
    status: "ok", "FLAG" or "not run".
    message: what was compared, with the numbers.
  """
  name: str
  status: str
  message: str

  @property
  def tripped(self):
    return self.status == TRIPPED

  def to_dict(self):
    return dataclasses.asdict(self)


def _flag(name, tripped, message):
  return Flag(name, TRIPPED if tripped else OK, message)


def _slack(tolerance):
  """The tolerance as message text (empty when zero)."""
  return f" (slack {tolerance:.4f} for draw noise)" if tolerance else ""


def check_failures(failed, name="attacks-failed", what="attack"):
  """Flags attacks (or sanity runs) that raised instead of returning.

  Args:
    failed: dict attack or run name -> error message.
    name: the flag's name.
    what: what `failed` lists, for the message.

  Returns:
    A `Flag`.
  """
  if failed:
    return _flag(name, True, "; ".join(
        f"{run}: {error}" for run, error in sorted(failed.items())))
  return _flag(name, False, f"every {what} ran")


def check_robust_le_clean(clean_accuracy, accuracies, tolerance=0.0):
  """Flags any attack whose accuracy exceeds the clean accuracy.

  Args:
    clean_accuracy: accuracy on clean images.
    accuracies: dict attack name -> accuracy on its adversarial images.
    tolerance: slack allowed for draw noise of a randomized model.

  Returns:
    A `Flag`.
  """
  if clean_accuracy is None or not accuracies:
    return Flag("robust<=clean", NOT_RUN, "no clean or attack accuracy")
  above = {k: v for k, v in accuracies.items() if v > clean_accuracy + tolerance}
  if above:
    listed = ", ".join(f"{k}={v:.4f}" for k, v in sorted(above.items()))
    return _flag("robust<=clean", True,
                 f"attacks above clean accuracy {clean_accuracy:.4f}"
                 f"{_slack(tolerance)}: {listed}")
  return _flag("robust<=clean", False,
               f"every attack <= clean accuracy {clean_accuracy:.4f}"
               f"{_slack(tolerance)}")


def check_monotone_epsilon(accuracy_by_epsilon, tolerance=0.0):
  """Flags accuracy that rises with a larger budget.

  Args:
    accuracy_by_epsilon: dict epsilon -> accuracy of one attack.
    tolerance: slack allowed for draw noise.

  Returns:
    A `Flag`.
  """
  if len(accuracy_by_epsilon) < 2:
    return Flag("monotone-in-epsilon", NOT_RUN, "fewer than two budgets")
  items = sorted(accuracy_by_epsilon.items())
  rises = [(a, b) for (a, b) in zip(items, items[1:]) if b[1] > a[1] + tolerance]
  curve = ", ".join(f"{e * 255:.4g}/255: {acc:.4f}" for e, acc in items)
  if rises:
    return _flag("monotone-in-epsilon", True,
                 f"accuracy rises with epsilon: {curve}{_slack(tolerance)}")
  return _flag("monotone-in-epsilon", False,
               f"non-increasing: {curve}{_slack(tolerance)}")


def check_large_epsilon(accuracy, epsilon=LARGE_EPSILON, threshold=0.10):
  """Flags an attack that cannot get accuracy below `threshold` at a huge budget.

  Args:
    accuracy: accuracy at `epsilon` (None: not run).
    epsilon: the large budget used.
    threshold: accuracy that must be beaten.

  Returns:
    A `Flag`.
  """
  name = "large-epsilon"
  if accuracy is None:
    return Flag(name, NOT_RUN, f"no run at epsilon={epsilon}")
  return _flag(name, accuracy >= threshold,
               f"accuracy {accuracy:.4f} at epsilon={epsilon} "
               f"({'not ' if accuracy >= threshold else ''}below {threshold:.2f})")


def check_gradient_masking(white_box, black_box, tolerance=0.0):
  """Flags a transfer or query-based attack beating every white-box attack.

  Args:
    white_box: dict attack name -> accuracy, gradient-based attacks on the
      model itself (through an estimator where needed).
    black_box: dict attack name -> accuracy, transfer and query-based attacks.
    tolerance: slack allowed for draw noise.

  Returns:
    A `Flag`.
  """
  name = "gradient-masking"
  if not white_box or not black_box:
    return Flag(name, NOT_RUN, "needs white-box and transfer/query attacks")
  best_white = min(white_box, key=white_box.get)
  best_black = min(black_box, key=black_box.get)
  tripped = black_box[best_black] < white_box[best_white] - tolerance
  relation = "beats" if tripped else "does not beat"
  return _flag(name, tripped,
               f"{best_black} ({black_box[best_black]:.4f}) {relation} the "
               f"best white-box attack {best_white} ({white_box[best_white]:.4f})"
               f"{_slack(tolerance)}")


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
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(common.ce_loss(tf.cast(model_fn(x), tf.float32), y))
  grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
  grad = np.asarray(grad).reshape(len(x), -1)
  finite = np.isfinite(grad)
  return {
      "nonfinite": int(np.sum(~finite)),
      "zero_examples": int(np.sum(np.all(grad == 0, axis=1))),
      "images": int(len(x)),
      "mean_abs": float(np.mean(np.abs(np.where(finite, grad, 0.0)))),
  }


def check_gradients(stats_by_estimator):
  """Flags estimators whose gradients are NaN/inf or exactly zero.

  Args:
    stats_by_estimator: dict estimator name -> `gradient_stats` output.

  Returns:
    A `Flag`.
  """
  name = "zero-or-nan-gradients"
  if not stats_by_estimator:
    return Flag(name, NOT_RUN, "no gradient estimator checked")
  bad = []
  for estimator, stats in sorted(stats_by_estimator.items()):
    if stats["nonfinite"] or stats["zero_examples"]:
      bad.append(f"{estimator}: {stats['nonfinite']} non-finite entries, "
                 f"{stats['zero_examples']}/{stats['images']} zero gradients")
  if bad:
    return _flag(name, True, "; ".join(bad))
  return _flag(name, False, "finite, nonzero gradients from " +
               ", ".join(sorted(stats_by_estimator)))


def check_convergence(base, doubled, what="steps", tolerance=0.0, attack=None):
  """Flags accuracy that still falls when the attack gets twice the budget.

  Args:
    base: accuracy with the report's budget (None: not run).
    doubled: accuracy with twice the steps, restarts or EOT samples (None:
      not run).
    what: "steps", "restarts" or "eot_samples", for the message.
    tolerance: slack allowed for draw noise.
    attack: the attack's name, for the message.

  Returns:
    A `Flag`.
  """
  name = f"converged-in-{what}"
  if base is None or doubled is None:
    return Flag(name, NOT_RUN, f"no run with 2x {what}")
  tripped = doubled < base - tolerance
  return _flag(name, tripped,
               (f"{attack}: " if attack else "") +
               f"accuracy {base:.4f} -> {doubled:.4f} with 2x {what}"
               + _slack(tolerance)
               + (" (still falling: not converged)" if tripped else ""))


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
    with tf.GradientTape() as tape:
      tape.watch(tiled)
      loss = tf.reduce_sum(common.ce_loss(
          tf.cast(model_fn(tiled), tf.float32), y_tiled))
    grads = tape.gradient(loss, tiled,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    grads = np.asarray(grads).reshape(samples, len(x), -1)
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


def check_eot_gradients(diagnostics, noise_ratio=1.0):
  """Flags an EOT mean gradient dominated by the spread of the draws.

  Args:
    diagnostics: `eot_gradient_diagnostics` output, or None (not run).
    noise_ratio: largest allowed relative variance / K (the variance of the
      EOT mean over its squared norm) at any point of the walk.

  Returns:
    A `Flag`.
  """
  name = "eot-gradient-noise"
  if diagnostics is None:
    return Flag(name, NOT_RUN, "no EOT attack on a randomized model")
  samples = diagnostics["samples"]
  ratios = [v / samples for v in diagnostics["relative_variance"]
            if v is not None]
  if not ratios:
    return _flag(name, True, "every EOT mean gradient is zero")
  cosines = ", ".join(f"{c:.3f}" for c in diagnostics["cosine"]
                      if c is not None)
  tripped = max(ratios) > noise_ratio
  return _flag(name, tripped,
               f"EOT {samples}: variance of the mean gradient / its squared "
               f"norm up to {max(ratios):.3f} (limit {noise_ratio}); cosine of "
               f"a draw's gradient to the mean per step: {cosines}"
               + (" (more EOT samples needed)" if tripped else ""))


def format_flags(flags):
  """One line per flag: `[status] name: message`."""
  return "\n".join(f"[{f.status}] {f.name}: {f.message}" for f in flags)


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
  if not target.defended or reference is None:
    return None
  budget = suite_result.budget
  model_fn = target.white_box_fn(suite.REGISTRY[reference.name].estimator,
                                 seed=suite_result.seed)
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
  results = suite_result.results
  clean = suite_result.clean.mean_accuracy
  noise = draw_noise(suite_result.clean)
  flags = [check_failures(suite_result.failed),
           check_robust_le_clean(clean, {r.name: r.score.mean_accuracy
                                         for r in results}, tolerance=noise)]
  white = {r.name: r.score.mean_accuracy for r in results
           if r.kind == suite.WHITE_BOX}
  black = {r.name: r.score.mean_accuracy for r in results
           if r.kind != suite.WHITE_BOX}
  masking = check_gradient_masking(white, black, tolerance=noise)
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
      ("eot_samples",) if target.defended else ()):
    flags.append(guarded(
        f"2x {what}", lambda what=what: convergence_flag(
            target, suite_result, x, y, what, convergence, extras,
            tolerance=noise, rerun=rerun),
        check_convergence(None, None, what)))
  flags.insert(1, check_failures(errors, name="sanity-runs-failed",
                                 what="sanity run"))
  return flags, extras
