"""Budgets of an evaluation: the attacker's `Budget`, presets, the reference.

`Budget()` is the reference budget for a randomized defense, AutoAttack's
`rand` version (APGD 100 steps, EOT 20, 1 restart) and its Square (5,000
queries), scored with R = 20 draws on the 10,000 images of the CIFAR-10 test
split. `BUDGET_PRESETS` holds it and a cheap `smoke` preset; `make_budget`
overrides a preset's fields; every run lists how it falls below the
reference (`weaker_than_reference`).
"""

import dataclasses

from attacks import common
from attacks import scoring

__all__ = [
    "BUDGET_PRESETS", "Budget", "BudgetPreset", "OVERRIDES", "REFERENCE_DRAWS",
    "REFERENCE_IMAGES", "make_budget", "weaker_than_reference"
]

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


# Budget fields a command line overrides (R and the image count included).
OVERRIDES = ("steps", "restarts", "eot_samples", "queries", "query_draws",
             "chunk_size", "draws", "num_examples")


def make_budget(preset_name, epsilon, overrides):
  """The `Budget`, R and image count: a preset, some fields overridden.

  Args:
    preset_name: a key of `BUDGET_PRESETS`.
    epsilon: the L∞ radius.
    overrides: dict of `OVERRIDES` names -> value, None keeping the preset's.

  Returns:
    `(budget, draws, images)`.

  Raises:
    ValueError: for an unknown preset or a bad value, naming it.
  """
  if preset_name not in BUDGET_PRESETS:
    raise ValueError(f"Unknown budget preset; known: "
                     f"{sorted(BUDGET_PRESETS)}. Received: "
                     f"budget={preset_name!r}")
  preset = BUDGET_PRESETS[preset_name]
  given = {k: v for k, v in overrides.items() if v is not None}
  draws = given.pop("draws", preset.draws)
  images = given.pop("num_examples", preset.images)
  common.check_number("draws", draws, minimum=1, integer=True)
  common.check_number("num_examples", images, minimum=1, integer=True)
  budget = dataclasses.replace(preset.budget, epsilon=epsilon, **given)
  return budget.validate(), draws, images
