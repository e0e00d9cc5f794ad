"""The attack suite: a registry of attacks, presets and the per-example worst case.

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

For a model containing `AdversarialTransform` the white-box attacks go through
the gradient estimators of `attacks.estimators`. For a plain classifier they
run on the model directly: estimator variants collapse into one attack per
family (`pgd`, `pgd_restarts`, `apgd_ce`, `apgd_dlr`, `apgd_dlr_t`), EOT is
off (the model is deterministic) and attacks needing the transform are
skipped.

Every final adversarial image is scored with R fresh, seeded draws
(`attacks.scoring`), drawn independently for every attack run (their seed is
derived from the run's seed and the attack's name). The worst case is per
example: an image counts as robust only if it is correct in every draw on its
clean version and on the output of every attack run. An attack that raises
(with `keep_going`) makes the verdict INCOMPLETE; it never silently drops out.

Budgets: `Budget()` is the reference budget for a randomized defense,
AutoAttack's `rand` version (APGD 100 steps, EOT 20, 1 restart) and its Square
(5,000 queries), scored with R = 20 draws on the 10,000 images of the CIFAR-10
test split. `BUDGET_PRESETS` holds it and a cheap `smoke` preset; every run
lists how it falls below the reference (`weaker_than_reference`).
"""

import contextlib
import dataclasses
import time
import zlib

import keras
import numpy as np
import tensorflow as tf

from adv_layer import transform
from adv_layer.layer import find_transforms
from attacks import apgd
from attacks import common
from attacks import estimators
from attacks import genattack
from attacks import hopskipjump
from attacks import pgd
from attacks import reparam
from attacks import scoring
from attacks import spsa
from attacks import square
from attacks import target_selection
from attacks import transfer

__all__ = [
    "ALWAYS_USED", "AttackResult", "AttackSpec", "BUDGET_PRESETS", "Budget",
    "BudgetPreset", "COMPLETE", "INCOMPLETE", "PRESETS", "REFERENCE_DRAWS",
    "REFERENCE_IMAGES", "REGISTRY", "SuiteResult", "Target", "attack_seed",
    "count_passes", "not_run", "plan", "planned", "rerun", "resolve_attacks",
    "run_attack", "run_suite", "scoring_seed", "weaker_than_reference",
    "worst_case"
]

WHITE_BOX, TRANSFER, QUERY, REPARAM = (
    "white-box", "transfer", "query", "reparameterization")
COMPLETE, INCOMPLETE = "COMPLETE", "INCOMPLETE"

# The reference's scoring: R draws per final image, on the full CIFAR-10
# test split.
REFERENCE_DRAWS = scoring.DRAWS
REFERENCE_IMAGES = 10_000


@dataclasses.dataclass(frozen=True)
class Budget:
  """The attacker's budget, shared by every attack of a run.

  The defaults are the reference budget for a randomized defense: AutoAttack's
  `rand` version (APGD-CE and APGD-DLR, 100 iterations, EOT 20, 1 restart)
  and AutoAttack's Square (5,000 queries). `weaker_than_reference` lists how
  another budget falls below it.

  Attributes:
    epsilon: L∞ radius (default 8/255 on [0, 1] images).
    steps: iterations of gradient attacks (SPSA steps too).
    restarts: random restarts of the attacks that take them.
    eot_samples: draws of g averaged per gradient (EOT); 1 is used on a
      deterministic model.
    queries: model evaluations per image of query-based attacks.
    query_draws: M, draws of the model averaged per query by the query
      attacks on a randomized model; 1 is used on a deterministic model.
    chunk_size: most images per model call inside EOT (None: chosen from
      `attacks.common.DEFAULT_MEMORY_BUDGET` and the model's size).
    value_range: `(low, high)` of valid pixel values.
  """
  epsilon: float = 8 / 255
  steps: int = 100
  restarts: int = 1
  eot_samples: int = 20
  queries: int = 5000
  query_draws: int = 8
  chunk_size: object = None
  value_range: tuple = (0.0, 1.0)

  def validate(self):
    """Raises ValueError naming the first bad field."""
    common.validate_attack_args(self.epsilon, steps=self.steps,
                                restarts=self.restarts,
                                value_range=self.value_range,
                                eot_samples=self.eot_samples)
    common.check_number("queries", self.queries, minimum=1, integer=True)
    common.check_number("query_draws", self.query_draws, minimum=1,
                        integer=True)
    if self.chunk_size is not None:
      common.check_number("chunk_size", self.chunk_size, minimum=1,
                          integer=True)
    return self


