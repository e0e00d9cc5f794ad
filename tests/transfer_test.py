"""Tests of attacks.transfer: PGD on a source model, replayed on a target."""

import numpy as np
import tensorflow as tf

from attacks import pgd
from attacks import transfer
from tests import attack_properties
from tests.reparam_test import tiny_defended_model


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


if __name__ == "__main__":
  tf.test.main()
