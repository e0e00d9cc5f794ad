"""Tests of adv_layer.training: PGD pretraining, defended training, resume, presets."""

import os

import keras
import numpy as np
import tensorflow as tf

from adv_layer import layer
from adv_layer import models
from adv_layer import training


def tiny_data(n=16, size=8, seed=0):
  """Random images in [0, 1] and labels 0..3, as numpy arrays."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 1.0, (n, size, size, 3)).astype(np.float32)
  y = rng.integers(0, 4, n).astype(np.int32)
  return x, y


def tiny_classifier(seed=0, size=8):
  return models.small_cnn(num_classes=4, input_shape=(size, size, 3), width=2,
                          seed=seed)


def ce(model, x, y):
  logits = model(x, training=False)
  return float(tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
      y, logits, from_logits=True)))


class AdversarialTrainerTest(tf.test.TestCase):

  def test_perturb_stays_in_the_ball_and_raises_the_true_label_loss(self):
    x, y = tiny_data()
    trainer = training.AdversarialTrainer(tiny_classifier(), epsilon=0.1,
                                          steps=5, seed=0)
    x_adv = trainer.perturb(x, y).numpy()
    self.assertLessEqual(np.abs(x_adv - x).max(), 0.1 + 1e-6)
    self.assertGreaterEqual(x_adv.min(), 0.0)
    self.assertLessEqual(x_adv.max(), 1.0)
    self.assertGreater(ce(trainer.classifier, x_adv, y),
                       ce(trainer.classifier, x, y) + 0.01)

  def test_random_start_is_seeded(self):
    x, y = tiny_data()
    make = lambda: training.AdversarialTrainer(tiny_classifier(), epsilon=0.1,
                                               steps=1, seed=3)
    self.assertAllEqual(make().perturb(x, y), make().perturb(x, y))

  def test_train_step_trains_on_the_perturbed_inputs(self):
    x, y = tiny_data()
    trainer = training.AdversarialTrainer(tiny_classifier(seed=1), epsilon=0.1,
                                          steps=3, random_start=False)
    x_adv = trainer.perturb(x, y).numpy()  # Deterministic: no random start.
    self.assertGreater(np.abs(x_adv - x).max(), 0.05)
    # The expected update: one plain SGD step (rate 0.5) on the PGD examples.
    reference = tiny_classifier(seed=1)
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
          y, reference(x_adv, training=True), from_logits=True))
    grads = tape.gradient(loss, reference.trainable_weights)
    expected = [w.numpy() - 0.5 * g.numpy()
                for w, g in zip(reference.trainable_weights, grads)]
    training.compile_sgd(trainer, learning_rate=0.5, momentum=0.0)
    trainer.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    after = [w.numpy() for w in trainer.classifier.trainable_weights]
    self.assertFalse(np.allclose(after[0], reference.trainable_weights[0]))
    for a, b in zip(after, expected):
      self.assertAllClose(a, b, atol=1e-5, rtol=0)

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: epsilon=0"):
      training.AdversarialTrainer(tiny_classifier(), epsilon=0)
    with self.assertRaisesRegex(ValueError, "Received: steps=0"):
      training.AdversarialTrainer(tiny_classifier(), steps=0)


class DefendedTrainingTest(tf.test.TestCase):

  def test_fit_trains_f_a_and_leaves_f_b_unchanged(self):
    x, y = tiny_data(size=16)
    f_b = models.small_vgg(num_classes=4, input_shape=(16, 16, 3), width=0.0625,
                           seed=0)
    f_a = tiny_classifier(seed=1, size=16)
    model = training.defended_model(f_b, f_a, steps=2, seed=0)
    self.assertIsInstance(model.layers[1], layer.AdversarialTransform)
    f_b_before, f_a_before = f_b.get_weights(), f_a.get_weights()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    training.train(model, dataset, epochs=1, verbose=0)
    for a, b in zip(f_b_before, f_b.get_weights()):
      self.assertAllEqual(a, b)  # Batch norm statistics included.
    self.assertFalse(all(np.array_equal(a, b)
                         for a, b in zip(f_a_before, f_a.get_weights())))

  def test_accuracy(self):
    identity = keras.Sequential([keras.Input((3,)), keras.layers.Identity()])
    x = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    dataset = tf.data.Dataset.from_tensor_slices(
        (x, np.array([0, 1, 0, 2], np.int32))).batch(3)
    self.assertEqual(training.accuracy(identity, dataset), 0.5)


class StopAfterFirstEpoch(keras.callbacks.Callback):

  def on_epoch_end(self, epoch, logs=None):
    if epoch == 0:
      raise KeyboardInterrupt("simulated kill after epoch 1")


class Recorder(keras.callbacks.Callback):
  """Records the epochs run and the weights each one starts from."""

  def __init__(self):
    super().__init__()
    self.epochs, self.start_weights = [], []

  def on_epoch_begin(self, epoch, logs=None):
    self.epochs.append(epoch)
    self.start_weights.append(self.model.get_weights())


class ResumeTest(tf.test.TestCase):

  def test_rerun_after_interruption_continues_from_epoch_two(self):
    x, y = tiny_data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    backup = os.path.join(self.get_temp_dir(), "backup")
    output = os.path.join(self.get_temp_dir(), "fb", "f_b.keras")

    def run(callbacks):
      """Adversarial pretraining for 3 epochs of 2 steps, rate drop after 1."""
      f_b = tiny_classifier()
      history = training.train_classifier(
          f_b, dataset, epochs=3, adversarial=True, epsilon=0.1, steps=1,
          seed=0, output=output, lr_drop_epoch=1, checkpoint_dir=backup,
          callbacks=callbacks, verbose=0)
      return f_b, history.model

    first = Recorder()
    saved = {}

    class Snapshot(keras.callbacks.Callback):

      def on_epoch_end(self, epoch, logs=None):
        saved["weights"] = self.model.get_weights()
        saved["iterations"] = int(self.model.optimizer.iterations)

    with self.assertRaises(KeyboardInterrupt):
      run([first, Snapshot(), StopAfterFirstEpoch()])
    self.assertEqual(first.epochs, [0])
    self.assertNotEmpty(os.listdir(backup))
    self.assertFalse(os.path.exists(output))

    second = Recorder()
    f_b, trainer = run([second])
    self.assertEqual(second.epochs, [1, 2])  # Continued, not restarted.
    for a, b in zip(second.start_weights[0], saved["weights"]):
      self.assertAllEqual(a, b)
    self.assertEqual(saved["iterations"], 2)
    self.assertEqual(int(trainer.optimizer.iterations), 3 * 2)
    # The schedule resumed too: epochs 2 and 3 ran at the dropped rate.
    self.assertAllClose(trainer.optimizer.learning_rate, 0.01)
    self.assertFalse(os.path.exists(backup))  # Removed after completion.
    loaded = keras.saving.load_model(output)  # A plain f_b, not the trainer.
    self.assertEqual(loaded.name, "small_cnn")
    self.assertAllClose(loaded(x, training=False), f_b(x, training=False),
                        atol=1e-6, rtol=0)


class PresetsTest(tf.test.TestCase):

  def test_paper_preset_is_the_paper(self):
    paper = training.get_preset("paper")
    self.assertEqual(
        {k: paper[k] for k in ("fa_model", "fb_model", "fb_width", "epochs",
                               "fb_epochs", "learning_rate", "momentum",
                               "batch_size", "epsilon", "steps", "step_size",
                               "target", "fb_adversarial", "lr_drop_epoch")},
        dict(fa_model="resnet18", fb_model="small_vgg", fb_width=1.0, epochs=80,
             fb_epochs=80, learning_rate=0.1, momentum=0.9, batch_size=128,
             epsilon=0.2, steps=13, step_size=None, target="least_likely",
             fb_adversarial=True, lr_drop_epoch=50))
    self.assertIsNone(paper["train_examples"])
    # Table 3's Madry baseline: PGD-7 at 8/255, step 2/255 (Madry et al.).
    self.assertEqual(training.madry_settings(paper),
                     dict(epsilon=8 / 255, steps=7, step_size=2 / 255))

  def test_every_preset_has_the_same_keys(self):
    keys = set(training.PRESETS["paper"])
    for name, preset in training.PRESETS.items():
      self.assertEqual(set(preset), keys, msg=name)

  def test_overrides(self):
    preset = training.get_preset("smoke", epochs=7, batch_size=None)
    self.assertEqual(preset["epochs"], 7)
    self.assertEqual(preset["batch_size"], training.PRESETS["smoke"]["batch_size"])
    self.assertEqual(training.PRESETS["smoke"]["epochs"], 3)  # Not mutated.
    with self.assertRaisesRegex(ValueError, "Received: preset='gpu'"):
      training.get_preset("gpu")
    with self.assertRaisesRegex(ValueError, "Received: lr=0.1"):
      training.get_preset("smoke", lr=0.1)

  def test_constant_rate_override(self):
    # docs/FIDELITY.md: the paper's constant rate, where None would keep 50.
    paper = training.get_preset("paper", lr_drop_epoch=training.NO_DROP,
                                fb_lr_drop_epoch=training.NO_DROP)
    self.assertIsNone(paper["lr_drop_epoch"])
    self.assertIsNone(paper["fb_lr_drop_epoch"])
    self.assertEqual(training.get_preset("paper", lr_drop_epoch=None)
                     ["lr_drop_epoch"], 50)
    self.assertEqual(training.PRESETS["paper"]["lr_drop_epoch"], 50)
    self.assertEqual(training.learning_rate_schedule(
        0.1, steps_per_epoch=10, lr_drop_epoch=paper["lr_drop_epoch"]), 0.1)

  def test_learning_rate_drop(self):
    schedule = training.learning_rate_schedule(0.1, steps_per_epoch=10,
                                               lr_drop_epoch=50)
    self.assertAllClose(schedule(499), 0.1)
    self.assertAllClose(schedule(501), 0.01)
    self.assertEqual(training.learning_rate_schedule(0.1, None), 0.1)

  def test_per_worker_paths(self):

    class Resolver:

      def __init__(self, task_type, task_id, cluster):
        self.task_type, self.task_id, self.cluster = task_type, task_id, cluster

      def cluster_spec(self):
        return tf.train.ClusterSpec(self.cluster)

    class Strategy:

      def __init__(self, *args):
        self.cluster_resolver = Resolver(*args)

    workers = {"worker": ["localhost:1", "localhost:2"]}
    with_chief = dict(workers, chief=["localhost:3"])
    path = os.path.join("runs", "f_b.keras")
    self.assertEqual(training.per_worker_path(path, Strategy("worker", 0, workers)),
                     path)
    self.assertEqual(training.per_worker_path(path, Strategy("worker", 1, workers)),
                     os.path.join("runs", "f_b_worker1.keras"))
    self.assertEqual(
        training.per_worker_path(path, Strategy("worker", 0, with_chief)),
        os.path.join("runs", "f_b_worker0.keras"))
    self.assertEqual(
        training.per_worker_path(path, Strategy("chief", 0, with_chief)), path)
    self.assertEqual(training.per_worker_path(path, tf.distribute.get_strategy()),
                     path)

  def test_strategies(self):
    self.assertIs(training.make_strategy("default"), tf.distribute.get_strategy())
    with self.assertRaisesRegex(ValueError, "Received: strategy='tpu'"):
      training.make_strategy("tpu")


if __name__ == "__main__":
  tf.test.main()
