r"""The leaderboard from finished reports: JSON rows, Markdown and a plot.

`row(entry, report, ...)` reads one `examples/attack_eval.py` report.json
(schema: `attacks.records`; see tests/golden/*/report.json) into one
leaderboard row; `load_finished_report` refuses a folder without report.json
or with the verdict INCOMPLETE (an attack raised: its worst case is not the
evaluation's). The verdict is read as the string the report holds, so verdict
states added later pass through. Field names follow RobustBench's
`model_info` where they mean the same thing (`name`, `link`, `venue`,
`architecture`, `additional_data`, `number_forward_passes`, `dataset`,
`eps`, `clean_acc`, `reported`, `footnote`); accuracies are percentages,
intervals 95% Clopper-Pearson bounds in percent.

`markdown(rows, ...)` renders docs/LEADERBOARD.md: ranked by the strict
worst case (every scoring draw must be right), claimed beside measured, the
attack that broke each, the budget against the reference, the verdict, and
`plot_claimed_vs_measured` (docs/leaderboard.png).
"""

import json
import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from attacks import model_checks
from attacks.defenses import protocol as protocol_lib

__all__ = [
    "UnfinishedReport", "load_finished_report", "markdown",
    "plot_claimed_vs_measured", "row", "write_json",
]

REPORT = "report.json"
INCOMPLETE = "INCOMPLETE"
# The budget fields a row states (RobustBench has none of them).
BUDGET_FIELDS = ("steps", "eot_samples", "draws", "queries", "restarts",
                 "query_draws")


class UnfinishedReport(ValueError):
  """A report folder whose evaluation is not finished."""


def load_finished_report(folder):
  """The report.json of a finished evaluation in `folder`.

  Args:
    folder: an attack_eval.py --report_dir.

  Returns:
    The report as a dict.

  Raises:
    UnfinishedReport: when the folder holds no report.json, or its verdict
      is INCOMPLETE (rerun its command: it resumes).
  """
  path = os.path.join(folder, REPORT)
  if not os.path.exists(path):
    raise UnfinishedReport(
        f"{folder!r} holds no {REPORT}: the evaluation has not finished; "
        "rerun its command (it resumes) before putting it in the table. "
        f"Received: report_dir={folder!r}")
  with open(path, encoding="utf-8") as f:
    report = json.load(f)
  verdict = str(report.get("verdict"))
  if verdict == INCOMPLETE:
    failed = ", ".join(sorted(report.get("failed") or {})) or "?"
    raise UnfinishedReport(
        f"{path!r} has the verdict {INCOMPLETE} (attacks raised: {failed}); "
        "its worst case is not the evaluation's, so it stays out of the "
        f"table. Received: verdict={verdict!r}")
  return report


def _percent(value):
  return None if value is None else round(100.0 * float(value), 2)


def _interval(pair):
  return None if pair is None else [_percent(pair[0]), _percent(pair[1])]


def _eps_text(epsilon):
  """8/255 for 0.0313..., else the number."""
  scaled = float(epsilon) * 255
  if abs(scaled - round(scaled)) < 1e-6:
    return f"{int(round(scaled))}/255"
  return f"{float(epsilon):g}"


def applied(checks, budget):
  """What the model checks made the evaluation do, in words."""
  steps = []
  if checks.get("randomized"):
    steps.append(f"EOT ({budget.get('eot_samples')} draws per gradient) and "
                 "R scoring draws")
  layers = checks.get("bpda_layers") or {}
  identity = sorted(path for path, why in layers.items()
                    if model_checks.SURROGATE_NOTE not in why)
  if identity:
    steps.append("identity BPDA on " + ", ".join(identity))
  for path in sorted(set(layers) - set(identity)):
    surrogate = layers[path].split(model_checks.SURROGATE_NOTE)[1]
    steps.append(f"BPDA on {path}, backward: {surrogate}")
  return steps or ["plain gradients (deterministic, differentiable)"]


