"""Tests of attacks.defenses: squeezing, smoothing, thermometer codes, SAP, the noise ensemble, builders, training."""

import os
import tempfile

import keras
import numpy as np
from scipy import ndimage
import tensorflow as tf

from attacks.defenses import builders
from attacks.defenses import layers
from attacks.defenses import noise_training
from attacks.defenses import stochastic


def images(batch=4, size=8, seed=0):
  """Float32 images in [0, 1]."""
  return np.random.RandomState(seed).uniform(
      size=(batch, size, size, 3)).astype("float32")


def relu_classifier(size=8, classes=3):
  """A small functional classifier with two ReLU layers, seeded weights."""
  init = keras.initializers.GlorotUniform
  inputs = keras.Input((size, size, 3))
  x = keras.layers.Conv2D(4, 3, kernel_initializer=init(seed=0))(inputs)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Conv2D(4, 3, kernel_initializer=init(seed=1))(x)
  x = keras.layers.Activation("relu")(x)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(classes, kernel_initializer=init(seed=2))(x)
  return keras.Model(inputs, outputs, name="tiny")


class FeatureSqueezeTest(tf.test.TestCase):

  def test_matches_scipy_median_of_the_reduced_image(self):
    x = images(size=9)
    for size in (2, 3):
      squeeze = layers.FeatureSqueeze(bits=5, median_size=size)
      reduced = np.round(x * 31) / 31
      expected = ndimage.median_filter(reduced, size=(1, size, size, 1),
                                       mode="reflect")
      self.assertAllClose(squeeze(x), expected, atol=1e-7, rtol=0)

  def test_deterministic_in_range_on_the_grid_and_gradient_none(self):
    x = tf.constant(images())
    squeeze = layers.FeatureSqueeze()
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = squeeze(x)
    self.assertIsNone(tape.gradient(out, x))
    self.assertEqual(out.shape, x.shape)
    self.assertAllInRange(out, 0.0, 1.0)
    self.assertAllEqual(out, squeeze(x, training=True))
    self.assertAllEqual(out, layers.FeatureSqueeze()(x))
    levels = out.numpy() * 31
    self.assertAllClose(levels, np.round(levels), atol=1e-4)
    self.assertFalse(layers.FeatureSqueeze.randomized)
    # median_size 1: bit-depth reduction alone.
    self.assertAllEqual(layers.FeatureSqueeze(bits=2, median_size=1)(x),
                        np.round(x.numpy() * 3) / 3)

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: bits=9"):
      layers.FeatureSqueeze(bits=9)
    with self.assertRaisesRegex(ValueError, "Received: median_size=0"):
      layers.FeatureSqueeze(median_size=0)
    with self.assertRaisesRegex(ValueError, "Received: median_size=9, "
                                "input_shape"):
      layers.FeatureSqueeze(median_size=9).build((None, 8, 8, 3))


class MedianSmoothingTest(tf.test.TestCase):

  def test_matches_scipy_and_feature_squeeze_on_the_grid(self):
    x = images(size=9)
    for size in (1, 2, 3):
      expected = ndimage.median_filter(x, size=(1, size, size, 1),
                                       mode="reflect")
      # The output is one of the input values: exact.
      self.assertAllEqual(layers.MedianSmoothing(size=size)(x), expected)
    # On a 5-bit grid, the squeezer is the same filter after the rounding.
    grid = np.round(x * 31) / 31
    self.assertAllEqual(layers.MedianSmoothing()(grid),
                        layers.FeatureSqueeze(bits=5, median_size=2)(grid))

  def test_gradient_routes_to_the_selected_pixel(self):
    # [[a, b], [c, d]] reflected above and left: the 2 x 2 windows are
    # (a a a a), (a b a b), (a a c c), (a b c d); each keeps its upper
    # middle value: a, b, c, c (values distinct, so no tie).
    x = tf.constant([[[[0.1], [0.7]], [[0.4], [0.2]]]])
    smooth = layers.MedianSmoothing(size=2)
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = smooth(x)
    self.assertAllEqual(out, np.float32([[[[0.1], [0.7]], [[0.4], [0.4]]]]))
    self.assertAllEqual(tape.gradient(out, x),
                        [[[[1.0], [1.0]], [[2.0], [0.0]]]])
    self.assertFalse(layers.MedianSmoothing.randomized)

  def test_bad_arguments_raise_and_config_round_trips(self):
    with self.assertRaisesRegex(ValueError, "Received: size=0"):
      layers.MedianSmoothing(size=0)
    with self.assertRaisesRegex(ValueError, "Received: size=9, input_shape"):
      layers.MedianSmoothing(size=9).build((None, 8, 8, 3))
    smooth = layers.MedianSmoothing(size=3)
    copy = layers.MedianSmoothing.from_config(smooth.get_config())
    self.assertEqual(copy.size, 3)


