"""Properties every attack must have, as a mixin for `tf.test.TestCase`.

A test class for attack A inherits `AttackPropertiesMixin` and implements
`run_attack(model_fn, x, y, epsilon, seed)`; the mixin then checks that
epsilon = 0 returns x, the result stays inside the L∞ ball and the value
range, the same seed repeats, and a bad epsilon raises a clear error.
"""

import keras
import numpy as np
import tensorflow as tf

EPSILON = 8 / 255


def tiny_model(seed=0, shape=(4, 4, 1), classes=3):
  """A small fixed-weight classifier on tiny images (logits out)."""
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input(shape),
      keras.layers.Flatten(),
      keras.layers.Dense(16, activation="tanh"),
      keras.layers.Dense(classes),
  ])


def tiny_batch(seed=0, batch=6, shape=(4, 4, 1), classes=3):
  """Images in (0.2, 0.8) with random labels."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.2, 0.8, size=(batch,) + shape).astype(np.float32)
  y = rng.integers(0, classes, size=batch).astype(np.int32)
  return x, y


class AttackPropertiesMixin:
  """Mixin of attack properties; subclasses define `run_attack`."""

  def run_attack(self, model_fn, x, y, epsilon, seed):
    raise NotImplementedError

  def setUp(self):
    super().setUp()
    self.model = tiny_model()
    self.x, self.y = tiny_batch()

  def test_zero_epsilon_returns_input(self):
    x_adv = self.run_attack(self.model, self.x, self.y, 0.0, seed=1)
    self.assertAllEqual(np.asarray(x_adv), self.x)

  def test_stays_in_ball_and_value_range(self):
    x_adv = np.asarray(self.run_attack(self.model, self.x, self.y, EPSILON, seed=1))
    self.assertEqual(x_adv.shape, self.x.shape)
    self.assertLessEqual(np.abs(x_adv - self.x).max(), EPSILON + 1e-6)
    self.assertGreaterEqual(x_adv.min(), 0.0)
    self.assertLessEqual(x_adv.max(), 1.0)

  def test_moves_the_input(self):
    x_adv = np.asarray(self.run_attack(self.model, self.x, self.y, EPSILON, seed=1))
    self.assertGreater(np.abs(x_adv - self.x).max(), 0.0)

  def test_same_seed_repeats(self):
    first = self.run_attack(self.model, self.x, self.y, EPSILON, seed=7)
    second = self.run_attack(self.model, self.x, self.y, EPSILON, seed=7)
    self.assertAllEqual(np.asarray(first), np.asarray(second))

  def test_negative_epsilon_raises(self):
    with self.assertRaisesRegex(ValueError, "epsilon"):
      self.run_attack(self.model, self.x, self.y, -0.1, seed=1)
