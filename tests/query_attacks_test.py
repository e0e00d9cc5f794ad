"""Tests of the query-based attacks: Square, SPSA, HopSkipJump, GenAttack.

Each class checks the attack properties (`AttackPropertiesMixin`), that the
attack drives an undefended tiny model's accuracy far below clean at a larger
budget within a small query budget, that it spends no more queries than its
budget allows, that it runs and repeats on a randomized (defended) model, and
that its randomness-aware mode (`query_draws` > 1) does not count an image as
broken on a lucky draw (`LuckyModel`).
"""

import inspect

import numpy as np
import tensorflow as tf

from attacks import model_fns
from attacks import genattack
from attacks import hopskipjump
from attacks import spsa
from attacks import square
from tests import attack_properties
from tests.reparam_test import tiny_defended_model

LARGE_EPSILON = 0.3


class LuckyModel:
  """A random two-class model that misclassifies image i with `rates[i]`.

  Every row of a query gets its own draw: logits (1, 0) (correct, label 0)
  or, with probability `rates[i]`, (0, 1), whatever the perturbation. Image
  i is the constant image 0.1 + 0.2·i (`images`); attacks within epsilon
  < 0.1 keep it recognisable, so the model counts the queries of each image.
  """

  def __init__(self, rates, seed=0):
    self.rates = np.asarray(rates, np.float64)
    self.rng = np.random.default_rng(seed)
    self.queries = np.zeros(len(rates), np.int64)

  def images(self):
    """The images, `(n, 4, 4, 1)`, and their labels (all 0)."""
    levels = 0.1 + 0.2 * np.arange(len(self.rates))
    x = np.ones((len(self.rates), 4, 4, 1), np.float32) * levels[:, None, None,
                                                                 None]
    return x.astype(np.float32), np.zeros(len(self.rates), np.int32)

  def __call__(self, images):
    images = np.asarray(images)
    which = np.rint((images[:, 0, 0, 0] - 0.1) / 0.2).astype(np.int64)
    np.add.at(self.queries, which, 1)
    fooled = self.rng.uniform(size=len(images)) < self.rates[which]
    return tf.constant(np.stack([~fooled, fooled], 1).astype(np.float32))


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

  def run_cheap_attack(self, model_fn, x, y, epsilon, seed, query_draws=1):
    """The attack with a budget small enough for a slow (defended) model."""
    return self.run_attack(model_fn, x, y, epsilon, seed,
                           query_draws=query_draws)

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
    model_fn = model_fns.defended_model_fn(model, "exact", seed=0)
    first = self.run_cheap_attack(model_fn, self.x, self.y, 0.1, seed=3,
                                  query_draws=2)
    second = self.run_cheap_attack(model_fn, self.x, self.y, 0.1, seed=3,
                                   query_draws=2)
    self.assertAllEqual(first, second)
    self.assertLessEqual(float(tf.reduce_max(tf.abs(first - self.x))), 0.1 + 1e-6)

  def test_bad_query_draws_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: query_draws=0"):
      self.run_attack(self.model, self.x, self.y, 0.1, seed=0, query_draws=0)


class LuckyDrawChecks:
  """Checks of the randomness-aware mode on `LuckyModel([0.2, 1.0])`.

  Image 0 is misclassified by one draw in five, whatever the perturbation:
  no attack can break it, and a single-draw attack stops on its first lucky
  draw. Image 1 is misclassified by every draw. Subclasses give the run and
  its exact query counts.
  """

  def lucky_attack(self, model_fn, x, y, query_draws):
    raise NotImplementedError

  def broken_queries(self, query_draws):
    """Queries an image misclassified by every draw costs before it stops."""
    raise NotImplementedError

  def full_queries(self, query_draws):
    """The fewest queries an image that never stops gets."""
    raise NotImplementedError

  def lucky_run(self, query_draws):
    model = LuckyModel([0.2, 1.0], seed=0)
    x, y = model.images()
    x_adv = self.lucky_attack(model, x, y, query_draws)
    self.assertLessEqual(float(np.max(np.abs(np.asarray(x_adv) - x))),
                         0.05 + 1e-6)
    return model.queries

  def test_one_draw_stops_on_a_lucky_draw(self):
    # The single-draw behaviour: image 0 counts as broken after a lucky draw.
    queries = self.lucky_run(query_draws=1)
    self.assertLess(queries[0], self.full_queries(1))
    self.assertEqual(queries[1], self.broken_queries(1))

  def test_draws_do_not_stop_on_a_lucky_draw(self):
    queries = self.lucky_run(query_draws=7)
    self.assertGreaterEqual(queries[0], self.full_queries(7))
    self.assertEqual(queries[1], self.broken_queries(7))


