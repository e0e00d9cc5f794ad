"""attacks: an adaptive evaluation of `AdversarialTransform` and any Keras classifier.

`attacks.evaluate(model, x, y, ...)` runs the whole evaluation
(`attacks.evaluation`); the modules under it, one concern each:

Attacks and their parts:
  common       argument checks, losses, vectorised EOT gradients.
  estimators   gradient estimators for g: BPDA, BPDA-I, unrolled autodiff,
               straight-through sign, BPDA along the exact iterates.
  model_fns    a defended model as a model_fn through an estimator (EOT).
  bpda         BPDA for any Keras layer: exact forward, identity or
               surrogate backward.
  pgd, apgd    white-box attacks (PGD with restarts, APGD-CE / APGD-DLR).
  transfer     white-box, black-box and cheaper-defense transfer.
  square, spsa, hopskipjump, genattack   query-based attacks.
  reparam      the reparameterization attack (a conv net h ≈ g).
  target_selection   steers g's choice of target class (an attack on g).
  query_scores  scoring of query-attack candidates over several draws.
The suite:
  budgets      the attacker's budget, presets, the reference.
  registry     the attacks as data (specs), presets, what runs on a model.
  target       the model as attacks see it (randomness, BPDA layers).
  detect       randomness, seeding and masked-gradient detection.
  scoring      accuracy over R draws of a randomized model (mean and strict).
  suite        runs attacks; results and the per-example worst case.
  sanity       the checks printed with every report, and the verdict.
Evaluation at scale:
  preflight    the checks of inputs before the first unit.
  plan         units, seeds and keys of an evaluation.
  store        atomic unit files, the plan record, per-unit locks.
  records      one schema for units, reruns and reports.
  execute      runs units (a shard, replicas on devices), stored reruns.
  distributed  the units on the devices and workers of a tf.distribute
               strategy.
  merge        one result from every shard's units.
  cost         the dry run.
  report       report.json, report.md and plots.
  export       robustbench.json, adversarial.npz, replay.
  runner       the names of plan/store/execute/merge/cost/export together.
  evaluation   the whole pipeline as one call, `evaluate` (`prepare`: checked
               and planned, to run in pieces).
"""

from adv_layer import _tf_check  # pylint: disable=unused-import
# pylint: disable=g-import-not-at-top
from attacks.evaluation import Evaluation
from attacks.evaluation import Options
from attacks.evaluation import evaluate

__all__ = ["Evaluation", "Options", "evaluate"]
