"""The checks of an evaluation's figures, and the verdict they give.

Each check compares figures the evaluation already has and returns a `Flag`
whose status is "ok", "FLAG" (the evaluation may be broken or too weak) or
"not run" (its inputs were missing; still printed). The checks follow
the evaluation rules of docs/EVALUATION.md (plus a flag for attacks that
raised), Athalye et al. (2018), Carlini et al. (2019) and Croce et al.
(2022): robust <= clean; finite outputs; accuracy falls as the budget
grows; a large budget (epsilon = 0.5) drives accuracy near 0; a transfer or query-based attack
beating every white-box attack signals gradient masking; an estimator giving
zero or NaN gradients; accuracy still falling with twice the steps,
restarts or EOT samples (not converged); per-draw gradients so spread around
their EOT mean that the mean is mostly noise.

`verdict` turns failures, flags and `shortfalls` into a state that says
what the worst-case figure is:

- COMPLETE (exit status 0 of examples/attack_eval.py): every planned attack
  ran at or above the reference budget, the convergence checks ran and
  passed, and no sign of gradient masking tripped.
- UPPER BOUND (4): as COMPLETE, but below the reference budget, with
  epsilon 0, or with convergence not shown (`shortfalls` says which).
- SUSPECT (2): a sign of gradient masking tripped (`MASKING_SIGNS`).
- INCOMPLETE (1): an attack raised or did not run.

The image count is not a shortfall: fewer images widen the intervals that
every figure carries, they do not bias it. The extra attack runs that feed
some of these checks are `attacks.sanity`'s.
"""

import dataclasses

from attacks import suite

__all__ = [
    "Flag", "LARGE_EPSILON", "MASKING_SIGNS", "NOT_RUN", "OK", "TRIPPED",
    "cheap_checks", "check_convergence", "check_eot_gradients",
    "check_failures", "check_gradient_masking", "check_gradients",
    "check_masked_layers",
    "check_large_epsilon", "check_monotone_epsilon", "check_nonfinite_outputs",
    "check_robust_le_clean", "format_flags", "masking_signs",
    "nonfinite_counts", "shortfalls", "verdict"
]

OK, TRIPPED, NOT_RUN = "ok", "FLAG", "not run"
# The large budget the sanity checks rerun the strongest attack at.
LARGE_EPSILON = 0.5
# Checks whose tripping is a sign that the evaluation, not the model, failed:
# gradients that do not reach the input, or outputs that are not numbers
# (Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial
# robustness"). Any of them makes the verdict SUSPECT (`verdict`).
MASKING_SIGNS = ("gradient-masking", "zero-or-nan-gradients", "large-epsilon",
                 "monotone-in-epsilon", "nonfinite-outputs", "masked-layers")
# The checks that show an attack has converged (2x its steps, restarts or
# EOT samples does not lower accuracy); COMPLETE needs one to have run and
# none to have tripped.
CONVERGENCE_PREFIX = "converged-in-"
# Budget fields whose shortfall does not bias the worst case (it widens the
# intervals instead).
NOT_A_SHORTFALL = ("images",)


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


def check_nonfinite_outputs(counts):
  """Flags a model that returned NaN or inf logits on scored images.

  A non-finite output never counts as a correct prediction
  (`attacks.scoring.predict_labels`), but such a model breaks the attacks'
  losses as well, so the evaluation cannot stand.

  Args:
    counts: dict run name ("clean" or an attack) -> number of (draw, image)
      pairs whose output held a non-finite entry.

  Returns:
    A `Flag`.
  """
  bad = {name: count for name, count in counts.items() if count}
  if bad:
    return _flag("nonfinite-outputs", True, "the model returned NaN or inf "
                 "logits (never counted as correct) on " + ", ".join(
                     f"{name}: {count} (draw, image) pairs"
                     for name, count in bad.items()))
  return _flag("nonfinite-outputs", False, "finite outputs on every scored image")


def nonfinite_counts(suite_result):
  """Run name ("clean", then each attack) -> its non-finite outputs."""
  counts = {"clean": suite_result.clean.nonfinite}
  counts.update({r.name: r.score.nonfinite for r in suite_result.results})
  return counts