class SquareTest(QueryAttackChecks, LuckyDrawChecks, tf.test.TestCase):

  max_queries = 100
  accuracy_ceiling = 0.15  # Measured 0.0.

  def run_attack(self, model_fn, x, y, epsilon, seed, query_draws=1):
    return square.square(model_fn, x, y, epsilon=epsilon, queries=100,
                         seed=seed, query_draws=query_draws)

  def run_cheap_attack(self, model_fn, x, y, epsilon, seed, query_draws=1):
    return square.square(model_fn, x, y, epsilon=epsilon, queries=10,
                         seed=seed, query_draws=query_draws)

  def lucky_attack(self, model_fn, x, y, query_draws):
    return square.square(model_fn, x, y, epsilon=0.05, queries=140, seed=0,
                         query_draws=query_draws)

  def broken_queries(self, query_draws):
    # The start's score, plus its fresh re-score when query_draws > 1.
    return query_draws if query_draws == 1 else 2 * query_draws

  def full_queries(self, query_draws):
    # It proposes while one more proposal (and its re-score) fits in 140.
    return 140 - self.broken_queries(query_draws) + 1

  def test_p_schedule_is_autoattacks(self):
    # AutoAttack's Square: p_init up to iteration 10, then halved after
    # iterations 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (the schedule
    # of a 10,000-query run, whatever the budget).
    expected = {0: 1, 10: 1, 11: 2, 50: 2, 51: 4, 200: 4, 201: 8, 500: 8,
                501: 16, 1000: 16, 1001: 32, 2000: 32, 2001: 64, 4000: 64,
                4001: 128, 6000: 128, 6001: 256, 8000: 256, 8001: 512,
                20000: 512}
    for iteration, divisor in expected.items():
      self.assertEqual(square.p_fraction(0.8, iteration), 0.8 / divisor)

  def test_defaults_meet_the_reference(self):
    # AutoAttack's Square: p_init 0.8, 5,000 queries.
    defaults = inspect.signature(square.square).parameters
    self.assertEqual(defaults["p_init"].default, 0.8)
    self.assertEqual(defaults["queries"].default, 5000)

  def test_first_squares_are_not_rescaled_to_the_budget(self):
    # 10×10 images, p_init 0.8, 20 queries: proposals at iterations 0-10 reset
    # a 9×9 window (√80 ≈ 8.9), later ones a 6×6 window (√40 ≈ 6.3). A
    # schedule rescaled to the budget would be at p_init / 8 (a 3×3 window)
    # from iteration 1 on. The model never accepts a proposal, so each one
    # is the stripes start with one window reset.
    seen = []
    clean = np.full((1, 10, 10, 1), 0.5, np.float32)

    def model_fn(images):
      seen.append(np.asarray(images))
      return tf.constant([[1.0, 0.0]] * len(images))

    square.square(model_fn, clean, np.array([0]), epsilon=0.1, queries=20,
                  seed=0)
    changed = [int(np.sum(image != seen[0])) for image in seen[1:]]
    self.assertLen(changed, 19)
    self.assertGreater(max(changed[1:11]), 36)
    self.assertLessEqual(max(changed[11:]), 36)
    self.assertGreater(max(changed[11:]), 9)

  def test_respects_the_query_budget_with_draws(self):
    x, y = self.labelled_batch()
    counting = CountingModel(self.model)
    square.square(counting, x, y, epsilon=attack_properties.EPSILON,
                  queries=50, seed=0, query_draws=3)
    self.assertLessEqual(counting.images, 50 * len(x))

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: p_init=0"):
      square.square(self.model, self.x, self.y, p_init=0)
    with self.assertRaisesRegex(ValueError, "Received: queries=0"):
      square.square(self.model, self.x, self.y, queries=0)
    with self.assertRaisesRegex(ValueError, "x.shape"):
      square.square(self.model, self.x.reshape(6, 16), self.y)