@dataclasses.dataclass(frozen=True)
class BudgetPreset:
  """A named evaluation size: the attacker's budget, R and the image count.

  Attributes:
    budget: a `Budget`.
    draws: R, draws of the model per scored image.
    images: images attacked.
  """
  budget: Budget
  draws: int
  images: int


BUDGET_PRESETS = {
    "reference": BudgetPreset(Budget(), REFERENCE_DRAWS, REFERENCE_IMAGES),
    # CI and the README demo: minutes on 2 CPU cores; flagged as weaker.
    "smoke": BudgetPreset(
        Budget(steps=5, eot_samples=2, queries=100, query_draws=2), draws=2,
        images=20),
}


def weaker_than_reference(budget, fields, images, draws, defended):
  """Each way a run's budget falls below the reference (`BUDGET_PRESETS`).

  Args:
    budget: the run's `Budget`.
    fields: the `Budget` fields its attacks use (an unused field cannot make
      the run weaker).
    images: images attacked.
    draws: R, draws per scored image.
    defended: whether the model is randomized; EOT samples, query draws and
      R do not matter for a deterministic model.

  Returns:
    A list of dicts `{"field", "used", "reference"}` in a fixed order, empty
    for a run at reference strength.
  """
  reference = BUDGET_PRESETS["reference"]
  used = {"images": images, "draws": draws}
  wanted = {"images": reference.images, "draws": reference.draws}
  for field in ("steps", "restarts", "eot_samples", "queries", "query_draws"):
    if field in fields:
      used[field] = getattr(budget, field)
      wanted[field] = getattr(reference.budget, field)
  random_only = ("eot_samples", "query_draws", "draws")
  return [{"field": field, "used": used[field], "reference": wanted[field]}
          for field in ("steps", "restarts", "eot_samples", "queries",
                        "query_draws", "images", "draws")
          if field in used and used[field] < wanted[field] and
          (defended or field not in random_only)]


class Target:
  """The model under attack and what attacks may use besides it.

  Args:
    model: the Keras model under attack (defended or plain), logits out.
    surrogate: an independently trained Keras model for black-box transfer
      (e.g. `transfer.surrogate_from_defended`: f_a's architecture trained
      on clean data), or None.
    train_images: training images for the reparameterization attack, or None.
    adversarial_surrogate: an independently, adversarially trained model for
      black-box transfer, or None.
  """

  def __init__(self, model, surrogate=None, train_images=None,
               adversarial_surrogate=None):
    if not isinstance(model, keras.Model):
      raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    self.model = model
    self.surrogate = surrogate
    self.adversarial_surrogate = adversarial_surrogate
    self.train_images = train_images
    self.transforms = find_transforms(model)

  @property
  def defended(self):
    """Whether the model contains an `AdversarialTransform`."""
    return bool(self.transforms)

  def forward_fn(self):
    """The model as a query oracle: a fresh draw of g per call."""
    return lambda images: self.model(images, training=False)

  def white_box_fn(self, estimator, seed=None, **estimator_kwargs):
    """A differentiable model_fn: through `estimator` if defended, else direct."""
    if not self.defended:
      return self.forward_fn()
    return estimators.defended_model_fn(self.model, estimator, seed=seed,
                                        **estimator_kwargs)


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """One registered attack.

  Attributes:
    name: registry key.
    description: one line.
    kind: "white-box", "transfer", "query" or "reparameterization".
    fields: the `Budget` fields it uses besides `ALWAYS_USED` (recorded with
      its figures, and part of its units' keys in `attacks.runner`).
    build: `(target, x, y, budget, seed) -> x_adv`.
    family: on a plain classifier, specs of one family are the same attack
      (the estimator is irrelevant); only the first runs, under this name.
    needs_transform: skipped on a plain classifier (its source is f_a or g).
    needs_surrogate: the `Target` field holding its source model
      ("surrogate" or "adversarial_surrogate"); skipped while it is None.
    estimator: the gradient estimator through g (None: not a white-box attack).
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


def _eot(target, budget):
  """EOT samples: the budget's on a defended model, 1 on a deterministic one."""
  return budget.eot_samples if target.defended else 1


