"""Tests for attacks.target_selection."""

import keras
import numpy as np
import tensorflow as tf

from adv_layer import AdversarialTransform
from adv_layer import transform
from attacks import target_selection as ts
from tests import attack_properties

SHAPE = (4, 4, 1)


def tiny_defended(seed=0):
  """f_a(g(x)) on 4x4 images, with 3 classes for f_b and f_a."""
  layer = AdversarialTransform(attack_properties.tiny_model(1), epsilon=0.2,
                               steps=2, seed=seed)
  return keras.Sequential([keras.Input(SHAPE), layer,
                           attack_properties.tiny_model(2)])


def dense(inputs, weights, bias):
  """A one-layer linear model with the given weights."""
  model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(len(bias))])
  model.layers[0].set_weights([np.array(weights, np.float32),
                               np.array(bias, np.float32)])
  return model


def exact_case():
  """Two pixels; g without random start, 3 steps of Δ/6 = 1/30.

  f_b logits (1, −0.05, 10 (x_0 − .5)): at x = (.5, .5) the least-likely
  class is 1, and g steered to 1 (or 0) lowers x_0 by 0.1, to 2 raises it.
  f_a says 0 iff x_0 > .5. So g(x) has x_0 = .4, f_a says 1 = y (correct);
  the attack should pick class 2 and lower x_0 below .495, where class 2
  becomes the least likely, so that g raises x_0 to about .57: f_a says 0.
  """
  f_b = dense(2, [[0, 0, 10], [0, 0, 0]], [1, -0.05, -5])
  f_a = dense(2, [[20, 0], [0, 0]], [-10, 0])
  layer = AdversarialTransform(f_b, epsilon=0.2, steps=3, random_start=False)
  model = keras.Sequential([keras.Input((2,)), layer, f_a])
  return model, layer, np.array([[0.5, 0.5]], np.float32), np.array([1], np.int32)


class TargetSelectionPropertiesTest(attack_properties.AttackPropertiesMixin,
                                    tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.model = tiny_defended()

  def run_attack(self, model_fn, x, y, epsilon, seed):
    return ts.target_selection(model_fn, x, y, epsilon=epsilon, steps=3,
                               eot_samples=2, seed=seed)


class TargetSelectionTest(tf.test.TestCase):

  def test_changes_the_least_likely_class_to_one_f_a_gets_wrong(self):
    model, layer, x, y = exact_case()
    least_likely = lambda v: int(tf.argmin(layer.f_b(v), -1)[0])
    self.assertEqual(least_likely(x), 1)
    self.assertEqual(int(tf.argmax(model(x), -1)[0]), 1)
    self.assertAllEqual(ts.choose_targets(model, tf.constant(x), tf.constant(y)), [2])
    x_adv = ts.target_selection(model, x, y, steps=5, seed=0)
    self.assertEqual(least_likely(x_adv), 2)
    self.assertEqual(int(tf.argmax(model(x_adv), -1)[0]), 0)

  def test_steered_to_the_least_likely_class_is_g(self):
    model = tiny_defended()
    layer = model.layers[0]
    x, _ = attack_properties.tiny_batch()
    noise = transform.uniform_noise(x.shape, 0.2, seed=1)
    labels = tf.argmin(layer.f_b(x), -1, output_type=tf.int32)
    self.assertAllEqual(ts.steered_transform(layer, tf.constant(x), labels, noise),
                        layer.transform(tf.constant(x), noise=noise))

  def test_needs_one_least_likely_transform(self):
    x, y = attack_properties.tiny_batch()
    with self.assertRaisesRegex(ValueError, "no AdversarialTransform"):
      ts.target_selection(attack_properties.tiny_model(), x, y, seed=0)
    f_b = attack_properties.tiny_model(1)
    untargeted = keras.Sequential([
        keras.Input(SHAPE), AdversarialTransform(f_b, target="untargeted"),
        attack_properties.tiny_model(2)])
    with self.assertRaisesRegex(ValueError, "Received: target='untargeted'"):
      ts.target_selection(untargeted, x, y, seed=0)


if __name__ == "__main__":
  tf.test.main()
