"""Tests of the query-based attacks: Square, SPSA, HopSkipJump, GenAttack.

Each class checks the attack properties (`AttackPropertiesMixin`), that the
attack drives an undefended tiny model's accuracy far below clean at a larger
budget within a small query budget, that it spends no more queries than its
budget allows, and that it runs and repeats on a randomized (defended) model.
"""

import numpy as np
import tensorflow as tf

from attacks import estimators
from attacks import genattack
from attacks import hopskipjump
from attacks import spsa
from attacks import square
from tests import attack_properties
from tests.reparam_test import tiny_defended_model

LARGE_EPSILON = 0.3


class CountingModel:
  """Wraps a model_fn and counts the images it is queried on."""

  def __init__(self, model_fn):
    self.model_fn = model_fn
    self.images = 0

  def __call__(self, x):
    self.images += int(x.shape[0])
    return self.model_fn(x)


class QueryAttackChecks(attack_properties.AttackPropertiesMixin):
  """Checks shared by the query attacks; subclasses set the budget below."""

  # Most queries per image that `run_attack` may use, and the accuracy it
  # must stay under at LARGE_EPSILON on 64 images (clean accuracy is 1).
  max_queries = None
  accuracy_ceiling = None

  def run_cheap_attack(self, model_fn, x, y, epsilon, seed):
    """The attack with a budget small enough for a slow (defended) model."""
    return self.run_attack(model_fn, x, y, epsilon, seed)

  def labelled_batch(self):
    """64 images labelled by the tiny model itself (clean accuracy 1)."""
    x, _ = attack_properties.tiny_batch(seed=3, batch=64)
    return x, np.argmax(self.model(x), axis=1).astype(np.int32)

  def test_lowers_accuracy_at_a_large_epsilon(self):
    x, y = self.labelled_batch()
    x_adv = self.run_attack(self.model, x, y, LARGE_EPSILON, seed=0)
    accuracy = np.mean(np.argmax(self.model(x_adv), axis=1) == y)
    self.assertLessEqual(accuracy, self.accuracy_ceiling)

  def test_respects_the_query_budget(self):
    x, y = self.labelled_batch()
    counting = CountingModel(self.model)
    self.run_attack(counting, x, y, attack_properties.EPSILON, seed=0)
    self.assertGreater(counting.images, 0)
    self.assertLessEqual(counting.images, self.max_queries * len(x))

  def test_labels_default_to_predictions(self):
    x, y = self.labelled_batch()
    x, y = x[:8], y[:8]
    with_labels = self.run_attack(self.model, x, y, 0.1, seed=2)
    without = self.run_attack(self.model, x, None, 0.1, seed=2)
    self.assertAllEqual(with_labels, without)

  def test_repeats_on_a_randomized_model(self):
    model, _, _ = tiny_defended_model(steps=1)
    model_fn = estimators.defended_model_fn(model, "exact", seed=0)
    first = self.run_cheap_attack(model_fn, self.x, self.y, 0.1, seed=3)
    second = self.run_cheap_attack(model_fn, self.x, self.y, 0.1, seed=3)
    self.assertAllEqual(first, second)
    self.assertLessEqual(float(tf.reduce_max(tf.abs(first - self.x))), 0.1 + 1e-6)


class SquareTest(QueryAttackChecks, tf.test.TestCase):

  max_queries = 100
  accuracy_ceiling = 0.15  # Measured 0.0.

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return square.square(model_fn, x, y, epsilon=epsilon, queries=100, seed=seed)

  def run_cheap_attack(self, model_fn, x, y, epsilon, seed):
    return square.square(model_fn, x, y, epsilon=epsilon, queries=10, seed=seed)

  def test_p_schedule_halves_from_p_init(self):
    self.assertEqual(square.p_fraction(0.08, 1, 1000), 0.08)
    self.assertEqual(square.p_fraction(0.08, 30, 1000), 0.01)  # 300 of 10k: /8.
    self.assertEqual(square.p_fraction(0.08, 1000, 1000), 0.08 / 512)

  def test_margin(self):
    logits = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]], np.float32)
    self.assertAllEqual(square.margins(logits, np.array([0, 0])), [1.0, -5.0])

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: p_init=0"):
      square.square(self.model, self.x, self.y, p_init=0)
    with self.assertRaisesRegex(ValueError, "Received: queries=0"):
      square.square(self.model, self.x, self.y, queries=0)
    with self.assertRaisesRegex(ValueError, "x.shape"):
      square.square(self.model, self.x.reshape(6, 16), self.y)