class ThermometerTest(tf.test.TestCase):

  def test_codes_by_hand(self):
    x = np.array([0.0, 0.2, 0.25, 0.5, 0.74, 0.76, 1.0],
                 "float32").reshape(1, 1, 7, 1)
    codes = layers.ThermometerEncoding(levels=4)(x).numpy().reshape(7, 4)
    self.assertAllEqual(codes, [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0],
                                [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1],
                                [1, 1, 1, 1]])

  def test_buckets_of_buckman_et_al_on_the_uint8_grid_channel_major(self):
    # Their code: bucket floor(0.99999 * x * L), code k is 1 when k <=
    # bucket; the same on every uint8 value. Channels stay side by side.
    values = np.arange(256, dtype="float32") / 255
    x = np.stack([values, values[::-1], values], -1).reshape(1, 16, 16, 3)
    out = layers.ThermometerEncoding(levels=16)(x).numpy()
    self.assertEqual(out.shape, (1, 16, 16, 48))
    bucket = np.floor(0.99999 * x * 16)[..., None]
    expected = (np.arange(16) <= bucket).astype("float32")
    self.assertAllEqual(out, expected.reshape(1, 16, 16, 48))

  def test_gradient_none_and_soft_surrogate_agrees_at_bucket_tops(self):
    encode = layers.ThermometerEncoding(levels=8)
    x = tf.constant(images())
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = encode(x)
    self.assertIsNone(tape.gradient(out, x))
    self.assertEqual(tuple(encode.compute_output_shape((None, 8, 8, 3))),
                     (None, 8, 8, 24))
    soft = encode.bpda_backward()
    self.assertIsInstance(soft, layers.SoftThermometer)
    # At x = k / L every code is exactly 0 or 1 on both (x in {0, ..., 1}).
    tops = tf.constant((np.arange(9, dtype="float32") / 8).reshape(
        1, 1, 9, 1))
    self.assertAllEqual(soft(tops), encode(tops))
    with tf.GradientTape() as tape:
      tape.watch(x)
      smooth = soft(x)
    gradient = tape.gradient(smooth, x)
    # d/dx of sum_k clip(L x - k + 1, 0, 1): L below (L - 1)/L, where
    # exactly one ramp holds x; 0 above, where no code switches (the top
    # bucket is flat in the hard encoding too).
    expected = np.where(x.numpy() < 7 / 8, 8.0, 0.0).astype("float32")
    self.assertAllEqual(gradient, expected)
    self.assertAllInRange(smooth, 0.0, 1.0)

  def test_bad_levels_raise_and_saved_model_reloads(self):
    with self.assertRaisesRegex(ValueError, "Received: levels=1"):
      layers.ThermometerEncoding(levels=1)
    with self.assertRaisesRegex(ValueError, "Received: levels=1"):
      layers.SoftThermometer(levels=1)
    classifier = keras.Sequential([keras.Input((8, 8, 12)),
                                   keras.layers.Flatten(),
                                   keras.layers.Dense(3)])
    model = keras.Sequential([keras.Input((8, 8, 3)),
                              layers.ThermometerEncoding(levels=4),
                              classifier])
    path = os.path.join(tempfile.mkdtemp(), "thermometer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    self.assertIsInstance(loaded.layers[0], layers.ThermometerEncoding)
    self.assertEqual(loaded.layers[0].levels, 4)
    self.assertAllEqual(loaded(images()), model(images()))


class JpegTest(tf.test.TestCase):

  def test_is_the_jpeg_round_trip_on_the_uint8_grid(self):
    # On images already on the uint8 grid the 8-bit rounding is the
    # identity, so the layer is exactly tf.image's JPEG round trip.
    x = (np.random.RandomState(0).randint(0, 256, size=(3, 16, 16, 3))
         / 255).astype("float32")
    defense = layers.Jpeg()
    self.assertEqual((defense.bits, defense.quality), (8, 75))
    expected = np.stack([tf.image.adjust_jpeg_quality(image, 75).numpy()
                         for image in x])
    self.assertAllEqual(defense(x), expected)
    self.assertNotAllEqual(expected, x)  # JPEG is not the identity.

  def test_deterministic_gradient_none_and_reload(self):
    x = tf.constant(images(size=16))
    defense = layers.Jpeg(quality=50)
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = defense(x)
    self.assertIsNone(tape.gradient(out, x))
    self.assertAllInRange(out, 0.0, 1.0)
    self.assertAllEqual(out, defense(x))
    model = builders.build("jpeg", relu_classifier(size=16), quality=50)
    self.assertEqual(model.layers[0].name, "jpeg")
    path = os.path.join(tempfile.mkdtemp(), "jpeg.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    self.assertIsInstance(loaded.layers[0], layers.Jpeg)
    self.assertEqual(loaded.layers[0].quality, 50)
    self.assertAllEqual(loaded(x), model(x))

  def test_bad_quality_raises(self):
    with self.assertRaisesRegex(ValueError, "Received: quality=101"):
      layers.Jpeg(quality=101)


class StochasticActivationPruningTest(tf.test.TestCase):

  def test_keep_probability_is_the_papers(self):
    h = np.array([[0.0, 1.0, 3.0, 4.0]], np.float32)
    sap = stochastic.StochasticActivationPruning(ratio=1.0, seed=0)
    p = np.abs(h) / np.abs(h).sum()
    self.assertAllClose(sap.keep_probability(h), 1 - (1 - p)**4, atol=1e-6)
    sap2 = stochastic.StochasticActivationPruning(ratio=2.0, seed=0)
    self.assertAllClose(sap2.keep_probability(h), 1 - (1 - p)**8, atol=1e-6)

  def test_shape_unbiased_seeded_and_random(self):
    h = np.abs(np.random.RandomState(1).normal(size=(2, 4, 4, 8))).astype(
        "float32")
    sap = stochastic.StochasticActivationPruning(seed=3)
    out = sap(h).numpy()
    self.assertEqual(out.shape, h.shape)
    # Each unit is 0 or h / P(kept).
    keep = sap.keep_probability(h).numpy()
    self.assertTrue(np.all(np.isclose(out, 0) |
                           np.isclose(out, h / keep, rtol=1e-5)))
    self.assertGreater(np.mean(out == 0), 0.05)
    mean = np.mean([sap(h).numpy() for _ in range(400)], axis=0)
    self.assertAllClose(mean.sum(), h.sum(), rtol=0.02)
    again = stochastic.StochasticActivationPruning(seed=3)
    self.assertAllEqual(again(h), out)
    self.assertNotAllEqual(sap(h), sap(h))
    self.assertAllEqual(sap(np.zeros((1, 5), np.float32)), np.zeros((1, 5)))

  def test_gradient_is_finite_and_nonzero(self):
    h = tf.constant(np.random.RandomState(2).uniform(size=(2, 6)), tf.float32)
    with tf.GradientTape() as tape:
      tape.watch(h)
      out = tf.reduce_sum(stochastic.StochasticActivationPruning(seed=0)(h))
    gradient = tape.gradient(out, h).numpy()
    self.assertTrue(np.all(np.isfinite(gradient)))
    self.assertGreater(np.abs(gradient).sum(), 0)

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: ratio=0"):
      stochastic.StochasticActivationPruning(ratio=0)
    with self.assertRaisesRegex(ValueError, "Received: seed=0.5"):
      stochastic.StochasticActivationPruning(seed=0.5)


class NoiseEnsembleTest(tf.test.TestCase):

  def test_noise_draws_order_moments_and_no_clip(self):
    x = np.full((2, 16, 16, 3), 0.5, np.float32)
    x[1] = 0.0
    draws = stochastic.NoiseDraws(sigma=0.25, draws=3, seed=0)
    out = draws(x).numpy()
    self.assertEqual(out.shape, (6, 16, 16, 3))
    self.assertAllClose(out[:3].mean(), 0.5, atol=0.02)
    self.assertAllClose(out[3:].mean(), 0.0, atol=0.02)
    self.assertAllClose((out[:3] - 0.5).std(), 0.25, atol=0.01)
    self.assertLess(out.min(), 0.0)  # Not clipped.
    self.assertNotAllEqual(out[0], out[1])
    self.assertAllEqual(stochastic.NoiseDraws(0.25, 3, seed=0)(x), out)
    with self.assertRaisesRegex(ValueError, "Received: draws=0"):
      stochastic.NoiseDraws(draws=0)

  def test_mean_softmax(self):
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]],
                      np.float32)
    out = stochastic.MeanSoftmax(draws=2)(logits).numpy()
    softmax = tf.nn.softmax(logits).numpy()
    self.assertEqual(out.shape, (2, 2))
    self.assertAllClose(np.exp(out), [softmax[:2].mean(0), softmax[2:].mean(0)],
                        atol=1e-6)
    with self.assertRaisesRegex(ValueError, "Received: input_shape"):
      stochastic.MeanSoftmax(2).build((None, 2, 2))


