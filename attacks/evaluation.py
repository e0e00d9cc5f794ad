"""The whole evaluation of any Keras classifier as one library call.

`evaluate(model, x, y, attacks="adaptive", budget="reference")` does what
`examples/attack_eval.py` does, from Python: it checks the inputs once
(`attacks.preflight`), looks at the model (`check_model`), plans the units
(`attacks.plan`), runs them (`attacks.execute`, resumable in `report_dir`),
merges them (`attacks.merge`), runs the sanity checks and the accuracy-vs-EOT
curve (`attacks.sanity`), writes the report (`attacks.report`) and the
exports (`attacks.export`), and returns an `Evaluation` to print or index.

What it finds about the model, it acts on and states in the report
(`attacks.model_checks`), for any model, not only this package's
`AdversarialTransform` (the checks of AutoAttack's `checks.py`, acted on):

- Randomness: two inference passes on the same images disagree
  (`attacks.detect.is_randomized`). A randomized model gets EOT at the
  budget's samples, query attacks that score candidates over draws, R
  scoring draws, the EOT curve and convergence check, the attacks on the
  expected output and AutoAttack's `rand` version; a deterministic one gets
  1 draw of each (and the report says so).
- Seeding: every draw the evaluation can seed follows the unit's seed
  (`attacks.detect.seeded`); whether that makes replay exact is measured
  (`attacks.detect.replay_is_exact`) and stated.
- Masked gradients: a layer whose input gradient is None, zero or not
  finite (`attacks.detect.masked_layers`) is wrapped with identity BPDA for
  the white-box attacks (`attacks.bpda`; Athalye et al. 2018), and one plain
  gradient attack stays in the list for comparison.
- A sign of gradient masking in the sanity checks (or a masked layer that
  no BPDA wrapper bridges) makes the verdict SUSPECT; a budget below the
  reference or convergence not shown makes it UPPER BOUND; only the rest is
  COMPLETE (`attacks.verdict`).

`prepare` is the same start (checks, target, plan) without running: a
program that shards, dry-runs or replays (`examples/attack_eval.py`) calls
its `run` and `report` itself.

Example:
  >>> result = evaluate(model, x, y, attacks="adaptive", budget="smoke",
  ...                   report_dir="report/")
  >>> print(result.summary())  # e.g. "UPPER BOUND: worst-case robust ..."
  >>> result.verdict, result.worst["strict_accuracy"]
"""

import dataclasses
import tempfile
import time

import numpy as np
import tqdm

from attacks import budgets
from attacks import common
from attacks import detect
from attacks import distributed
from attacks import execute
from attacks import export
from attacks import merge
from attacks import model_checks
from attacks import plan as plan_lib
from attacks import preflight
from attacks import report
from attacks import sanity
from attacks import suite

__all__ = [
    "EXIT_STATUS", "Evaluation", "Options", "Prepared", "evaluate",
    "exit_status", "prepare", "report_evaluation", "run_units"
]

# Exit status of each verdict state (`attacks.verdict`): a script can tell
# them apart. 3 is a refused input (examples/attack_eval.py).
EXIT_STATUS = {suite.COMPLETE: 0, suite.INCOMPLETE: 1, suite.SUSPECT: 2,
               suite.UPPER_BOUND: 4}
SUSPECT_STATUS = EXIT_STATUS[suite.SUSPECT]