class SpsaTest(QueryAttackChecks, LuckyDrawChecks, tf.test.TestCase):

  max_queries = 1 + 20 * (16 + 1)
  accuracy_ceiling = 0.15  # Measured 0.0.

  def run_attack(self, model_fn, x, y, epsilon, seed, query_draws=1):
    return spsa.spsa(model_fn, x, y, epsilon=epsilon, steps=20, samples=16,
                     learning_rate=0.1, seed=seed, query_draws=query_draws)

  def lucky_attack(self, model_fn, x, y, query_draws):
    return spsa.spsa(model_fn, x, y, epsilon=0.05, steps=10, samples=8,
                     seed=0, query_draws=query_draws)

  def broken_queries(self, query_draws):
    # The start's score, plus its fresh re-score when query_draws > 1.
    return query_draws if query_draws == 1 else 2 * query_draws

  def full_queries(self, query_draws):
    # Ten gradient estimates of 8 and eleven scores (start included).
    return 10 * 8 + 11 * query_draws

  def test_default_samples_are_cleverhans(self):
    defaults = inspect.signature(spsa.spsa).parameters
    self.assertEqual(defaults["samples"].default, 128)
    self.assertEqual(spsa.REFERENCE_SAMPLES, 128)

  def test_returns_the_best_iterate(self):
    # Margin 1 + 20·Σ(x − 0.6)² of a (1, 4) image from 0.5: never negative,
    # so SPSA runs all its steps, and Adam at learning rate 0.05 oscillates
    # around 0.6: the last iterate is not the best one.
    iterates = []

    def model_fn(images):
      images = np.asarray(images)
      margin = 1.0 + 20.0 * np.sum((images - 0.6)**2, axis=1)
      if len(images) == 1:  # An iterate's score (estimates query 8 points).
        iterates.append((images[0].copy(), float(margin[0])))
      return tf.constant(np.stack([margin, np.zeros_like(margin)], 1),
                         tf.float32)

    x = np.full((1, 4), 0.5, np.float32)
    x_adv = np.asarray(spsa.spsa(model_fn, x, np.array([0]), epsilon=0.3,
                                 steps=20, samples=8, learning_rate=0.05,
                                 seed=0))
    self.assertLen(iterates, 21)
    best_point, best_margin = min(iterates, key=lambda item: item[1])
    self.assertLess(best_margin, iterates[-1][1])
    self.assertAllEqual(x_adv[0], best_point)

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
  # 5 estimates of at most 100 draws, 5 step searches of at most 20 and the
  # 2 queries choosing the returned point.
  max_queries = 1 + 110 + 6 * 9 + 5 * 100 + 5 * 20 + 2
  accuracy_ceiling = 0.15  # Measured 0.016.

  def run_attack(self, model_fn, x, y, epsilon, seed, query_draws=1):
    return hopskipjump.hop_skip_jump(model_fn, x, y, epsilon=epsilon,
                                     iterations=5, initial_evals=20,
                                     max_evals=100, seed=seed,
                                     query_draws=query_draws)

  def run_cheap_attack(self, model_fn, x, y, epsilon, seed, query_draws=1):
    return hopskipjump.hop_skip_jump(model_fn, x, y, epsilon=epsilon,
                                     iterations=1, initial_evals=10, gamma=16.0,
                                     seed=seed, query_draws=query_draws)

  def test_successes_lie_at_distance_epsilon(self):
    # Images in (0.2, 0.8) and epsilon 0.15: the value range cannot cut the
    # pushed points short, so each success lies at exactly epsilon, not on
    # the decision boundary inside the ball.
    x, y = self.labelled_batch()
    x_adv = np.asarray(self.run_attack(self.model, x, y, 0.15, seed=0))
    fooled = np.argmax(self.model(x_adv), axis=1) != y
    self.assertGreater(int(fooled.sum()), 20)
    distance = np.abs(x_adv - x).reshape(len(x), -1).max(axis=1)
    self.assertAllClose(distance[fooled], np.full(int(fooled.sum()), 0.15),
                        atol=1e-6)

  def test_push_out_keeps_the_boundary_point_when_it_fools_more_draws(self):
    # Misclassified only within 0.05 of x = 0 along the first pixel: the
    # boundary point (0.04) stays, the pushed point (0.1) would be correct.
    def model_fn(images):
      fooled = tf.cast(tf.reduce_max(images, axis=1) < 0.05, tf.float32)
      return tf.stack([1.0 - fooled, fooled], 1)

    x = np.zeros((1, 4), np.float32)
    boundary = np.array([[0.04, 0.0, 0.0, 0.0]], np.float32)
    result = hopskipjump.push_out(model_fn, x, boundary, boundary,
                                  np.array([0]), 0.1, (0.0, 1.0), draws=3)
    self.assertAllEqual(result, boundary)

  def test_push_out_goes_to_epsilon_along_the_search_path(self):
    # Boundary at 0.02 on the way from x to the source (0.04, 0.02, 0, 0):
    # pushed by 0.1 / 0.04 along that path, then clipped to the ball.
    fooled_everywhere = lambda images: tf.one_hot(
        tf.ones([tf.shape(images)[0]], tf.int32), 2)
    x = np.full((1, 4), 0.5, np.float32)
    source = x + np.array([[0.04, 0.02, 0.0, 0.0]], np.float32)
    boundary = x + np.array([[0.02, 0.02, 0.0, 0.0]], np.float32)
    result = hopskipjump.push_out(fooled_everywhere, x, boundary, source,
                                  np.array([0]), 0.1, (0.0, 1.0), draws=1)
    self.assertAllClose(result - x, [[0.1, 0.05, 0.0, 0.0]], atol=1e-6)

  def test_majority_decisions_ignore_lucky_draws(self):
    # One draw in five misclassifies image 0: a one-draw oracle says
    # "adversarial" about one time in five, a 15-draw majority almost never
    # (P(Binomial(15, 0.2) >= 8) = 0.004).
    model = LuckyModel([0.2], seed=0)
    x, y = model.images()
    points, labels = np.repeat(x, 200, 0), np.repeat(y, 200)
    one = hopskipjump.is_adversarial(model, points, labels, draws=1)
    majority = hopskipjump.is_adversarial(model, points, labels, draws=15)
    self.assertGreater(one.mean(), 0.1)
    self.assertLessEqual(majority.mean(), 0.02)
    self.assertEqual(model.queries[0], 200 * 16)

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


class GenAttackTest(QueryAttackChecks, LuckyDrawChecks, tf.test.TestCase):

  max_queries = 6 * 30
  accuracy_ceiling = 0.15  # Measured 0.03.

  def run_attack(self, model_fn, x, y, epsilon, seed, query_draws=1):
    return genattack.gen_attack(model_fn, x, y, epsilon=epsilon, population=6,
                                generations=30, seed=seed,
                                query_draws=query_draws)

  def lucky_attack(self, model_fn, x, y, query_draws):
    return genattack.gen_attack(model_fn, x, y, epsilon=0.05, population=4,
                                generations=5, seed=0, query_draws=query_draws)

  def broken_queries(self, query_draws):
    # One generation, plus the fresh draws confirming its elite.
    return 4 * query_draws + (0 if query_draws == 1 else query_draws)

  def full_queries(self, query_draws):
    return 5 * 4 * query_draws

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
