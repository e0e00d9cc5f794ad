"""Evaluation at scale, under one name: plan, units, shards, merge, export.

The pieces live in one module each; this module gathers their public names
for code that reaches them as `attacks.runner.*`:

- `attacks.plan`: the `Plan` of an evaluation (units, seeds, keys), built
  once by `make_plan`; `Shard`.
- `attacks.store`: atomic unit files, the plan.json record, per-unit locks.
- `attacks.execute`: `run` (one shard, resumable; replicas on devices) and
  `stored_rerun` (the report's extra runs, kept).
- `attacks.merge`: `merge`, the one result from every shard's units.
- `attacks.cost`: `estimate_cost`, the dry run.
- `attacks.export`: robustbench.json, adversarial.npz and `replay`.

`attacks.evaluation.evaluate` runs the whole pipeline and
`attacks.evaluation.prepare` its checked, planned start; use these for
shards, clusters and custom schedules.

Example (shard i of 2; `examples/attack_eval.py` is the command line):

  >>> target = suite.Target(keras.saving.load_model("defended.keras"))
  >>> plan = runner.make_plan(target, x, y, ["adaptive"], budget, seed=0,
  ...                         draws=20, unit_size=100)
  >>> runner.run(plan, target, x, y, "runs/eval", runner.Shard(2, i))
  >>> merged = runner.merge("runs/eval")       # once both shards finished
  >>> runner.export(merged, "runs/eval", "my model", "CIFAR-10 (JPEG copy)")
  >>> runner.replay(target, "runs/eval/adversarial.npz", 3, "square")
"""

# pylint: disable=unused-import
from attacks.cost import CostEstimate
from attacks.cost import estimate_cost
from attacks.cost import forward_flops
from attacks.execute import RunSummary
from attacks.execute import run
from attacks.execute import stored_rerun
from attacks.export import EXAMPLES_FILE
from attacks.export import ROBUSTBENCH_FILE
from attacks.export import export
from attacks.export import model_info
from attacks.export import replay
from attacks.export import robustbench_entry
from attacks.merge import Merged
from attacks.merge import merge
from attacks.plan import CLEAN
from attacks.plan import Plan
from attacks.plan import Shard
from attacks.plan import Unit
from attacks.plan import budget_digest
from attacks.plan import make_plan
from attacks.plan import model_digest
from attacks.plan import unit_seed
from attacks.store import PLAN_FILE
from attacks.store import RERUNS_DIR
from attacks.store import UNITS_DIR

__all__ = [
    "CLEAN", "CostEstimate", "EXAMPLES_FILE", "Merged", "PLAN_FILE", "Plan",
    "RERUNS_DIR", "ROBUSTBENCH_FILE", "RunSummary", "Shard", "UNITS_DIR",
    "Unit", "budget_digest", "estimate_cost", "export", "forward_flops",
    "make_plan", "merge", "model_digest", "model_info", "replay",
    "robustbench_entry", "run", "stored_rerun", "unit_seed"
]
