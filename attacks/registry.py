"""The attacks: their registry, their budgets' use, and the presets.

Implements the evaluation of Xiao & Zheng (CVPR 2020), Sec. 4 (the `paper`
preset: BPDA with softsign / tanh, BPDA-I with EOT, unrolled autodiff,
white-box and black-box transfer, HopSkipJump, GenAttack, reparameterization)
and what a careful evaluator adds (the `adaptive` preset: BPDA-I+EOT PGD with
restarts, APGD-CE and APGD-DLR-targeted with EOT on BPDA-I and BPDA, PGD
through a straight-through sign and through BPDA along g's exact iterates, a
loss on the expected output, an attack on g's choice of target class,
cheaper-defense transfer from g_k with k in {1, 2, 3} (Croce et al. 2022),
white-box and black-box transfer with and without momentum and input
diversity, from clean and adversarially trained surrogates, Square). The
`autoattack_rand` preset is AutoAttack's `rand` version (APGD-CE and
untargeted APGD-DLR, EOT) through each estimator. `full` runs all three.

Each attack is an `AttackSpec`: data (its kind, the budget fields it uses,
its family) and a builder `(target, x, y, budget, seed, derived) -> x_adv`,
where `derived = spec.derive(budget, target)` holds what it runs with (EOT
samples and query draws as the model's randomness sets them, SPSA samples,
HopSkipJump iterations, GenAttack generations), the same dict its record
shows. `plan` picks what runs on a target: on a model without
`AdversarialTransform`, estimator variants collapse into one attack per
family (`pgd`, `pgd_restarts`, `apgd_ce`, `apgd_dlr`, `apgd_dlr_t`, and on a
randomized model the expected-output ones), attacks needing the transform
are skipped, and a model with BPDA-wrapped layers also runs the
plain-gradient comparison `apgd_ce_no_bpda`.
"""

import dataclasses

# The query-budget settings are also reachable here.
# pylint: disable=unused-import
from attacks.builders import GENATTACK_POPULATION
from attacks.builders import HSJ_INITIAL_EVALS
from attacks.builders import HSJ_SEARCH_QUERIES
# pylint: enable=unused-import
from attacks.builders import H_TRAINING
from attacks.builders import MI_DI
from attacks.builders import apgd_build
from attacks.builders import cheaper_build
from attacks.builders import gen_attack_build
from attacks.builders import genattack_generations
from attacks.builders import hop_skip_jump_build
from attacks.builders import hsj_iterations
from attacks.builders import pgd_build
from attacks.builders import reparam_build
from attacks.builders import spsa_build
from attacks.builders import spsa_samples
from attacks.builders import square_build
from attacks.builders import target_selection_build
from attacks.builders import transfer_build
from attacks.target import NO_BPDA

__all__ = [
    "ALWAYS_USED", "AttackSpec", "GENATTACK_POPULATION", "HSJ_INITIAL_EVALS",
    "HSJ_SEARCH_QUERIES", "MI_DI", "NO_BPDA_SPEC", "PRESETS", "QUERY",
    "REGISTRY", "REPARAM", "TRANSFER", "WHITE_BOX", "families",
    "genattack_generations",
    "hsj_iterations", "not_run", "plan", "resolve_attacks",
    "spsa_samples"
]

WHITE_BOX, TRANSFER, QUERY, REPARAM = (
    "white-box", "transfer", "query", "reparameterization")

