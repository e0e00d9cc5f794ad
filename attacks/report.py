"""Writes a robustness report: report.json, report.md (a Table 3) and PNG plots.

Every report opens with its verdict (INCOMPLETE when an attack raised: its
worst case is then only an upper bound) and each way its budget falls below
the reference (`suite.weaker_than_reference`), or says that it meets it; the
JSON holds both (`verdict`, `weaker_than_reference`). It then names the
attacks of the `adaptive` preset that apply to the model but did not run
(`suite.not_run`): the worst case is an upper bound on the preset's until
they do. Every accuracy carries its 95% Clopper-Pearson interval
(`attacks.scoring`), and the worst case the per-example success
probability over draws.

report.md follows the shape of Xiao & Zheng (CVPR 2020), Table 3: the clean
accuracy A_std, one row per attack with its budget and cost, the worst case
over white-box attacks (the paper's "Ours (under BPDA)" row) and over all
attacks (its A_rob), naming the attack that achieved the minimum, and the
sanity flags. The plots are accuracy vs epsilon, accuracy vs EOT samples (the
paper's Fig. 7) and a grid x / g(x) / E[g(x)] / x_adv (its Figs. 2 and 4).
Every figure carries its budget, its data, its seed and its image count.
"""

import json
import os
import platform

import keras
import numpy as np
import tensorflow as tf

from attacks import model_checks
from attacks import records
from attacks import sanity
from attacks import suite
# The plots, also reachable here.
# pylint: disable=unused-import
from attacks.plots import plot_accuracy_vs_eot
from attacks.plots import plot_accuracy_vs_epsilon
from attacks.plots import plot_transform_grid
from attacks.plots import transform_views
# pylint: enable=unused-import

__all__ = [
    "budget_line", "header_lines", "machine_info", "model_check_lines",
    "print_summary", "report_dict", "success_histogram", "table_markdown",
    "write_report"
]


def machine_info():
  """Platform, CPU count, devices and library versions, for the report."""
  return {
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "devices": [d.name for d in tf.config.list_physical_devices()],
      "python": platform.python_version(),
      "tensorflow": tf.__version__,
      "keras": keras.__version__,
  }


def _worst_dict(worst):
  arrays = ("robust", "per_example_success")
  return {k: v for k, v in worst.items() if k not in arrays} | {
      "robust": [int(v) for v in worst["robust"]],
      "per_example_success": [float(v) for v in worst["per_example_success"]]}


def report_dict(suite_result, flags, extras=None, meta=None):
  """Everything of one evaluation as a JSON-ready dict.

  Args:
    suite_result: a `suite.SuiteResult`.
    flags: list of `sanity.Flag`.
    extras: dict of extra figures (epsilon curve, EOT curve, gradients).
    meta: dict of run facts: `data` (e.g. "CIFAR-10 (JPEG copy)"), `split`,
      `model`, ... (copied as is).

  Returns:
    A dict.
  """
  budget = suite_result.budget
  short = sanity.shortfalls(suite_result, flags)
  state = sanity.verdict(suite_result.failed, flags, short)
  signs = {"masking_signs": [f.name for f in sanity.masking_signs(flags)]
          } if state == suite.SUSPECT else {}
  if state == suite.UPPER_BOUND:
    signs["upper_bound"] = short
  return signs | {
      "verdict": state,
      "weaker_than_reference": list(suite_result.weaker_than_reference),
      "meta": dict(meta or {}),
      "machine": machine_info(),
      "seed": suite_result.seed,
      "draws": suite_result.draws,
      "images": int(suite_result.clean.robust.size),
      "defended": suite_result.defended,
      **({"randomized": suite_result.randomized}
         if suite_result.randomized is not None else {}),
      "budget": {
          "epsilon": budget.epsilon, "steps": budget.steps,
          "restarts": budget.restarts, "eot_samples": budget.eot_samples,
          "queries": budget.queries, "query_draws": budget.query_draws,
          "value_range": list(budget.value_range)
      },
      "clean": suite_result.clean.to_dict(),
      "attacks": [r.to_dict() for r in suite_result.results],
      "skipped": dict(suite_result.skipped),
      "failed": dict(suite_result.failed),
      "worst_case": _worst_dict(suite_result.worst),
      "worst_case_white_box": _worst_dict(suite_result.worst_white_box),
      "flags": [f.to_dict() for f in flags],
      "extras": dict(extras or {}),
  }


def budget_text(budget):
  """A report's budget dict as text: `eps=8/255, steps=100, ...`."""
  parts = []
  for key, value in budget.items():
    if key == "epsilon":
      parts.append(f"eps={value * 255:.4g}/255")
    else:
      parts.append(f"{key}={value}")
  return ", ".join(parts)


