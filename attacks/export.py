"""What an evaluation gives to others: robustbench.json, adversarial.npz, replay.

`export` writes a RobustBench-style JSON and the adversarial images with
their seeds (adversarial.npz) of a merged evaluation; `replay` reproduces a
recorded result from that file exactly, and can rerun the attack.

Example:
  >>> export(merged, "runs/eval", "my model", "CIFAR-10 (JPEG copy)")
  >>> replay(target, "runs/eval/adversarial.npz", 3, "square")
"""

import dataclasses
import json
import os

import numpy as np

from adv_layer.layer import find_transforms
from attacks import plan as plan_lib
from attacks import records
from attacks import sanity
from attacks import store
from attacks import suite

__all__ = ["EXAMPLES_FILE", "ROBUSTBENCH_FILE", "export", "model_info",
           "replay", "robustbench_entry"]

ROBUSTBENCH_FILE = "robustbench.json"
EXAMPLES_FILE = "adversarial.npz"


def model_info(model):
  """RobustBench `model_info` fields that a Keras model itself shows.

  `architecture` is the model's class and name; `number_forward_passes`
  counts the passes of networks one prediction runs: 1, plus for each
  `AdversarialTransform` the steps + 1 forward passes of its f_b (each but
  the last with a backward pass). `leaderboard_eligible` applies
  RobustBench's rules for its leaderboard (a deterministic model, no
  optimization at test time, gradients that reach the input), with the
  reasons a model fails them.

  Args:
    model: the Keras model evaluated.

  Returns:
    A dict.
  """
  transforms = find_transforms(model)
  return {
      "architecture": f"{type(model).__name__} {model.name!r}",
      "number_forward_passes": 1 + sum(t.steps + 1 for t in transforms),
      "test_time_optimization": bool(transforms),
  }


def _eligibility(merged, info):
  """Why RobustBench's leaderboard rules exclude the model ([]: they don't)."""
  plan = merged.plan
  randomized = plan.defended if plan.randomized is None else plan.randomized
  reasons = []
  if randomized:
    reasons.append("randomized: two inference passes on the same images "
                   "disagree")
  if info.get("test_time_optimization"):
    reasons.append("optimization at test time: an AdversarialTransform runs "
                   "PGD on f_b for every input")
  if plan.bpda_layers:
    reasons.append("masked input gradients (BPDA applied to "
                   f"{', '.join(plan.bpda_layers)})")
  return reasons


def robustbench_entry(merged, model_name, data_name, flags=None, info=None):
  """A RobustBench-style record of a merged evaluation.

  Accuracies are percent strings with 2 decimals, as RobustBench writes
  them; `clean_acc` and `robust_acc` are strict (correct in every one of the
  R draws), the `_mean` ones average over draws, and `robust_acc` is the
  per-example worst case over every attack. RobustBench's `model_info`
  fields are filled where they mean the same here: `autoattack_acc` is the
  worst case over this evaluation's attacks (AutoAttack's `rand` pair among
  them when the plan holds APGD-CE and APGD-DLR), `reported` the robust
  accuracy its authors claim (None: unknown), `venue` (None: unknown),
  `architecture` and `number_forward_passes` (`model_info`), and
  `leaderboard_eligible` with the rules the model fails
  (`not_eligible_because`).

  Args:
    merged: a `Merged`.
    model_name: the model's name.
    data_name: the data, e.g. "CIFAR-10 (JPEG copy)".
    flags: `sanity.Flag`s (default: `sanity.cheap_checks`).
    info: `model_info` of the model, optionally with `reported` and
      `venue` (None: only the eligibility the plan shows).

  Returns:
    A JSON-ready dict.
  """
  result = merged.suite_result
  flags = sanity.cheap_checks(result) if flags is None else flags
  info = dict(info or {})
  state = sanity.verdict(result.failed, flags,
                         sanity.shortfalls(result, flags))
  excluded = _eligibility(merged, info)
  budget = result.budget
  return {
      "name": model_name, "dataset": data_name, "threat_model": "Linf",
      "eps": f"{budget.epsilon * 255:.4g}/255", "epsilon": budget.epsilon,
      "clean_acc": records.percent(result.clean.strict_accuracy),
      "robust_acc": records.percent(result.worst["strict_accuracy"]),
      "clean_acc_mean": records.percent(result.clean.mean_accuracy),
      "robust_acc_mean": records.percent(result.worst["mean_accuracy"]),
      "strongest_attack": result.worst["strongest"],
      "attack_acc": {r.name: records.percent(r.score.strict_accuracy)
                     for r in result.results},
      "attacks": [r.name for r in result.results],
      "failed": dict(result.failed), "skipped": dict(result.skipped),
      "verdict": state,
      "budget": dataclasses.asdict(budget),
      "attack_budgets": {r.name: r.budget for r in result.results},
      "weaker_than_reference": result.weaker_than_reference,
      "images": merged.plan.images, "draws": result.draws, "seed": result.seed,
      "unit_size": merged.plan.unit_size,
      "model_digest": merged.plan.model_digest,
      "unreliable": state != suite.COMPLETE or any(f.tripped for f in flags),
      "sanity_flags": [f.to_dict() for f in flags],
      "autoattack_acc": records.percent(result.worst["strict_accuracy"]),
      "reported": info.pop("reported", None),
      "venue": info.pop("venue", None),
      **info,
      "leaderboard_eligible": not excluded,
      "not_eligible_because": excluded,
  }