@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """One registered attack.

  Attributes:
    name: registry key.
    description: one line.
    kind: "white-box", "transfer", "query" or "reparameterization".
    fields: the `Budget` fields it uses besides `ALWAYS_USED` (recorded with
      its figures, and part of its units' keys in `attacks.plan`).
    build: `(target, x, y, budget, seed, derived) -> x_adv`, `derived` the
      dict of `derive`.
    family: on a plain classifier, specs of one family are the same attack
      (the estimator is irrelevant); only the first runs, under this name.
    needs_transform: skipped on a plain classifier (its source is f_a or g).
    needs_surrogate: the `Target` field holding its source model
      ("surrogate" or "adversarial_surrogate"); skipped while it is None.
    estimator: the gradient estimator through g (None: not a white-box attack).
    random_family: on a randomized model without a transform, the family
      it runs under (None: `family`); the attacks on the expected output
      (EOT-mean softmax) differ from their family there and run too.
    needs_bpda: runs only on a model with BPDA-wrapped layers (the
      plain-gradient comparison).
    extra: `(budget, query_draws) -> dict` of settings the attack derives
      from its budget (e.g. SPSA's samples per step), or None.
  """
  name: str
  description: str
  kind: str
  fields: tuple
  build: object
  family: str = None
  needs_transform: bool = False
  needs_surrogate: str = None
  estimator: str = None
  random_family: str = None
  needs_bpda: bool = False
  extra: object = None

  def family_on(self, randomized):
    """The family name on a model without a transform (None: no family)."""
    if randomized and self.random_family:
      return self.random_family
    return self.family

  def derive(self, budget, target):
    """What the attack runs with on `target`, as recorded beside its figures.

    The budget fields it uses; EOT samples and query draws as the model's
    randomness sets them (the budget's on a randomized model, 1 on a
    deterministic one); the settings `extra` derives; the estimator through
    g, or the layers differentiated through BPDA.

    Args:
      budget: the `Budget`.
      target: the `Target`.

    Returns:
      A dict, which the builder receives as `derived`.
    """
    record = {field: getattr(budget, field) for field in self.fields}
    if "eot_samples" in record and self.kind == WHITE_BOX:
      record["eot_samples"] = budget.eot_samples if target.randomized else 1
    draws = None
    if "query_draws" in record:
      record["query_draws"] = draws = (budget.query_draws if target.randomized
                                       else 1)
    if self.extra is not None:
      record.update(self.extra(budget, draws))
    if self.estimator and target.defended:
      record["estimator"] = self.estimator
    if (self.kind == WHITE_BOX and target.bpda_layers and not target.defended
        and not self.needs_bpda):
      record["bpda_layers"] = list(target.bpda_layers)
    return record


# Budget fields any attack may read besides its `AttackSpec.fields`: they
# shape how it runs (memory, pixel range), so results are keyed by them too.
ALWAYS_USED = ("chunk_size", "value_range")
_GRADIENT_FIELDS = ("epsilon", "steps", "restarts", "eot_samples")
_TRANSFER_FIELDS = ("epsilon", "steps", "restarts")
_QUERY_FIELDS = ("epsilon", "queries", "query_draws")


