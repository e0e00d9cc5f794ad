"""The plan of an evaluation: its units, their seeds and their keys.

An evaluation is a fixed list of units. The images are cut by index into
blocks of `unit_size` (the last block may be shorter); a unit is one attack,
or the clean scoring (`CLEAN`), on one block. The blocks depend on `unit_size`
alone, never on the number of shards or processes, and every unit draws its
randomness from `unit_seed(seed, block)` (`attacks.execute` runs it), so the
merge of N shards equals a single process bit for bit.

Sharding: shard i of N runs the blocks b with b % N == i (all units of a
block, clean included), round robin, so the shards' loads differ by at most
one block. Choose `unit_size` so that there are at least N blocks.

A unit's file name (`Plan.key`) holds the attack, the block, digests of the
budget fields the attack uses (with R and `unit_size`) and of the model
(config and weight bytes), and the seed: another model, budget or seed never
reads an earlier evaluation's units. The model digest includes the layer
names of its config, so load the model from the same .keras file (a rebuilt
model with other auto-generated names is refused, never silently reused).

`make_plan` builds the `Plan` once (it hashes every weight and image); the
runner (`attacks.execute.run`), the dry run (`attacks.cost.estimate_cost`)
and `attacks.distributed.run` take it as it is.

Example:
  >>> plan = make_plan(suite.Target(model), x, y, ["adaptive"], budget,
  ...                  seed=0, draws=20, unit_size=100)
  >>> plan.units(num_shards=2, shard_index=0)[:2]
  [Unit(attack='clean', block=0), Unit(attack='pgd_restarts_bpda_identity', block=0)]
"""

import dataclasses
import hashlib
import json
import math

import keras
import numpy as np

from attacks import common
from attacks import suite

__all__ = [
    "CLEAN", "Plan", "Shard", "Unit", "budget_digest", "check_images",
    "digest", "dumps", "json_default", "make_plan", "model_digest",
    "unit_seed"
]

CLEAN = "clean"

def digest(*parts):
  """16 hex digits of `parts` (bytes as they are, anything else as text)."""
  hasher = hashlib.blake2b(digest_size=8)
  for part in parts:
    hasher.update(part if isinstance(part, bytes) else str(part).encode())
  return hasher.hexdigest()


def json_default(value):
  """JSON for NumPy scalars (their value) and anything else (its repr)."""
  if isinstance(value, np.generic):
    return value.item()
  return repr(value)


def dumps(value):
  """`value` as canonical JSON (sorted keys), the text digests are taken of."""
  return json.dumps(value, sort_keys=True, default=json_default)


def model_digest(model):
  """16 hex digits of a model's config (names included) and weights' bytes.

  Args:
    model: a Keras model.

  Returns:
    A string; any change of architecture, hyperparameters (the transform's
    too) or weight value changes it. A subclassed model without a
    `get_config` (Keras' default raises NotImplementedError for a model
    whose constructor takes arguments) is described by its class and the
    class, name and config of every layer it tracks instead.
  """
  parts = [dumps(_architecture(model))]
  for weight in model.weights:
    value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
    parts += [f"{value.dtype}{value.shape}", value.tobytes()]
  return digest(*parts)


def _architecture(model):
  """`model.get_config()`, or its class and its layers' where it has none."""
  try:
    return model.get_config()
  except NotImplementedError:
    layers = []
    for layer in getattr(model, "_flatten_layers", lambda: [])():
      try:
        config = layer.get_config()
      except NotImplementedError:
        config = None
      layers.append([type(layer).__qualname__, layer.name, config])
    return {"class": type(model).__qualname__, "layers": layers}


def budget_digest(budget, draws, unit_size, fields):
  """16 hex digits of the budget fields a unit depends on, R and `unit_size`.

  Args:
    budget: a `suite.Budget`.
    draws: R.
    unit_size: images per block.
    fields: the `Budget` fields of the unit's attack (`AttackSpec.fields`;
      `suite.ALWAYS_USED` always count, and alone for a clean unit).

  Returns:
    A string.
  """
  record = dataclasses.asdict(budget)
  used = sorted(set(fields) | set(suite.ALWAYS_USED))
  return digest(dumps({"budget": {field: record[field] for field in used},
                        "draws": draws, "unit_size": unit_size}))


def unit_seed(seed, block):
  """The seed of every unit of block `block`, derived from the run's seed."""
  return int(digest(f"{seed}/block{block}"), 16) % (2**31 - 1)