def _percent(value):
  return f"{records.percent(value, 1)}%"


def with_interval(figures, key, bold=False):
  """`figures[key]` in percent with its 95% interval: `50.0% [6.8, 93.2]`."""
  low, high = figures[f"{key}_ci95"]
  value = f"**{_percent(figures[key])}**" if bold else _percent(figures[key])
  return f"{value} [{100 * low:.1f}, {100 * high:.1f}]"


def model_check_lines(checks):
  """What the evaluation found about the model and did about it (markdown).

  Args:
    checks: `meta["model_checks"]` of a report (see
      `attacks.model_checks.ModelChecks.to_dict`), or None.

  Returns:
    A list of lines (empty without checks).
  """
  if not checks:
    return []
  lines = ["", f"Model: randomized {checks['randomized']} "
           f"({checks['randomized_why']}); replay "
           f"{'exact' if checks['replay_exact'] else 'NOT exact'} "
           f"({checks['replay_why']})."]
  if checks["bpda_layers"]:
    own = any(model_checks.SURROGATE_NOTE in why
              for why in checks["bpda_layers"].values())
    lines.append(("BPDA (identity backward unless a surrogate is named) "
                  if own else "BPDA (identity backward) ") +
                 "applied to: " + "; ".join(
        f"{name} ({why})" for name, why in checks["bpda_layers"].items()) +
                 f". The plain-gradient comparison `{suite.NO_BPDA_SPEC}` "
                 "keeps the model's own gradients.")
  elif checks.get("masked_layers"):
    lines.append("Layers with masked input gradients, NOT wrapped (BPDA "
                 "off): " + "; ".join(f"{name} ({why})" for name, why in
                                     checks["masked_layers"].items()) + ".")
  for note in checks.get("notes", []):
    lines.append(note)
  return lines


def header_lines(report):
  """The verdict, the budget against the reference and the attacks not run.

  Args:
    report: a `report_dict`.

  Returns:
    A list of markdown lines (paragraphs separated by empty lines).
  """
  reference = suite.BUDGET_PRESETS["reference"]
  failed = report["failed"]
  if failed:
    lines = [f"**Verdict: {suite.INCOMPLETE}.** Attacks that raised: "
             f"{', '.join(sorted(failed))}. The worst case below omits them: "
             "it is an upper bound, not a verdict."]
  elif report["verdict"] == suite.SUSPECT:
    lines = [f"**Verdict: {suite.SUSPECT} (gradient masking).** Every planned "
             "attack ran, but these signs of a failed evaluation tripped: "
             f"{', '.join(report['masking_signs'])} (see the sanity checks). "
             "The worst case below is an upper bound until an adaptive attack "
             "(BPDA, EOT, another loss) clears them."]
  elif report["verdict"] == suite.UPPER_BOUND:
    lines = [f"**Verdict: {suite.UPPER_BOUND}.** Every planned attack ran "
             "with no sign of gradient masking, but the worst case below is "
             "only an upper bound on the reference evaluation's: "
             f"{'; '.join(report['upper_bound'])}."]
  else:
    lines = [f"Verdict: {suite.COMPLETE} (every planned attack ran at the "
             "reference budget; convergence checks passed)."]
  lines += model_check_lines(report["meta"].get("model_checks"))
  budget = reference.budget
  lines += ["", f"Reference budget: AutoAttack `rand` ({budget.steps} steps, "
            f"EOT {budget.eot_samples}, {budget.restarts} restart), Square "
            f"{budget.queries} queries, {budget.query_draws} draws per query "
            "(this package's default on a randomized model), "
            f"{reference.images} images, R = {reference.draws} draws.", ""]
  weaker = [w for w in report["weaker_than_reference"]
            if w["field"] not in sanity.NOT_A_SHORTFALL]
  fewer = [w for w in report["weaker_than_reference"]
           if w["field"] in sanity.NOT_A_SHORTFALL]
  if weaker:
    listed = ", ".join(f"{w['field']} {w['used']} (reference {w['reference']})"
                       for w in weaker)
    lines.append(f"**WEAKER THAN REFERENCE:** {listed}. These figures are not "
                 "a reference-strength evaluation.")
  else:
    lines.append("Budget at reference strength.")
  lines += [f"Fewer {w['field']} than the reference ({w['used']}, reference "
            f"{w['reference']}): wider intervals, not a weaker attack."
            for w in fewer]
  ran = [row["name"] for row in report["attacks"]] + list(report["failed"])
  missing = suite.not_run(ran, report["defended"],
                          randomized=report.get("randomized"))
  if missing:
    lines += ["", f"**Not run:** {len(missing)} attacks of the `adaptive` "
              f"preset that apply to this model: {', '.join(missing)}. The "
              "worst case is an upper bound on the preset's."]
  else:
    lines += ["", "Every attack of the `adaptive` preset that applies to this "
              "model ran."]
  return lines


