"""attacks: an adaptive evaluation of `AdversarialTransform` and any Keras classifier.

Modules:
  common       argument checks, losses, vectorised EOT gradients.
  estimators   gradient estimators for g: BPDA, BPDA-I, unrolled autodiff,
               straight-through sign, BPDA along the exact iterates.
  pgd, apgd    white-box attacks (PGD with restarts, APGD-CE / APGD-DLR).
  transfer     white-box, black-box and cheaper-defense transfer.
  square, spsa, hopskipjump, genattack   query-based attacks.
  reparam      the reparameterization attack (a conv net h ≈ g).
  target_selection   steers g's choice of target class (an attack on g).
  query_scores  scoring of query-attack candidates over several draws.
  scoring      accuracy over R draws of a randomized model (mean and strict).
  suite        the attack registry, presets and per-example worst case.
  sanity       the checks printed with every report.
  report       report.json, report.md and plots.
"""

from adv_layer import _tf_check  # pylint: disable=unused-import
