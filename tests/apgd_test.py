"""Tests for attacks.apgd."""

import keras
import numpy as np
import tensorflow as tf

from attacks import apgd as apgd_lib
from tests import attack_properties
from tests import pgd_test

EPSILON = 8 / 255


class ApgdCePropertiesTest(attack_properties.AttackPropertiesMixin,
                           tf.test.TestCase):

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return apgd_lib.apgd(model_fn, x, y, epsilon=epsilon, steps=6, restarts=2,
                         seed=seed)


class ApgdTargetedPropertiesTest(attack_properties.AttackPropertiesMixin,
                                 tf.test.TestCase):

  def setUp(self):
    super().setUp()  # The targeted DLR loss needs >= 4 classes (3 targets).
    self.model = attack_properties.tiny_model(classes=4)
    self.x, self.y = attack_properties.tiny_batch(classes=4)

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return apgd_lib.apgd(model_fn, x, y, epsilon=epsilon, steps=2,
                         loss="dlr_targeted", eot_samples=2, seed=seed)


class ApgdTest(tf.test.TestCase):

  def test_checkpoints_follow_the_paper(self):
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (next 1.05 > 1).
    self.assertEqual(apgd_lib.checkpoints(100), [22, 41, 57, 70, 80, 87, 93, 99])
    self.assertEqual(apgd_lib.checkpoints(10), [3, 5, 6, 7, 8, 9, 10])

  def test_bad_arguments_raise(self):
    model = attack_properties.tiny_model()
    x, y = attack_properties.tiny_batch()
    for kwargs, message in [({"steps": 0}, "steps=0"), ({"restarts": 0}, "restarts=0"),
                            ({"loss": "ce_targeted"}, "loss='ce_targeted'"),
                            ({"loss": "dlr_targeted"}, "loss='dlr_targeted'")]:
      with self.assertRaisesRegex(ValueError, "Received: " + message):
        apgd_lib.apgd(model, x, y, **kwargs)

  def test_keeps_the_start_when_nothing_improves(self):
    # A constant model: zero gradient, the loss never increases (every
    # checkpoint halves the step and restarts from the best point); the result
    # is the best point seen, the random start.
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, kernel_initializer="zeros")])
    x, y = attack_properties.tiny_batch()
    x_adv = apgd_lib.apgd(model, x, y, steps=10, seed=4)
    start = apgd_lib.common.random_init(tf.constant(x), EPSILON, (0.0, 1.0),
                                        apgd_lib.common.seeds(4, 1)[0])
    self.assertAllEqual(x_adv, start)

  def test_ce_and_targeted_dlr_drive_trained_cifar_model_below_ten_percent(self):
    model, x, y = pgd_test.trained_cifar_model()
    self.assertGreater(pgd_test.accuracy(model, x, y), 0.3)
    for loss, steps in [("ce", 10), ("dlr_targeted", 3)]:
      x_adv = apgd_lib.apgd(model, x, y, epsilon=EPSILON, steps=steps, loss=loss,
                            seed=0)
      self.assertLess(pgd_test.accuracy(model, x_adv, y), 0.1, msg=loss)
      self.assertLessEqual(np.abs(x_adv - x).max(), EPSILON + 1e-6)


if __name__ == "__main__":
  tf.test.main()
