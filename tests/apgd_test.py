"""Tests for attacks.apgd."""

import keras
import numpy as np
import tensorflow as tf

from attacks import apgd as apgd_lib
from attacks import common
from tests import attack_properties
from tests import pgd_test

EPSILON = 8 / 255


class ApgdCePropertiesTest(attack_properties.AttackPropertiesMixin,
                           tf.test.TestCase):

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return apgd_lib.apgd(model_fn, x, y, epsilon=epsilon, steps=6, restarts=2,
                         seed=seed)


class ApgdDlrPropertiesTest(attack_properties.AttackPropertiesMixin,
                            tf.test.TestCase):

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return apgd_lib.apgd(model_fn, x, y, epsilon=epsilon, steps=6, loss="dlr",
                         eot_samples=2, seed=seed)


class ApgdTargetedPropertiesTest(attack_properties.AttackPropertiesMixin,
                                 tf.test.TestCase):

  def setUp(self):
    super().setUp()  # The targeted DLR loss needs >= 4 classes (3 targets).
    self.model = attack_properties.tiny_model(classes=4)
    self.x, self.y = attack_properties.tiny_batch(classes=4)

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return apgd_lib.apgd(model_fn, x, y, epsilon=epsilon, steps=2,
                         loss="dlr_targeted", eot_samples=2, seed=seed)


class ApgdExpectedOutputPropertiesTest(attack_properties.AttackPropertiesMixin,
                                       tf.test.TestCase):

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return apgd_lib.apgd(model_fn, x, y, epsilon=epsilon, steps=6,
                         eot_samples=2, expectation="softmax", seed=seed)


def parabola_model(seen):
  """1-pixel model, logits [0, −(v − 0.3)²]: CE of class 0 peaks at v = 0.3.

  Appends every pixel value it is called on to `seen`.
  """

  def model_fn(v):
    seen.extend(v.numpy()[:, 0].tolist())
    return tf.concat([tf.zeros_like(v), -(v - 0.3)**2], -1)

  return model_fn