def _specs():
  """Every registered attack, in the order reports list them."""
  return [
      AttackSpec("bpda_softsign", "PGD, BPDA backward with sign -> softsign, EOT",
                 WHITE_BOX, ("epsilon", "steps", "eot_samples"),
                 pgd_build("bpda", restarts=1, sign_surrogate="softsign"),
                 family="pgd", estimator="bpda"),
      AttackSpec("bpda_tanh", "PGD, BPDA backward with sign -> tanh, EOT",
                 WHITE_BOX, ("epsilon", "steps", "eot_samples"),
                 pgd_build("bpda", restarts=1, sign_surrogate="tanh"),
                 family="pgd", estimator="bpda"),
      AttackSpec("bpda_identity_eot", "PGD, BPDA-I (backward of g = identity), EOT",
                 WHITE_BOX, ("epsilon", "steps", "eot_samples"),
                 pgd_build("bpda_identity", restarts=1), family="pgd",
                 estimator="bpda_identity"),
      AttackSpec("unrolled", "PGD, plain autodiff through the unrolled LL-PGD loop",
                 WHITE_BOX, ("epsilon", "steps", "eot_samples"),
                 pgd_build("unrolled", restarts=1), family="pgd",
                 estimator="unrolled"),
      AttackSpec("straight_through_eot",
                 "PGD, straight-through sign along g's exact iterates, EOT",
                 WHITE_BOX, ("epsilon", "steps", "eot_samples"),
                 pgd_build("straight_through", restarts=1), family="pgd",
                 estimator="straight_through"),
      AttackSpec("straight_through_t1e-3_eot",
                 "PGD, straight-through sign at temperature 1e-3 (near the "
                 "gradient scale), EOT", WHITE_BOX,
                 ("epsilon", "steps", "eot_samples"),
                 pgd_build("straight_through", restarts=1, temperature=1e-3),
                 family="pgd", estimator="straight_through"),
      AttackSpec("bpda_exact_path_eot",
                 "PGD, BPDA (softsign) Jacobian at g's exact iterates (eq. 5), "
                 "EOT", WHITE_BOX, ("epsilon", "steps", "eot_samples"),
                 pgd_build("bpda_exact_path", restarts=1,
                            sign_surrogate="softsign"),
                 family="pgd", estimator="bpda_exact_path"),
      AttackSpec("pgd_expected_margin_bpda_identity",
                 "PGD on the margin of the EOT-mean softmax, BPDA-I", WHITE_BOX,
                 ("epsilon", "steps", "eot_samples"),
                 pgd_build("bpda_identity", restarts=1, loss="margin",
                            expectation="softmax"),
                 family="pgd", estimator="bpda_identity",
                 random_family="pgd_expected_margin"),
      AttackSpec("target_selection",
                 "Steer f_b's least-likely class to the class f_a(g_c(x)) "
                 "gets most wrong, EOT", WHITE_BOX,
                 ("epsilon", "steps", "eot_samples"), target_selection_build,
                 needs_transform=True),
      AttackSpec("pgd_restarts_bpda_identity",
                 "PGD with random restarts, BPDA-I, EOT", WHITE_BOX,
                 _GRADIENT_FIELDS, pgd_build("bpda_identity"),
                 family="pgd_restarts", estimator="bpda_identity"),
      AttackSpec("apgd_ce_bpda_identity", "APGD-CE, BPDA-I, EOT, restarts",
                 WHITE_BOX, _GRADIENT_FIELDS,
                 apgd_build("bpda_identity", "ce"), family="apgd_ce",
                 estimator="bpda_identity"),
      AttackSpec("apgd_dlr_t_bpda_identity",
                 "APGD-DLR targeted, BPDA-I, EOT, restarts", WHITE_BOX,
                 _GRADIENT_FIELDS, apgd_build("bpda_identity", "dlr_targeted"),
                 family="apgd_dlr_t", estimator="bpda_identity"),
      AttackSpec("apgd_ce_expected_bpda_identity",
                 "APGD-CE on the EOT-mean softmax (expected output), BPDA-I, "
                 "restarts", WHITE_BOX, _GRADIENT_FIELDS,
                 apgd_build("bpda_identity", "ce", expectation="softmax"),
                 family="apgd_ce", estimator="bpda_identity",
                 random_family="apgd_ce_expected"),
      AttackSpec("apgd_dlr_bpda_identity",
                 "APGD-DLR (untargeted), BPDA-I, EOT, restarts", WHITE_BOX,
                 _GRADIENT_FIELDS, apgd_build("bpda_identity", "dlr"),
                 family="apgd_dlr", estimator="bpda_identity"),
      AttackSpec("apgd_ce_bpda", "APGD-CE, BPDA (softsign), EOT, restarts",
                 WHITE_BOX, _GRADIENT_FIELDS,
                 apgd_build("bpda", "ce", sign_surrogate="softsign"),
                 family="apgd_ce", estimator="bpda"),
      AttackSpec("apgd_dlr_t_bpda", "APGD-DLR targeted, BPDA (softsign), EOT, "
                 "restarts", WHITE_BOX, _GRADIENT_FIELDS,
                 apgd_build("bpda", "dlr_targeted", sign_surrogate="softsign"),
                 family="apgd_dlr_t", estimator="bpda"),
      AttackSpec("apgd_dlr_bpda",
                 "APGD-DLR (untargeted), BPDA (softsign), EOT, restarts",
                 WHITE_BOX, _GRADIENT_FIELDS,
                 apgd_build("bpda", "dlr", sign_surrogate="softsign"),
                 family="apgd_dlr", estimator="bpda"),
  ] + [
      AttackSpec(f"apgd_{loss}_{estimator}",
                 f"APGD-{loss.upper()}{' (untargeted)' if loss == 'dlr' else ''}, "
                 f"{description}, EOT, restarts", WHITE_BOX, _GRADIENT_FIELDS,
                 apgd_build(estimator, loss), family=f"apgd_{loss}",
                 estimator=estimator)
      for estimator, description in (
          ("straight_through", "straight-through sign along g's iterates"),
          ("bpda_exact_path", "BPDA Jacobian at g's exact iterates"))
      for loss in ("ce", "dlr")
  ] + [
      AttackSpec(f"cheaper_transfer_k{k}",
                 f"BPDA+EOT PGD on f_a(g_{k}) ({k} LL-PGD steps), replayed on g",
                 TRANSFER, _GRADIENT_FIELDS, cheaper_build(k),
                 needs_transform=True) for k in (1, 2, 3)
  ] + [
      AttackSpec("whitebox_transfer", "PGD on f_a alone, replayed on f_a(g(.))",
                 TRANSFER, _TRANSFER_FIELDS, transfer_build("classifier"),
                 needs_transform=True),
      AttackSpec("whitebox_transfer_mi_di",
                 "MI-DI PGD (momentum, input diversity) on f_a alone, replayed",
                 TRANSFER, _TRANSFER_FIELDS,
                 transfer_build("classifier", **MI_DI), needs_transform=True),
  ] + [
      AttackSpec(f"{prefix}{'_mi_di' if options else ''}",
                 f"{'MI-DI ' if options else ''}PGD on an {trained} "
                 "surrogate, replayed", TRANSFER, _TRANSFER_FIELDS,
                 transfer_build(source, **options), needs_surrogate=source)
      for prefix, source, trained in (
          ("blackbox_transfer", "surrogate", "independently trained"),
          ("adv_surrogate_transfer", "adversarial_surrogate",
           "adversarially trained"))
      for options in ({}, MI_DI)
  ] + [
      AttackSpec(NO_BPDA_SPEC,
                 "APGD-CE on the model's own gradients, without BPDA (None "
                 "read as zero): the comparison of the masking checks",
                 WHITE_BOX, _GRADIENT_FIELDS, apgd_build(NO_BPDA, "ce"),
                 family=NO_BPDA_SPEC, needs_bpda=True),
      AttackSpec("square", "Square Attack (score-based random search)", QUERY,
                 _QUERY_FIELDS, square_build),
      AttackSpec("spsa", "SPSA gradient-free Adam on the margin", QUERY,
                 ("epsilon", "steps", "queries", "query_draws"), spsa_build,
                 extra=lambda budget, m: {"samples": spsa_samples(budget, m)}),
      AttackSpec("hop_skip_jump", "HopSkipJump (decision-based), foolbox "
                 "defaults, iterations fitted to the query budget", QUERY,
                 _QUERY_FIELDS, hop_skip_jump_build,
                 extra=lambda budget, m: {
                     "iterations": hsj_iterations(budget, m)}),
      AttackSpec("gen_attack", "GenAttack (genetic), population 6, "
                 "generations fitted to the query budget", QUERY,
                 _QUERY_FIELDS, gen_attack_build,
                 extra=lambda budget, m: {
                     "generations": genattack_generations(budget, m)}),
      AttackSpec("reparam", "PGD on f_a(h(.)), h a conv net trained to mimic g",
                 REPARAM, _TRANSFER_FIELDS, reparam_build,
                 needs_transform=True,
                 extra=lambda budget, m: {"h_training": H_TRAINING}),
  ]