@dataclasses.dataclass(frozen=True)
class Unit:
  """One unit: `attack` (a display name or `CLEAN`) on block `block`."""
  attack: str
  block: int


@dataclasses.dataclass(frozen=True)
class Shard:
  """Which slice of an evaluation's blocks one process runs.

  Attributes:
    count: N, the number of shards of the evaluation.
    index: this shard, in [0, N).
  """
  count: int = 1
  index: int = 0

  def __post_init__(self):
    common.check_number("num_shards", self.count, minimum=1, integer=True)
    if not (isinstance(self.index, int) and 0 <= self.index < self.count):
      raise ValueError(f"`shard_index` must be an integer in [0, num_shards="
                       f"{self.count}). Received: shard_index={self.index!r}")


@dataclasses.dataclass(frozen=True)
class Plan:
  """One evaluation: what runs on which images, and the keys of its units.

  Attributes:
    attacks: `(display name, registry name)` pairs, in report order.
    skipped: dict attack name -> why it does not run on this model.
    images: number of images evaluated.
    unit_size: images per block.
    budget: the `suite.Budget`.
    seed: the run's integer seed.
    draws: R, draws per scored image.
    defended: whether the model contains an `AdversarialTransform`.
    model_digest: `model_digest` of the model.
    data_digest: digest of the images and labels.
    randomized: whether the model is random, None when that is `defended`
      (kept out of plan.json then, so records from before it existed read
      the same).
    bpda_layers: the layers white-box attacks differentiate through BPDA.
  """
  attacks: tuple
  skipped: dict
  images: int
  unit_size: int
  budget: suite.Budget
  seed: int
  draws: int
  defended: bool
  model_digest: str
  data_digest: str
  randomized: object = None
  bpda_layers: tuple = ()

  @property
  def blocks(self):
    return math.ceil(self.images / self.unit_size)

  def block_range(self, block):
    """`(start, stop)` image indices of `block`."""
    start = block * self.unit_size
    return start, min(start + self.unit_size, self.images)

  def shard_blocks(self, num_shards=1, shard_index=0):
    """The blocks shard `shard_index` of `num_shards` runs (round robin)."""
    shard = Shard(num_shards, shard_index)
    return [b for b in range(self.blocks) if b % shard.count == shard.index]

  def shard_images(self, num_shards=1, shard_index=0):
    """How many images shard `shard_index` of `num_shards` evaluates."""
    return sum(self.block_range(b)[1] - self.block_range(b)[0]
               for b in self.shard_blocks(num_shards, shard_index))

  def units(self, num_shards=1, shard_index=0):
    """The units of one shard, block by block, clean first."""
    names = [CLEAN] + [name for name, _ in self.attacks]
    return [Unit(name, block)
            for block in self.shard_blocks(num_shards, shard_index)
            for name in names]

  def fields(self, attack):
    """The `Budget` fields attack `attack`'s units use (clean: none)."""
    if attack == CLEAN:
      return ()
    return suite.REGISTRY[dict(self.attacks)[attack]].fields

  def used_fields(self):
    """Every `Budget` field some unit of the plan depends on."""
    return set(suite.ALWAYS_USED).union(
        *(self.fields(name) for name, _ in self.attacks))

  def key(self, unit):
    """The file name of `unit`'s result.

    It holds the digest of the budget fields of `unit`'s attack only, so a
    change of a field that attack does not use (e.g. `queries` for APGD)
    keeps its finished units.
    """
    budget_hash = budget_digest(self.budget, self.draws, self.unit_size,
                           self.fields(unit.attack))
    return (f"{unit.attack}.b{unit.block:05d}.budget-{budget_hash}."
            f"model-{self.model_digest}.seed{self.seed}.npz")

  def to_dict(self):
    record = dataclasses.asdict(self)
    record["attacks"] = [list(pair) for pair in self.attacks]
    record["bpda_layers"] = list(self.bpda_layers)
    for field, default in (("randomized", None), ("bpda_layers", [])):
      if record[field] == default:
        del record[field]
    return json.loads(dumps(record))

  @classmethod
  def from_dict(cls, record):
    """The `Plan` of a plan.json record.

    Raises:
      ValueError: for a record of the earlier key scheme (one digest of the
        whole budget, kept as `budget_digest`), whose unit files this
        version's keys do not name.
    """
    if "budget_digest" in record:
      raise ValueError(
          "This plan.json is from an earlier attacks.runner whose unit keys "
          "digest the whole budget; this one digests each attack's own "
          "fields, so its units would not be found. Use a fresh report_dir. "
          f"Received: budget_digest={record['budget_digest']!r}")
    budget = dict(record["budget"])
    budget["value_range"] = tuple(budget["value_range"])
    return cls(**(record | {"attacks": tuple(map(tuple, record["attacks"])),
                            "budget": suite.Budget(**budget),
                            "bpda_layers": tuple(record.get("bpda_layers",
                                                            ()))}))


