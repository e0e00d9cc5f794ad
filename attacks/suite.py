"""Running attacks and aggregating them: results, scores, the worst case.

The attacks themselves are data in `attacks.registry` (specs, presets), the
budgets in `attacks.budgets`, the model as attacks see it in
`attacks.target`; this module runs them. `run_attack` runs one attack on a
`Target`, counts its passes and scores its images; `run_suite` runs a list
on one set of images; `rerun` reruns one with some budget fields changed
(sanity checks, curves). For a model containing `AdversarialTransform` the
white-box attacks go through the gradient estimators of `attacks.estimators`;
any other model is differentiated directly, through BPDA on the layers
`Target.bpda_layers` names.

Every final adversarial image is scored with R fresh, seeded draws
(`attacks.scoring`; every draw the evaluation can seed follows the seed,
`reseeded`), drawn independently for every attack run (their seed is derived
from the run's seed and the attack's name). The worst case is per example:
an image counts as robust only if it is correct in every draw on its clean
version and on the output of every attack run. An attack that raises (with
`keep_going`) makes the verdict INCOMPLETE; it never silently drops out; a
sign of gradient masking makes it SUSPECT (`attacks.sanity.verdict`).

The names of `attacks.budgets`, `attacks.registry` and `attacks.target` are
also reachable here (`suite.Budget`, `suite.REGISTRY`, `suite.Target`, ...).
"""

import contextlib
import dataclasses
import time
import zlib

import numpy as np
import tensorflow as tf

from attacks import common
from attacks import detect
from attacks import scoring
# The suite's vocabulary, defined in one module each and named here too.
# pylint: disable=unused-import
from attacks.budgets import BUDGET_PRESETS
from attacks.budgets import Budget
from attacks.budgets import BudgetPreset
from attacks.budgets import REFERENCE_DRAWS
from attacks.budgets import REFERENCE_IMAGES
from attacks.budgets import weaker_than_reference
from attacks.passes import count_passes
from attacks.registry import ALWAYS_USED
from attacks.registry import AttackSpec
from attacks.registry import NO_BPDA_SPEC
from attacks.registry import PRESETS
from attacks.registry import QUERY
from attacks.registry import REGISTRY
from attacks.registry import REPARAM
from attacks.registry import TRANSFER
from attacks.registry import WHITE_BOX
from attacks.registry import not_run
from attacks.registry import plan
from attacks.registry import resolve_attacks
from attacks.target import NO_BPDA
from attacks.target import Target
# pylint: enable=unused-import

__all__ = [
    "AttackResult", "COMPLETE", "INCOMPLETE", "STATES", "SUSPECT",
    "SuiteResult", "UPPER_BOUND",
    "attack_seed", "check_adversarial", "count_passes", "reseeded", "rerun",
    "run_attack", "run_suite", "score_clean", "score_images", "scoring_seed",
    "worst_case"
]

COMPLETE, SUSPECT, INCOMPLETE = "COMPLETE", "SUSPECT", "INCOMPLETE"
# Every planned attack ran with no sign of gradient masking, but below the
# reference budget or without convergence shown: the worst case is an upper
# bound on what the reference evaluation would find (`attacks.verdict`).
UPPER_BOUND = "UPPER BOUND"
# The verdict states, from the strongest claim to the weakest.
STATES = (COMPLETE, UPPER_BOUND, SUSPECT, INCOMPLETE)


@dataclasses.dataclass
class AttackResult:
  """One attack run and its score.

  Attributes:
    name: the attack's display name.
    kind: its `AttackSpec.kind`.
    description: one line.
    budget: dict of the budget fields it used.
    score: `scoring.Score` of its final images.
    elapsed_s: seconds spent crafting (scoring excluded).
    f_b_passes: forward image passes of f_b while crafting (counted).
    model_passes: forward image passes of the whole model while crafting.
    x_adv: the final adversarial images (NumPy), or None once dropped.
    seed: the attack's seed (its scoring draws have their own,
      `score.seed`).
  """
  name: str
  kind: str
  description: str
  budget: dict
  score: scoring.Score
  elapsed_s: float
  f_b_passes: int
  model_passes: int
  x_adv: object = None
  seed: object = None

  @property
  def throughput(self):
    """f_b passes per second while crafting."""
    return self.f_b_passes / self.elapsed_s if self.elapsed_s > 0 else 0.0

  def to_dict(self):
    return {
        "name": self.name, "kind": self.kind, "description": self.description,
        "budget": self.budget, "seed": self.seed,
        "elapsed_s": self.elapsed_s, "f_b_passes": self.f_b_passes,
        "model_passes": self.model_passes,
        "f_b_passes_per_s": self.throughput, **self.score.to_dict()
    }