class ApgdTest(tf.test.TestCase):

  def test_checkpoints_match_the_reference(self):
    # Lengths: first max(int(.22 N), 1), each next shorter by
    # max(int(.03 N), 1), never under max(int(.06 N), 1).
    # N = 20: 4, then 3, 2, 1, 1, ... -> 4, 7, 9, 10, 11, ..., 20.
    self.assertEqual(apgd_lib.checkpoints(20), [4, 7, 9] + list(range(10, 21)))
    # N = 100: 22, 19, 16, 13, 10, 7, 6, 6 -> ..., 93, 99 (next 105 > 100).
    self.assertEqual(apgd_lib.checkpoints(100), [22, 41, 57, 70, 80, 87, 93, 99])
    # N = 10: 2, then 1, 1, ...; N = 3: int(.66) = 0 -> lengths of 1.
    self.assertEqual(apgd_lib.checkpoints(10), list(range(2, 11)))
    self.assertEqual(apgd_lib.checkpoints(3), [1, 2, 3])
    self.assertEqual(apgd_lib.checkpoints(1), [1])

  def test_halve_step_conditions(self):
    # Length 4: condition (1) holds up to 0.75 * 4 = 3 increases, included.
    halve = apgd_lib.halve_step(
        increases=tf.constant([3.0, 4.0, 4.0, 4.0]), length=4,
        reduced_at_last=tf.constant([False, False, False, True]),
        best_at_last=tf.constant([1.0, 1.0, 2.0, 2.0]),
        best_loss=tf.constant([2.0, 2.0, 2.0, 2.0]))
    # 3 <= 3 halves; 4 increases and a higher best does not; no higher best
    # since an unhalved checkpoint halves (2); not after a halved one.
    self.assertAllEqual(halve, [True, False, True, False])

  def test_trajectory_by_hand(self):
    # ε = 0.25 around x = 0.5: the ball is [0.25, 0.75]; η = 0.5; N = 10 has
    # checkpoints 2, 3, 4, ...; CE grows as v approaches 0.3.
    # x0 = 0.31 (highest loss ever reached here).
    # x1 = Π[0.31 − 0.5] = 0.25                                   (no increase)
    # x2 = Π[0.25 + .75 (0.75 − 0.25) + .25 (0.25 − 0.31)] = 0.61  (no increase)
    # checkpoint 2: 0 <= 1.5 -> η = 0.25, restart at x0 with its gradient; the
    # momentum stays x0 − x1 (the reference does not reset it):
    # x3 = Π[0.31 + .75 (0.25 − 0.31) + .25 (0.31 − 0.25)] = 0.28
    # (resetting the momentum would give 0.265). x3's loss beats x2's, the
    # previous iterate (it is below x0's), so checkpoint 3 counts 1 > 0.75
    # increases and η stays 0.25:
    # x4 = Π[0.28 + .75 (0.53 − 0.28) + .25 (0.28 − 0.31)] = 0.46.
    seen = []
    apgd_lib.apgd_run(parabola_model(seen), tf.constant([[0.5]]), tf.constant([0]),
                      None, tf.constant([[0.31]]), common.ce_loss, 0.25, 10, 1,
                      None, (0.0, 1.0))
    self.assertLen(seen, 11)
    self.assertAllClose(seen[:5], [0.31, 0.25, 0.61, 0.28, 0.46], atol=1e-6)

  def test_random_start_lies_on_the_ball_surface(self):
    x, _ = attack_properties.tiny_batch()
    start = apgd_lib.random_start(tf.constant(x), EPSILON, (0.0, 1.0), seed=3)
    distance = np.abs(np.asarray(start) - x).reshape(len(x), -1).max(axis=1)
    self.assertAllClose(distance, [EPSILON] * len(x), atol=1e-6)
    self.assertAllEqual(start, apgd_lib.random_start(tf.constant(x), EPSILON,
                                                     (0.0, 1.0), seed=3))
    self.assertNotAllClose(start, apgd_lib.random_start(tf.constant(x), EPSILON,
                                                        (0.0, 1.0), seed=4))

  def test_targets_ranked_by_mean_logits_over_draws(self):
    # Two draws, one call each (a chunk is one batch): class 1 leads in the
    # first, class 3 in the second by more, so on the mean 3 > 1 > 2; y = 0 is
    # excluded.
    draws = iter([[9.0, 2.0, 1.0, 0.0], [9.0, 0.0, 1.0, 5.0]])
    batch_sizes = []

    def model_fn(images):
      batch_sizes.append(int(images.shape[0]))
      return tf.constant([next(draws)])

    x = tf.zeros([1, 2, 2, 1])
    targets = apgd_lib.target_classes(model_fn, x, tf.constant([0]), 3,
                                      eot_samples=2)
    self.assertAllEqual(targets, [[3, 1, 2]])
    self.assertEqual(batch_sizes, [1, 1])

  def test_restarts_run_only_on_examples_not_yet_fooled(self):
    # The model always says class 0: every point of y != 0 is misclassified
    # in the first run, so the second run attacks only the two y = 0 images.
    batch_sizes = []

    def model_fn(images):
      batch_sizes.append(int(images.shape[0]))
      flat = tf.reshape(images, [images.shape[0], -1])
      return tf.one_hot(tf.zeros(images.shape[0], tf.int32), 3) + 0.0 * flat[:, :1]

    x, _ = attack_properties.tiny_batch()
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    apgd_lib.apgd(model_fn, x, y, steps=3, restarts=2, seed=0)
    # One call for the class count, 4 evaluations per run (start + 3 steps).
    self.assertEqual(batch_sizes, [1] + [6] * 4 + [2] * 4)

  def test_expected_output_equals_the_mean_loss_on_a_deterministic_model(self):
    # One draw: the mean softmax is the softmax, so both losses coincide.
    model = attack_properties.tiny_model()
    x, y = attack_properties.tiny_batch()
    runs = [apgd_lib.apgd(model, x, y, steps=4, seed=3, expectation=expectation)
            for expectation in ("loss", "softmax")]
    self.assertAllClose(runs[0], runs[1], rtol=0, atol=1e-6)
    self.assertGreater(np.abs(runs[0] - x).max(), 0.0)

  def test_bad_arguments_raise(self):
    model = attack_properties.tiny_model()
    x, y = attack_properties.tiny_batch()
    for kwargs, message in [({"steps": 0}, "steps=0"), ({"restarts": 0}, "restarts=0"),
                            ({"loss": "ce_targeted"}, "loss='ce_targeted'"),
                            ({"loss": "dlr_targeted"}, "loss='dlr_targeted'")]:
      with self.assertRaisesRegex(ValueError, "Received: " + message):
        apgd_lib.apgd(model, x, y, **kwargs)
    two_classes = attack_properties.tiny_model(classes=2)
    with self.assertRaisesRegex(ValueError, ">= 3 classes.*Received: loss='dlr'"):
      apgd_lib.apgd(two_classes, x, y % 2, loss="dlr")

  def test_keeps_the_start_when_nothing_improves(self):
    # A constant model: zero gradient, the loss never increases (every
    # checkpoint halves the step and restarts from the best point); the result
    # is the best point seen, the random start of the one run.
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, kernel_initializer="zeros")])
    x, y = attack_properties.tiny_batch()
    x_adv = apgd_lib.apgd(model, x, y, steps=10, seed=4)
    _, runs_seed = common.seeds(4, 2)
    start = apgd_lib.random_start(tf.constant(x), EPSILON, (0.0, 1.0),
                                  common.seeds(runs_seed, 1)[0])
    self.assertAllEqual(x_adv, start)

  def test_all_losses_drive_trained_cifar_model_below_ten_percent(self):
    model, x, y = pgd_test.trained_cifar_model()
    self.assertGreater(pgd_test.accuracy(model, x, y), 0.3)
    for loss, steps in [("ce", 10), ("dlr", 10), ("dlr_targeted", 3)]:
      x_adv = apgd_lib.apgd(model, x, y, epsilon=EPSILON, steps=steps, loss=loss,
                            seed=0)
      self.assertLess(pgd_test.accuracy(model, x_adv, y), 0.1, msg=loss)
      self.assertLessEqual(np.abs(x_adv - x).max(), EPSILON + 1e-6)


if __name__ == "__main__":
  tf.test.main()