@dataclasses.dataclass(frozen=True)
class Options:
  """How an evaluation runs, besides its attacks and budget.

  Attributes:
    draws: R, draws of the model per scored image (None: the budget
      preset's, or the reference's 20 for a `Budget`).
    seed: integer seed of every attack and scoring draw.
    unit_size: images per unit (one attack on one block).
    randomized: "auto" (detect), "yes" or "no" (force).
    bpda: "auto" (wrap the layers with masked input gradients), "off", or
      a list of layer names (nested paths) to wrap.
    sanity_images: run the extra sanity runs on the first N images only
      (None: all).
    convergence: rerun the strongest white-box attack with 2x steps,
      restarts and (randomized models) EOT samples.
    eot_curve: EOT samples of the accuracy-vs-EOT plot (randomized models;
      empty: none).
    grid_images: rows of the x / g(x) / E[g(x)] / x_adv grid.
    grid_samples: draws averaged for E[g(x)].
    allow_large_epsilon: accept an epsilon of the whole value range or more.
    num_classes: the data's classes, checked against the model's output
      width (None: the output must cover the labels).
    data_name: the data's name in the report.
    model_name: the model's name in the report and robustbench.json.
  """
  draws: object = None
  seed: int = 0
  unit_size: int = 100
  randomized: str = "auto"
  bpda: object = "auto"
  sanity_images: object = None
  convergence: bool = True
  eot_curve: tuple = (1, 2, 4, 8)
  grid_images: int = 4
  grid_samples: int = 32
  allow_large_epsilon: bool = False
  num_classes: object = None
  data_name: str = "images"
  model_name: str = "model"

  def validate(self):
    """Raises ValueError naming the first bad field; returns self."""
    model_checks.check_modes(self.randomized, self.bpda)
    if self.draws is not None:
      common.check_number("draws", self.draws, minimum=1, integer=True)
    if self.sanity_images is not None:
      common.check_number("sanity_images", self.sanity_images, minimum=1,
                          integer=True)
    common.check_number("seed", self.seed, minimum=0, integer=True)
    common.check_number("unit_size", self.unit_size, minimum=1, integer=True)
    for k in self.eot_curve:
      common.check_number("eot_curve", k, minimum=1, integer=True)
    return self


def run_units(plan, target, x, y, report_dir, strategy=None,
              shard=plan_lib.Shard()):
  """Runs this shard's unfinished units, with a progress bar.

  Args:
    plan: the `Plan`.
    target: a `suite.Target`.
    x: the images.
    y: the labels.
    report_dir: the evaluation's folder.
    strategy: a `tf.distribute.Strategy` (None: this process, one device).
    shard: the `Shard` this process runs.

  Returns:
    The `execute.RunSummary`.
  """
  start = time.perf_counter()
  count = len(plan.units(*distributed.shard_of(strategy, shard.count,
                                               shard.index)))
  with tqdm.tqdm(total=count, desc=f"shard {shard.index}/{shard.count} "
                 "units") as bar:

    def progress(unit, key, status):
      del key
      bar.set_postfix(attack=unit.attack, block=unit.block, status=status)
      bar.update(1)

    if strategy is None:
      summary = execute.run(plan, target, x, y, report_dir, shard,
                            keep_going=True, progress=progress)
    else:
      summary = distributed.run(plan, strategy, target, x, y, report_dir,
                                shard, keep_going=True, progress=progress)
  print(f"Units: ran {len(summary.ran)}, reused {len(summary.reused)}, "
        f"failed {len(summary.failed)} in {time.perf_counter() - start:.1f} s")
  for key, error in summary.failed.items():
    print(f"FAILED {key}: {error}")
  return summary