def export(merged, out_dir, model_name, data_name, flags=None, info=None):
  """Writes robustbench.json and adversarial.npz of a merged evaluation.

  adversarial.npz holds, for the attacks that completed (in report order):
  `attacks` (A,), `x_adv` (A, n, ...) float32, `correct` (A, R, n) bool,
  `attack_seed` and `score_seed` (A, n), `success` (A, n) the fraction of
  draws misclassifying each image; per image `x`, `y`, `index`, `block`,
  `unit_seed`, `clean_correct` (R, n), `clean_score_seed`, and
  `worst_attack` (the first attack with the lowest fraction of correct
  draws, "" where no attack had a success); `plan` (JSON of the `Plan`).

  Args:
    merged: a `Merged`.
    out_dir: output folder (created).
    model_name: the model's name.
    data_name: the data's name.
    flags: `sanity.Flag`s for the JSON (default: `sanity.cheap_checks`).
    info: `model_info` fields for the JSON (`robustbench_entry`).

  Returns:
    dict "robustbench" / "adversarial" -> path.
  """
  os.makedirs(out_dir, exist_ok=True)
  plan, result = merged.plan, merged.suite_result
  block = np.arange(plan.images) // plan.unit_size
  results = result.results
  names = [r.name for r in results]
  means = np.stack([np.ones(plan.images)] +
                   [r.score.per_example_mean for r in results])
  # The first attack with the lowest fraction of correct draws; the leading
  # row of ones ("") wins only where no attack had a success.
  worst = np.array([""] + names)[np.argmin(means, axis=0)]
  paths = {"robustbench": os.path.join(out_dir, ROBUSTBENCH_FILE),
           "adversarial": os.path.join(out_dir, EXAMPLES_FILE)}
  with open(paths["robustbench"], "w") as f:
    json.dump(robustbench_entry(merged, model_name, data_name, flags, info),
              f, indent=1, default=plan_lib.json_default)
  per_attack = lambda seeds: np.stack([seeds[n][block] for n in names]) \
      if names else np.zeros([0, plan.images], np.int64)
  store.write_npz(paths["adversarial"], {
      "attacks": np.array(names, dtype=str),
      "x_adv": np.stack([r.x_adv for r in results]) if results
               else np.zeros((0,) + merged.x.shape, np.float32),
      "correct": np.stack([r.score.correct for r in results]) if results
                 else np.zeros([0, plan.draws, plan.images], bool),
      "attack_seed": per_attack(merged.attack_seeds),
      "score_seed": per_attack(merged.score_seeds),
      "success": 1.0 - means[1:], "x": merged.x, "y": merged.y,
      "index": np.arange(plan.images), "block": block,
      "unit_seed": merged.unit_seeds[block],
      "clean_correct": result.clean.correct,
      "clean_score_seed": merged.score_seeds[plan_lib.CLEAN][block],
      "worst_attack": worst,
      "plan": np.array(plan_lib.dumps(plan.to_dict())),
  })
  return paths


def replay(target, path, example, attack, recraft=False):
  """Reproduces one recorded result of adversarial.npz exactly.

  Rescores the adversarial images of `example`'s block under `attack` with
  the recorded scoring seed (the draws of g are drawn per batch, so the
  whole block is replayed) and compares `example`'s correct/wrong per draw
  with the recorded one. With `recraft`, also reruns the attack on the clean
  block with the recorded unit seed and compares the images bit for bit.

  Args:
    target: the evaluated model (a keras.Model) or a `suite.Target` (needed
      with `recraft` for attacks using a surrogate or training images).
    path: an adversarial.npz written by `export`.
    example: the image's index in the evaluation.
    attack: an attack name of the file.
    recraft: also rerun the attack.

  Returns:
    dict: `recorded` and `replayed` (correct per draw), `success` (fraction
    of replayed draws misclassifying), `reproduced` (bool) and, with
    `recraft`, `recrafted` (bool: same images).

  Raises:
    ValueError: for an unknown example or attack, or another model.
  """
  with np.load(path, allow_pickle=False) as data:
    data = {k: data[k] for k in data.files}
  plan = plan_lib.Plan.from_dict(json.loads(str(data["plan"])))
  if not isinstance(target, suite.Target):
    target = suite.Target(target, randomized=plan.randomized,
                          bpda_layers=plan.bpda_layers)
  names = [str(n) for n in data["attacks"]]
  if attack not in names:
    raise ValueError(f"`attack` must be one of {names}. Received: "
                     f"attack={attack!r}")
  if not (isinstance(example, int) and 0 <= example < plan.images):
    raise ValueError(f"`example` must be an integer in [0, {plan.images}). "
                     f"Received: example={example!r}")
  digest = plan_lib.model_digest(target.model)
  if digest != plan.model_digest:
    raise ValueError(f"The model is not the evaluated one (digest "
                     f"{plan.model_digest}). Received: model digest={digest}")
  a = names.index(attack)
  start, stop = plan.block_range(int(data["block"][example]))
  y = data["y"][start:stop]
  x_adv = data["x_adv"][a, start:stop]
  score = suite.score_images(target, x_adv, y, draws=plan.draws,
                            seed=int(data["score_seed"][a, example]))
  recorded = data["correct"][a, :, example]
  replayed = score.correct[:, example - start]
  outcome = {"example": example, "attack": attack,
             "recorded": recorded.tolist(), "replayed": replayed.tolist(),
             "success": float(1 - np.mean(replayed)),
             "reproduced": bool(np.array_equal(recorded, replayed))}
  if recraft:
    spec = suite.REGISTRY[dict(plan.attacks)[attack]]
    again = suite.run_attack(target, attack, spec, data["x"][start:stop], y,
                             plan.budget, seed=int(data["unit_seed"][example]),
                             draws=plan.draws)
    outcome["recrafted"] = bool(np.array_equal(again.x_adv, x_adv))
  return outcome