def _pgd_build(estimator, restarts=None, loss="ce", expectation="loss",
               **estimator_kwargs):
  """PGD through `estimator` with EOT; `restarts` None takes the budget's.

  `loss` and `expectation` are `pgd.pgd`'s (the expected-output attacks pass
  `expectation="softmax"`); the rest configures the estimator.
  """

  def build(target, x, y, budget, seed):
    model_fn = target.white_box_fn(estimator, **estimator_kwargs)
    return pgd.pgd(
        model_fn, x, y, epsilon=budget.epsilon, steps=budget.steps,
        restarts=budget.restarts if restarts is None else restarts, loss=loss,
        eot_samples=_eot(target, budget), chunk_size=budget.chunk_size,
        value_range=budget.value_range, seed=seed, expectation=expectation)

  return build


def _target_selection_build(target, x, y, budget, seed):
  """Steers f_b's least-likely class to the class that f_a(g_c(x)) gets wrong."""
  return target_selection.target_selection(
      target.model, x, y, epsilon=budget.epsilon, steps=budget.steps,
      eot_samples=_eot(target, budget), value_range=budget.value_range,
      seed=seed)


def _apgd_build(estimator, loss, expectation="loss", **estimator_kwargs):
  """APGD with `loss` through `estimator` with EOT and restarts."""

  def build(target, x, y, budget, seed):
    model_fn = target.white_box_fn(estimator, **estimator_kwargs)
    return apgd.apgd(
        model_fn, x, y, epsilon=budget.epsilon, steps=budget.steps,
        restarts=budget.restarts, loss=loss, eot_samples=_eot(target, budget),
        chunk_size=budget.chunk_size, value_range=budget.value_range, seed=seed,
        expectation=expectation)

  return build


def _cheaper_build(k):
  """BPDA+EOT PGD on f_a(g_k(.)), g with only k LL-PGD steps; replayed on g."""

  def build(target, x, y, budget, seed):
    source_fn = transfer.cheaper_defense_model_fn(target.model, steps=k)
    return transfer.transfer(
        source_fn, x, y, epsilon=budget.epsilon, steps=budget.steps,
        restarts=budget.restarts, eot_samples=budget.eot_samples,
        value_range=budget.value_range, seed=seed)

  return build


# Momentum and input diversity at the settings of their papers (MI-FGSM,
# Dong et al. 2018; DI, Xie et al. 2019).
MI_DI = dict(momentum=1.0, diversity_prob=0.5)


def _transfer_build(source, **transfer_kwargs):
  """PGD on a source model, replayed on the target.

  Args:
    source: "classifier" (f_a alone) or a `Target` field holding a model
      ("surrogate", "adversarial_surrogate").
    **transfer_kwargs: `transfer.transfer` options (momentum, diversity).
  """

  def build(target, x, y, budget, seed):
    if source == "classifier":
      source_fn = transfer.classifier_model_fn(target.model)
    else:
      model = getattr(target, source)
      source_fn = lambda images: model(images, training=False)
    return transfer.transfer(
        source_fn, x, y, epsilon=budget.epsilon, steps=budget.steps,
        restarts=budget.restarts, value_range=budget.value_range, seed=seed,
        **transfer_kwargs)

  return build


def _query_draws(target, budget):
  """Query draws M: the budget's on a defended model, 1 on a deterministic one."""
  return budget.query_draws if target.defended else 1


def _square_build(target, x, y, budget, seed):
  return square.square(
      target.forward_fn(), x, y, epsilon=budget.epsilon, queries=budget.queries,
      value_range=budget.value_range, seed=seed,
      query_draws=_query_draws(target, budget))


def spsa_samples(budget, query_draws=1):
  """SPSA evaluations per step so that its queries fit `budget.queries`.

  SPSA spends steps * samples on gradients and (1 + steps) * M on scores,
  doubled for M > 1 (fresh re-scores), M = `query_draws`.
  """
  scores = (1 + budget.steps) * query_draws * (1 if query_draws == 1 else 2)
  samples = (budget.queries - scores) // budget.steps
  return max(2, samples - samples % 2)


def _spsa_build(target, x, y, budget, seed):
  draws = _query_draws(target, budget)
  return spsa.spsa(
      target.forward_fn(), x, y, epsilon=budget.epsilon, steps=budget.steps,
      samples=spsa_samples(budget, draws), value_range=budget.value_range,
      seed=seed, query_draws=draws)


