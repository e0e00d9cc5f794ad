"""Evaluation at scale: resumable units, shards, one merge, a dry run, replay.

An evaluation is a fixed list of units. The images are cut by index into
blocks of `unit_size` (the last block may be shorter); a unit is one attack,
or the clean scoring (`CLEAN`), on one block. The blocks depend on `unit_size`
alone, never on the number of shards or processes, and every unit draws its
randomness from `unit_seed(seed, block)`: its attack runs as
`suite.run_attack(..., seed=unit_seed)` (which derives the attack's own seed
and its scoring seed from that seed and the attack's name) and its clean
score as `suite.run_suite(..., attacks=[], seed=unit_seed)`. Nothing depends
on which process runs a unit or on what ran before it, so the merge of N
shards equals a single process bit for bit (every figure, every per-example
result, every adversarial image; timings excepted). A single process runs
the same units: its result is not that of one `suite.run_suite` call over all
images, whose draws span the whole batch. Bit for bit assumes the same
kernels in every process: one TensorFlow build and CPU type (tested here on
CPU), and on GPUs `tf.config.experimental.enable_op_determinism()`; the
budget's `chunk_size` is part of the key because it changes EOT sums.

Sharding: shard i of N runs the blocks b with b % N == i (all units of a
block, clean included), round robin, so the shards' loads differ by at most
one block. Choose `unit_size` so that there are at least N blocks.

Resuming: each finished unit is written atomically into
`<report_dir>/units/` (a hidden temp file in the same folder, fsync,
`os.replace`) as an .npz named by `Plan.key`: attack, block, digests of the
budget fields the attack uses (with R and `unit_size`) and of the model
(config and weight bytes), and the seed. A rerun skips the units already
there, so `kill -9` loses at most the units in flight (one per process, or
one per replica thread with `replicas`). A killed write leaves a hidden
`.*.tmp` file, ignored by everything here and safe to delete.
`<report_dir>/units/plan.json` records the evaluation; a run whose R,
`unit_size`, model, images or seed differ, that changes a budget field a
recorded attack uses, or that drops an attack, is refused with a ValueError
naming the differences: use a fresh report_dir. A run may add attacks, with
their own budget fields (e.g. Square's `queries` after APGD-only runs): the
record grows and the finished units are kept, so
an evaluation can start with the strongest attacks on every image and take
in the rest of a list in later runs (until then, `merge(...,
allow_incomplete=True)` reports the added attacks as missing). The model digest
includes the layer names of its config, so load the model from the same
.keras file (a rebuilt model with other auto-generated names is refused,
never silently reused).

The extra runs after the attacks (the sanity checks' epsilon sweep and 2x
reruns, the accuracy-vs-EOT curve) go through `stored_rerun`, which keeps
each in `<report_dir>/reruns/` the same way: a killed report build resumes,
and the report of a grown evaluation reuses them while its strongest attack
stays the same.

`merge` builds the one `suite.SuiteResult` from the unit files, `export`
writes a RobustBench-style JSON and the adversarial images with their seeds
(adversarial.npz), and `replay` reproduces a recorded success from that file
exactly. `estimate_cost` is the dry run: passes, FLOPs and seconds per attack
from short probes of each attack on the first block.

Example (shard i of 2; `examples/attack_eval.py` is the command line):

  >>> target = suite.Target(keras.saving.load_model("defended.keras"))
  >>> runner.run(target, x, y, ["adaptive"], "runs/eval", budget, seed=0,
  ...            draws=20, unit_size=100, num_shards=2, shard_index=i)
  >>> merged = runner.merge("runs/eval")       # once both shards finished
  >>> runner.export(merged, "runs/eval", "my model", "CIFAR-10 (JPEG copy)")
  >>> runner.replay(target, "runs/eval/adversarial.npz", 3, "square")
"""

import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from attacks import common
from attacks import sanity
from attacks import scoring
from attacks import suite

__all__ = [
    "CLEAN", "CostEstimate", "Merged", "Plan", "RunSummary", "Unit",
    "budget_digest", "cheap_flags", "estimate_cost", "export", "forward_flops",
    "make_plan", "merge", "model_digest", "replay", "robustbench_entry", "run",
    "stored_rerun", "unit_seed"
]