def row(entry, report, command, leaderboard_command, report_dir):
  """One leaderboard row from an entry and its finished report.

  Args:
    entry: the `catalog.Entry`.
    report: its report.json (`load_finished_report`).
    command: the attack_eval command line that made the report.
    leaderboard_command: the leaderboard command that runs or resumes it.
    report_dir: the report folder.

  Returns:
    A JSON-ready dict (module docstring).
  """
  worst = report["worst_case"]
  checks = dict(report.get("meta", {}).get("model_checks") or {})
  budget = report.get("budget", {})
  used = {field: budget.get(field) for field in BUDGET_FIELDS}
  used["draws"] = report.get("draws")
  attack_acc = {a["name"]: _percent(a["strict_accuracy"])
                for a in report.get("attacks", [])}
  return {
      "name": entry.name,
      "title": entry.title,
      "paper": entry.paper,
      "link": entry.link,
      "venue": entry.venue,
      "kind": entry.kind,
      "dataset": report.get("meta", {}).get("dataset", "cifar10"),
      "data": report.get("meta", {}).get("data"),
      "threat_model": "Linf",
      "eps": _eps_text(budget.get("epsilon", 8 / 255)),
      "architecture": entry.architecture,
      "additional_data": False,
      "number_forward_passes": entry.number_forward_passes,
      "randomized": bool(checks.get("randomized")),
      "randomized_as_published": entry.randomized,
      "detected": {
          "randomized": checks.get("randomized"),
          "randomized_why": checks.get("randomized_why"),
          "masked_layers": checks.get("masked_layers") or {},
          "bpda_layers": checks.get("bpda_layers") or {},
          "notes": checks.get("notes") or [],
          "applied": applied(checks, budget),
      },
      "clean_acc": _percent(report["clean"]["strict_accuracy"]),
      "clean_acc_ci95": _interval(report["clean"]["strict_accuracy_ci95"]),
      "robust_acc": _percent(worst["strict_accuracy"]),
      "robust_acc_ci95": _interval(worst["strict_accuracy_ci95"]),
      "robust_acc_mean": _percent(worst["mean_accuracy"]),
      "robust_acc_mean_ci95": _interval(worst["mean_accuracy_ci95"]),
      "num_examples": report.get("images"),
      "seed": report.get("seed"),
      "budget": used,
      "budget_shortfall": report.get("weaker_than_reference", []),
      "attacks": [a["name"] for a in report.get("attacks", [])],
      "attack_acc": attack_acc,
      "verdict": str(report.get("verdict")),
      "masking_signs": report.get("masking_signs", []),
      "strongest_attack": worst.get("strongest"),
      "claimed_robust_acc": entry.claimed.as_dict(),
      "published_adaptive_acc": entry.published_adaptive.as_dict(),
      "reported": entry.claimed.value,
      # Crafting time summed over the units, whichever run made them (the
      # last run alone may only have reused them).
      "seconds": round(sum(a.get("elapsed_s") or 0.0
                           for a in report.get("attacks", [])), 1),
      "last_run_seconds": report.get("meta", {}).get("elapsed_s"),
      "command": command,
      "leaderboard_command": leaderboard_command,
      "report_dir": report_dir,
      "train_command": entry.train_command,
      "footnote": entry.footnote,
  }


def ranked(rows):
  """Rows by strict worst case, highest first (ties: mean, then name)."""
  return sorted(rows, key=lambda r: (-r["robust_acc"],
                                     -(r["robust_acc_mean"] or 0), r["name"]))


def write_json(rows, path):
  """Writes the ranked rows to `path` (a JSON list); returns them."""
  rows = ranked(rows)
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(rows, f, indent=1, ensure_ascii=False)
    f.write("\n")
  return rows


def _figure_text(figure):
  if figure.get("value") is None:
    return "—"
  where = ", ".join(x for x in (figure.get("dataset"),
                                figure.get("threat_model")) if x)
  return f"{figure['value']:g}" + (f" ({where})" if where else "")


def _shortfall_text(row_):
  short = row_.get("budget_shortfall") or []
  if not short:
    return "reference"
  return "; ".join(f"{s['field']} {s['used']} < {s['reference']}"
                   for s in short)