# The plain-gradient comparison attack, added to every list that runs a
# white-box attack on a model with BPDA-wrapped layers.
NO_BPDA_SPEC = "apgd_ce_no_bpda"
REGISTRY = {spec.name: spec for spec in _specs()}

PRESETS = {
    "paper": ("bpda_softsign", "bpda_tanh", "bpda_identity_eot", "unrolled",
              "whitebox_transfer", "blackbox_transfer", "hop_skip_jump",
              "gen_attack", "reparam"),
    "adaptive": ("pgd_restarts_bpda_identity", "apgd_ce_bpda_identity",
                 "apgd_dlr_t_bpda_identity", "apgd_ce_bpda", "apgd_dlr_t_bpda",
                 "straight_through_eot", "straight_through_t1e-3_eot",
                 "bpda_exact_path_eot", "pgd_expected_margin_bpda_identity",
                 "apgd_ce_expected_bpda_identity",
                 "target_selection", "cheaper_transfer_k1",
                 "cheaper_transfer_k2", "cheaper_transfer_k3",
                 "whitebox_transfer", "whitebox_transfer_mi_di",
                 "blackbox_transfer", "blackbox_transfer_mi_di",
                 "adv_surrogate_transfer", "adv_surrogate_transfer_mi_di",
                 "square"),
}
# AutoAttack's `rand` version (Croce & Hein 2020): APGD-CE and untargeted
# APGD-DLR with EOT, through each gradient estimator of g; run it with the
# reference budget (`Budget()`: 100 iterations, EOT 20, 1 restart).
PRESETS["autoattack_rand"] = tuple(
    f"apgd_{loss}_{estimator}"
    for estimator in ("bpda_identity", "bpda", "straight_through",
                      "bpda_exact_path")
    for loss in ("ce", "dlr"))