def success_histogram(success):
  """Counts of images by success probability over draws.

  Args:
    success: per-example success probabilities (fractions of draws).

  Returns:
    dict with the counts `never` (p = 0), `below_half` (0 < p < 0.5),
    `half_or_more` (0.5 <= p < 1) and `always` (p = 1).
  """
  success = np.asarray(success, float)
  return {"never": int(np.sum(success == 0.0)),
          "below_half": int(np.sum((success > 0.0) & (success < 0.5))),
          "half_or_more": int(np.sum((success >= 0.5) & (success < 1.0))),
          "always": int(np.sum(success == 1.0))}


def table_markdown(report):
  """The Table-3-like markdown table of a `report_dict`."""
  lines = [
      "| Attack | Kind | Budget | Mean acc. [95% CI] | Strict acc. [95% CI] | "
      "Time (s) | f_b passes | f_b passes/s |",
      "|---|---|---|---|---|---|---|---|",
  ]
  clean = report["clean"]
  lines.append(f"| clean (A_std) | - | - | "
               f"{with_interval(clean, 'mean_accuracy')} | "
               f"{with_interval(clean, 'strict_accuracy')} | - | - | - |")
  for row in report["attacks"]:
    lines.append(
        f"| {row['name']} | {row['kind']} | {budget_text(row['budget'])} | "
        f"{with_interval(row, 'mean_accuracy')} | "
        f"{with_interval(row, 'strict_accuracy')} | "
        f"{row['elapsed_s']:.2f} | {row['f_b_passes']} | "
        f"{row['f_b_passes_per_s']:.0f} |")
  for label, key in (("worst case, white-box", "worst_case_white_box"),
                     ("worst case, all attacks (A_rob)", "worst_case")):
    worst = report[key]
    lines.append(f"| **{label}** | per example | by {worst['strongest']} | "
                 f"{with_interval(worst, 'mean_accuracy')} | "
                 f"{with_interval(worst, 'strict_accuracy', bold=True)} | "
                 "- | - | - |")
  return "\n".join(lines)


def budget_line(report):
  """The report's "Budget:" line: the budget that ran.

  On a deterministic model EOT samples and query draws are 1 whatever was
  requested (one draw is all there is); the line says so instead of
  printing the request.
  """
  budget = report["budget"]
  random = report.get("randomized", report["defended"])
  draws = {field: budget[field] for field in ("eot_samples", "query_draws")}
  if not random and any(value > 1 for value in draws.values()):
    shown = (f"eot_samples=1, queries={budget['queries']}, query_draws=1 "
             f"(deterministic model: one draw is all there is; requested "
             f"eot_samples={draws['eot_samples']}, "
             f"query_draws={draws['query_draws']})")
  else:
    shown = (f"eot_samples={budget['eot_samples']}, "
             f"queries={budget['queries']}, "
             f"query_draws={budget['query_draws']}")
  return (f"Budget: L∞ eps={budget['epsilon'] * 255:.4g}/255, "
          f"steps={budget['steps']}, restarts={budget['restarts']}, "
          f"{shown}.")


