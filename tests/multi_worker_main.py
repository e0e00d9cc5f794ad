"""Subprocess body of tests/distribute_test.py: the layer under tf.distribute.

Device layout must be fixed before TensorFlow initialises its devices, which
pytest's shared process cannot promise, so each scenario runs here in a fresh
process and writes its findings as JSON for the test to check.

Usage:
  python multi_worker_main.py mirrored OUT_JSON
      MirroredStrategy over two logical CPU devices of one process.
  python multi_worker_main.py multi_worker OUT_JSON
      One worker of a MultiWorkerMirroredStrategy; `TF_CONFIG` (in the
      environment) names the cluster and this worker's index.
  python multi_worker_main.py training_loop OUT_JSON
      One worker running `adv_layer.training.train` (its custom loop under
      MultiWorkerMirroredStrategy): one epoch, a rerun to two epochs from the
      backup, an uninterrupted two-epoch run, and PGD training of f_b.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

import adv_layer
from adv_layer import training

SHAPE = (4, 4, 1)
CLASSES = 3
BATCH = 8


def tiny_f_b():
  """A fixed-weight tiny f_b (logits out); the same weights in every process."""
  keras.utils.set_random_seed(0)
  return keras.Sequential([
      keras.Input(SHAPE),
      keras.layers.Flatten(),
      keras.layers.Dense(8, activation="tanh"),
      keras.layers.Dense(CLASSES),
  ])


def tiny_data():
  """Sixteen images in (0.1, 0.9) with labels, identical in every process."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0.1, 0.9, size=(16,) + SHAPE).astype(np.float32)
  y = (np.arange(16) % CLASSES).astype(np.int32)
  return x, y


def defended_model(f_b, seed):
  """f_a(g(x)) with a one-layer f_a, compiled for `fit`."""
  model = keras.Sequential([
      keras.Input(SHAPE),
      adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=3, seed=seed),
      keras.layers.Flatten(),
      keras.layers.Dense(CLASSES),
  ])
  model.compile(
      optimizer=keras.optimizers.SGD(0.1),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def fit_report(strategy):
  """Builds and fits the defended model under `strategy`; returns findings."""
  x, y = tiny_data()
  with strategy.scope():
    f_b = tiny_f_b()
    model = defended_model(f_b, seed=5)
  f_b_before = [w.numpy().tolist() for w in f_b.weights]
  f_a_before = model.layers[-1].kernel.numpy()
  history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
  layer = model.layers[0]
  return {
      "replicas": strategy.num_replicas_in_sync,
      "loss": history.history["loss"],
      "f_b_unchanged": f_b_before == [w.numpy().tolist() for w in f_b.weights],
      "f_a_changed": bool(np.any(model.layers[-1].kernel.numpy() != f_a_before)),
      "seed_state": layer.seed_generator.state.numpy().tolist(),
      "f_a_kernel": model.layers[-1].kernel.numpy().tolist(),
  }


def replica_draws(strategy):
  """The random starts δ each replica draws inside `strategy.run`.

  f_b has all-zero weights, so its input gradient is zero, no step moves, and
  g(x) − x is the random start itself on images of 0.5 (Δ = 0.2 stays inside
  [0, 1]).
  """
  with strategy.scope():
    f_b = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                            keras.layers.Dense(CLASSES, kernel_initializer="zeros")])
    layer = adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=2, seed=7)
  x = np.full((4,) + SHAPE, 0.5, np.float32)
  dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
  step = tf.function(lambda b: strategy.run(layer, args=(b,)))
  draws = [strategy.experimental_local_results(step(batch)) for _ in range(2)]
  return {
      "deltas": [[(v.numpy() - 0.5).tolist() for v in per_replica]
                 for per_replica in draws],
      "seed_state": layer.seed_generator.state.numpy().tolist(),
  }


