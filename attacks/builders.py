"""The builders of the registered attacks: `(target, x, y, budget, seed, derived)`.

Each builder runs one attack of `attacks.registry` on a `Target` with a
budget, `derived` holding what `AttackSpec.derive` computed from them (EOT
samples and query draws as the model's randomness sets them, and the
attack's own settings: SPSA samples, HopSkipJump iterations, GenAttack
generations). The functions that fit those settings to a query budget live
here too.
"""

import numpy as np

from attacks import apgd
from attacks import genattack
from attacks import hopskipjump
from attacks import pgd
from attacks import reparam
from attacks import spsa
from attacks import square
from attacks import target_selection
from attacks import transfer

__all__ = [
    "GENATTACK_POPULATION", "HSJ_INITIAL_EVALS", "HSJ_SEARCH_QUERIES",
    "H_TRAINING", "MI_DI", "apgd_build", "cheaper_build",
    "gen_attack_build", "genattack_generations", "hop_skip_jump_build",
    "hsj_iterations", "pgd_build", "reparam_build", "spsa_build",
    "spsa_samples", "square_build", "target_selection_build",
    "transfer_build"
]


def pgd_build(estimator, restarts=None, loss="ce", expectation="loss",
               **estimator_kwargs):
  """PGD through `estimator` with EOT; `restarts` None takes the budget's.

  `loss` and `expectation` are `pgd.pgd`'s (the expected-output attacks pass
  `expectation="softmax"`); the rest configures the estimator.
  """

  def build(target, x, y, budget, seed, derived):
    model_fn = target.white_box_fn(estimator, **estimator_kwargs)
    return pgd.pgd(
        model_fn, x, y, epsilon=budget.epsilon, steps=budget.steps,
        restarts=budget.restarts if restarts is None else restarts, loss=loss,
        eot_samples=derived["eot_samples"], chunk_size=budget.chunk_size,
        value_range=budget.value_range, seed=seed, expectation=expectation)

  return build


def target_selection_build(target, x, y, budget, seed, derived):
  """Steers f_b's least-likely class to the class that f_a(g_c(x)) gets wrong."""
  return target_selection.target_selection(
      target.model, x, y, epsilon=budget.epsilon, steps=budget.steps,
      eot_samples=derived["eot_samples"], value_range=budget.value_range,
      seed=seed)


def apgd_build(estimator, loss, expectation="loss", **estimator_kwargs):
  """APGD with `loss` through `estimator` with EOT and restarts."""

  def build(target, x, y, budget, seed, derived):
    model_fn = target.white_box_fn(estimator, **estimator_kwargs)
    return apgd.apgd(
        model_fn, x, y, epsilon=budget.epsilon, steps=budget.steps,
        restarts=budget.restarts, loss=loss, eot_samples=derived["eot_samples"],
        chunk_size=budget.chunk_size, value_range=budget.value_range, seed=seed,
        expectation=expectation)

  return build


def cheaper_build(k):
  """BPDA+EOT PGD on f_a(g_k(.)), g with only k LL-PGD steps; replayed on g."""

  def build(target, x, y, budget, seed, derived):
    source_fn = transfer.cheaper_defense_model_fn(target.model, steps=k)
    return transfer.transfer(
        source_fn, x, y, epsilon=budget.epsilon, steps=budget.steps,
        restarts=budget.restarts, eot_samples=budget.eot_samples,
        value_range=budget.value_range, seed=seed)

  return build


# Momentum and input diversity at the settings of their papers (MI-FGSM,
# Dong et al. 2018; DI, Xie et al. 2019).
MI_DI = dict(momentum=1.0, diversity_prob=0.5)


def transfer_build(source, **transfer_kwargs):
  """PGD on a source model, replayed on the target.

  Args:
    source: "classifier" (f_a alone) or a `Target` field holding a model
      ("surrogate", "adversarial_surrogate").
    **transfer_kwargs: `transfer.transfer` options (momentum, diversity).
  """

  def build(target, x, y, budget, seed, derived):
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


def square_build(target, x, y, budget, seed, derived):
  return square.square(
      target.forward_fn(), x, y, epsilon=budget.epsilon, queries=budget.queries,
      value_range=budget.value_range, seed=seed,
      query_draws=derived["query_draws"])


def spsa_samples(budget, query_draws=1):
  """SPSA evaluations per step so that its queries fit `budget.queries`.

  SPSA spends steps * samples on gradients and (1 + steps) * M on scores,
  doubled for M > 1 (fresh re-scores), M = `query_draws`.
  """
  scores = (1 + budget.steps) * query_draws * (1 if query_draws == 1 else 2)
  samples = (budget.queries - scores) // budget.steps
  return max(2, samples - samples % 2)


def spsa_build(target, x, y, budget, seed, derived):
  return spsa.spsa(
      target.forward_fn(), x, y, epsilon=budget.epsilon, steps=budget.steps,
      samples=derived["samples"], value_range=budget.value_range, seed=seed,
      query_draws=derived["query_draws"])


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


def hop_skip_jump_build(target, x, y, budget, seed, derived):
  return hopskipjump.hop_skip_jump(
      target.forward_fn(), x, y, epsilon=budget.epsilon,
      iterations=derived["iterations"], initial_evals=HSJ_INITIAL_EVALS,
      value_range=budget.value_range, seed=seed,
      query_draws=derived["query_draws"])


def gen_attack_build(target, x, y, budget, seed, derived):
  return genattack.gen_attack(
      target.forward_fn(), x, y, epsilon=budget.epsilon,
      population=GENATTACK_POPULATION, generations=derived["generations"],
      value_range=budget.value_range, seed=seed,
      query_draws=derived["query_draws"])


# What the reparameterization attack's h is trained with, for its record.
H_TRAINING = ("attacks.reparam.train_reparameterization defaults (dilated "
              "residual h bounded to the Δ-ball, 30 epochs, cosine Adam 1e-3)")


def reparam_build(target, x, y, budget, seed, derived):
  if target.train_images is None:
    raise ValueError("The reparameterization attack needs training images. "
                     "Received: train_images=None")
  h = reparam.train_reparameterization(target.transforms[0], target.train_images,
                                       seed=seed)
  return pgd.pgd(
      reparam.reparam_model_fn(target.model, h), x, y, epsilon=budget.epsilon,
      steps=budget.steps, restarts=budget.restarts, chunk_size=budget.chunk_size,
      value_range=budget.value_range, seed=seed)