CLEAN = "clean"
UNITS_DIR = "units"
RERUNS_DIR = "reruns"
PLAN_FILE = "plan.json"
ROBUSTBENCH_FILE = "robustbench.json"
EXAMPLES_FILE = "adversarial.npz"
# Probes of the dry run: queries of a query attack's probe, and the steps of
# the two probes of the other attacks (their cost is a + b * steps; far
# apart, so that the noise of a loaded machine is not extrapolated much).
PROBE_QUERIES = 50
PROBE_STEPS = (1, 4)


def _digest(*parts):
  digest = hashlib.blake2b(digest_size=8)
  for part in parts:
    digest.update(part if isinstance(part, bytes) else str(part).encode())
  return digest.hexdigest()


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  return repr(value)


def _dumps(value):
  return json.dumps(value, sort_keys=True, default=_json_default)


def model_digest(model):
  """16 hex digits of a model's config (names included) and weights' bytes.

  Args:
    model: a Keras model.

  Returns:
    A string; any change of architecture, hyperparameters (the transform's
    too) or weight value changes it.
  """
  parts = [_dumps(model.get_config())]
  for weight in model.weights:
    value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
    parts += [f"{value.dtype}{value.shape}", value.tobytes()]
  return _digest(*parts)


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
  return _digest(_dumps({"budget": {field: record[field] for field in used},
                         "draws": draws, "unit_size": unit_size}))


def unit_seed(seed, block):
  """The seed of every unit of block `block`, derived from the run's seed."""
  return int(_digest(f"{seed}/block{block}"), 16) % (2**31 - 1)


@dataclasses.dataclass(frozen=True)
class Unit:
  """One unit: `attack` (a display name or `CLEAN`) on block `block`."""
  attack: str
  block: int


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

  @property
  def blocks(self):
    return math.ceil(self.images / self.unit_size)

  def block_range(self, block):
    """`(start, stop)` image indices of `block`."""
    start = block * self.unit_size
    return start, min(start + self.unit_size, self.images)

  def shard_blocks(self, num_shards=1, shard_index=0):
    """The blocks shard `shard_index` of `num_shards` runs (round robin)."""
    common.check_number("num_shards", num_shards, minimum=1, integer=True)
    if not (isinstance(shard_index, int) and 0 <= shard_index < num_shards):
      raise ValueError(f"`shard_index` must be an integer in [0, num_shards="
                       f"{num_shards}). Received: shard_index={shard_index!r}")
    return [b for b in range(self.blocks) if b % num_shards == shard_index]

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
    digest = budget_digest(self.budget, self.draws, self.unit_size,
                           self.fields(unit.attack))
    return (f"{unit.attack}.b{unit.block:05d}.budget-{digest}."
            f"model-{self.model_digest}.seed{self.seed}.npz")

  def to_dict(self):
    record = dataclasses.asdict(self)
    record["attacks"] = [list(pair) for pair in self.attacks]
    return json.loads(_dumps(record))

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
                            "budget": suite.Budget(**budget)}))


def _checked(x, y, budget):
  x, _ = common.check_images_labels(np.asarray(x, np.float32),
                                    np.asarray(y, np.int32), budget.value_range)
  return x.numpy(), np.asarray(y, np.int32)


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
  x, y = _checked(x, y, budget)
  runs, skipped = suite.plan(target, suite.resolve_attacks(attacks))
  return Plan(
      attacks=tuple((name, spec.name) for name, spec in runs),
      skipped=dict(skipped), images=len(x), unit_size=unit_size,
      budget=budget, seed=seed, draws=draws, defended=target.defended,
      model_digest=model_digest(target.model),
      data_digest=_digest(x.tobytes(), y.astype(np.int64).tobytes()))


def _write_atomic(path, write):
  """Writes a file so that it is either complete at `path` or absent.

  `write(f)` fills a hidden temp file (binary) in the same folder, which is
  fsynced and renamed over `path` (`os.replace` is atomic on POSIX), then the
  folder is fsynced so that the rename survives a crash.
  """
  folder = os.path.dirname(path)
  fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                              suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temp, path)
  except BaseException:
    os.unlink(temp)
    raise
  directory = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(directory)
  finally:
    os.close(directory)


def _write_npz(path, arrays, meta=None):
  _write_atomic(path, lambda f: np.savez(f, meta=np.array(_dumps(meta or {})),
                                         **arrays))


def _load_unit(path):
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files if k != "meta"}
    return arrays, json.loads(str(data["meta"]))


_PLAN_FIELDS = ("draws", "unit_size", "model_digest", "data_digest", "images",
                "seed")