class BuildersTest(tf.test.TestCase):

  def test_activation_pruning_after_every_relu_weights_kept(self):
    classifier = relu_classifier()
    model = builders.with_activation_pruning(classifier, seed=5)
    saps = [l for l in model.layers
            if isinstance(l, stochastic.StochasticActivationPruning)]
    self.assertEqual([s.seed for s in saps], [5, 6])
    self.assertEqual(len(model.get_weights()), len(classifier.get_weights()))
    for new, old in zip(model.get_weights(), classifier.get_weights()):
      self.assertAllEqual(new, old)
    x = images()
    self.assertEqual(model.predict(x, verbose=0).shape, (4, 3))
    self.assertNotAllClose(model(x), model(x))
    # Saved and reloaded: the same first draws as a fresh build.
    path = os.path.join(tempfile.mkdtemp(), "sap.keras")
    model.save(path)
    fresh = builders.with_activation_pruning(relu_classifier(), seed=5)
    self.assertAllClose(keras.saving.load_model(path)(x), fresh(x), atol=1e-5)
    with self.assertRaisesRegex(ValueError, "no ReLU"):
      builders.with_activation_pruning(keras.Sequential(
          [keras.Input((2,)), keras.layers.Dense(2)]))

  def test_smoothed_shape_draws_and_reload(self):
    model = builders.smoothed(relu_classifier(), seed=1, sigma=0.1, draws=5)
    x = images()
    out = model(x).numpy()
    self.assertEqual(out.shape, (4, 3))
    self.assertAllClose(np.exp(out).sum(axis=1), np.ones(4), atol=1e-5)
    self.assertNotAllClose(model(x), model(x))
    path = os.path.join(tempfile.mkdtemp(), "smoothed.keras")
    model.save(path)
    fresh = builders.smoothed(relu_classifier(), seed=1, sigma=0.1, draws=5)
    self.assertAllClose(keras.saving.load_model(path)(x), fresh(x), atol=1e-5)

  def test_build_knows_every_preprocessing_layer(self):
    for name in builders.PREPROCESSING:
      model = builders.build(name, relu_classifier(), seed=0)
      self.assertEqual(model.predict(images(), verbose=0).shape, (4, 3))