def cheap_checks(suite_result, tolerance=0.0):
  """The checks that need no extra attack runs.

  Failures, robust <= clean, non-finite outputs and gradient masking (a
  black-box or transfer attack beating every white-box one); `run_checks`
  adds the epsilon sweep, gradient and convergence checks.

  Args:
    suite_result: a `suite.SuiteResult`.
    tolerance: slack for draw noise (`draw_noise`).

  Returns:
    A list of `Flag`, gradient masking last.
  """
  results = suite_result.results
  white = {r.name: r.score.mean_accuracy for r in results
           if r.kind == suite.WHITE_BOX}
  black = {r.name: r.score.mean_accuracy for r in results
           if r.kind != suite.WHITE_BOX}
  return [check_failures(suite_result.failed),
          check_robust_le_clean(suite_result.clean.mean_accuracy,
                                {r.name: r.score.mean_accuracy
                                 for r in results}, tolerance=tolerance),
          check_nonfinite_outputs(nonfinite_counts(suite_result)),
          check_gradient_masking(white, black, tolerance=tolerance)]


def masking_signs(flags):
  """The tripped flags among `MASKING_SIGNS`, in `flags`' order."""
  return [f for f in flags if f.tripped and f.name in MASKING_SIGNS]


def shortfalls(suite_result, flags):
  """Why an evaluation's worst case is only an upper bound ([] if it is not).

  Args:
    suite_result: the `suite.SuiteResult`.
    flags: its `Flag`s (the convergence checks among them).

  Returns:
    A list of short texts: each budget field below the reference (as
    `used (ref. reference)`), epsilon 0, and convergence not shown (no
    convergence check ran, or one found accuracy still falling) or an EOT
    mean gradient dominated by noise.
  """
  reasons = [f"{w['field']} {w['used']} (ref. {w['reference']})"
             for w in suite_result.weaker_than_reference
             if w["field"] not in NOT_A_SHORTFALL]
  if suite_result.budget.epsilon == 0:
    reasons.append("epsilon 0 (no perturbation: robust is clean accuracy)")
  convergence = [f for f in flags if f.name.startswith(CONVERGENCE_PREFIX)]
  tripped = [f.name for f in convergence if f.tripped]
  if tripped:
    reasons.append(f"not converged ({', '.join(tripped)})")
  elif not any(f.status == OK for f in convergence):
    reasons.append("convergence not shown (no 2x steps, restarts or EOT "
                   "rerun ran)")
  if any(f.name == "eot-gradient-noise" and f.tripped for f in flags):
    reasons.append("EOT mean gradient dominated by noise (more EOT samples "
                   "needed)")
  return reasons


def verdict(failed, flags, short=()):
  """The verdict of an evaluation: the module docstring's table.

  INCOMPLETE when an attack raised (its worst case is an upper bound);
  SUSPECT when every attack ran but a sign of gradient masking tripped
  (`MASKING_SIGNS`: a black-box or transfer attack beats every white-box one,
  zero or non-finite gradients, accuracy far from 0 at a large epsilon,
  accuracy rising with epsilon, non-finite outputs, a masked layer no BPDA
  wraps), so its figures may say more about the attacks than about the
  model; UPPER BOUND when the figure is sound but short of the reference
  (`shortfalls`); COMPLETE otherwise.

  Args:
    failed: dict attack name -> error of attacks that raised.
    flags: the evaluation's `Flag`s.
    short: `shortfalls` of the evaluation (empty: none).

  Returns:
    One of `suite.STATES`.
  """
  if failed:
    return suite.INCOMPLETE
  if masking_signs(flags):
    return suite.SUSPECT
  return suite.UPPER_BOUND if short else suite.COMPLETE


def check_masked_layers(model_checks):
  """Flags masked input gradients that no BPDA wrapper bridges.

  A layer (or a raw op of a functional graph, or the whole model) whose
  input gradient is None, zero, not finite or shattered (`attacks.detect`)
  leaves the white-box attacks blind unless it is wrapped with BPDA; one
  left unwrapped is a sign of gradient masking.

  Args:
    model_checks: `ModelChecks.to_dict()` of the evaluation, or None (not
      checked).

  Returns:
    A `Flag`.
  """
  name = "masked-layers"
  if not model_checks:
    return Flag(name, NOT_RUN, "the model was not checked")
  wrapped = model_checks.get("bpda_layers") or {}
  masked = model_checks.get("masked_layers") or {}
  bare = {path: why for path, why in masked.items() if path not in wrapped}
  whole = model_checks.get("whole_gradient", "ok")
  if whole != "ok" and not masked:
    bare["(whole model)"] = f"input gradient {whole}, no layer found"
  if bare:
    return _flag(name, True, "masked input gradients without BPDA: " +
                 "; ".join(f"{path} ({why})" for path, why in bare.items()))
  if masked:
    return _flag(name, False, "every masked layer is wrapped with BPDA: " +
                 ", ".join(masked))
  return _flag(name, False, "no masked input gradient found")


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