def _claim(report_dir, plan):
  """Creates the units folder, or checks that it holds this evaluation.

  The attack list may grow: a plan whose attacks include every attack of the
  recorded one (same display and registry names) replaces the record, and
  the finished units stay valid, since a unit's key does not depend on the
  list. So may a budget field that no recorded attack uses (e.g. `queries`
  when only gradient attacks ran). Dropping or renaming an attack, or
  changing a field a recorded attack uses, is refused like any other change.
  """
  folder = os.path.join(report_dir, UNITS_DIR)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, PLAN_FILE)
  record = plan.to_dict()
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = [f"{field}: {old.get(field)} -> {record[field]}"
               for field in _PLAN_FIELDS if old.get(field) != record[field]]
    changed += [f"budget.{field}: {old['budget'][field]} -> "
                f"{record['budget'][field]}"
                for field in sorted(Plan.from_dict(old).used_fields())
                if old["budget"][field] != record["budget"][field]]
    dropped = [pair for pair in old["attacks"] if pair not in record["attacks"]]
    if dropped:
      changed.append(f"attacks dropped or renamed: {dropped}")
    if changed:
      raise ValueError(
          f"{folder} holds units of another evaluation ({'; '.join(changed)}); "
          f"use a fresh report_dir. Received: report_dir={report_dir!r}")
    if old == record:
      return folder
  _write_atomic(path, lambda f: f.write(
      json.dumps(record, indent=1, sort_keys=True).encode()))
  return folder


@dataclasses.dataclass
class RunSummary:
  """What one `run` call did.

  Attributes:
    ran: keys of the units computed now.
    reused: keys of the units found finished and skipped.
    failed: dict key -> error of units that raised (`keep_going`); not
      written, so a rerun retries them.
  """
  ran: list
  reused: list
  failed: dict


def _run_unit(target, plan, unit, x, y):
  """Computes one unit: `(arrays, meta)` to write."""
  start, stop = plan.block_range(unit.block)
  xb, yb = x[start:stop], y[start:stop]
  seed = unit_seed(plan.seed, unit.block)
  meta = {"attack": unit.attack, "block": unit.block, "unit_seed": seed}
  arrays = {"y": yb, "index": np.arange(start, stop)}
  if unit.attack == CLEAN:
    clean = suite.run_suite(target, xb, yb, [], plan.budget, seed=seed,
                            draws=plan.draws).clean
    meta["score_seed"] = clean.seed
    return arrays | {"correct": clean.correct, "x": xb}, meta
  spec = suite.REGISTRY[dict(plan.attacks)[unit.attack]]
  result = suite.run_attack(target, unit.attack, spec, xb, yb, plan.budget,
                            seed=seed, draws=plan.draws)
  result_arrays, result_meta = _attack_record(result)
  return arrays | result_arrays, meta | result_meta


def _attack_record(result):
  """An `AttackResult` as the arrays and meta its unit or rerun file keeps."""
  return ({"correct": result.score.correct, "x_adv": result.x_adv},
          {"kind": result.kind, "description": result.description,
           "budget": result.budget, "elapsed_s": result.elapsed_s,
           "f_b_passes": result.f_b_passes,
           "model_passes": result.model_passes, "attack_seed": result.seed,
           "score_seed": result.score.seed})


def _attack_result(name, parts, seed, score_seed):
  """The `AttackResult` of one attack's files (its blocks' units, in order).

  Args:
    name: the attack's display name.
    parts: `(arrays, meta)` of each file, as `_attack_record` made them
      (with the labels `y`).
    seed: the result's seed.
    score_seed: its score's seed.
  """
  meta = parts[0][1]
  return suite.AttackResult(
      name=name, kind=meta["kind"], description=meta["description"],
      budget=meta["budget"], score=_merged_score(parts, score_seed),
      elapsed_s=sum(m["elapsed_s"] for _, m in parts),
      f_b_passes=sum(m["f_b_passes"] for _, m in parts),
      model_passes=sum(m["model_passes"] for _, m in parts),
      x_adv=np.concatenate([a["x_adv"] for a, _ in parts]), seed=seed)