def plot_claimed_vs_measured(rows, path, title):
  """Claimed (x) against measured strict robust accuracy (y), with intervals.

  A row without a claimed figure is drawn at its published adaptive figure
  (a square) when it has one, and left out otherwise.

  Args:
    rows: leaderboard rows.
    path: PNG path.
    title: plot title.

  Returns:
    The names drawn.
  """
  figure, axis = plt.subplots(figsize=(5, 4))
  axis.plot([0, 100], [0, 100], color="gray", linestyle="--", linewidth=1,
            label="measured = claimed")
  drawn = []
  for kind, marker, label in (("claimed_robust_acc", "o", "claimed"),
                              ("published_adaptive_acc", "s",
                               "published adaptive (no claim)")):
    xs, ys, errors, names = [], [], [[], []], []
    for r in rows:
      if r["name"] in drawn or r[kind].get("value") is None:
        continue
      low, high = r["robust_acc_ci95"]
      xs.append(r[kind]["value"])
      ys.append(r["robust_acc"])
      errors[0].append(max(0.0, r["robust_acc"] - low))
      errors[1].append(max(0.0, high - r["robust_acc"]))
      names.append(r["name"])
    if xs:
      axis.errorbar(xs, ys, yerr=errors, fmt=marker, capsize=3, label=label)
      at = {}  # Rows on the same point share one label, a name per line.
      for x, y, name in zip(xs, ys, names):
        at.setdefault((x, y), []).append(name)
      for (x, y), together in at.items():
        axis.annotate("\n".join(together), (x, y), textcoords="offset points",
                      xytext=(4, 4), fontsize=7, va="bottom")
    drawn += names
  axis.set(xlabel="published figure (%)",
           ylabel="measured robust accuracy, strict (%)", xlim=(-3, 103),
           ylim=(-3, 103))
  axis.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
  axis.legend(fontsize=7, loc="upper left")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return drawn


def _cell(text):
  return str(text).replace("|", "\\|")


