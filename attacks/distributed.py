"""An evaluation spread over the devices and workers of a tf.distribute strategy.

`attacks.plan` cuts an evaluation into units (attack × block of images),
each seeded by its block. This module runs those units on the devices of a
`tf.distribute.Strategy`:

- `MirroredStrategy` (one process, several devices): each device gets its own
  copy of the target (`replicate`: the models saved once and loaded under
  `tf.device`), and one thread per device takes units from a shared queue.
  A unit runs whole on one device, its EOT tiles included.
- `MultiWorkerMirroredStrategy` (one process per worker, `TF_CONFIG`): each
  worker runs one shard of the units (`shard_of`: shard i of N for
  worker i of N) on its own devices, all workers meet at a collective
  `barrier`, and the chief merges.

Why units and not `strategy.run` over slices of one batch: the attacks are
host loops (early stops, restarts, query schedules) around the model, and the
defended model's draws are reseeded and pinned per attack through variables
of its `AdversarialTransform` that a mirrored model shares between replicas.
A private copy per device keeps every replica's draws its own, and keying
the randomness by unit (never by device or thread) makes the result equal
to the single-device run bit for bit on one kind of device (see
`attacks.execute` for what "bit for bit" assumes).

Example (all local GPUs, or logical CPUs):

  >>> strategy = tf.distribute.MirroredStrategy()
  >>> plan = plan_lib.make_plan(target, x, y, ["adaptive"], budget, seed=0,
  ...                           unit_size=50)
  >>> summary = distributed.run(plan, strategy, target, x, y, "runs/eval")
  >>> merged = merge.merge("runs/eval")
"""

import contextlib
import os
import tempfile

import keras
import tensorflow as tf

from adv_layer import training
from attacks import execute
from attacks import plan as plan_lib
from attacks import suite

__all__ = ["barrier", "local_devices", "replicate", "run", "shard_of"]

_TARGET_MODELS = ("model", "surrogate", "adversarial_surrogate")


def local_devices(strategy):
  """The devices of `strategy` in this process (worker), in order.

  Args:
    strategy: a `tf.distribute.Strategy` (the default strategy: one device).

  Returns:
    A list of device names; `[None]` for the default strategy (TensorFlow's
    own placement).
  """
  try:
    return list(strategy.extended.worker_devices)
  except RuntimeError:  # The default strategy has no device list.
    return [None]


def shard_of(strategy, num_shards=1, shard_index=0):
  """`(num_shards, shard_index)` this process runs under `strategy`.

  Under `MultiWorkerMirroredStrategy` the shards are the cluster's tasks
  (chief first, then the workers by index); otherwise the given shard (e.g.
  one process per host, each with a mirrored strategy).

  Args:
    strategy: a `tf.distribute.Strategy`.
    num_shards, shard_index: the shard asked for; under a multi-worker
      strategy they must be left at 1, 0.

  Returns:
    Two ints.

  Raises:
    ValueError: for a shard asked for under a multi-worker strategy.
  """
  if not training.is_multi_worker(strategy):
    return num_shards, shard_index
  if (num_shards, shard_index) != (1, 0):
    raise ValueError(
        "Under MultiWorkerMirroredStrategy each worker is one shard; leave "
        f"num_shards=1, shard_index=0. Received: num_shards={num_shards}, "
        f"shard_index={shard_index}")
  resolver = strategy.cluster_resolver
  spec = resolver.cluster_spec()
  chiefs = spec.num_tasks("chief") if "chief" in spec.jobs else 0
  workers = spec.num_tasks("worker") if "worker" in spec.jobs else 0
  if resolver.task_type == "chief":
    return chiefs + workers, 0
  return chiefs + workers, chiefs + (resolver.task_id or 0)


def barrier(strategy):
  """Returns once every worker of `strategy` has called it.

  A collective sum of one per replica: under `MultiWorkerMirroredStrategy` it
  blocks until every worker joins (a worker that died aborts it through the
  strategy's health checks); elsewhere it returns at once.

  Args:
    strategy: a `tf.distribute.Strategy`.

  Returns:
    The number of replicas that joined (an int).
  """
  if not training.is_multi_worker(strategy):
    return strategy.num_replicas_in_sync

  @tf.function
  def count():
    ones = strategy.run(lambda: tf.constant(1, tf.int32))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

  return int(count().numpy())


def replicate(target, devices):
  """Copies of `target` whose models live on each of `devices`.

  The models (under attack, surrogates) are saved once to a temporary
  `.keras` file and loaded under `tf.device` per device, so each copy has
  its own variables (weights, and the transform's seed and pin) with the same
  values, layer names and digest as the original.

  Args:
    target: a `suite.Target`.
    devices: device names, e.g. `local_devices(strategy)`; None keeps
      TensorFlow's placement for that copy.

  Returns:
    A list of `(device, suite.Target)` pairs, one per device.

  Raises:
    ValueError: for an empty `devices`.
  """
  devices = list(devices)
  if not devices:
    raise ValueError(f"`devices` must name at least one device. Received: "
                     f"devices={devices!r}")
  with tempfile.TemporaryDirectory() as folder:
    paths = {}
    for field in _TARGET_MODELS:
      model = getattr(target, field)
      if model is not None:
        paths[field] = os.path.join(folder, f"{field}.keras")
        model.save(paths[field])
    replicas = []
    for device in devices:
      with tf.device(device) if device else contextlib.nullcontext():
        models = {field: keras.saving.load_model(path, compile=False)
                  for field, path in paths.items()}
      replicas.append((device, suite.Target(
          models["model"], surrogate=models.get("surrogate"),
          train_images=target.train_images,
          adversarial_surrogate=models.get("adversarial_surrogate"),
          randomized=target.randomized, bpda_layers=target.bpda_layers)))
  return replicas


def run(plan, strategy, target, x, y, report_dir, shard=plan_lib.Shard(),
        keep_going=False, progress=None):
  """Runs this worker's share of an evaluation on the devices of `strategy`.

  Every worker of a multi-worker strategy calls it with the same arguments
  (and a shared `report_dir`); it returns once all of them have finished, so
  the chief can `merge.merge(report_dir)` next. Rerunning resumes, as with
  `execute.run`.

  Args:
    plan: the evaluation's `Plan`.
    strategy: a `tf.distribute.Strategy`.
    target: a `suite.Target` (its models are copied to each local device).
    x, y, report_dir, keep_going, progress: as for `execute.run`.
    shard: the `Shard` this process runs when the strategy does not set it
      (`shard_of`).

  Returns:
    This worker's `execute.RunSummary`.

  Raises:
    ValueError: as `execute.run` and `shard_of`.
  """
  shard = plan_lib.Shard(*shard_of(strategy, shard.count, shard.index))
  devices = local_devices(strategy)
  replicas = None if devices == [None] else replicate(target, devices)
  summary = execute.run(plan, target, x, y, report_dir, shard,
                        keep_going=keep_going, progress=progress,
                        replicas=replicas)
  barrier(strategy)
  return summary