def run(target, x, y, attacks, report_dir, budget=suite.Budget(), seed=0,
        draws=suite.REFERENCE_DRAWS, unit_size=100, num_shards=1, shard_index=0,
        keep_going=False, progress=None, replicas=None):
  """Runs one shard of an evaluation, skipping the units already finished.

  Args:
    target: a `suite.Target`.
    x: float32 images (all of the evaluation's, in every shard).
    y: int labels.
    attacks: attack or preset names.
    report_dir: output folder (units go to `<report_dir>/units/`).
    budget: a `suite.Budget`.
    seed: integer seed of the evaluation.
    draws: R, draws per scored image.
    unit_size: images per block.
    num_shards: N, the number of shards of the evaluation.
    shard_index: which shard this call runs, in [0, N).
    keep_going: record a unit that raises in `RunSummary.failed` and go on,
      instead of raising.
    progress: optional callable `(unit, key, status)` called after each unit,
      status "ran", "reused" or "failed" (from one thread at a time).
    replicas: None (the units run one after another on `target`), or a list
      of `(device, target)` pairs, copies of `target` placed on their devices
      (`attacks.distributed.replicate`): the shard's units then run
      concurrently, one thread per replica, each unit whole on one device.
      A unit's result does not depend on the replica that runs it.

  Returns:
    A `RunSummary`.

  Raises:
    ValueError: for bad arguments, or a report_dir holding units of another
      evaluation (budget, R, unit_size, model, images or seed, or an attack
      this call drops).
  """
  plan = make_plan(target, x, y, attacks, budget, seed, draws, unit_size)
  x, y = _checked(x, y, budget)
  units = plan.units(num_shards, shard_index)
  folder = _claim(report_dir, plan)
  summary = RunSummary(ran=[], reused=[], failed={})
  pending = []
  for unit in units:
    key = plan.key(unit)
    if os.path.exists(os.path.join(folder, key)):
      summary.reused.append(key)
      if progress is not None:
        progress(unit, key, "reused")
    else:
      pending.append(unit)
  _execute(plan, pending, replicas or [(None, target)], x, y, folder, summary,
           keep_going, progress)
  return summary


def _execute(plan, pending, replicas, x, y, folder, summary, keep_going,
             progress):
  """Runs `pending` units on the replicas, one thread each, writing each unit.

  Threads take the next unit from one shared queue, so a slow unit does not
  hold the others back. Without `keep_going` the first error stops every
  thread after its unit in flight and is raised here.
  """
  queue = collections.deque(pending)
  lock = threading.Lock()
  errors = []

  def work(device, replica):
    while True:
      with lock:
        if errors or not queue:
          return
        unit = queue.popleft()
      key = plan.key(unit)
      try:
        with tf.device(device) if device else contextlib.nullcontext():
          arrays, meta = _run_unit(replica, plan, unit, x, y)
        _write_npz(os.path.join(folder, key), arrays, meta)
      except Exception as error:  # pylint: disable=broad-except
        with lock:
          if not keep_going:
            errors.append(error)
            return
          summary.failed[key] = f"{type(error).__name__}: {error}"
          status = "failed"
      else:
        with lock:
          summary.ran.append(key)
        status = "ran"
      if progress is not None:
        with lock:
          progress(unit, key, status)

  if len(replicas) == 1:
    work(*replicas[0])
  else:
    threads = [threading.Thread(target=work, args=pair, daemon=True)
               for pair in replicas]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
  if errors:
    raise errors[0]


@dataclasses.dataclass
class Merged:
  """The merged evaluation.

  Attributes:
    suite_result: the `suite.SuiteResult` over all images (attacks with
      missing units are in its `failed`; their figures are not included).
    plan: the `Plan`.
    x: the clean images.
    y: their labels.
    unit_seeds: int array `(blocks,)`.
    attack_seeds: dict attack name -> int array `(blocks,)`.
    score_seeds: dict attack name (and `CLEAN`) -> int array `(blocks,)`.
    missing: keys of the units not found.
  """
  suite_result: suite.SuiteResult
  plan: Plan
  x: np.ndarray
  y: np.ndarray
  unit_seeds: np.ndarray
  attack_seeds: dict
  score_seeds: dict
  missing: list


