"""Sanity checks printed with every robustness report (flags, never silent).

Each check returns a `Flag` whose status is "ok", "FLAG" (the evaluation may be
broken or too weak) or "not run" (its inputs were missing; still printed).
The checks follow DESIGN.md's evaluation rules (plus a flag for attacks that
raised) and Athalye et al. (2018) /
Croce et al. (2022): robust <= clean; accuracy falls as the budget grows; a
large budget (epsilon = 0.5) drives accuracy near 0; a transfer or query-based
attack beating every white-box attack signals gradient masking; an estimator
giving zero or NaN gradients; accuracy still falling with twice the steps or
restarts (not converged).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from attacks import common
from attacks import suite

__all__ = [
    "Flag", "EPSILON_SWEEP", "LARGE_EPSILON", "check_convergence",
    "check_failures",
    "check_gradient_masking", "check_gradients", "check_large_epsilon",
    "check_monotone_epsilon", "check_robust_le_clean", "epsilon_sweep",
    "format_flags", "gradient_stats", "reference_attack", "run_checks"
]

EPSILON_SWEEP = (2 / 255, 4 / 255, 8 / 255, 16 / 255)
LARGE_EPSILON = 0.5
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


def check_failures(failed):
  """Flags attacks that raised instead of returning images.

  Args:
    failed: dict attack name -> error message.

  Returns:
    A `Flag`.
  """
  if failed:
    return _flag("attacks-failed", True, "; ".join(
        f"{name}: {error}" for name, error in sorted(failed.items())))
  return _flag("attacks-failed", False, "every attack ran")


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
                 f"attacks above clean accuracy {clean_accuracy:.4f}: {listed}")
  return _flag("robust<=clean", False,
               f"every attack <= clean accuracy {clean_accuracy:.4f}")


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
    return _flag("monotone-in-epsilon", True, f"accuracy rises with epsilon: {curve}")
  return _flag("monotone-in-epsilon", False, f"non-increasing: {curve}")


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
               f"best white-box attack {best_white} ({white_box[best_white]:.4f})")


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
    doubled: accuracy with twice the steps or restarts (None: not run).
    what: "steps" or "restarts", for the message.
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
               + (" (still falling: not converged)" if tripped else ""))


def format_flags(flags):
  """One line per flag: `[status] name: message`."""
  return "\n".join(f"[{f.status}] {f.name}: {f.message}" for f in flags)


def reference_attack(suite_result, field=None):
  """The strongest white-box run of a suite (None if it ran none).

  Ties (same strict and mean accuracy) go to the cheapest run in seconds, so
  the sanity reruns do not repeat an expensive attack for nothing.

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
                                   r.score.mean_accuracy, r.elapsed_s),
             default=None)


def epsilon_sweep(target, reference, x, y, suite_result,
                  epsilons=EPSILON_SWEEP + (LARGE_EPSILON,)):
  """Mean accuracy of the reference attack at each epsilon (reusing its own)."""
  budget = suite_result.budget
  curve = {}
  for epsilon in epsilons:
    if epsilon == budget.epsilon:
      curve[epsilon] = reference.score.mean_accuracy
    else:
      curve[epsilon] = suite.rerun(target, reference.name, x, y, budget,
                                   suite_result.seed, suite_result.draws,
                                   epsilon=epsilon).score.mean_accuracy
  return curve


def convergence_flag(target, suite_result, x, y, what, run, extras):
  """Reruns the strongest white-box attack taking `what` with 2x of it."""
  reference = reference_attack(suite_result, field=what)
  if not run or reference is None:
    return check_convergence(None, None, what)
  budget = suite_result.budget
  doubled = suite.rerun(target, reference.name, x, y, budget, suite_result.seed,
                        suite_result.draws, **{what: 2 * getattr(budget, what)})
  extras[f"doubled_{what}"] = {"attack": reference.name,
                               "accuracy": doubled.score.mean_accuracy}
  return check_convergence(reference.score.mean_accuracy,
                           doubled.score.mean_accuracy, what,
                           attack=reference.name)


def run_checks(target, suite_result, x, y, convergence=True):
  """Runs every sanity check on a suite's output (extra attack runs included).

  Reruns the strongest white-box attack at epsilon in {2, 4, 8, 16}/255 and
  0.5 and with 2x steps, the strongest white-box attack that takes restarts
  with 2x restarts, and measures one-draw gradients of every estimator the
  suite used.

  Args:
    target: the `suite.Target` the suite ran on.
    suite_result: a `suite.SuiteResult`.
    x: the suite's images.
    y: their labels.
    convergence: run the 2x steps / restarts reruns.

  Returns:
    `(flags, extras)`: a list of `Flag` and a dict with the epsilon curve
    (`accuracy_vs_epsilon`), the gradient statistics and the reruns' figures.
  """
  results = suite_result.results
  clean = suite_result.clean.mean_accuracy
  flags = [check_failures(suite_result.failed),
           check_robust_le_clean(clean, {r.name: r.score.mean_accuracy
                                         for r in results})]
  reference = reference_attack(suite_result)
  extras = {"reference_attack": reference.name if reference else None}
  curve = {}
  if reference is not None:
    curve = epsilon_sweep(target, reference, x, y, suite_result)
  extras["accuracy_vs_epsilon"] = {str(e): a for e, a in sorted(curve.items())}
  flags.append(check_monotone_epsilon(
      {e: a for e, a in curve.items() if e != LARGE_EPSILON}))
  flags.append(check_large_epsilon(curve.get(LARGE_EPSILON)))
  white = {r.name: r.score.mean_accuracy for r in results
           if r.kind == suite.WHITE_BOX}
  black = {r.name: r.score.mean_accuracy for r in results
           if r.kind != suite.WHITE_BOX}
  flags.append(check_gradient_masking(white, black))
  if target.defended:
    estimators = sorted({suite.REGISTRY[name].estimator for name in white})
  else:  # White-box attacks differentiate the model directly.
    estimators = ["direct"] if white else []
  stats = {e: gradient_stats(target.white_box_fn(e, seed=suite_result.seed),
                             x, y) for e in estimators}
  extras["gradients"] = stats
  flags.append(check_gradients(stats))
  for what in ("steps", "restarts"):
    flags.append(convergence_flag(target, suite_result, x, y, what, convergence,
                                  extras))
  return flags, extras