@dataclasses.dataclass
class Evaluation:
  """The outcome of `evaluate`: print it, or read its fields.

  Attributes:
    verdict: one of `suite.STATES` (`attacks.verdict`): "COMPLETE" (at
      the reference budget, converged, no masking sign), "UPPER BOUND"
      (sound but short of that; `report["upper_bound"]` says how),
      "SUSPECT" (a sign of gradient masking tripped) or "INCOMPLETE" (an
      attack raised).
    worst: the per-example worst case (`suite.worst_case`): strict and mean
      accuracy with 95% intervals, the strongest attack, per-image arrays.
    rows: one dict per attack: name, kind, strict and mean accuracy with
      their intervals, its budget.
    flags: the sanity checks (`sanity.Flag`).
    checks: the `ModelChecks`.
    paths: dict kind -> path of every file written.
    suite_result: the merged `suite.SuiteResult`.
    report: the report.json dict.
  """
  verdict: str
  worst: dict
  rows: list
  flags: list
  checks: model_checks.ModelChecks
  paths: dict
  suite_result: suite.SuiteResult
  report: dict

  def summary(self):
    """One line: the verdict state and the worst case with its interval."""
    worst = self.worst
    low, high = worst["strict_accuracy_ci95"]
    return (f"{self.verdict}: worst-case robust accuracy "
            f"{100 * worst['strict_accuracy']:.1f}% [95% CI {100 * low:.1f}, "
            f"{100 * high:.1f}] (strict over {self.suite_result.draws} draws, "
            f"{self.report['images']} images), strongest attack: "
            f"{worst['strongest']}")

  def __str__(self):
    return (f"Verdict: {self.verdict}\n\n" + report.print_summary(self.report)
            + "\n\n" + self.summary())


def exit_status(evaluation_or_result, keep_going=False):
  """The verdict's `EXIT_STATUS` (0 COMPLETE, 1, 2 SUSPECT, 4 UPPER BOUND).

  1 is INCOMPLETE; with `keep_going`, an INCOMPLETE evaluation (an attack
  raised) exits 0.

  Args:
    evaluation_or_result: an `Evaluation`, or anything with `failed` (an
      attack raised) and optionally `verdict`.
    keep_going: exit 0 although an attack raised.

  Returns:
    An int.
  """
  failed = getattr(evaluation_or_result, "failed", None)
  if failed is None:
    failed = evaluation_or_result.suite_result.failed
  if failed:
    return 0 if keep_going else 1
  return EXIT_STATUS[getattr(evaluation_or_result, "verdict", suite.COMPLETE)]


def _transform_grid(target, suite_result, x, options):
  """Columns x / g(x) / E[g(x)] / x_adv (strongest attack) of the first images."""
  rows = min(options.grid_images, len(x))
  if rows < 1:
    return None
  columns = {"x": x[:rows]}
  if target.defended:
    g_x, mean_g_x = report.transform_views(target.transforms[0], x[:rows],
                                           options.grid_samples)
    columns["g(x)"] = g_x
    columns[f"E[g(x)] ({options.grid_samples} draws)"] = mean_g_x
  strongest = suite_result.worst["strongest"]
  for result in suite_result.results:
    if result.name == strongest:
      columns[f"x_adv ({strongest})"] = result.x_adv[:rows]
  return columns


def _eot_curve(target, suite_result, x, y, samples, rerun):
  """Accuracy of the strongest EOT attack against EOT samples (paper Fig. 7).

  Returns:
    `(attack name, dict EOT samples -> mean accuracy)`, or `(None, None)` on
    a deterministic model, without an EOT attack or without samples.
  """
  reference = sanity.reference_attack(suite_result, field="eot_samples")
  if not target.randomized or not samples or reference is None:
    return None, None
  curve = {}
  for k in tqdm.tqdm(samples, desc=f"{reference.name}: accuracy vs EOT"):
    result = rerun(target, reference.name, x, y, suite_result.budget,
                   suite_result.seed, suite_result.draws, eot_samples=k)
    curve[k] = result.score.mean_accuracy
  return reference.name, curve