class TrainingTest(tf.test.TestCase):

  def train_and_reload(self, train, **arguments):
    """`train` on 64 tiny images into a file; returns (images, reloaded)."""
    rng = np.random.RandomState(0)
    x = rng.uniform(size=(64, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32")
    output = os.path.join(tempfile.mkdtemp(), "trained.keras")
    model = train("smoke", output=output, seed=0, num_classes=2,
                  train_data=tf.data.Dataset.from_tensor_slices(
                      (x, y)).batch(32),
                  input_shape=(8, 8, 3), verbose=0, width=4, **arguments)
    loaded = keras.saving.load_model(output)
    self.assertEqual(loaded.input_shape, (None, 8, 8, 3))
    self.assertEqual(loaded.output_shape, (None, 2))
    self.assertAllClose(loaded.predict(x, verbose=0),
                        model.predict(x, verbose=0), atol=1e-5)
    with self.assertRaisesRegex(ValueError, "Received: preset='huge'"):
      train("huge")
    with self.assertRaisesRegex(ValueError, "Received: depth=3"):
      train("smoke", depth=3)
    return x, loaded

  def test_noise_augmented_classifier_is_saved_without_the_noise(self):
    x, loaded = self.train_and_reload(noise_training.train_noise_augmented,
                                      sigma=0.25)
    # The saved classifier has no noise layer: deterministic.
    self.assertAllEqual(loaded.predict(x, verbose=0),
                        loaded.predict(x, verbose=0))

  def test_thermometer_model_is_saved_with_its_encoding(self):
    _, loaded = self.train_and_reload(noise_training.train_thermometer,
                                      levels=4)
    self.assertIsInstance(loaded.layers[0], layers.ThermometerEncoding)
    self.assertEqual(loaded.layers[0].levels, 4)


if __name__ == "__main__":
  tf.test.main()