def check_images(x, y, budget):
  """`x` as float32 and `y` as int32 NumPy arrays, checked against `budget`.

  An evaluation's figures are only as good as its labels: a label below 0
  (e.g. -1 for "unlabelled") or a fractional one would be scored as a class
  no prediction can match, so they are refused, never cast.

  Raises:
    ValueError: for no images, images that are not finite or lie outside
      `budget.value_range`, missing labels, labels that are not
      non-negative integers, or a label count that is not the image count.
  """
  if x is None or np.size(x) == 0:
    raise ValueError("`x` must hold at least one image. Received: x.shape="
                     f"{None if x is None else np.shape(x)}")
  if y is None:
    raise ValueError("`y` must hold one integer label per image. "
                     "Received: y=None")
  labels = np.asarray(y)
  if labels.dtype.kind not in "iuf" or labels.ndim != 1:
    raise ValueError("`y` must be a 1-D array of integer labels. Received: "
                     f"y.dtype={labels.dtype}, y.shape={labels.shape}")
  if labels.size and labels.dtype.kind == "f" and not np.all(
      np.isfinite(labels) & (labels == np.round(labels))):
    bad = labels[~(np.isfinite(labels) & (labels == np.round(labels)))]
    raise ValueError(f"`y` must hold integer labels; {bad.size} are not "
                     f"whole numbers. Received: e.g. y={bad[0].item()!r}")
  if labels.size and labels.min() < 0:
    raise ValueError(
        f"`y` must hold class indices >= 0; {int(np.sum(labels < 0))} are "
        "negative (e.g. -1 for unlabelled images): evaluate labelled images "
        f"only. Received: min(y)={labels.min().item()!r}")
  x = np.asarray(x)
  if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
    raise ValueError(
        f"`x` must hold finite pixel values; {int(np.sum(~np.isfinite(x)))} "
        "are NaN or infinite. Received: x with non-finite values")
  x, _ = common.check_images_labels(x, labels.astype(np.int32),
                                    budget.value_range)
  return x.numpy(), labels.astype(np.int32)


def make_plan(target, x, y, attacks, budget=suite.Budget(), seed=0,
              draws=suite.REFERENCE_DRAWS, unit_size=100):
  """The `Plan` of an evaluation (validates every argument).

  Args:
    target: a `suite.Target`.
    x: float32 images inside `budget.value_range`.
    y: int labels.
    attacks: attack or preset names (see `suite.resolve_attacks`).
    budget: a `suite.Budget`.
    seed: integer seed of the whole evaluation.
    draws: R, draws per scored image.
    unit_size: images per block (one unit = one attack on one block).

  Returns:
    A `Plan`.

  Raises:
    ValueError: for a bad argument.
  """
  budget.validate()
  common.check_number("seed", seed, minimum=0, integer=True)
  common.check_number("draws", draws, minimum=1, integer=True)
  common.check_number("unit_size", unit_size, minimum=1, integer=True)
  x, y = check_images(x, y, budget)
  runs, skipped = suite.plan(target, suite.resolve_attacks(attacks))
  if not runs:
    raise ValueError(
        "None of the attacks applies to this model, so nothing would be "
        "attacked: " + "; ".join(f"{name}: {why}" for name, why in
                                 skipped.items()) +
        f". Received: attacks={list(attacks)!r}")
  return Plan(
      attacks=tuple((name, spec.name) for name, spec in runs),
      skipped=dict(skipped), images=len(x), unit_size=unit_size,
      budget=budget, seed=seed, draws=draws, defended=target.defended,
      model_digest=model_digest(target.model),
      data_digest=digest(x.tobytes(), y.astype(np.int64).tobytes()),
      randomized=(None if target.randomized == target.defended
                  else target.randomized),
      bpda_layers=target.bpda_layers)