def reseeded(model, seed):
  """Every draw of `model` the evaluation can seed, seeded from `seed`.

  `attacks.detect.seeded` (each `keras.random.SeedGenerator` of the model
  and Keras' global one, and every `AdversarialTransform` pinned); None
  leaves the model as it is.
  """
  if seed is None:
    return contextlib.nullcontext()
  return detect.seeded(model, seed)


def score_images(target, x, y, draws=REFERENCE_DRAWS, seed=0):
  """`scoring.score` of images on the target's model, its draws seeded.

  Every draw the evaluation can seed (`reseeded`) follows `seed`, so the
  same seed scores the same way on any randomized model.
  """
  with reseeded(target.model, seed):
    return scoring.score(target.model, x, y, draws=draws, seed=seed)


def score_clean(target, x, y, seed=0, draws=REFERENCE_DRAWS):
  """The clean images' `scoring.Score`, its draws seeded from `seed`.

  Args:
    target: a `Target`.
    x: float32 images.
    y: int labels.
    seed: the run's seed (the clean draws' seed is derived from it).
    draws: R.

  Returns:
    A `scoring.Score`.
  """
  return score_images(target, x, y, draws=draws,
                      seed=scoring_seed(seed, "clean"))


def attack_seed(seed, name):
  """A per-attack seed derived from the run's seed and the attack's name."""
  if seed is None:
    return None
  return (seed * 1000003 + zlib.crc32(name.encode())) % (2**31 - 1)


def scoring_seed(seed, name):
  """The seed of the draws scoring attack `name`'s images ("clean": clean ones).

  Derived from the run's seed and the name, and distinct from the attack's
  own seed (whose draws the attack saw while crafting), so every attack run
  is scored with its own independent draws and a rerun repeats them.
  """
  return attack_seed(seed, f"{name}/scoring")


def check_adversarial(x_adv, x, budget, name):
  """Raises if an attack left the epsilon-ball or the value range (or NaN)."""
  x_adv = np.asarray(x_adv, np.float32)
  distance = float(np.max(np.abs(x_adv - x))) if x.size else 0.0
  low, high = budget.value_range
  if (x_adv.shape != x.shape or not np.all(np.isfinite(x_adv)) or
      distance > budget.epsilon + 1e-5 or
      x_adv.min(initial=low) < low or x_adv.max(initial=high) > high):
    raise ValueError(
        f"Attack {name} returned images outside the budget (epsilon="
        f"{budget.epsilon}, value_range={budget.value_range}). Received: "
        f"shape={x_adv.shape}, max distance={distance}")
  return x_adv


def run_attack(target, name, spec, x, y, budget, seed=0,
               draws=REFERENCE_DRAWS):
  """Runs one attack, counts its cost and scores its images.

  Args:
    target: a `Target`.
    name: display name.
    spec: its `AttackSpec`.
    x: float32 images (NumPy).
    y: int labels (NumPy).
    budget: a `Budget`.
    seed: the run's seed (the attack's own seed and its scoring seed are
      derived from it and `name`).
    draws: R, draws of the model per scored image.

  Returns:
    An `AttackResult`.
  """
  own_seed = attack_seed(seed, name)
  if target.bpda_layers and not target.defended:  # Built before counting.
    target.gradient_model()
  # The model's own draws (query oracles, replays, a random layer's draws in
  # every pass) restart from the attack's seed, so a seeded attack on a
  # random model repeats.
  with count_passes(target.model, target.transforms,
                    also=target.models()) as counters, \
      reseeded(target.model, own_seed):
    start = time.perf_counter()
    derived = spec.derive(budget, target)
    x_adv = spec.build(target, tf.constant(x), tf.constant(y), budget,
                       own_seed, derived)
    x_adv = check_adversarial(x_adv, x, budget, name)
    elapsed = time.perf_counter() - start
  return AttackResult(
      name=name, kind=spec.kind, description=spec.description,
      budget=derived,
      score=score_images(target, x_adv, y, draws=draws,
                         seed=scoring_seed(seed, name)),
      elapsed_s=elapsed, f_b_passes=int(counters["f_b"].numpy()),
      model_passes=int(counters["model"].numpy()), x_adv=x_adv, seed=own_seed)


