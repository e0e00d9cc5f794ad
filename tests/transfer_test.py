"""Tests of attacks.transfer: PGD on a source model, replayed on a target."""

import contextlib
import io
import os

import keras
import numpy as np
import tensorflow as tf

from adv_layer import training
from adv_layer.layer import AdversarialTransform
from adv_layer.layer import find_transforms
from attacks import pgd
from attacks import surrogates
from attacks import transfer
from tests import attack_properties
from tests.reparam_test import tiny_defended_model


def tertile_task(count=1024, seed=0):
  """4×4×1 images labelled by the tertile of a fixed linear score (3 classes)."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0.0, 1.0, (count, 4, 4, 1)).astype(np.float32)
  score = images.reshape(count, -1) @ np.linspace(-1.0, 1.0, 16)
  labels = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
  return images, labels.astype(np.int32)


def accuracy(model, x, y):
  return float(np.mean(np.argmax(model(x), axis=1) == y))


class TransferTest(attack_properties.AttackPropertiesMixin, tf.test.TestCase):

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return transfer.transfer(model_fn, x, y, epsilon=epsilon, steps=5, seed=seed)

  def test_self_transfer_equals_pgd(self):
    x, _ = attack_properties.tiny_batch(seed=3, batch=32)
    y = np.argmax(self.model(x), axis=1)
    from_transfer = transfer.transfer(self.model, x, y, epsilon=0.1, steps=10,
                                      restarts=2, seed=4)
    from_pgd = pgd.pgd(self.model, x, y, epsilon=0.1, steps=10, restarts=2,
                       seed=4)
    self.assertAllEqual(from_transfer, from_pgd)
    fooled = np.mean(np.argmax(self.model(from_transfer), axis=1) != y)
    self.assertGreater(fooled, 0.5)  # Measured 0.6875 (32 images, seed 4).

  def test_classifier_model_fn_is_f_a_alone(self):
    model, layer, f_a = tiny_defended_model()
    x = tf.constant(self.x)
    source = transfer.classifier_model_fn(model)
    self.assertAllClose(source(x), f_a(x), atol=1e-6)
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(source(x)[:, 0])
    self.assertGreater(float(tf.reduce_max(tf.abs(tape.gradient(loss, x)))), 0.0)
    self.assertIsNone(layer.gradient_estimator)
    self.assertNotAllClose(model(x), f_a(x))  # g runs again outside the calls.

  def test_white_box_transfer_runs_on_the_classifier(self):
    model, _, f_a = tiny_defended_model()
    x_adv = transfer.transfer(transfer.classifier_model_fn(model), self.x,
                              self.y, epsilon=0.1, steps=5, seed=0)
    self.assertAllEqual(
        x_adv, pgd.pgd(f_a, self.x, self.y, epsilon=0.1, steps=5, seed=0))

  def test_cheaper_defense_source_is_differentiable_and_stays_in_ball(self):
    model, _, _ = tiny_defended_model()
    source = transfer.cheaper_defense_model_fn(model, steps=1, seed=0)
    x = tf.constant(self.x)
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(source(x)[:, 0])
    grad = tape.gradient(loss, x).numpy()
    self.assertTrue(np.all(np.isfinite(grad)))
    self.assertGreater(np.abs(grad).max(), 0.0)
    x_adv = transfer.transfer(source, self.x, self.y, epsilon=0.05, steps=3,
                              eot_samples=2, seed=0)
    self.assertLessEqual(float(tf.reduce_max(tf.abs(x_adv - self.x))), 0.05 + 1e-6)
    again = transfer.transfer(source, self.x, self.y, epsilon=0.05, steps=3,
                              eot_samples=2, seed=0)
    self.assertAllEqual(x_adv, again)

  def test_cheaper_defense_bad_steps_raise(self):
    model, _, _ = tiny_defended_model()
    with self.assertRaisesRegex(ValueError, "steps"):
      transfer.cheaper_defense_model_fn(model, steps=0)


class MomentumDiversityTransferTest(attack_properties.AttackPropertiesMixin,
                                    tf.test.TestCase):
  """MI-FGSM with input diversity: the attack properties, exact tiny cases."""

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return transfer.transfer(model_fn, x, y, epsilon=epsilon, steps=5,
                             momentum=1.0, diversity_prob=0.5,
                             diversity_scale=0.5, seed=seed)

  def test_drives_a_tiny_model_to_zero_accuracy(self):
    x, _ = attack_properties.tiny_batch(seed=3, batch=64)
    y = np.argmax(self.model(x), axis=1)
    x_adv = transfer.transfer(self.model, x, y, epsilon=0.3, steps=10,
                              momentum=1.0, diversity_prob=0.5,
                              diversity_scale=0.5, seed=0)
    self.assertEqual(accuracy(self.model, x_adv, y), 0.0)  # Measured 0/64.

  def test_momentum_update_exact(self):
    velocity = tf.constant([[1.0, -1.0], [0.0, 2.0]])
    grad = tf.constant([[2.0, -6.0], [0.0, 0.0]])
    # Row 0: ‖grad‖₁ = 8, so grad / 8 = (0.25, -0.75); row 1: zero gradient.
    self.assertAllClose(transfer.momentum_update(velocity, grad, 1.0),
                        [[1.25, -1.75], [0.0, 2.0]])
    self.assertAllClose(transfer.momentum_update(velocity, grad, 0.5),
                        [[0.75, -1.25], [0.0, 1.0]])

  def test_momentum_keeps_the_direction_of_past_gradients(self):
    # Logits (0, z) with z = x1 − 16 (x2 − 0.59375)², label 0: the CE
    # gradient is a positive multiple of ∇z = (1, −32 (x2 − 0.59375)).
    # From x = (0.5, 0.5): ∇z = (1, 3), normalised (0.25, 0.75); one step of
    # 0.1 to (0.6, 0.6), where ∇z = (1, −0.2), normalised (0.833, −0.167).
    # With μ = 1 the sum is (1.083, 0.583): both pixels go up again; with
    # μ ≈ 0 the second pixel follows the new gradient down.
    def model_fn(images):
      z = images[:, 0] - 16.0 * tf.square(images[:, 1] - 0.59375)
      return tf.stack([tf.zeros_like(z), z], axis=1)

    x, y = np.array([[0.5, 0.5]], np.float32), np.array([0])
    kwargs = dict(epsilon=0.25, steps=2, step_size=0.1, random_start=False,
                  seed=0)
    self.assertAllClose(
        transfer.transfer(model_fn, x, y, momentum=1.0, **kwargs), [[0.7, 0.7]])
    self.assertAllClose(
        transfer.transfer(model_fn, x, y, momentum=1e-6, **kwargs), [[0.7, 0.5]])

  def test_resize_and_pad_exact(self):
    x = tf.reshape(tf.range(32, dtype=tf.float32) / 31.0, [2, 4, 4, 1])
    out = transfer.resize_and_pad(x, tf.constant([2, 0]), tf.constant([1, 0]),
                                  tf.constant([0, 0]), fill=-1.0)[..., 0]
    # Image 0 shrunk to 2×2 (nearest, half-pixel centres: rows and columns
    # 1 and 3), placed at row 1, column 0; image 1 unchanged.
    expected = np.full((4, 4), -1.0)
    expected[1:3, 0:2] = [[5, 7], [13, 15]]
    self.assertAllClose(out[0], np.where(expected < 0, -1.0, expected / 31.0))
    self.assertAllEqual(out[1], x[1, ..., 0])
    resized = tf.image.resize(x[:1], [2, 2], method="nearest")
    self.assertAllEqual(out[0, 1:3, 0:2], resized[0, ..., 0])

  def test_input_diversity_keeps_shape_and_value_range(self):
    x, _ = attack_properties.tiny_batch(seed=1, batch=64, shape=(8, 8, 3))
    generator = tf.random.Generator.from_seed(0)
    out = transfer.input_diversity(tf.constant(x), 1.0, 0.5, 0.0,
                                   generator).numpy()
    self.assertEqual(out.shape, x.shape)
    self.assertGreaterEqual(out.min(), 0.0)
    self.assertLessEqual(out.max(), 1.0)
    for image, source in zip(out, x):  # Every pixel is copied or padding.
      self.assertTrue(np.all(np.isin(image, np.append(source, 0.0))))
    self.assertGreater(np.mean(out == 0.0), 0.05)
    same = transfer.input_diversity(tf.constant(x), 0.0, 0.5, 0.0, generator)
    self.assertAllEqual(same, x)

  def test_diversity_draw_distribution(self):
    generator = tf.random.Generator.from_seed(1)
    shrink, top, left = (t.numpy() for t in transfer.diversity_draw(
        (4000, 8, 8, 1), 0.5, 0.5, generator))
    # d uniform in {0, ..., 4} with probability 0.5, else 0.
    self.assertEqual(set(shrink), {0, 1, 2, 3, 4})
    self.assertNear(np.mean(shrink == 0), 0.5 + 0.5 / 5, 0.03)  # sd 0.008
    self.assertNear(np.mean(shrink == 4), 0.5 / 5, 0.03)
    self.assertTrue(np.all((0 <= top) & (top <= shrink)))
    self.assertTrue(np.all((0 <= left) & (left <= shrink)))
    self.assertNear(np.mean(top[shrink == 4] == 4), 1 / 5, 0.05)

  def test_input_diversity_passes_gradients(self):
    x = tf.constant(attack_properties.tiny_batch(batch=4, shape=(8, 8, 1))[0])
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = transfer.input_diversity(x, 1.0, 0.5, 0.0,
                                     tf.random.Generator.from_seed(0))
      loss = tf.reduce_sum(out)
    grad = tape.gradient(loss, x).numpy()
    self.assertTrue(np.all(np.isfinite(grad)))
    # Each copied pixel adds 1 to its source: the sum equals the copies.
    self.assertAllClose(grad.sum(), np.sum(out.numpy() != 0.0))

  def test_diversity_is_seeded(self):
    first, second = (self.run_attack(self.model, self.x, self.y, 0.1, seed=3)
                     for _ in range(2))
    self.assertAllEqual(first, second)
    other = self.run_attack(self.model, self.x, self.y, 0.1, seed=4)
    self.assertNotAllClose(first, other)

  def test_random_source_with_eot_repeats_and_stays_in_ball(self):
    model, _, _ = tiny_defended_model()
    source = transfer.cheaper_defense_model_fn(model, steps=1, seed=0)
    first, second = (transfer.transfer(
        source, self.x, self.y, epsilon=0.05, steps=3, restarts=2,
        eot_samples=2, momentum=1.0, diversity_prob=0.5, diversity_scale=0.5,
        seed=0).numpy() for _ in range(2))
    self.assertAllEqual(first, second)
    self.assertLessEqual(np.abs(first - self.x).max(), 0.05 + 1e-6)
    self.assertGreater(np.abs(first - self.x).max(), 0.0)

  def test_bad_arguments_raise(self):
    for kwargs, message in (
        (dict(momentum=-1.0), "Received: momentum=-1.0"),
        (dict(diversity_prob=1.5), "Received: diversity_prob=1.5"),
        (dict(diversity_prob=0.5, diversity_scale=0.0),
         "Received: diversity_scale=0.0"),
        (dict(diversity_prob=0.5, diversity_scale=2.0),
         "Received: diversity_scale=2.0")):
      with self.assertRaisesRegex(ValueError, message):
        transfer.transfer(self.model, self.x, self.y, **kwargs)
    with self.assertRaisesRegex(ValueError, "NHWC"):
      transfer.transfer(lambda x: x, self.x.reshape(6, 16), self.y,
                        diversity_prob=0.5)


class SurrogateTest(tf.test.TestCase):
  """Black-box sources: f_a's architecture trained afresh, clean or PGD."""

  def setUp(self):
    super().setUp()
    self.model, self.layer, self.f_a = tiny_defended_model()
    self.images, self.labels = tertile_task()
    self.train = (self.images[:768], self.labels[:768])
    self.test = (self.images[768:], self.labels[768:])

  def surrogate(self, **kwargs):
    settings = dict(epochs=5, batch_size=32, augment=False, seed=0)
    settings.update(kwargs)
    return surrogates.surrogate_from_defended(self.model, *self.train, **settings)

  def test_fresh_classifier_is_f_a_architecture_with_new_weights(self):
    copy = surrogates.fresh_classifier(self.model, seed=0)
    self.assertEmpty(find_transforms(copy))
    self.assertEqual([w.shape for w in copy.get_weights()],
                     [w.shape for w in self.f_a.get_weights()])
    self.assertNotAllClose(copy.get_weights()[0], self.f_a.get_weights()[0])
    again = surrogates.fresh_classifier(self.model, seed=0)
    for a, b in zip(copy.get_weights(), again.get_weights()):
      self.assertAllEqual(a, b)
    other = surrogates.fresh_classifier(self.model, seed=1)
    self.assertNotAllClose(copy.get_weights()[0], other.get_weights()[0])
    # Untrained but the same function class: identity in place of g.
    x = self.images[:4]
    copy.set_weights(self.f_a.get_weights())
    self.assertAllClose(copy(x), self.f_a(x), atol=1e-6)
    self.assertIsInstance(self.model.layers[0], AdversarialTransform)

  def test_train_surrogates_prints_a_line_per_epoch(self):
    folder = self.get_temp_dir()
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
      models, paths = surrogates.train_surrogates(
          self.model, ["blackbox_transfer"], folder, {},
          (self.images[:64], self.labels[:64]), preset="smoke", seed=0)
    lines = output.getvalue().splitlines()
    self.assertStartsWith(lines[0], "Training the surrogate (smoke preset, 64")
    epochs = training.get_preset("smoke")["epochs"]
    self.assertLen([l for l in lines if l.startswith("Epoch ")], epochs)
    self.assertEqual(paths["surrogate"],
                     os.path.join(folder, "surrogate.keras"))
    self.assertIsNone(models["adversarial_surrogate"])

  def test_subclassed_model_raises(self):

    class Subclassed(keras.Model):

      def call(self, inputs):
        return inputs

    with self.assertRaisesRegex(ValueError, "Sequential or functional"):
      surrogates.fresh_classifier(Subclassed())

  def test_clean_surrogate_learns_and_its_attack_transfers(self):
    surrogate = self.surrogate()
    self.assertGreater(accuracy(surrogate, *self.test), 0.8)  # Measured 0.86.
    # An independently trained target of another architecture.
    target = attack_properties.tiny_model(seed=9)
    target.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    target.fit(*self.train, epochs=5, batch_size=32, verbose=0)
    x, y = self.test[0][:128], self.test[1][:128]
    clean = accuracy(target, x, y)
    for kwargs in (dict(), dict(momentum=1.0, diversity_prob=0.5,
                                diversity_scale=0.5)):
      x_adv = transfer.transfer(surrogate, x, y, epsilon=0.1, steps=10, seed=0,
                                **kwargs)
      # Measured 0.97 -> 0.16 for both (128 images, epsilon 0.1).
      self.assertLess(accuracy(target, x_adv, y), clean - 0.3)

  def test_surrogate_is_seeded(self):
    first, second = self.surrogate(epochs=1), self.surrogate(epochs=1)
    for a, b in zip(first.get_weights(), second.get_weights()):
      self.assertAllEqual(a, b)

  def test_adversarial_surrogate_returns_the_classifier(self):
    surrogate = self.surrogate(adversarial=True, epsilon=0.05, steps=2)
    self.assertIsInstance(surrogate, keras.Sequential)
    self.assertGreater(accuracy(surrogate, *self.test), 0.6)  # Measured 0.86.

  def test_builder_architecture(self):
    surrogate = surrogates.train_surrogate(
        lambda seed: attack_properties.tiny_model(seed=seed % 1000), *self.train,
        epochs=1, batch_size=32, augment=False, seed=0)
    self.assertEqual(surrogate(self.images[:2]).shape, (2, 3))

  def test_surrogate_settings_follow_the_training_presets(self):
    clean = surrogates.surrogate_settings("cpu")
    self.assertEqual(clean["train_examples"], 30_000)
    self.assertEqual((clean["epochs"], clean["lr_drop_epoch"]), (2, 1))
    self.assertFalse(clean["adversarial"])
    adversarial = surrogates.surrogate_settings("paper", adversarial=True)
    self.assertEqual((adversarial["epochs"], adversarial["steps"]), (80, 7))
    self.assertAllClose(adversarial["epsilon"], 8 / 255)
    with self.assertRaisesRegex(ValueError, "preset"):
      surrogates.surrogate_settings("huge")

  def test_dropped_layers_become_identities(self):
    # A preprocessing defense's masked layer is left out of its surrogate.
    rounding = keras.layers.Rescaling(1.0, name="rounding")
    model = keras.Sequential([keras.Input((4, 4, 1)), rounding,
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    fresh = surrogates.fresh_classifier(model, seed=0, drop=["rounding"])
    self.assertIsInstance(fresh.layers[0], keras.layers.Identity)
    self.assertEqual(fresh.layers[0].name, "rounding")
    self.assertNotIsInstance(
        surrogates.fresh_classifier(model, seed=0).layers[0],
        keras.layers.Identity)

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: epochs=0"):
      self.surrogate(epochs=0)
    with self.assertRaisesRegex(ValueError, "train_labels"):
      surrogates.train_surrogate(self.f_a, self.train[0], self.train[1][:5])


if __name__ == "__main__":
  tf.test.main()
