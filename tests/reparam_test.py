"""Tests of attacks.reparam: h ≈ g trains, and f_a(h(·)) is differentiable."""

import keras
import numpy as np
import tensorflow as tf

from adv_layer.layer import AdversarialTransform
from attacks import estimators
from attacks import reparam
from tests import attack_properties


def tiny_defended_model(steps=3, seed=0, random_start=True):
  """f_a(g(x)) on 4×4×1 images: a tiny f_b inside the layer, a tiny f_a."""
  f_b = attack_properties.tiny_model(seed=seed + 1)
  f_a = attack_properties.tiny_model(seed=seed + 2)
  layer = AdversarialTransform(f_b, epsilon=0.2, steps=steps, seed=seed,
                               random_start=random_start)
  return keras.Sequential([keras.Input((4, 4, 1)), layer, f_a]), layer, f_a


def training_images(count=128, seed=0):
  return np.random.default_rng(seed).uniform(0.2, 0.8, (count, 4, 4, 1)).astype(
      np.float32)


class ReparameterizationTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.model, self.layer, self.f_a = tiny_defended_model()
    self.images = training_images()
    self.held_out = training_images(seed=1)

  def train(self, seed=0, epochs=10):
    return reparam.train_reparameterization(self.layer, self.images, filters=8,
                                            depth=2, epochs=epochs,
                                            batch_size=32, learning_rate=1e-2,
                                            seed=seed)

  def test_untrained_network_is_the_identity(self):
    h = reparam.build_reparameterization(1, filters=8, depth=2, seed=0)
    self.assertAllEqual(h(self.images), self.images)

  def test_training_lowers_the_loss(self):
    untrained = reparam.build_reparameterization(1, filters=8, depth=2, seed=0)
    trained = self.train()
    for images in (self.images, self.held_out):
      before = reparam.reparameterization_mse(self.layer, untrained, images, seed=3)
      after = reparam.reparameterization_mse(self.layer, trained, images, seed=3)
      # Measured 0.0178 -> 0.0122 (training) and 0.0179 -> 0.0120 (held
      # out), 128 images, 10 epochs.
      self.assertLess(after, 0.85 * before)

  def test_same_seed_same_network(self):
    first, second = self.train(epochs=1), self.train(epochs=1)
    for a, b in zip(first.get_weights(), second.get_weights()):
      self.assertAllEqual(a, b)

  def test_is_fully_convolutional_and_shape_preserving(self):
    h = reparam.build_reparameterization(3, filters=4, depth=1, seed=0)
    self.assertEqual(tuple(h(tf.zeros([2, 5, 7, 3])).shape), (2, 5, 7, 3))

  def test_model_fn_is_f_a_of_h(self):
    h = self.train(epochs=1)
    x = tf.constant(self.held_out[:6])
    logits = reparam.reparam_model_fn(self.model, h)(x)
    self.assertAllClose(logits, self.f_a(h(x)), atol=1e-6)

  def test_model_fn_has_nonzero_finite_gradients(self):
    model_fn = reparam.reparam_model_fn(self.model, self.train(epochs=1))
    x = tf.constant(self.held_out[:6])
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(tf.nn.log_softmax(model_fn(x))[:, 0])
    grad = tape.gradient(loss, x).numpy()
    self.assertTrue(np.all(np.isfinite(grad)))
    self.assertTrue(np.all(np.abs(grad).reshape(6, -1).max(axis=1) > 0))

  def test_substitution_restores_the_previous_hook(self):
    previous = lambda layer, x: x
    self.layer.gradient_estimator = previous
    with estimators.substitute_transform(self.model, lambda layer, x: 0 * x):
      self.assertIsNot(self.layer.gradient_estimator, previous)
    self.assertIs(self.layer.gradient_estimator, previous)
    self.layer.gradient_estimator = None

  def test_model_without_transform_raises(self):
    with self.assertRaisesRegex(ValueError, "AdversarialTransform"):
      reparam.reparam_model_fn(self.f_a, self.train(epochs=1))

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: epochs=0"):
      reparam.train_reparameterization(self.layer, self.images, epochs=0)
    with self.assertRaisesRegex(ValueError, "images"):
      reparam.train_reparameterization(self.layer, self.images[:8], batch_size=32)
    with self.assertRaisesRegex(ValueError, "Received: lr_schedule='step'"):
      reparam.train_reparameterization(self.layer, self.images,
                                       lr_schedule="step")
    with self.assertRaisesRegex(ValueError, "Received: architecture='unet'"):
      reparam.build_reparameterization(1, architecture="unet")
    with self.assertRaisesRegex(ValueError, "Received: bound=0"):
      reparam.build_reparameterization(1, bound=0)
    with self.assertRaisesRegex(ValueError, "Received: tolerance=-1"):
      reparam.reparameterization_fit(
          self.model, reparam.build_reparameterization(1, filters=4, depth=1),
          self.held_out, tolerance=-1)


