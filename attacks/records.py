"""One schema for every stored result: units, reruns, reports and exports.

An attack run (`suite.AttackResult`) is stored as arrays and a JSON meta
(`attack_record`) in its unit and rerun files, and read back, one block or
many, by `attack_result`; a clean score as `score_arrays`. report.json
(`attacks.report.report_dict`, through `AttackResult.to_dict`),
robustbench.json and adversarial.npz (`attacks.export`) are built from the
results these functions return. Percentages are written by `percent`.
"""

import numpy as np

from attacks import scoring
from attacks import suite

__all__ = [
    "attack_record", "attack_result", "merged_score", "percent",
    "score_arrays"
]


def percent(value, decimals=2):
  """`value` (a fraction) in percent as text, e.g. `percent(0.5) == "50.00"`."""
  return f"{100 * value:.{decimals}f}"


def score_arrays(score):
  """A `scoring.Score` as unit arrays: `correct`, and `nonfinite` if any.

  `nonfinite` (bool, like `correct`) marks the draws whose output was not
  finite; it is written only when there is one, so the files of a model
  with finite outputs are those of before it existed.
  """
  arrays = {"correct": score.correct}
  if score.nonfinite:
    arrays["nonfinite"] = score.nonfinite_pairs
  return arrays


def attack_record(result):
  """An `AttackResult` as the arrays and meta its unit or rerun file keeps."""
  return (score_arrays(result.score) | {"x_adv": result.x_adv},
          {"kind": result.kind, "description": result.description,
           "budget": result.budget, "elapsed_s": result.elapsed_s,
           "f_b_passes": result.f_b_passes,
           "model_passes": result.model_passes, "attack_seed": result.seed,
           "score_seed": result.score.seed})


def attack_result(name, parts, seed, score_seed):
  """The `AttackResult` of one attack's files (its blocks' units, in order).

  Args:
    name: the attack's display name.
    parts: `(arrays, meta)` of each file, as `attack_record` made them
      (with the labels `y`).
    seed: the result's seed.
    score_seed: its score's seed.
  """
  meta = parts[0][1]
  return suite.AttackResult(
      name=name, kind=meta["kind"], description=meta["description"],
      budget=meta["budget"], score=merged_score(parts, score_seed),
      elapsed_s=sum(m["elapsed_s"] for _, m in parts),
      f_b_passes=sum(m["f_b_passes"] for _, m in parts),
      model_passes=sum(m["model_passes"] for _, m in parts),
      x_adv=np.concatenate([a["x_adv"] for a, _ in parts]), seed=seed)


def merged_score(units, seed):
  """The `scoring.Score` of several files' arrays (`correct`, `y`, ...).

  Args:
    units: `(arrays, meta)` of each file, in image order.
    seed: the merged score's seed.

  Returns:
    A `scoring.Score` over all their images.
  """
  correct = np.concatenate([arrays["correct"] for arrays, _ in units], axis=1)
  y = np.concatenate([arrays["y"] for arrays, _ in units])
  nonfinite = None
  if any("nonfinite" in arrays for arrays, _ in units):
    nonfinite = np.concatenate(
        [arrays.get("nonfinite", np.zeros_like(arrays["correct"]))
         for arrays, _ in units], axis=1)
  # A unit keeps correct/wrong per draw; -1 stands for "some wrong class".
  return scoring.score_labels(np.where(correct, y[None, :], -1), y, seed=seed,
                              nonfinite=nonfinite)