PRESETS["full"] = tuple(dict.fromkeys(
    PRESETS["paper"] + PRESETS["adaptive"] + PRESETS["autoattack_rand"]))


def families():
  """Family name -> the first registered attack of that family.

  The names a report prints for a model without a transform (`apgd_ce`,
  `pgd_expected_margin`, ...) are accepted where attack names are.
  """
  named = {}
  for spec in REGISTRY.values():
    for family in (spec.family, spec.random_family):
      if family and family not in REGISTRY:
        named.setdefault(family, spec.name)
  return named


def resolve_attacks(names):
  """Expands presets and family names, and checks names.

  Args:
    names: attack names, family names as reports print them (e.g.
      `apgd_ce`, the first attack of the family) and/or preset names
      (`paper`, `adaptive`, `autoattack_rand`, `full`).

  Returns:
    The attack names in order, without repeats.

  Raises:
    ValueError: for an unknown name, listing the accepted ones, or for no
      name at all (an evaluation without attacks would report its clean
      accuracy as robust accuracy).
  """
  if isinstance(names, str):
    names = [names]
  names = list(names or [])
  if not names:
    raise ValueError(
        "`attacks` must name at least one attack or preset (e.g. "
        f"'adaptive'; presets: {', '.join(sorted(PRESETS))}). Received: "
        f"attacks={names!r}")
  resolved = []
  for name in names:
    if name in PRESETS:
      resolved.extend(PRESETS[name])
    elif name in REGISTRY:
      resolved.append(name)
    elif name in families():
      resolved.append(families()[name])
    else:
      raise ValueError(
          f"Unknown attack or preset. Presets: {', '.join(sorted(PRESETS))}; "
          f"attacks: {', '.join(REGISTRY)}; families (as reports of models "
          f"without a transform name them): {', '.join(families())}. "
          f"Received: attacks={name!r}")
  return list(dict.fromkeys(resolved))


def not_run(ran, defended, preset="adaptive", randomized=None):
  """The attacks of a preset that apply to a model but are not in `ran`.

  A worst case over fewer attacks is only an upper bound on the preset's, so
  a report names what is missing. On a plain classifier the attacks that need
  g do not apply, and the estimator variants of one family are one attack,
  named by the family (as `plan` runs them).

  Args:
    ran: display names of the attacks that ran or raised.
    defended: whether the model contains an `AdversarialTransform`.
    preset: a `PRESETS` key.
    randomized: whether the model is random (None: `defended`).

  Returns:
    The missing display names, in the preset's order, without repeats.

  Raises:
    ValueError: for an unknown preset.
  """
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset; known: {sorted(PRESETS)}. "
                     f"Received: preset={preset!r}")
  missing = []
  for name in PRESETS[preset]:
    spec = REGISTRY[name]
    if spec.needs_transform and not defended:
      continue
    randomized = defended if randomized is None else randomized
    family = spec.family_on(randomized)
    shown = family if family and not defended else name
    if shown not in ran and shown not in missing:
      missing.append(shown)
  return missing


def plan(target, names):
  """The (display name, spec) pairs to run on `target`, and skipped names.

  Args:
    target: a `Target`.
    names: resolved attack names.

  Returns:
    `(runs, skipped)`: a list of `(name, AttackSpec)` and a dict name -> reason.
  """
  runs, skipped, families = [], {}, set()
  if target.bpda_layers and not target.defended and NO_BPDA_SPEC not in names \
      and any(REGISTRY[name].kind == WHITE_BOX for name in names):
    names = list(names) + [NO_BPDA_SPEC]
  for name in names:
    spec = REGISTRY[name]
    family = spec.family_on(target.randomized)
    if spec.needs_transform and not target.defended:
      skipped[name] = "needs an AdversarialTransform (plain classifier)"
    elif spec.needs_bpda and (target.defended or not target.bpda_layers):
      skipped[name] = "no layer wrapped with BPDA"
    elif (spec.needs_surrogate and
          getattr(target, spec.needs_surrogate) is None):
      skipped[name] = f"no {spec.needs_surrogate.replace('_', ' ')} model given"
    elif not target.defended and family:
      if family in families:
        skipped[name] = f"same as {family} on a plain classifier"
      else:
        families.add(family)
        runs.append((family, spec))
    else:
      runs.append((name, spec))
  return runs, skipped