def stored_rerun(report_dir):
  """`suite.rerun`, with each result kept in `<report_dir>/reruns/`.

  A rerun's file is named by the attack and a digest of everything its
  result depends on: the changed budget, the seed, R, the images and labels,
  and the digests of the model and of any surrogate models. A call that finds
  its file returns the stored result (timings included) without running; one
  that does not runs `suite.rerun` and writes the file atomically.

  Args:
    report_dir: the evaluation's folder.

  Returns:
    A callable with `suite.rerun`'s arguments and result.
  """
  folder = os.path.join(report_dir, RERUNS_DIR)
  digests = {}

  def digest_of(model):
    if model is None:
      return None
    if id(model) not in digests:
      digests[id(model)] = (model, model_digest(model))
    return digests[id(model)][1]

  def rerun(target, name, x, y, budget, seed=0, draws=suite.REFERENCE_DRAWS,
            **changes):
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    changed = dataclasses.replace(budget, **changes)
    models = [digest_of(m) for m in (target.model, target.surrogate,
                                     target.adversarial_surrogate)]
    key = _digest(name, _dumps(dataclasses.asdict(changed)), seed, draws,
                  models, x.tobytes(), y.tobytes())
    path = os.path.join(folder, f"{name}.{key}.npz")
    if os.path.exists(path):
      arrays, meta = _load_unit(path)
      return _attack_result(name, [(arrays, meta)], meta["attack_seed"],
                            meta["score_seed"])
    result = suite.rerun(target, name, x, y, budget, seed, draws, **changes)
    os.makedirs(folder, exist_ok=True)
    arrays, meta = _attack_record(result)
    _write_npz(path, arrays | {"y": y},
               meta=meta | {"attack": name, "changes": changes})
    return result

  return rerun


def _read_plan(report_dir):
  path = os.path.join(report_dir, UNITS_DIR, PLAN_FILE)
  if not os.path.exists(path):
    raise ValueError(f"No evaluation in {report_dir} (no {UNITS_DIR}/"
                     f"{PLAN_FILE}). Received: report_dir={report_dir!r}")
  with open(path) as f:
    return Plan.from_dict(json.load(f))


def _merged_score(units, seed):
  correct = np.concatenate([arrays["correct"] for arrays, _ in units], axis=1)
  y = np.concatenate([arrays["y"] for arrays, _ in units])
  # A unit keeps correct/wrong per draw; -1 stands for "some wrong class".
  return scoring.score_labels(np.where(correct, y[None, :], -1), y, seed=seed)


def cheap_flags(suite_result):
  """The sanity flags that need no extra attack runs.

  Failures, robust <= clean and gradient masking; `sanity.run_checks` adds
  the epsilon sweep, gradient and convergence checks (extra attack runs).

  Args:
    suite_result: a `suite.SuiteResult` (e.g. `Merged.suite_result`).

  Returns:
    A list of `sanity.Flag`.
  """
  results = suite_result.results
  white = {r.name: r.score.mean_accuracy for r in results
           if r.kind == suite.WHITE_BOX}
  black = {r.name: r.score.mean_accuracy for r in results
           if r.kind != suite.WHITE_BOX}
  return [sanity.check_failures(suite_result.failed),
          sanity.check_robust_le_clean(
              suite_result.clean.mean_accuracy,
              {r.name: r.score.mean_accuracy for r in results}),
          sanity.check_gradient_masking(white, black)]