def worst_case(clean, results, kinds=None):
  """Per-example worst case over the clean images and every attack run.

  An image is robust only if it is correct in every draw on its clean version
  and on every attack's output (strict over draws). The mean figure takes,
  per image, the lowest fraction of correct draws over those runs.

  Args:
    clean: `scoring.Score` of the clean images.
    results: `AttackResult`s (all on the same images).
    kinds: restrict to attacks of these kinds (None: all).

  Returns:
    dict with `strict_accuracy` and `mean_accuracy`, their 95%
    Clopper-Pearson intervals `strict_accuracy_ci95` and `mean_accuracy_ci95`
    (over images, as `scoring.Score`), `robust` (bool array),
    `per_example_success` (float array: per image, the highest fraction of
    draws misclassifying it over the clean images and every run), `strongest`
    (name of the attack with the lowest own strict accuracy, ties broken by
    the mean; None without attacks) and `attacks` (names included).
  """
  chosen = [r for r in results if kinds is None or r.kind in kinds]
  robust = clean.robust.copy()
  per_example = clean.per_example_mean.copy()
  for result in chosen:
    robust &= result.score.robust
    per_example = np.minimum(per_example, result.score.per_example_mean)
  strongest = min(chosen, key=lambda r: (r.score.strict_accuracy,
                                         r.score.mean_accuracy), default=None)
  mean = float(np.mean(per_example)) if per_example.size else 0.0
  return {
      "strict_accuracy": float(np.mean(robust)) if robust.size else 0.0,
      "strict_accuracy_ci95": scoring.clopper_pearson(int(np.sum(robust)),
                                                      robust.size),
      "mean_accuracy": mean,
      "mean_accuracy_ci95": scoring.clopper_pearson(mean * robust.size,
                                                    robust.size),
      "robust": robust,
      "per_example_success": 1.0 - per_example,
      "strongest": strongest.name if strongest else None,
      "attacks": [r.name for r in chosen],
  }


@dataclasses.dataclass
class SuiteResult:
  """Everything one suite run produced.

  Attributes:
    clean: `scoring.Score` of the clean images.
    results: list of `AttackResult`.
    skipped: dict attack name -> reason.
    failed: dict attack name -> error, attacks that raised (`keep_going`);
      any makes the verdict INCOMPLETE.
    worst: `worst_case` over the attacks that ran (an upper bound only when
      the verdict is INCOMPLETE).
    worst_white_box: `worst_case` over white-box attacks only (the paper's
      "Ours (under BPDA)" row).
    budget: the `Budget`.
    seed: the run's seed.
    draws: R.
    defended: whether the model contains an `AdversarialTransform`.
    weaker_than_reference: `weaker_than_reference` of the run (empty: at
      reference strength).
    randomized: whether the model is random (None: `defended`).
  """
  clean: scoring.Score
  results: list
  skipped: dict
  failed: dict
  worst: dict
  worst_white_box: dict
  budget: Budget
  seed: object
  draws: int
  defended: bool
  weaker_than_reference: list
  randomized: object = None

  @classmethod
  def from_runs(cls, clean, results, *, failed, skipped, budget, seed, draws,
                defended, randomized, fields):
    """The result of these runs: worst cases and shortfalls computed here.

    Args:
      clean: the clean `scoring.Score`.
      results: the `AttackResult`s.
      failed: dict attack name -> error.
      skipped: dict attack name -> reason.
      budget: the `Budget`.
      seed: the run's seed.
      draws: R.
      defended: whether the model holds an `AdversarialTransform`.
      randomized: whether the model is random, None when that is
        `defended`.
      fields: the `Budget` fields the planned attacks use.

    Returns:
      A `SuiteResult`.
    """
    is_random = defended if randomized is None else randomized
    return cls(
        clean=clean, results=results, skipped=skipped, failed=failed,
        worst=worst_case(clean, results),
        worst_white_box=worst_case(clean, results, kinds=(WHITE_BOX,)),
        budget=budget, seed=seed, draws=draws, defended=defended,
        weaker_than_reference=weaker_than_reference(
            budget, fields, clean.images, draws, is_random),
        randomized=randomized)

  @property
  def verdict(self):
    """INCOMPLETE if an attack raised, else UPPER BOUND.

    A suite's runs alone show no convergence (the 2x reruns are the sanity
    checks'), so their worst case is an upper bound; the report's verdict
    (`attacks.sanity.verdict`, with the checks) may be COMPLETE or SUSPECT.
    """
    return INCOMPLETE if self.failed else UPPER_BOUND