def markdown(report):
  """The whole report.md text of a `report_dict`."""
  meta = report["meta"]
  budget = report["budget"]
  worst = report["worst_case"]
  lines = ["# Robustness report", ""] + header_lines(report) + [
      "",
      f"Data: {meta.get('data', 'unknown')}, {report['images']} images"
      f"{', split ' + meta['split'] if 'split' in meta else ''}. "
      f"Model: {meta.get('model', 'unknown')}"
      f"{' (defended: AdversarialTransform)' if report['defended'] else ''}. "
      f"Seed {report['seed']}; each adversarial image scored with "
      f"{report['draws']} draws of the model.", "",
      budget_line(report), "",
      "Mean acc. = fraction of (image, draw) pairs correct; strict acc. = "
      "fraction of images correct in every draw. The worst case is per "
      "example: an image counts only if it is correct in every draw, clean "
      "and under every attack. Each attack run is scored with its own "
      "independent draws. Intervals: 95% Clopper-Pearson over the images (for "
      "the mean, at k = images x mean accuracy; the draws of one image are not "
      "counted as independent trials).", "",
      table_markdown(report), "",
      f"**Worst-case robust accuracy: "
      f"{with_interval(worst, 'strict_accuracy')} (strict), strongest "
      f"attack: {worst['strongest']}"
      f"{' (INCOMPLETE: upper bound)' if report['failed'] else ''}.**", "",
      "Per-example success probability over draws (worst case over the clean "
      "images and every attack; per image in report.json, "
      "`worst_case.per_example_success`): " + _histogram_text(
          success_histogram(worst["per_example_success"])) + ".", "",
      "## Sanity checks", "",
  ]
  sanity_images = report["extras"].get("sanity_images", report["images"])
  if sanity_images < report["images"]:
    lines += [f"The extra runs (epsilon sweep, 2x reruns, gradient statistics, "
              f"accuracy vs EOT samples) used the first {sanity_images} of the "
              f"{report['images']} images, compared with the attacks' scores on "
              "those images.", ""]
  lines += [f"- [{f['status']}] {f['name']}: {f['message']}"
            for f in report["flags"]]
  if report["failed"]:
    lines += ["", "## Failed (not in the worst case: verdict INCOMPLETE)", ""]
    lines += [f"- {name}: {why}" for name, why in report["failed"].items()]
  if report["skipped"]:
    lines += ["", "## Skipped", ""]
    lines += [f"- {name}: {why}" for name, why in report["skipped"].items()]
  machine = report["machine"]
  lines += ["", "## Machine", "",
            f"{machine['platform']}, {machine['cpu_count']} CPUs, devices "
            f"{machine['devices']}, TensorFlow {machine['tensorflow']}, "
            f"Keras {machine['keras']}.", ""]
  return "\n".join(lines)


def _histogram_text(counts):
  return (f"fooled in every draw {counts['always']}, in at least half "
          f"{counts['half_or_more']}, in fewer than half "
          f"{counts['below_half']}, never {counts['never']}")


def write_report(report_dir, suite_result, flags, extras=None, meta=None,
                 grid=None, eot_curve=None):
  """Writes report.json, report.md and the PNG plots into `report_dir`.

  Args:
    report_dir: output directory (created).
    suite_result: a `suite.SuiteResult`.
    flags: list of `sanity.Flag`.
    extras: dict from `sanity.run_checks` (holds `accuracy_vs_epsilon`).
    meta: run facts (`data`, `split`, `model`, ...).
    grid: optional dict column label -> images for the transform grid.
    eot_curve: optional dict EOT samples -> accuracy.

  Returns:
    `(paths, report)`: dict file kind -> path of what was written, and the
    report.json dict.
  """
  os.makedirs(report_dir, exist_ok=True)
  extras = dict(extras or {})
  if eot_curve:
    extras["accuracy_vs_eot"] = {str(k): v for k, v in sorted(eot_curve.items())}
  report = report_dict(suite_result, flags, extras, meta)
  data = report["meta"].get("data", "")
  paths = {"json": os.path.join(report_dir, "report.json"),
           "md": os.path.join(report_dir, "report.md")}
  with open(paths["json"], "w") as f:
    json.dump(report, f, indent=1)
  with open(paths["md"], "w") as f:
    f.write(markdown(report))
  curve = {float(e): a for e, a in extras.get("accuracy_vs_epsilon", {}).items()}
  sanity_images = extras.get("sanity_images", report["images"])
  budget = suite_result.budget
  if curve:
    paths["epsilon_png"] = os.path.join(report_dir, "accuracy_vs_epsilon.png")
    plot_accuracy_vs_epsilon(
        curve, paths["epsilon_png"],
        f"{extras.get('reference_attack')} ({budget.steps} steps, EOT "
        f"{budget.eot_samples}), {data}, {sanity_images} images, R = "
        f"{suite_result.draws}",
        clean=extras.get("sanity_clean_accuracy",
                         suite_result.clean.mean_accuracy))
  if eot_curve:
    paths["eot_png"] = os.path.join(report_dir, "accuracy_vs_eot.png")
    plot_accuracy_vs_eot(
        eot_curve, paths["eot_png"],
        f"{extras.get('eot_attack', 'EOT')} ({budget.steps} steps, eps "
        f"{budget.epsilon * 255:.4g}/255), {data}, {sanity_images} images, "
        f"R = {suite_result.draws}")
  if grid:
    paths["grid_png"] = os.path.join(report_dir, "transform_grid.png")
    plot_transform_grid(grid, paths["grid_png"],
                        f"x / g(x) / E[g(x)] / x_adv ({data})")
  return paths, report


def print_summary(report_path_or_dict):
  """Returns the verdict, budget, table and flags of a report (for printing)."""
  report = report_path_or_dict
  if isinstance(report, str):
    with open(report) as f:
      report = json.load(f)
  return "\n".join(header_lines(report)) + "\n\n" + table_markdown(
      report) + "\n\n" + sanity.format_flags(
          [sanity.Flag(**f) for f in report["flags"]])