def markdown(rows, pending, plot_name, regenerate_command,
             protocol=protocol_lib.PROTOCOL):
  """docs/LEADERBOARD.md's text.

  Args:
    rows: leaderboard rows (ranked here).
    pending: `(entry, leaderboard command, why)` of entries not in the
      table.
    plot_name: the plot's path relative to the Markdown file, or None.
    regenerate_command: the command that rebuilt the file.
    protocol: the `Protocol` stated at the top.

  Returns:
    The Markdown text.
  """
  rows = ranked(rows)
  p = protocol
  lines = [
      "# Leaderboard: defenses RobustBench does not rank",
      "",
      "Randomized, preprocessing and test-time-optimization defenses, and "
      "the baselines beside them, evaluated as any defense by "
      "`examples/attack_eval.py`. Generated from `leaderboard.json` by",
      "",
      f"    {regenerate_command}",
      "",
      "(do not edit by hand).",
      "",
      "## Protocol",
      "",
      f"The first {p.num_examples} {p.dataset} test images, L∞ ε = "
      f"{p.epsilon}, seed {p.seed}. Reference budget: AutoAttack's `rand` "
      f"version (APGD-CE and APGD-DLR, {p.steps} iterations, EOT "
      f"{p.eot_samples}, {p.restarts} restart), Square with {p.queries} "
      f"queries of {p.query_draws} draws, R = {p.draws} scoring draws per "
      f"image; the attacks of `{' + '.join(p.attacks)}` that apply to the "
      "model; sanity reruns on every image and the doubled-budget "
      "convergence reruns. The model checks detect randomness (then EOT and "
      "R draws) and masked gradients (then BPDA: identity, or the surrogate "
      "the layer declares) on their own: the "
      "\"detected\" column says what they found. A row evaluated below the "
      "reference says where in \"budget\" and its verdict marks it.",
      "",
      "Robust accuracy is the strict worst case over the attacks that ran: "
      "an image counts only if every one of the R draws classifies every "
      "attack's image right; the mean over draws is beside it. Intervals "
      "are 95% Clopper-Pearson. \"Claimed\" is the authors' figure, "
      "\"published adaptive\" a later attack's, each at its own dataset and "
      "threat model (in brackets): only a CIFAR-10 L∞ 8/255 figure compares "
      "directly.",
      "",
      "## Table",
      "",
      "| # | defense | kind | randomized (detected) | clean | robust, strict "
      "[95% CI] | robust, mean | claimed | published adaptive | broken by | "
      "budget vs reference | verdict |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for rank, r in enumerate(rows, 1):
    low, high = r["robust_acc_ci95"]
    link = (f"[{r['title']}]({r['link']})" if r["link"].startswith("http")
            else r["title"])
    detected = ("yes" if r["randomized"] else "no") + (
        ", BPDA" if r["detected"]["bpda_layers"] else "")
    lines.append("| " + " | ".join(_cell(c) for c in (
        rank, link, r["kind"], detected, f"{r['clean_acc']:.1f}",
        f"**{r['robust_acc']:.1f}** [{low:.1f}, {high:.1f}]",
        f"{r['robust_acc_mean']:.1f}", _figure_text(r["claimed_robust_acc"]),
        _figure_text(r["published_adaptive_acc"]),
        r["strongest_attack"] or "—", _shortfall_text(r),
        r["verdict"])) + " |")
  if not rows:
    lines.append("| | (no finished evaluation yet) | | | | | | | | | | |")
  lines.append("")
  if plot_name:
    lines += [f"![claimed against measured robust accuracy]({plot_name})",
              "", "Claimed (or, without a claim, published adaptive) "
              "robust accuracy against the measured strict worst case, with "
              "its 95% interval; a point below the diagonal is a claim the "
              "evaluation breaks.", ""]
  lines += ["## Rows", ""]
  for r in rows:
    lines += [
        f"### {r['title']} (`{r['name']}`)", "",
        f"- Paper: {r['paper']}.",
        f"- Classifier: {r['architecture']}; forward passes per prediction: "
        f"{r['number_forward_passes']}.",
        f"- Model checks: {r['detected']['randomized_why'] or '—'}; applied: "
        f"{'; '.join(r['detected']['applied'])}.",
        f"- Images: {r['num_examples']}; budget: " + ", ".join(
            f"{k} {v}" for k, v in r["budget"].items() if v is not None) +
        f"; below the reference: {_shortfall_text(r)}.",
        f"- Per attack (strict %): " + ", ".join(
            f"{k} {v:.1f}" for k, v in r["attack_acc"].items()) + ".",
        f"- Claimed: {_figure_text(r['claimed_robust_acc'])}, source: "
        f"{r['claimed_robust_acc']['source']}"
        + (f" ({r['claimed_robust_acc']['note']})"
           if r["claimed_robust_acc"]["note"] else "") + ".",
        f"- Published adaptive: {_figure_text(r['published_adaptive_acc'])}"
        f", source: {r['published_adaptive_acc']['source']}"
        + (f" ({r['published_adaptive_acc']['note']})"
           if r["published_adaptive_acc"]["note"] else "") + ".",
        f"- Verdict: {r['verdict']}"
        + (f" (signs: {', '.join(r['masking_signs'])})"
           if r["masking_signs"] else "")
        + f"; attacks {r['seconds'] or 0:.0f} s summed over units (sanity "
        "reruns not counted).",
        f"- Report: `{r['report_dir']}/report.md`.",
    ]
    if r["footnote"]:
      lines.append(f"- Note: {r['footnote']}")
    if r["train_command"]:
      lines += ["- Classifier trained by:", "", f"      {r['train_command']}",
                ""]
    lines += ["- Made by:", "", f"      {r['command']}", "",
              "  Run or resume it with:", "",
              f"      {r['leaderboard_command']}", ""]
  if pending:
    lines += ["## Not yet in the table", ""]
    for entry, command, why in pending:
      lines += [f"- `{entry.name}` ({entry.title}): {why}. Run or resume:",
                "", f"      {command}", ""]
  lines += [
      "## Adding a defense", "",
      "One entry and one command: see \"Adding a defense to the "
      "leaderboard\" in [EVALUATION.md](EVALUATION.md).", ""]
  return "\n".join(lines)