def run_suite(target, x, y, attacks, budget=Budget(), seed=0,
              draws=REFERENCE_DRAWS, progress=None, keep_going=False):
  """Runs attacks on one set of images and aggregates the worst case.

  Args:
    target: a `Target`.
    x: float32 images (NumPy), inside `budget.value_range`.
    y: int labels.
    attacks: attack or preset names (see `resolve_attacks`).
    budget: a `Budget`.
    seed: integer seed of the attacks and of the scoring draws (each run's
      are derived from it and the attack's name).
    draws: R, draws of the model per scored image (>= 1; the reference is 20).
    progress: optional callable `(AttackResult) -> None`, called after each
      attack (e.g. to advance a tqdm bar).
    keep_going: record an attack that raises in `SuiteResult.failed` and go
      on (the verdict is then INCOMPLETE) instead of raising.

  Returns:
    A `SuiteResult`.

  Raises:
    ValueError: for unknown attacks or a bad budget.
  """
  budget.validate()
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.int32)
  x, _ = common.check_images_labels(x, y, budget.value_range)
  x = x.numpy()
  runs, skipped = plan(target, resolve_attacks(attacks))
  clean = score_clean(target, x, y, seed=seed, draws=draws)
  results = []
  failed = {}
  for name, spec in runs:
    try:
      results.append(run_attack(target, name, spec, x, y, budget, seed, draws))
    except Exception as error:  # pylint: disable=broad-except
      if not keep_going:
        raise
      failed[name] = f"{type(error).__name__}: {error}"
      continue
    if progress is not None:
      progress(results[-1])
  return SuiteResult.from_runs(
      clean, results, failed=failed, skipped=skipped, budget=budget,
      seed=seed, draws=draws, defended=target.defended,
      randomized=(None if target.randomized == target.defended
                  else target.randomized),
      fields={field for _, spec in runs for field in spec.fields})


def rerun(target, name, x, y, budget, seed=0, draws=REFERENCE_DRAWS,
          **changes):
  """Runs one planned attack by name, with some budget fields changed.

  Used for sweeps (accuracy vs epsilon, vs EOT samples) and the convergence
  check (2x steps or restarts).

  Args:
    target: a `Target`.
    name: a display name as `run_suite` reports it (e.g. "pgd" on a plain
      classifier) or a registry name.
    x: images.
    y: their labels.
    budget: the base `Budget`.
    seed: the run's seed (the same scoring draws as the suite's run of
      `name`, so the two figures compare like for like).
    draws: R.
    **changes: `Budget` fields to replace.

  Returns:
    An `AttackResult`.

  Raises:
    ValueError: if `name` is not an attack that runs on `target`.
  """
  runs = dict(plan(target, list(REGISTRY))[0])
  if name not in runs:
    raise ValueError(f"Attack {name!r} does not run on this model; runnable: "
                     f"{sorted(runs)}. Received: name={name!r}")
  changed = dataclasses.replace(budget, **changes).validate()
  return run_attack(target, name, runs[name], np.asarray(x, np.float32),
                    np.asarray(y, np.int32), changed, seed, draws)