def report_evaluation(report_dir, target, options, meta, start=None,
                      model_digest=None):
  """Merges the units, runs the sanity checks and writes every report file.

  Args:
    report_dir: the evaluation's folder (every shard finished).
    target: the `suite.Target` the units ran on.
    options: the `Options`.
    meta: run facts for report.json (`data`, `split`, `model`, ...;
      `model_checks` states what `check_model` found).
    start: `time.perf_counter()` at the start, for `elapsed_s`.
    model_digest: the digest of `target.model` (`Plan.model_digest`), or
      None to trust the units' own.

  Returns:
    An `Evaluation`.

  Raises:
    ValueError: if `model_digest` is not the model the units ran on.
  """
  merged = merge.merge(report_dir, allow_incomplete=True)
  if model_digest not in (None, merged.plan.model_digest):
    raise ValueError(
        f"The units in {report_dir} ran on another model than the one given "
        f"(digest {merged.plan.model_digest}); the sanity reruns would mix "
        f"the two. Received: model digest {model_digest}")
  suite_result, x, y = merged.suite_result, merged.x, merged.y
  print("Sanity checks (extra attack runs) ...")
  checks_start = time.perf_counter()
  sanity_images = (None if options.sanity_images is None else
                   min(options.sanity_images, len(x)))
  rerun = execute.stored_rerun(
      report_dir, known=[(target.model, merged.plan.model_digest)])
  flags, extras = sanity.run_checks(target, suite_result, x, y,
                                    convergence=options.convergence,
                                    images=sanity_images, rerun=rerun)
  flags.append(sanity.check_masked_layers(meta.get("model_checks")))
  subset = suite_result if sanity_images is None else sanity.first_images(
      suite_result, sanity_images)
  eot_attack, curve = _eot_curve(target, subset, x[:subset.clean.images],
                                 y[:subset.clean.images],
                                 [int(k) for k in options.eot_curve], rerun)
  if curve:
    extras["eot_attack"] = eot_attack
  print(f"Sanity checks and EOT curve: "
        f"{time.perf_counter() - checks_start:.1f} s")
  meta = dict(meta)
  if start is not None:
    meta["elapsed_s"] = time.perf_counter() - start
  paths, written = report.write_report(
      report_dir, suite_result, flags, extras, meta,
      grid=_transform_grid(target, suite_result, x, options), eot_curve=curve)
  paths |= export.export(merged, report_dir, options.model_name,
                         options.data_name, flags,
                         export.model_info(target.model))
  checks = meta.get("model_checks")
  return Evaluation(
      verdict=written["verdict"], worst=suite_result.worst,
      rows=[{"name": r.name, "kind": r.kind, "budget": r.budget,
             "strict_accuracy": r.score.strict_accuracy,
             "strict_accuracy_ci95": r.score.strict_interval,
             "mean_accuracy": r.score.mean_accuracy,
             "mean_accuracy_ci95": r.score.mean_interval}
            for r in suite_result.results],
      flags=flags,
      checks=model_checks.ModelChecks(**checks) if checks else None,
      paths=paths, suite_result=suite_result, report=written)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """An evaluation checked and planned, before its first unit.

  `evaluate` runs and reports it in one go; a program that also shards,
  dry-runs or replays (`examples/attack_eval.py`) takes the pieces.

  Attributes:
    target: the `suite.Target` the units run on (randomness and BPDA
      layers as `checks` found them).
    plan: the `Plan` (built, and its model and images hashed, once).
    checks: the `ModelChecks`.
    x: the checked images.
    y: the checked labels.
    report_dir: the evaluation's folder.
    options: the validated `Options`.
    start: `time.perf_counter()` when the evaluation began.
  """
  target: suite.Target
  plan: plan_lib.Plan
  checks: model_checks.ModelChecks
  x: np.ndarray
  y: np.ndarray
  report_dir: str
  options: Options
  start: float

  def run(self, strategy=None, shard=plan_lib.Shard()):
    """Runs this shard's unfinished units (`run_units`); returns its summary."""
    return run_units(self.plan, self.target, self.x, self.y, self.report_dir,
                     strategy, shard)

  def report(self, meta):
    """Merges, checks and writes the report (`report_evaluation`).

    Args:
      meta: run facts for report.json; `model_checks` is added.

    Returns:
      An `Evaluation`.

    Raises:
      ValueError: if the units ran on another model.
    """
    meta = dict(meta, model_checks=self.checks.to_dict())
    return report_evaluation(self.report_dir, self.target, self.options, meta,
                             self.start, self.plan.model_digest)