def merge(report_dir, allow_incomplete=False):
  """Builds the one result of an evaluation from its unit files.

  Args:
    report_dir: the folder given to `run` (by every shard).
    allow_incomplete: put an attack with missing units into the result's
      `failed` (verdict INCOMPLETE) instead of raising. Clean units are
      always required.

  Returns:
    A `Merged`.

  Raises:
    ValueError: without an evaluation in `report_dir`, if it holds unit files
      of another evaluation, or for missing units (see `allow_incomplete`).
  """
  plan = _read_plan(report_dir)
  folder = os.path.join(report_dir, UNITS_DIR)
  expected = {plan.key(u): u for u in plan.units()}
  stray = sorted(name for name in os.listdir(folder)
                 if name.endswith(".npz") and name not in expected)
  if stray:
    raise ValueError(f"{folder} holds unit files of another evaluation "
                     f"(e.g. {stray[0]}). Received: report_dir={report_dir!r}")
  loaded = {}
  missing = []
  for key, unit in expected.items():
    path = os.path.join(folder, key)
    if os.path.exists(path):
      loaded[unit] = _load_unit(path)
    else:
      missing.append(key)
  blocks = range(plan.blocks)
  lacking = [key for key in missing if expected[key].attack == CLEAN]
  if lacking or (missing and not allow_incomplete):
    raise ValueError(f"{len(missing)} of {len(expected)} units are missing "
                     f"(e.g. {missing[0]}): run every shard first. Received: "
                     f"report_dir={report_dir!r}")
  clean_units = [loaded[Unit(CLEAN, b)] for b in blocks]
  clean = _merged_score(clean_units, plan.seed)
  results, failed = [], {}
  attack_seeds, score_seeds = {}, {CLEAN: np.array(
      [meta["score_seed"] for _, meta in clean_units])}
  for name, _ in plan.attacks:
    units = [loaded.get(Unit(name, b)) for b in blocks]
    if None in units:
      failed[name] = (f"{units.count(None)} of {plan.blocks} units missing "
                      "(not run, failed or killed)")
      continue
    results.append(_attack_result(name, units, plan.seed, plan.seed))
    attack_seeds[name] = np.array([m["attack_seed"] for _, m in units])
    score_seeds[name] = np.array([m["score_seed"] for _, m in units])
  suite_result = suite.SuiteResult(
      clean=clean, results=results, skipped=dict(plan.skipped), failed=failed,
      worst=suite.worst_case(clean, results),
      worst_white_box=suite.worst_case(clean, results,
                                       kinds=(suite.WHITE_BOX,)),
      budget=plan.budget, seed=plan.seed, draws=plan.draws,
      defended=plan.defended,
      weaker_than_reference=suite.weaker_than_reference(
          plan.budget, plan.used_fields(), plan.images, plan.draws,
          plan.defended))
  return Merged(
      suite_result=suite_result, plan=plan,
      x=np.concatenate([a["x"] for a, _ in clean_units]),
      y=np.concatenate([a["y"] for a, _ in clean_units]),
      unit_seeds=np.array([m["unit_seed"] for _, m in clean_units]),
      attack_seeds=attack_seeds, score_seeds=score_seeds, missing=missing)


def _percent(value):
  return f"{100 * value:.2f}"


def robustbench_entry(merged, model_name, data_name, flags=None):
  """A RobustBench-style record of a merged evaluation.

  Accuracies are percent strings with 2 decimals, as RobustBench writes
  them; `clean_acc` and `robust_acc` are strict (correct in every one of the
  R draws), the `_mean` ones average over draws, and `robust_acc` is the
  per-example worst case over every attack.

  Args:
    merged: a `Merged`.
    model_name: the model's name.
    data_name: the data, e.g. "CIFAR-10 (JPEG copy)".
    flags: `sanity.Flag`s (default: `cheap_flags`).

  Returns:
    A JSON-ready dict.
  """
  result = merged.suite_result
  flags = cheap_flags(result) if flags is None else flags
  budget = result.budget
  return {
      "name": model_name, "dataset": data_name, "threat_model": "Linf",
      "eps": f"{budget.epsilon * 255:.4g}/255", "epsilon": budget.epsilon,
      "clean_acc": _percent(result.clean.strict_accuracy),
      "robust_acc": _percent(result.worst["strict_accuracy"]),
      "clean_acc_mean": _percent(result.clean.mean_accuracy),
      "robust_acc_mean": _percent(result.worst["mean_accuracy"]),
      "strongest_attack": result.worst["strongest"],
      "attack_acc": {r.name: _percent(r.score.strict_accuracy)
                     for r in result.results},
      "attacks": [r.name for r in result.results],
      "failed": dict(result.failed), "skipped": dict(result.skipped),
      "verdict": result.verdict, "budget": dataclasses.asdict(budget),
      "attack_budgets": {r.name: r.budget for r in result.results},
      "weaker_than_reference": result.weaker_than_reference,
      "images": merged.plan.images, "draws": result.draws, "seed": result.seed,
      "unit_size": merged.plan.unit_size,
      "model_digest": merged.plan.model_digest,
      "unreliable": result.verdict != suite.COMPLETE or any(
          f.tripped for f in flags),
      "sanity_flags": [f.to_dict() for f in flags],
  }