# HopSkipJump's cost per iteration t: about initial_evals * sqrt(t) decisions
# for the gradient estimate plus this many for the boundary and step searches
# (each of those M queries on a randomized model).
HSJ_SEARCH_QUERIES = 25
HSJ_INITIAL_EVALS = 100
GENATTACK_POPULATION = 6


def hsj_iterations(budget, query_draws=1):
  """The most HopSkipJump iterations whose estimated cost fits `queries`."""
  spent, iterations = 0.0, 0
  while True:
    cost = (HSJ_INITIAL_EVALS * np.sqrt(iterations + 1) +
            HSJ_SEARCH_QUERIES * query_draws)
    if spent + cost > budget.queries:
      return max(1, iterations)
    spent += cost
    iterations += 1


def genattack_generations(budget, query_draws=1):
  """GenAttack generations whose queries fit `budget.queries`.

  A generation costs population queries, (population + 1) * M for M =
  `query_draws` > 1 (the elite confirmed on fresh draws).
  """
  per_generation = (GENATTACK_POPULATION if query_draws == 1 else
                    (GENATTACK_POPULATION + 1) * query_draws)
  return max(1, budget.queries // per_generation)


def _hop_skip_jump_build(target, x, y, budget, seed):
  draws = _query_draws(target, budget)
  return hopskipjump.hop_skip_jump(
      target.forward_fn(), x, y, epsilon=budget.epsilon,
      iterations=hsj_iterations(budget, draws),
      initial_evals=HSJ_INITIAL_EVALS, value_range=budget.value_range,
      seed=seed, query_draws=draws)


def _gen_attack_build(target, x, y, budget, seed):
  draws = _query_draws(target, budget)
  return genattack.gen_attack(
      target.forward_fn(), x, y, epsilon=budget.epsilon,
      population=GENATTACK_POPULATION,
      generations=genattack_generations(budget, draws),
      value_range=budget.value_range, seed=seed, query_draws=draws)


def _reparam_build(target, x, y, budget, seed):
  if target.train_images is None:
    raise ValueError("The reparameterization attack needs training images. "
                     "Received: train_images=None")
  h = reparam.train_reparameterization(target.transforms[0], target.train_images,
                                       seed=seed)
  return pgd.pgd(
      reparam.reparam_model_fn(target.model, h), x, y, epsilon=budget.epsilon,
      steps=budget.steps, restarts=budget.restarts, chunk_size=budget.chunk_size,
      value_range=budget.value_range, seed=seed)


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
                 _pgd_build("bpda", restarts=1, sign_surrogate="softsign"),
                 family="pgd", estimator="bpda"),
      AttackSpec("bpda_tanh", "PGD, BPDA backward with sign -> tanh, EOT",
                 WHITE_BOX, ("epsilon", "steps", "eot_samples"),
                 _pgd_build("bpda", restarts=1, sign_surrogate="tanh"),
                 family="pgd", estimator="bpda"),
      AttackSpec("bpda_identity_eot", "PGD, BPDA-I (backward of g = identity), EOT",
                 WHITE_BOX, ("epsilon", "steps", "eot_samples"),
                 _pgd_build("bpda_identity", restarts=1), family="pgd",
                 estimator="bpda_identity"),
      AttackSpec("unrolled", "PGD, plain autodiff through the unrolled LL-PGD loop",
                 WHITE_BOX, ("epsilon", "steps", "eot_samples"),
                 _pgd_build("unrolled", restarts=1), family="pgd",
                 estimator="unrolled"),
      AttackSpec("straight_through_eot",
                 "PGD, straight-through sign along g's exact iterates, EOT",
                 WHITE_BOX, ("epsilon", "steps", "eot_samples"),
                 _pgd_build("straight_through", restarts=1), family="pgd",
                 estimator="straight_through"),
      AttackSpec("straight_through_t1e-3_eot",
                 "PGD, straight-through sign at temperature 1e-3 (near the "
                 "gradient scale), EOT", WHITE_BOX,
                 ("epsilon", "steps", "eot_samples"),
                 _pgd_build("straight_through", restarts=1, temperature=1e-3),
                 family="pgd", estimator="straight_through"),
      AttackSpec("bpda_exact_path_eot",
                 "PGD, BPDA (softsign) Jacobian at g's exact iterates (eq. 5), "
                 "EOT", WHITE_BOX, ("epsilon", "steps", "eot_samples"),
                 _pgd_build("bpda_exact_path", restarts=1,
                            sign_surrogate="softsign"),
                 family="pgd", estimator="bpda_exact_path"),
      AttackSpec("pgd_expected_margin_bpda_identity",
                 "PGD on the margin of the EOT-mean softmax, BPDA-I", WHITE_BOX,
                 ("epsilon", "steps", "eot_samples"),
                 _pgd_build("bpda_identity", restarts=1, loss="margin",
                            expectation="softmax"),
                 family="pgd", estimator="bpda_identity"),
      AttackSpec("target_selection",
                 "Steer f_b's least-likely class to the class f_a(g_c(x)) "
                 "gets most wrong, EOT", WHITE_BOX,
                 ("epsilon", "steps", "eot_samples"), _target_selection_build,
                 needs_transform=True),
      AttackSpec("pgd_restarts_bpda_identity",
                 "PGD with random restarts, BPDA-I, EOT", WHITE_BOX,
                 _GRADIENT_FIELDS, _pgd_build("bpda_identity"),
                 family="pgd_restarts", estimator="bpda_identity"),
      AttackSpec("apgd_ce_bpda_identity", "APGD-CE, BPDA-I, EOT, restarts",
                 WHITE_BOX, _GRADIENT_FIELDS,
                 _apgd_build("bpda_identity", "ce"), family="apgd_ce",
                 estimator="bpda_identity"),
      AttackSpec("apgd_dlr_t_bpda_identity",
                 "APGD-DLR targeted, BPDA-I, EOT, restarts", WHITE_BOX,
                 _GRADIENT_FIELDS, _apgd_build("bpda_identity", "dlr_targeted"),
                 family="apgd_dlr_t", estimator="bpda_identity"),
      AttackSpec("apgd_ce_expected_bpda_identity",
                 "APGD-CE on the EOT-mean softmax (expected output), BPDA-I, "
                 "restarts", WHITE_BOX, _GRADIENT_FIELDS,
                 _apgd_build("bpda_identity", "ce", expectation="softmax"),
                 family="apgd_ce", estimator="bpda_identity"),
      AttackSpec("apgd_dlr_bpda_identity",
                 "APGD-DLR (untargeted), BPDA-I, EOT, restarts", WHITE_BOX,
                 _GRADIENT_FIELDS, _apgd_build("bpda_identity", "dlr"),
                 family="apgd_dlr", estimator="bpda_identity"),
      AttackSpec("apgd_ce_bpda", "APGD-CE, BPDA (softsign), EOT, restarts",
                 WHITE_BOX, _GRADIENT_FIELDS,
                 _apgd_build("bpda", "ce", sign_surrogate="softsign"),
                 family="apgd_ce", estimator="bpda"),
      AttackSpec("apgd_dlr_t_bpda", "APGD-DLR targeted, BPDA (softsign), EOT, "
                 "restarts", WHITE_BOX, _GRADIENT_FIELDS,
                 _apgd_build("bpda", "dlr_targeted", sign_surrogate="softsign"),
                 family="apgd_dlr_t", estimator="bpda"),
      AttackSpec("apgd_dlr_bpda",
                 "APGD-DLR (untargeted), BPDA (softsign), EOT, restarts",
                 WHITE_BOX, _GRADIENT_FIELDS,
                 _apgd_build("bpda", "dlr", sign_surrogate="softsign"),
                 family="apgd_dlr", estimator="bpda"),
  ] + [
      AttackSpec(f"apgd_{loss}_{estimator}",
                 f"APGD-{loss.upper()}{' (untargeted)' if loss == 'dlr' else ''}, "
                 f"{description}, EOT, restarts", WHITE_BOX, _GRADIENT_FIELDS,
                 _apgd_build(estimator, loss), family=f"apgd_{loss}",
                 estimator=estimator)
      for estimator, description in (
          ("straight_through", "straight-through sign along g's iterates"),
          ("bpda_exact_path", "BPDA Jacobian at g's exact iterates"))
      for loss in ("ce", "dlr")
  ] + [
      AttackSpec(f"cheaper_transfer_k{k}",
                 f"BPDA+EOT PGD on f_a(g_{k}) ({k} LL-PGD steps), replayed on g",
                 TRANSFER, _GRADIENT_FIELDS, _cheaper_build(k),
                 needs_transform=True) for k in (1, 2, 3)
  ] + [
      AttackSpec("whitebox_transfer", "PGD on f_a alone, replayed on f_a(g(.))",
                 TRANSFER, _TRANSFER_FIELDS, _transfer_build("classifier"),
                 needs_transform=True),
      AttackSpec("whitebox_transfer_mi_di",
                 "MI-DI PGD (momentum, input diversity) on f_a alone, replayed",
                 TRANSFER, _TRANSFER_FIELDS,
                 _transfer_build("classifier", **MI_DI), needs_transform=True),
      AttackSpec("blackbox_transfer",
                 "PGD on an independently trained surrogate, replayed", TRANSFER,
                 _TRANSFER_FIELDS, _transfer_build("surrogate"),
                 needs_surrogate="surrogate"),
      AttackSpec("blackbox_transfer_mi_di",
                 "MI-DI PGD on an independently trained surrogate, replayed",
                 TRANSFER, _TRANSFER_FIELDS,
                 _transfer_build("surrogate", **MI_DI),
                 needs_surrogate="surrogate"),
      AttackSpec("adv_surrogate_transfer",
                 "PGD on an adversarially trained surrogate, replayed",
                 TRANSFER, _TRANSFER_FIELDS,
                 _transfer_build("adversarial_surrogate"),
                 needs_surrogate="adversarial_surrogate"),
      AttackSpec("adv_surrogate_transfer_mi_di",
                 "MI-DI PGD on an adversarially trained surrogate, replayed",
                 TRANSFER, _TRANSFER_FIELDS,
                 _transfer_build("adversarial_surrogate", **MI_DI),
                 needs_surrogate="adversarial_surrogate"),
      AttackSpec("square", "Square Attack (score-based random search)", QUERY,
                 _QUERY_FIELDS, _square_build),
      AttackSpec("spsa", "SPSA gradient-free Adam on the margin", QUERY,
                 ("epsilon", "steps", "queries", "query_draws"), _spsa_build),
      AttackSpec("hop_skip_jump", "HopSkipJump (decision-based), foolbox "
                 "defaults, iterations fitted to the query budget", QUERY,
                 _QUERY_FIELDS, _hop_skip_jump_build),
      AttackSpec("gen_attack", "GenAttack (genetic), population 6, "
                 "generations fitted to the query budget", QUERY,
                 _QUERY_FIELDS, _gen_attack_build),
      AttackSpec("reparam", "PGD on f_a(h(.)), h a conv net trained to mimic g",
                 REPARAM, _TRANSFER_FIELDS, _reparam_build,
                 needs_transform=True),
  ]


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