def prepare(model, x, y, attacks="adaptive", budget="reference",
            report_dir=None, options=None, surrogates=None, start=None,
            **option_overrides):
  """Checks the inputs and the model and plans the units (`evaluate`'s start).

  Args:
    model: as for `evaluate`.
    x: float32 images inside the budget's value range.
    y: int labels.
    attacks: attack or preset names (`suite.resolve_attacks`).
    budget: a `suite.BUDGET_PRESETS` name or a `suite.Budget`.
    report_dir: the folder of units and reports (None: a new temporary
      folder).
    options: an `Options` (None: the defaults).
    surrogates: None, or a callable `(model, checks) -> suite.Target` that
      gives the model's surrogates and training images once the checks are
      known (e.g. trains them only for a randomized model); None keeps
      those of `model` when it is a `Target`.
    start: `time.perf_counter()` when the evaluation began (None: now).
    **option_overrides: `Options` fields to replace.

  Returns:
    A `Prepared`.

  Raises:
    ValueError: for a bad argument, naming it.
  """
  start = time.perf_counter() if start is None else start
  options = dataclasses.replace(options or Options(),
                                **option_overrides).validate()
  if isinstance(budget, str):
    budget, draws, _ = budgets.make_budget(budget, 8 / 255, {})
  else:
    draws = suite.REFERENCE_DRAWS
  draws = draws if options.draws is None else options.draws
  preflight.check_epsilon(budget.epsilon, budget.value_range,
                          allow_large=options.allow_large_epsilon)
  report_dir = report_dir or tempfile.mkdtemp(prefix="evaluation_")
  preflight.check_report_dir(report_dir)
  given = model if isinstance(model, suite.Target) else suite.Target(model)
  x, y = plan_lib.check_images(x, y, budget)
  preflight.probe_model(given.model, x,
                        options.num_classes or int(np.max(y)) + 1,
                        exact=options.num_classes is not None)
  checks = model_checks.check_model(
      given.model, x, options.randomized, options.bpda, options.seed,
      step=budget.epsilon / 4 if budget.epsilon > 0 else detect.FD_STEP)
  if surrogates is not None:
    given = surrogates(given.model, checks)
  target = suite.Target(given.model, surrogate=given.surrogate,
                        train_images=given.train_images,
                        adversarial_surrogate=given.adversarial_surrogate,
                        randomized=checks.randomized,
                        bpda_layers=list(checks.bpda_layers))
  plan = plan_lib.make_plan(target, x, y, suite.resolve_attacks(attacks),
                            budget, options.seed, draws, options.unit_size)
  return Prepared(target, plan, checks, x, y, report_dir, options, start)


def evaluate(model, x, y, attacks="adaptive", budget="reference",
             report_dir=None, options=None, **option_overrides):
  """Evaluates a Keras classifier under attack, start to finish.

  Args:
    model: the model under attack (logits out; any Keras model, with its
      custom layers registered), or a `suite.Target` holding it with
      surrogates and training images.
    x: float32 images inside the budget's value range.
    y: int labels.
    attacks: attack or preset names (`suite.resolve_attacks`).
    budget: a `suite.BUDGET_PRESETS` name or a `suite.Budget`.
    report_dir: the folder of units and reports (None: a new temporary
      folder). Rerunning the same call resumes from its units.
    options: an `Options` (None: the defaults).
    **option_overrides: `Options` fields to replace (e.g. `draws=4`).

  Returns:
    An `Evaluation`.

  Raises:
    ValueError: for a bad argument, or a report_dir holding another
      evaluation, naming what differs.
  """
  prepared = prepare(model, x, y, attacks, budget, report_dir, options,
                     **option_overrides)
  prepared.run()
  return prepared.report({
      "data": prepared.options.data_name, "model": prepared.options.model_name,
      "attacks_requested": list(suite.resolve_attacks(attacks))})
