"""One result from an evaluation's unit files, whichever process wrote them.

`merge` reads `<report_dir>/units/` (every shard's, once all have finished)
and builds the one `suite.SuiteResult` over all images, equal bit for bit to
a single process's (timings excepted). An attack with missing units is
reported as failed (verdict INCOMPLETE) with `allow_incomplete`, or refused.

Example:
  >>> merged = merge("runs/eval")       # once every shard has finished
  >>> merged.suite_result.worst["strict_accuracy"]
"""

import dataclasses
import os

import numpy as np

from attacks import plan as plan_lib
from attacks import records
from attacks import store
from attacks import suite

__all__ = ["Merged", "merge"]


@dataclasses.dataclass
class Merged:
  """The merged evaluation.

  Attributes:
    suite_result: the `suite.SuiteResult` over all images (attacks with
      missing units are in its `failed`; their figures are not included).
    plan: the `Plan`.
    x: the clean images.
    y: their labels.
    unit_seeds: int array `(blocks,)`.
    attack_seeds: dict attack name -> int array `(blocks,)`.
    score_seeds: dict attack name (and `CLEAN`) -> int array `(blocks,)`.
    missing: keys of the units not found.
  """
  suite_result: suite.SuiteResult
  plan: plan_lib.Plan
  x: np.ndarray
  y: np.ndarray
  unit_seeds: np.ndarray
  attack_seeds: dict
  score_seeds: dict
  missing: list


def _read_units(plan, folder, expected, missing):
  """Every present unit file, checked (`store.read_unit`), by `Unit`.

  Clean units are checked against the plan's images and labels (its
  `data_digest`), attack units against their block's clean labels.

  Raises:
    ValueError: for a damaged or misfiled unit, naming it and the fix.
  """
  fix = ("; run the evaluation again without --merge_only (merge_only=False) "
         "to recompute it")
  loaded = {}
  try:
    for key, unit in sorted(expected.items(),
                            key=lambda item: item[1].attack != plan_lib.CLEAN):
      if key in missing:
        continue
      start, stop = plan.block_range(unit.block)
      clean = loaded.get(plan_lib.Unit(plan_lib.CLEAN, unit.block))
      loaded[unit] = store.read_unit(
          os.path.join(folder, key), key, unit.attack, unit.block,
          range(start, stop), None if clean is None else clean[0]["y"])
  except store.UnitError as error:
    raise ValueError(f"{error}{fix}") from error
  clean = [loaded[plan_lib.Unit(plan_lib.CLEAN, b)][0]
           for b in range(plan.blocks)]
  x = np.concatenate([arrays["x"] for arrays in clean])
  y = np.concatenate([arrays["y"] for arrays in clean])
  if plan_lib.digest(x.astype(np.float32).tobytes(),
                     y.astype(np.int64).tobytes()) != plan.data_digest:
    raise ValueError(f"The clean units in {folder} hold other images or "
                     f"labels than the evaluation's{fix}")
  return loaded


def merge(report_dir, allow_incomplete=False):
  """Builds the one result of an evaluation from its unit files.

  Args:
    report_dir: the folder given to `run` (by every shard).
    allow_incomplete: put an attack with missing units into the result's
      `failed` (verdict INCOMPLETE) instead of raising. Clean units are
      always required.

  Returns:
    A `Merged`.

  Raises:
    ValueError: without an evaluation in `report_dir`, if it holds unit files
      of another evaluation, or for missing units (see `allow_incomplete`).
  """
  plan = store.read_plan(report_dir)
  folder = os.path.join(report_dir, store.UNITS_DIR)
  expected = {plan.key(u): u for u in plan.units()}
  stray = sorted(name for name in os.listdir(folder)
                 if name.endswith(".npz") and name not in expected)
  if stray:
    raise ValueError(f"{folder} holds unit files of another evaluation "
                     f"(e.g. {stray[0]}). Received: report_dir={report_dir!r}")
  missing = [key for key in expected
             if not os.path.exists(os.path.join(folder, key))]
  blocks = range(plan.blocks)
  lacking = [key for key in missing if expected[key].attack == plan_lib.CLEAN]
  if lacking or (missing and not allow_incomplete):
    raise ValueError(
        f"{len(missing)} of {len(expected)} units are missing (e.g. "
        f"{missing[0]}): run the evaluation (every shard, if it is sharded) "
        f"until each unit is written. Received: report_dir={report_dir!r}")
  loaded = _read_units(plan, folder, expected, missing)
  clean_units = [loaded[plan_lib.Unit(plan_lib.CLEAN, b)] for b in blocks]
  clean = records.merged_score(clean_units, plan.seed)
  results, failed = [], {}
  attack_seeds, score_seeds = {}, {plan_lib.CLEAN: np.array(
      [meta["score_seed"] for _, meta in clean_units])}
  for name, _ in plan.attacks:
    units = [loaded.get(plan_lib.Unit(name, b)) for b in blocks]
    if None in units:
      failed[name] = (f"{units.count(None)} of {plan.blocks} units missing "
                      "(not run, failed or killed)")
      continue
    results.append(records.attack_result(name, units, plan.seed, plan.seed))
    attack_seeds[name] = np.array([m["attack_seed"] for _, m in units])
    score_seeds[name] = np.array([m["score_seed"] for _, m in units])
  suite_result = suite.SuiteResult.from_runs(
      clean, results, failed=failed, skipped=dict(plan.skipped),
      budget=plan.budget, seed=plan.seed, draws=plan.draws,
      defended=plan.defended, randomized=plan.randomized,
      fields=plan.used_fields())
  return Merged(
      suite_result=suite_result, plan=plan,
      x=np.concatenate([a["x"] for a, _ in clean_units]),
      y=np.concatenate([a["y"] for a, _ in clean_units]),
      unit_seeds=np.array([m["unit_seed"] for _, m in clean_units]),
      attack_seeds=attack_seeds, score_seeds=score_seeds, missing=missing)