def run_mirrored():
  """MirroredStrategy over two logical CPUs split from the one physical CPU."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  report = fit_report(strategy)
  report["draws"] = replica_draws(strategy)
  return report


def custom_loop_report(strategy):
  """Trains f_a(g(x)) for two epochs with a custom loop under `strategy.run`.

  Keras 3.15's `fit` fails under MultiWorkerMirroredStrategy outside the
  training step (keras-team/keras#20585, then a mean over scalar metrics with
  `axis=0`), so the step `fit` would run is written out here.
  """
  x, y = tiny_data()
  with strategy.scope():
    f_b = tiny_f_b()
    model = defended_model(f_b, seed=5)
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(
      from_logits=True, reduction="sum")
  f_b_before = [w.numpy().tolist() for w in f_b.weights]
  f_a_before = model.layers[-1].kernel.numpy()

  def step(images, labels):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(images, training=True)) / BATCH
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return loss

  @tf.function
  def distributed_step(batch):
    per_replica = strategy.run(step, args=batch)
    return strategy.reduce("SUM", per_replica, axis=None)

  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
  losses = []
  for _ in range(2):
    epoch = [distributed_step(batch).numpy()
             for batch in strategy.experimental_distribute_dataset(dataset)]
    losses.append(float(np.mean(epoch)))
  return {
      "replicas": strategy.num_replicas_in_sync,
      "loss": losses,
      "f_b_unchanged": f_b_before == [w.numpy().tolist() for w in f_b.weights],
      "f_a_changed": bool(np.any(model.layers[-1].kernel.numpy() != f_a_before)),
      "seed_state": model.layers[0].seed_generator.state.numpy().tolist(),
      "f_a_kernel": model.layers[-1].kernel.numpy().tolist(),
  }


def run_multi_worker():
  """One worker of a MultiWorkerMirroredStrategy cluster from `TF_CONFIG`."""
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  report = custom_loop_report(strategy)
  report["draws"] = replica_draws(strategy)
  report["task"] = json.loads(os.environ["TF_CONFIG"])["task"]
  return report


def train_defended(strategy, epochs, checkpoint_dir, output=None):
  """`training.train` of a fresh f_a(g(x)) for `epochs` with backups.

  Returns:
    The model, its f_b and the `History`.
  """
  x, y = tiny_data()
  with strategy.scope():
    f_b = tiny_f_b()
    f_a = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                            keras.layers.Dense(CLASSES)])
    model = training.defended_model(f_b, f_a, epsilon=0.2, steps=3, seed=5)
    history = training.train(
        model, tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH), epochs,
        learning_rate=0.1, checkpoint_dir=training.per_worker_path(
            checkpoint_dir, strategy), output=output, verbose=1)
  return model, f_b, history


def run_training_loop(out_path):
  """Runs `training.train` and `train_classifier` on one worker of a cluster."""
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  folder = os.path.dirname(out_path)
  resumed_dir = os.path.join(folder, "resumed_backup")
  train_defended(strategy, 1, resumed_dir)  # As if killed after epoch 1.
  resumed, f_b, resumed_history = train_defended(strategy, 2, resumed_dir)
  straight, _, straight_history = train_defended(
      strategy, 2, os.path.join(folder, "straight_backup"),
      output=os.path.join(folder, "defended.keras"))
  x, y = tiny_data()
  with strategy.scope():
    pgd_f_b = tiny_f_b()
    pgd_before = pgd_f_b.layers[-1].kernel.numpy()
    training.train_classifier(
        pgd_f_b, tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH), 1,
        adversarial=True, steps=1, seed=3, learning_rate=0.1, verbose=0,
        output=os.path.join(folder, "f_b.keras"))
  return {
      "task": json.loads(os.environ["TF_CONFIG"])["task"],
      "resumed_epochs": resumed_history.epoch,
      "resumed_iterations": int(resumed.optimizer.iterations.numpy()),
      "straight_epochs": straight_history.epoch,
      "straight_loss": straight_history.history["loss"],
      "resumed_kernel": resumed.layers[-1].layers[-1].kernel.numpy().tolist(),
      "straight_kernel": straight.layers[-1].layers[-1].kernel.numpy().tolist(),
      "f_b_unchanged": all(np.array_equal(a.numpy(), b.numpy()) for a, b in
                           zip(f_b.weights, tiny_f_b().weights)),
      "pgd_f_b_changed": bool(np.any(pgd_f_b.layers[-1].kernel.numpy()
                                     != pgd_before)),
      "pgd_f_b_kernel": pgd_f_b.layers[-1].kernel.numpy().tolist(),
  }


def main(argv):
  mode, out_path = argv[1], argv[2]
  runners = {"mirrored": run_mirrored, "multi_worker": run_multi_worker,
             "training_loop": lambda: run_training_loop(out_path)}
  if mode not in runners:
    raise ValueError(f"`mode` must be one of {sorted(runners)}. Received: mode={mode!r}")
  report = runners[mode]()
  with open(out_path, "w") as f:
    json.dump(report, f)


if __name__ == "__main__":
  main(sys.argv)