class StrongerReparameterizationTest(tf.test.TestCase):
  """The default h against this module's first default, and the fit figures."""

  def test_untrained_networks_are_the_identity(self):
    images = training_images(8)
    for architecture in reparam.ARCHITECTURES:
      h = reparam.build_reparameterization(1, filters=4, depth=2, seed=0,
                                           architecture=architecture,
                                           bound=0.2)
      self.assertAllEqual(h(images), images)

  def test_bound_keeps_h_in_the_ball(self):
    h = reparam.build_reparameterization(1, filters=4, depth=2, seed=0,
                                         bound=0.2)
    last = h.layers[-4]  # The zero-initialised convolution before tanh.
    kernel, bias = last.get_weights()
    last.set_weights([np.full_like(kernel, 50.0), bias])
    images = training_images(16)
    offset = np.abs(h(images).numpy() - images)
    self.assertLessEqual(offset.max(), 0.2 + 1e-6)
    self.assertGreater(offset.max(), 0.19)

  def test_dilated_receptive_field_covers_the_image(self):
    # A pixel of the output depends on an input pixel 30 rows away.
    h = reparam.build_reparameterization(1, filters=8, depth=4, seed=0)
    last = h.layers[-2]
    kernel, bias = last.get_weights()
    last.set_weights([np.ones_like(kernel), bias])
    x = tf.constant(np.random.default_rng(0).uniform(size=(1, 32, 32, 1)),
                    tf.float32)
    with tf.GradientTape() as tape:
      tape.watch(x)
      corner = h(x)[0, 31, 31, 0]
    self.assertGreater(float(tf.abs(tape.gradient(corner, x)[0, 1, 1, 0])), 0.0)

  def test_fit_of_the_exact_transform_and_of_the_identity(self):
    model, layer, f_a = tiny_defended_model(steps=13, random_start=False)
    images = training_images(64, seed=2)
    exact = lambda x, training=False: layer.transform(x)  # g is deterministic.
    self.assertEqual(reparam.reparameterization_fit(model, exact, images),
                     {"mse": 0.0, "within_tolerance": 1.0, "agreement": 1.0})
    identity = reparam.build_reparameterization(1, filters=4, depth=1, seed=0)
    fit = reparam.reparameterization_fit(model, identity, images,
                                         tolerance=0.1, batch_size=16)
    g_x = layer.transform(tf.constant(images)).numpy()
    self.assertAllClose(fit["mse"], np.mean(np.square(g_x - images)))
    self.assertAllClose(fit["within_tolerance"],
                        np.mean(np.abs(g_x - images) <= 0.1))
    self.assertAllClose(fit["agreement"], np.mean(
        np.argmax(f_a(images), 1) == np.argmax(f_a(g_x), 1)))

  def test_default_fits_better_than_the_first_default(self):
    model, layer, _ = tiny_defended_model(steps=13)
    images, held_out = training_images(128), training_images(128, seed=1)
    first = reparam.train_reparameterization(
        layer, images, architecture="plain", bounded=False, epochs=5,
        lr_schedule="constant", seed=0)
    default = reparam.train_reparameterization(layer, images, seed=0)
    before = reparam.reparameterization_fit(model, first, held_out, seed=3)
    after = reparam.reparameterization_fit(model, default, held_out, seed=3)
    # Measured (128 images, 128 held out, seed 0): MSE 0.0138 -> 0.0083,
    # pixels within one LL-PGD step (0.033) of g 0.28 -> 0.73.
    self.assertLess(after["mse"], 0.95 * before["mse"])
    self.assertGreater(after["within_tolerance"],
                       before["within_tolerance"] + 0.2)


if __name__ == "__main__":
  tf.test.main()