def export(merged, out_dir, model_name, data_name, flags=None):
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
    flags: `sanity.Flag`s for the JSON (default: `cheap_flags`).

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
    json.dump(robustbench_entry(merged, model_name, data_name, flags), f,
              indent=1, default=_json_default)
  per_attack = lambda seeds: np.stack([seeds[n][block] for n in names]) \
      if names else np.zeros([0, plan.images], np.int64)
  _write_npz(paths["adversarial"], {
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
      "clean_score_seed": merged.score_seeds[CLEAN][block],
      "worst_attack": worst, "plan": np.array(_dumps(plan.to_dict())),
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
  target = target if isinstance(target, suite.Target) else suite.Target(target)
  with np.load(path, allow_pickle=False) as data:
    data = {k: data[k] for k in data.files}
  plan = Plan.from_dict(json.loads(str(data["plan"])))
  names = [str(n) for n in data["attacks"]]
  if attack not in names:
    raise ValueError(f"`attack` must be one of {names}. Received: "
                     f"attack={attack!r}")
  if not (isinstance(example, int) and 0 <= example < plan.images):
    raise ValueError(f"`example` must be an integer in [0, {plan.images}). "
                     f"Received: example={example!r}")
  digest = model_digest(target.model)
  if digest != plan.model_digest:
    raise ValueError(f"The model is not the evaluated one (digest "
                     f"{plan.model_digest}). Received: model digest={digest}")
  a = names.index(attack)
  start, stop = plan.block_range(int(data["block"][example]))
  y = data["y"][start:stop]
  x_adv = data["x_adv"][a, start:stop]
  score = scoring.score(target.model, x_adv, y, draws=plan.draws,
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


def forward_flops(model):
  """Forward FLOPs per image of the Conv2D and Dense layers of `model`.

  Recurses into nested models, not into an `AdversarialTransform`'s f_b
  (count that one separately). A convolution costs 2·H_out·W_out·k_h·k_w·
  C_in·C_out, a dense layer 2·in·out; other layers are not counted.

  Args:
    model: a built Keras model.

  Returns:
    An int.
  """
  flops = 0
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      flops += forward_flops(layer)
    elif isinstance(layer, keras.layers.Conv2D):
      kh, kw, c_in, c_out = layer.kernel.shape
      _, h_out, w_out, _ = layer.output.shape
      flops += 2 * h_out * w_out * kh * kw * c_in * c_out
    elif isinstance(layer, keras.layers.Dense):
      c_in, c_out = layer.kernel.shape
      flops += 2 * c_in * c_out
  return int(flops)


@dataclasses.dataclass
class CostEstimate:
  """The dry run of an evaluation.

  Attributes:
    rows: one dict per attack (and `CLEAN`): `f_b_passes`, `model_passes`,
      `flops`, `seconds` for the whole evaluation, and `passes` "exact"
      (measured per step, extrapolated in steps and images) or "upper bound"
      (query attacks: every query spent).
    total: the sums over rows.
    wall_s: dict N -> estimated wall seconds with N shards or devices (the
      largest shard's load; N machines or devices that do not share cores).
    probe_images: images per probe.
    probe_s: seconds the probes took.
  """
  rows: list
  total: dict
  wall_s: dict
  probe_images: int
  probe_s: float

  def table(self):
    """A plain-text table of the estimate."""
    lines = [f"{'attack':<28} {'f_b passes':>12} {'model passes':>13} "
             f"{'GFLOP':>10} {'seconds':>9}  passes"]
    for row in self.rows + [self.total]:
      lines.append(f"{row['attack']:<28} {row['f_b_passes']:>12.4g} "
                   f"{row['model_passes']:>13.4g} {row['flops'] / 1e9:>10.4g} "
                   f"{row['seconds']:>9.1f}  {row['passes']}")
    lines += [f"wall time with {n} shard(s)/device(s): {s:.1f} s"
              for n, s in self.wall_s.items()]
    return "\n".join(lines)


def _timed(fn):
  start = time.perf_counter()
  value = fn()
  return value, time.perf_counter() - start


def _line(values):
  """`(a, b)` of a + b * steps through the values at the `PROBE_STEPS`."""
  (s1, s2), (v1, v2) = PROBE_STEPS, values
  slope = max(0.0, (v2 - v1) / (s2 - s1))
  return max(0.0, v1 - slope * s1), slope


def _probe_attack(target, name, spec, x, y, budget, seed, draws):
  """Passes and seconds of one attack on the probe images at the full budget."""
  run = lambda probe: _timed(lambda: suite.run_attack(
      target, name, spec, x, y, probe, seed=seed, draws=draws))
  if spec.kind == suite.QUERY:
    probe = dataclasses.replace(budget,
                                queries=min(budget.queries, PROBE_QUERIES))
    run(probe)  # Warm-up.
    result, seconds = run(probe)
    model = budget.queries * len(x)
    per_pass = seconds / max(result.model_passes, 1)
    f_b = model * result.f_b_passes / max(result.model_passes, 1)
    return f_b, model, per_pass * model, "upper bound"
  probes = [dataclasses.replace(budget, steps=s) for s in PROBE_STEPS]
  run(probes[0])  # Warm-up.
  (first, t1), (second, t2) = [run(probe) for probe in probes]
  fit = lambda values: _line(values)[0] + _line(values)[1] * budget.steps
  return (fit((first.f_b_passes, second.f_b_passes)),
          fit((first.model_passes, second.model_passes)), fit((t1, t2)),
          "exact")


def estimate_cost(target, x, y, attacks, budget=suite.Budget(), seed=0,
                  draws=suite.REFERENCE_DRAWS, unit_size=100, shards=(1,),
                  probe_images=None, progress=None):
  """The dry run: passes, FLOPs and seconds of an evaluation, per attack.

  Each attack runs on the first `probe_images` images at the full budget but
  `PROBE_STEPS` steps (after a warm-up run at the first), and its passes
  and seconds are fitted as a + b * steps; a query attack runs once at
  `PROBE_QUERIES` queries and is charged every query of its budget at the
  probe's seconds per pass (an upper bound: it stops images early). The
  figures are scaled to every block. Passes are those `suite.count_passes`
  counts (the model under attack and f_b); a transfer source other than
  these is not counted but its time is measured. FLOPs: forward FLOPs
  (`forward_flops`) times passes, an input-gradient pass counted as one
  forward (f_b: (2N+1)/(N+1) per counted pass; the model: x2 in white-box
  attacks). The probes cost about (1 + sum(PROBE_STEPS)) steps of every
  attack on one block: little beside an evaluation of many blocks and
  steps, most of a tiny one.

  Args:
    target: a `suite.Target`.
    x: the evaluation's images.
    y: their labels.
    attacks: attack or preset names.
    budget: a `suite.Budget`.
    seed: the evaluation's seed.
    draws: R.
    unit_size: images per block.
    shards: numbers of shards (or devices) to estimate the wall time for.
    probe_images: images per probe (default: `unit_size`, the batch the
      evaluation runs; fewer makes the probe cheaper and the estimate of
      seconds higher).
    progress: optional callable `(name)` called after each probe (`CLEAN`
      first, then each attack), e.g. to advance a progress bar.

  Returns:
    A `CostEstimate`.
  """
  start = time.perf_counter()
  plan = make_plan(target, x, y, attacks, budget, seed, draws, unit_size)
  x, y = _checked(x, y, budget)
  count = min(probe_images or unit_size, plan.images)
  common.check_number("probe_images", count, minimum=1, integer=True)
  xp, yp = x[:count], y[:count]
  f_b_flops = 0
  if target.transforms:
    layer = target.transforms[0]
    f_b_flops = forward_flops(layer.f_b) * (2 * layer.steps + 1) / (
        layer.steps + 1)
  a_flops = forward_flops(target.model)
  clean = lambda: suite.run_suite(target, xp, yp, [], budget, seed=seed,
                                  draws=draws)
  clean()  # Warm-up.
  with suite.count_passes(target.model, target.transforms) as counters:
    _, seconds = _timed(clean)
  probed = [(CLEAN, int(counters["f_b"].numpy()),
             int(counters["model"].numpy()), seconds, "exact", 1)]
  if progress is not None:
    progress(CLEAN)
  for name, registry_name in plan.attacks:
    spec = suite.REGISTRY[registry_name]
    f_b, model, seconds, bound = _probe_attack(target, name, spec, xp, yp,
                                               budget, seed, draws)
    probed.append((name, f_b, model, seconds, bound,
                      2 if spec.kind == suite.WHITE_BOX else 1))
    if progress is not None:
      progress(name)
  rows = []
  for name, f_b, model, seconds, bound, gradient in probed:
    scale = plan.images / count
    rows.append({"attack": name, "f_b_passes": f_b * scale,
                 "model_passes": model * scale,
                 "flops": scale * (f_b * f_b_flops +
                                   gradient * model * a_flops),
                 "seconds": seconds * scale, "passes": bound})
  total = {key: sum(row[key] for row in rows)
           for key in ("f_b_passes", "model_passes", "flops", "seconds")}
  total |= {"attack": "total", "passes": "upper bound" if any(
      row["passes"] != "exact" for row in rows) else "exact"}
  wall = {n: total["seconds"] / plan.images * max(
      plan.shard_images(n, i) for i in range(n)) for n in shards}
  return CostEstimate(rows=rows, total=total, wall_s=wall, probe_images=count,
                      probe_s=time.perf_counter() - start)
