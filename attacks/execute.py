"""Running an evaluation's units: one process, a shard, or replicas on devices.

`run` takes a `Plan` (`attacks.plan.make_plan`) and runs the units of one
shard that are not finished yet, writing each into `<report_dir>/units/` as
soon as it is done (`attacks.store`). Every unit draws its randomness from
`unit_seed(seed, block)`: its attack runs as `suite.run_attack(...,
seed=unit_seed)` (which derives the attack's own seed and its scoring seed
from that seed and the attack's name) and its clean score as
`suite.score_clean(..., seed=unit_seed)`. Nothing depends on which process
runs a unit or on what ran before it, so the merge of N shards equals a
single process bit for bit (timings excepted). Bit for bit assumes the same
kernels in every process: one TensorFlow build and CPU type (tested here on
CPU), and on GPUs `tf.config.experimental.enable_op_determinism()`; the
budget's `chunk_size` is part of the key because it changes EOT sums.

A unit runs only under its lock (`attacks.store.try_lock`): two processes
on one folder share the units instead of computing each twice, and a process
that finds a unit claimed by another waits for it at the end of its own
queue (and runs it itself if the other process died first).

`stored_rerun` is `suite.rerun` with each result kept in
`<report_dir>/reruns/`, for the extra runs of a report (the sanity checks'
epsilon sweep and 2x reruns, the accuracy-vs-EOT curve): a killed report
build resumes, and the report of a grown evaluation reuses them while its
strongest attack stays the same.

Example (shard i of 2):

  >>> plan = make_plan(target, x, y, ["adaptive"], budget, seed=0, draws=20)
  >>> execute.run(plan, target, x, y, "runs/eval", Shard(2, i))
"""

import collections
import contextlib
import dataclasses
import os
import threading

from absl import logging
import numpy as np
import tensorflow as tf

from attacks import plan as plan_lib
from attacks import records
from attacks import store
from attacks import suite

__all__ = ["RunSummary", "run", "run_unit", "stored_rerun"]


@dataclasses.dataclass
class RunSummary:
  """What one `run` call did.

  Attributes:
    ran: keys of the units computed now.
    reused: keys of the units found finished and skipped (by another
      process, too).
    failed: dict key -> error of units that raised (`keep_going`); not
      written, so a rerun retries them.
  """
  ran: list
  reused: list
  failed: dict


def run_unit(target, plan, unit, x, y):
  """Computes one unit: `(arrays, meta)` to write."""
  start, stop = plan.block_range(unit.block)
  xb, yb = x[start:stop], y[start:stop]
  seed = plan_lib.unit_seed(plan.seed, unit.block)
  meta = {"attack": unit.attack, "block": unit.block, "unit_seed": seed,
          "key": plan.key(unit)}
  arrays = {"y": yb, "index": np.arange(start, stop)}
  if unit.attack == plan_lib.CLEAN:
    clean = suite.score_clean(target, xb, yb, seed=seed, draws=plan.draws)
    meta["score_seed"] = clean.seed
    return arrays | records.score_arrays(clean) | {"x": xb}, meta
  spec = suite.REGISTRY[dict(plan.attacks)[unit.attack]]
  result = suite.run_attack(target, unit.attack, spec, xb, yb, plan.budget,
                            seed=seed, draws=plan.draws)
  result_arrays, result_meta = records.attack_record(result)
  return arrays | result_arrays, meta | result_meta


def run(plan, target, x, y, report_dir, shard=plan_lib.Shard(),
        keep_going=False, progress=None, replicas=None):
  """Runs one shard of an evaluation, skipping the units already finished.

  Args:
    plan: the evaluation's `Plan` (`make_plan` of these images and target).
    target: a `suite.Target`.
    x: float32 images (all of the evaluation's, in every shard).
    y: int labels.
    report_dir: output folder (units go to `<report_dir>/units/`).
    shard: the `Shard` this call runs.
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
    ValueError: for images that are not the plan's, or a report_dir holding
      units of another evaluation (budget, R, unit_size, model, images or
      seed, or an attack this plan drops).
  """
  x, y = plan_lib.check_images(x, y, plan.budget)
  if len(x) != plan.images:
    raise ValueError(f"`x` must hold the plan's {plan.images} images. "
                     f"Received: len(x)={len(x)}")
  folder = store.claim(report_dir, plan)
  summary = RunSummary(ran=[], reused=[], failed={})
  pending = []
  job = _Job(plan, x, y, folder)
  for unit in plan.units(shard.count, shard.index):
    key = plan.key(unit)
    if _finished(job, unit):
      summary.reused.append(key)
      if progress is not None:
        progress(unit, key, "reused")
    else:
      pending.append(unit)
  _execute(job, pending, replicas or [(None, target)], summary, keep_going,
           progress)
  return summary


@dataclasses.dataclass(frozen=True)
class _Job:
  """What every unit of one `run` shares."""
  plan: plan_lib.Plan
  x: np.ndarray
  y: np.ndarray
  folder: str