def resolve_attacks(names):
  """Expands presets and checks names.

  Args:
    names: attack names and/or preset names (`paper`, `adaptive`,
      `autoattack_rand`, `full`).

  Returns:
    The attack names in order, without repeats.

  Raises:
    ValueError: for an unknown name.
  """
  if isinstance(names, str):
    names = [names]
  resolved = []
  for name in names:
    if name in PRESETS:
      resolved.extend(PRESETS[name])
    elif name in REGISTRY:
      resolved.append(name)
    else:
      raise ValueError(f"Unknown attack or preset; known: {sorted(PRESETS)} + "
                       f"{sorted(REGISTRY)}. Received: attacks={name!r}")
  return list(dict.fromkeys(resolved))


def planned(target, attacks):
  """The display names `run_suite` would run on `target` for `attacks`."""
  return [name for name, _ in plan(target, resolve_attacks(attacks))[0]]


def not_run(ran, defended, preset="adaptive"):
  """The attacks of a preset that apply to a model but are not in `ran`.

  A worst case over fewer attacks is only an upper bound on the preset's, so
  a report names what is missing. On a plain classifier the attacks that need
  g do not apply, and the estimator variants of one family are one attack,
  named by the family (as `plan` runs them).

  Args:
    ran: display names of the attacks that ran or raised.
    defended: whether the model contains an `AdversarialTransform`.
    preset: a `PRESETS` key.

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
    shown = spec.family if spec.family and not defended else name
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
  for name in names:
    spec = REGISTRY[name]
    if spec.needs_transform and not target.defended:
      skipped[name] = "needs an AdversarialTransform (plain classifier)"
    elif (spec.needs_surrogate and
          getattr(target, spec.needs_surrogate) is None):
      skipped[name] = f"no {spec.needs_surrogate.replace('_', ' ')} model given"
    elif not target.defended and spec.family:
      if spec.family in families:
        skipped[name] = f"same as {spec.family} on a plain classifier"
      else:
        families.add(spec.family)
        runs.append((spec.family, spec))
    else:
      runs.append((name, spec))
  return runs, skipped


@contextlib.contextmanager
def count_passes(model, transforms):
  """Counts forward image passes of `model` and of each transform's f_b.

  The model's `call` is wrapped with a counter that adds the batch size
  (eagerly and inside `tf.function`); f_b's passes are counted by the
  transform itself (`transform.counting_passes`, in the calling thread), so
  eager calls of g stay compiled. The transform runs 1 + N forwards of f_b
  per image per draw (N = 13 in the paper), N of them followed by an
  input-gradient pass.

  Args:
    model: the Keras model under attack.
    transforms: its `AdversarialTransform` layers.

  Yields:
    A dict `{"model": tf.Variable, "f_b": tf.Variable}` of int64 counters.
  """
  counters = {"model": tf.Variable(0, dtype=tf.int64, trainable=False),
              "f_b": tf.Variable(0, dtype=tf.int64, trainable=False)}
  call = model.call
  own_call = model.__dict__.get("call")

  def counting(inputs, *args, **kwargs):
    counters["model"].assign_add(tf.cast(tf.shape(inputs)[0], tf.int64))
    return call(inputs, *args, **kwargs)

  model.call = counting
  try:
    with contextlib.ExitStack() as stack:
      for f_b in {id(layer.f_b): layer.f_b for layer in transforms}.values():
        stack.enter_context(transform.counting_passes(f_b, counters["f_b"]))
      yield counters
  finally:
    del model.call
    if own_call is not None:
      model.call = own_call


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


def budget_record(spec, target, budget):
  """The budget fields an attack used, as recorded beside its figures."""
  record = {field: getattr(budget, field) for field in spec.fields}
  if "eot_samples" in record and spec.kind == WHITE_BOX:
    record["eot_samples"] = _eot(target, budget)
  draws = _query_draws(target, budget)
  if "query_draws" in record:
    record["query_draws"] = draws
  if spec.name == "spsa":
    record["samples"] = spsa_samples(budget, draws)
  if spec.name == "hop_skip_jump":
    record["iterations"] = hsj_iterations(budget, draws)
  if spec.name == "gen_attack":
    record["generations"] = genattack_generations(budget, draws)
  if spec.name == "reparam":
    record["h_training"] = (
        "attacks.reparam.train_reparameterization defaults (dilated residual "
        "h bounded to the Δ-ball, 30 epochs, cosine Adam 1e-3)")
  if spec.estimator and target.defended:
    record["estimator"] = spec.estimator
  return record


def check_adversarial(x_adv, x, budget, name):
  """Raises if an attack left the epsilon-ball or the value range."""
  x_adv = np.asarray(x_adv, np.float32)
  distance = float(np.max(np.abs(x_adv - x))) if x.size else 0.0
  low, high = budget.value_range
  if (x_adv.shape != x.shape or distance > budget.epsilon + 1e-5 or
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
  # The model's own draws (query oracles, replays) restart from the attack's
  # seed, so a seeded attack on a random model repeats.
  with count_passes(target.model, target.transforms) as counters, \
      scoring.reseeded(target.model, own_seed):
    start = time.perf_counter()
    x_adv = spec.build(target, tf.constant(x), tf.constant(y), budget, own_seed)
    x_adv = check_adversarial(x_adv, x, budget, name)
    elapsed = time.perf_counter() - start
  return AttackResult(
      name=name, kind=spec.kind, description=spec.description,
      budget=budget_record(spec, target, budget),
      score=scoring.score(target.model, x_adv, y, draws=draws,
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

  @property
  def verdict(self):
    """COMPLETE if every planned attack ran, INCOMPLETE if any raised."""
    return INCOMPLETE if self.failed else COMPLETE


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
  clean = scoring.score(target.model, x, y, draws=draws,
                        seed=scoring_seed(seed, "clean"))
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
  return SuiteResult(
      clean=clean, results=results, skipped=skipped, failed=failed,
      worst=worst_case(clean, results),
      worst_white_box=worst_case(clean, results, kinds=(WHITE_BOX,)),
      budget=budget, seed=seed, draws=draws, defended=target.defended,
      weaker_than_reference=weaker_than_reference(
          budget, {field for _, spec in runs for field in spec.fields},
          len(x), draws, target.defended))


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