class SpsaTest(QueryAttackChecks, tf.test.TestCase):

  max_queries = 1 + 20 * (16 + 1)
  accuracy_ceiling = 0.15  # Measured 0.0.

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return spsa.spsa(model_fn, x, y, epsilon=epsilon, steps=20, samples=16,
                     learning_rate=0.1, seed=seed)

  def test_gradient_estimate_of_a_linear_margin(self):
    # Margin of a linear model z = W x is (w_0 − w_1)·x for label 0 when class
    # 0 leads; antithetic SPSA recovers its sign exactly for every direction.
    weights = np.array([[1.0, -1.0], [-2.0, 2.0], [0.5, 0.0]], np.float32)
    model_fn = lambda x: tf.matmul(tf.reshape(x, [-1, 3]), weights)
    x = np.full((1, 3), 0.5, np.float32)
    grad = spsa.spsa_gradient(model_fn, x, np.array([0]), 512, 0.01,
                              np.random.default_rng(0))
    self.assertAllEqual(np.sign(grad), [[1.0, -1.0, 1.0]])

  def test_queries_stay_in_value_range(self):
    # A defended model refuses inputs outside its value range: SPSA's
    # finite-difference points at saturated pixels must be clipped.
    seen = []

    def model_fn(x):
      seen.append((float(tf.reduce_min(x)), float(tf.reduce_max(x))))
      return tf.matmul(tf.reshape(x, [-1, 3]), tf.eye(3))

    x = np.array([[0.0, 1.0, 0.5]], np.float32)
    spsa.spsa_gradient(model_fn, x, np.array([0]), 8, 0.01,
                       np.random.default_rng(0))
    self.assertGreaterEqual(min(low for low, _ in seen), 0.0)
    self.assertLessEqual(max(high for _, high in seen), 1.0)

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: samples=3"):
      spsa.spsa(self.model, self.x, self.y, samples=3)
    with self.assertRaisesRegex(ValueError, "Received: delta=0"):
      spsa.spsa(self.model, self.x, self.y, delta=0)


class BoundarySearchTest(tf.test.TestCase):

  def test_ends_at_float32_resolution(self):
    # θ = 1/3072², HopSkipJump's L∞ setting on CIFAR, and a boundary just
    # inside the starting radius: the tolerance (0.2601 θ) is below one float32
    # ulp there, so a float32 bisection never ends (it hung a Table 2 run).
    calls = []

    def model_fn(images):
      calls.append(1)
      if len(calls) > 200:
        raise AssertionError("boundary_search did not terminate")
      fooled = tf.reduce_max(tf.reshape(images, [len(images), -1]), 1) > 0.26005
      return tf.stack([1.0 - tf.cast(fooled, tf.float32),
                       tf.cast(fooled, tf.float32)], 1)

    x = np.zeros((1, 8), np.float32)
    points = np.full((1, 8), 0.2601, np.float32)
    boundary, distance = hopskipjump.boundary_search(
        model_fn, x, points, np.array([0]), 1.0 / 3072**2, (0.0, 1.0))
    self.assertAllClose(distance, [0.26005], atol=1e-6)
    self.assertLess(len(calls), 60)


class HopSkipJumpTest(QueryAttackChecks, tf.test.TestCase):

  # 1 + init (100 + 10) + 6 binary searches of at most 2·log2(16) + 1 rounds,
  # 5 estimates of at most 100 draws and 5 step searches of at most 20.
  max_queries = 1 + 110 + 6 * 9 + 5 * 100 + 5 * 20
  accuracy_ceiling = 0.15  # Measured 0.016.

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return hopskipjump.hop_skip_jump(model_fn, x, y, epsilon=epsilon,
                                     iterations=5, initial_evals=20,
                                     max_evals=100, seed=seed)

  def run_cheap_attack(self, model_fn, x, y, epsilon, seed):
    return hopskipjump.hop_skip_jump(model_fn, x, y, epsilon=epsilon,
                                     iterations=1, initial_evals=10, gamma=16.0,
                                     seed=seed)

  def test_misclassified_inputs_are_returned_unchanged(self):
    wrong = np.argmax(self.model(self.x), axis=1) != self.y
    self.assertTrue(wrong.any() and not wrong.all())
    x_adv = self.run_attack(self.model, self.x, self.y, 0.1, seed=0)
    self.assertAllEqual(np.asarray(x_adv)[wrong], self.x[wrong])

  def test_all_misclassified_inputs_are_returned_unchanged(self):
    y = np.argmin(self.model(self.x), axis=1).astype(np.int32)
    x_adv = self.run_attack(self.model, self.x, y, 0.1, seed=0)
    self.assertAllEqual(x_adv, self.x)

  def test_without_a_misclassified_start_inputs_are_unchanged(self):
    constant = lambda x: tf.one_hot(tf.zeros([tf.shape(x)[0]], tf.int32), 3)
    zeros = np.zeros(len(self.x), np.int32)
    x_adv = self.run_attack(constant, self.x, zeros, 0.1, seed=0)
    self.assertAllEqual(x_adv, self.x)

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: iterations=0"):
      hopskipjump.hop_skip_jump(self.model, self.x, self.y, iterations=0)
    with self.assertRaisesRegex(ValueError, "Received: gamma=0"):
      hopskipjump.hop_skip_jump(self.model, self.x, self.y, gamma=0)


class GenAttackTest(QueryAttackChecks, tf.test.TestCase):

  max_queries = 6 * 30
  accuracy_ceiling = 0.15  # Measured 0.03.

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return genattack.gen_attack(model_fn, x, y, epsilon=epsilon, population=6,
                                generations=30, seed=seed)

  def test_parent_selection_follows_fitness(self):
    scores = np.array([[0.0, 10.0, 0.0]])
    parents, probs = genattack.select_parents(scores, 1.0, 1000,
                                              np.random.default_rng(0))
    self.assertGreater(probs[0, 1], 0.99)
    self.assertGreater(np.mean(parents == 1), 0.98)

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: population=1"):
      genattack.gen_attack(self.model, self.x, self.y, population=1)
    with self.assertRaisesRegex(ValueError, "Received: mutation_rate=2"):
      genattack.gen_attack(self.model, self.x, self.y, mutation_rate=2)


if __name__ == "__main__":
  tf.test.main()