def _finished(job, unit):
  """Whether `unit`'s file exists and is its own (`store.read_unit`).

  A file that is damaged or holds another unit's result is reported with a
  warning naming it, and the unit counts as not finished: it is recomputed
  and the file replaced.
  """
  key = job.plan.key(unit)
  path = os.path.join(job.folder, key)
  if not os.path.exists(path):
    return False
  start, stop = job.plan.block_range(unit.block)
  try:
    store.read_unit(path, key, unit.attack, unit.block, range(start, stop),
                    job.y[start:stop])
  except store.UnitError as error:
    logging.warning("%s: recomputing it.", error)
    return False
  return True


def _run_claimed(job, unit, replica, device, block):
  """Runs `unit` under its lock; "ran", "reused", or None if claimed.

  With `block`, waits for another process's claim to end instead of
  returning None, then runs the unit unless that process wrote it.
  """
  key = job.plan.key(unit)
  handle = store.try_lock(store.lock_path(job.folder, key), block=block)
  if handle is None:
    return None
  try:
    if _finished(job, unit):
      return "reused"
    with tf.device(device) if device else contextlib.nullcontext():
      arrays, meta = run_unit(replica, job.plan, unit, job.x, job.y)
    store.write_npz(os.path.join(job.folder, key), arrays, meta)
    return "ran"
  finally:
    handle.close()


def _execute(job, pending, replicas, summary, keep_going, progress):
  """Runs `pending` units on the replicas, one thread each, writing each unit.

  Threads take the next unit from one shared queue, so a slow unit does not
  hold the others back; a unit claimed by another process goes to the back
  of the queue once, and is then waited for. Without `keep_going` the first
  error stops every thread after its unit in flight and is raised here.
  """
  queue = collections.deque((unit, False) for unit in pending)
  lock = threading.Lock()
  errors = []

  def work(device, replica):
    while True:
      with lock:
        if errors or not queue:
          return
        unit, waited = queue.popleft()
      key = job.plan.key(unit)
      try:
        status = _run_claimed(job, unit, replica, device, block=waited)
      except Exception as error:  # pylint: disable=broad-except
        with lock:
          if not keep_going:
            errors.append(error)
            return
          summary.failed[key] = f"{type(error).__name__}: {error}"
          status = "failed"
      if status is None:  # Another process holds it: come back to it.
        with lock:
          queue.append((unit, True))
        continue
      with lock:
        {"ran": summary.ran, "reused": summary.reused}.get(
            status, []).append(key)
        if progress is not None:
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


def stored_rerun(report_dir, known=()):
  """`suite.rerun`, with each result kept in `<report_dir>/reruns/`.

  A rerun's file is named by the attack and a digest of everything its
  result depends on: the changed budget, the seed, R, the images and labels,
  the digests of the model and of any surrogate models, and (where they
  apply) the model's randomness and BPDA-wrapped layers. A call that finds
  its file returns the stored result (timings included) without running; one
  that does not runs `suite.rerun` and writes the file atomically.

  Args:
    report_dir: the evaluation's folder.
    known: `(model, digest)` pairs of models whose `model_digest` is known
      (e.g. the plan's), so they are not hashed again.

  Returns:
    A callable with `suite.rerun`'s arguments and result.
  """
  folder = os.path.join(report_dir, store.RERUNS_DIR)
  digests = {id(model): (model, digest) for model, digest in known}

  def digest_of(model):
    if model is None:
      return None
    if id(model) not in digests:
      digests[id(model)] = (model, plan_lib.model_digest(model))
    return digests[id(model)][1]

  def rerun(target, name, x, y, budget, seed=0, draws=suite.REFERENCE_DRAWS,
            **changes):
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    changed = dataclasses.replace(budget, **changes)
    models = [digest_of(m) for m in (target.model, target.surrogate,
                                     target.adversarial_surrogate)]
    # Keys of targets without randomness or BPDA of their own read as before.
    shape = ([] if target.randomized == target.defended and
             not target.bpda_layers else
             [target.randomized, list(target.bpda_layers)])
    key = plan_lib.digest(name, plan_lib.dumps(dataclasses.asdict(changed)),
                          seed, draws, models, x.tobytes(), y.tobytes(),
                          *shape)
    path = os.path.join(folder, f"{name}.{key}.npz")
    if os.path.exists(path):
      try:
        arrays, meta = store.load_unit(path)
        if meta.get("attack") != name or not np.array_equal(arrays.get("y"), y):
          raise store.UnitError(f"{path} holds another run than {name!r} on "
                                "these images")
        return records.attack_result(name, [(arrays, meta)],
                                     meta["attack_seed"], meta["score_seed"])
      except store.UnitError as error:
        logging.warning("%s: recomputing it.", error)
    result = suite.rerun(target, name, x, y, budget, seed, draws, **changes)
    os.makedirs(folder, exist_ok=True)
    arrays, meta = records.attack_record(result)
    store.write_npz(path, arrays | {"y": y},
                    meta=meta | {"attack": name, "changes": changes})
    return result

  return rerun
