"""Tests for attacks.detect: randomness, seeding and masked gradients of any model."""

import keras
import numpy as np
import tensorflow as tf

from adv_layer import AdversarialTransform
from attacks import bpda
from attacks import detect
from tests import attack_properties


class Seeded(keras.layers.Layer):
  """Gaussian noise at inference, drawn through a `SeedGenerator`."""

  def __init__(self, seed=0, **kwargs):
    super().__init__(**kwargs)
    self.seed_generator = keras.random.SeedGenerator(seed)

  def call(self, inputs):
    return inputs + keras.random.normal(tf.shape(inputs), stddev=0.1,
                                        seed=self.seed_generator)


class InferenceNoise(keras.layers.GaussianNoise):
  """`keras.layers.GaussianNoise`, active in inference too."""

  def call(self, inputs, training=False):
    return super().call(inputs, training=True)


class Unseeded(keras.layers.Layer):
  """`keras.random` noise with `seed=None` (Keras' global generator)."""

  def call(self, inputs):
    return inputs + keras.random.uniform(tf.shape(inputs), maxval=0.1)


class Stateful(keras.layers.Layer):
  """Noise from a stateful `tf.random` op: the evaluation cannot seed it."""

  def call(self, inputs):
    return inputs + tf.random.normal(tf.shape(inputs), stddev=0.1)


class Function(keras.layers.Layer):
  """Applies a fixed function (per test) to its input."""

  def __init__(self, fn, **kwargs):
    super().__init__(**kwargs)
    self.fn = fn

  def call(self, inputs):
    return self.fn(inputs)


def quantize(v):  # None gradient.
  return tf.round(v * 4.0) / 4.0


def uint8_round_trip(v):  # None gradient (an integer tensor in between).
  return tf.cast(tf.cast(tf.round(v * 255.0), tf.uint8), tf.float32) / 255.0


def jpeg(v):  # None gradient.
  return tf.ensure_shape(
      tf.map_fn(lambda image: tf.image.adjust_jpeg_quality(image, 50), v),
      v.shape)


def zero_gradient(v):  # Zero gradient.
  return tf.stop_gradient(quantize(v)) + 0.0 * v


def sign(v):  # Zero gradient.
  return tf.sign(v - 0.5)


def square_root(v):  # Infinite gradient at 0.
  return tf.sqrt(v)


def log(v):  # Infinite gradient at 0.
  return tf.math.log(v + 1.0) + tf.math.log(v)


def images(shape=(2,), batch=4, zeros=False):
  x = tf.random.stateless_uniform((batch,) + shape, seed=[7, 8], minval=0.1,
                                  maxval=0.9)
  return tf.zeros_like(x) if zeros else x


def sequential(*layers, shape=(2,), name=None):
  return keras.Sequential([keras.Input(shape), *layers], name=name)


def head(classes=3, name=None):
  return keras.layers.Dense(classes, name=name)


class MaskedLayersTest(tf.test.TestCase):

  def test_clean_model(self):
    keras.utils.set_random_seed(0)
    model = sequential(keras.layers.Dense(4, activation="tanh"), head())
    self.assertEqual(detect.masked_layers(model, images()), [])
    self.assertEqual(detect.input_gradient_status(model, images()), "ok")

  def test_each_reason(self):
    cases = [(quantize, "none"), (uint8_round_trip, "none"),
             (zero_gradient, "zero"), (sign, "zero"),
             (square_root, "nonfinite"), (log, "nonfinite")]
    for fn, reason in cases:
      model = sequential(Function(fn, name="suspect"), head(name="head"))
      x = images(zeros=reason == "nonfinite")
      self.assertEqual(detect.masked_layers(model, x),
                       [detect.MaskedLayer("suspect", "suspect", reason)],
                       msg=fn.__name__)
      # The whole model: reported, never raised.
      self.assertEqual(detect.input_gradient_status(model, x), reason,
                       msg=fn.__name__)

  def test_jpeg(self):
    model = sequential(Function(jpeg, name="jpeg"), keras.layers.Flatten(),
                       head(), shape=(8, 8, 3))
    x = images((8, 8, 3), batch=2)
    self.assertEqual(detect.masked_layers(model, x, probe_images=1),
                     [detect.MaskedLayer("jpeg", "jpeg", "none")])
    wrapped = bpda.wrap_layers(model, ["jpeg"])
    self.assertEqual(detect.masked_layers(wrapped, x), [])
    self.assertEqual(detect.input_gradient_status(wrapped, x), "ok")

  def test_layers_that_change_the_batch_size(self):
    # Noisy copies of each image in, their mean softmax out: the smoothed
    # classifier's layers change the batch size (here 3 draws per image).
    # The finite-difference check compares batch totals, and these smooth
    # layers are not flagged.
    from attacks.defenses import stochastic  # pylint: disable=g-import-not-at-top
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2, 2, 1))
    noisy = stochastic.NoiseDraws(sigma=0.1, draws=3, seed=0)(inputs)
    hidden = keras.layers.Dense(4, activation="tanh")(
        keras.layers.Flatten()(noisy))
    model = keras.Model(inputs, stochastic.MeanSoftmax(draws=3)(
        keras.layers.Dense(3)(hidden)))
    x = images((2, 2, 1))
    self.assertEqual(detect.masked_layers(model, x), [])
    mean = lambda z: stochastic.MeanSoftmax(draws=3)(
        tf.repeat(tf.reshape(tf.tanh(z), [-1, 4]), 3, axis=0))
    cosine, scale = detect.finite_difference_agreement(mean, x, seed=0)
    self.assertGreater(cosine, 0.99)
    self.assertAllClose(scale, 1.0, atol=0.05)

  def test_nested_functional_and_sequential(self):
    inner = sequential(Function(zero_gradient, name="zero"), head(2, "dense_in"),
                       name="inner")
    inputs = keras.Input((2,))
    rounded = Function(quantize, name="round")(inputs)
    hidden = keras.layers.Add(name="add")([inner(rounded), rounded])
    root = Function(square_root, name="root")(inputs)
    outputs = head(name="head")(
        keras.layers.Concatenate(name="concat")([hidden, root]))
    model = keras.Model(inputs, outputs)
    x = images(zeros=True)  # sqrt at 0: an infinite gradient.
    found = detect.masked_layers(model, x)
    self.assertCountEqual(found, [
        detect.MaskedLayer("round", "round", "none"),
        detect.MaskedLayer("zero", "inner/zero", "zero"),
        detect.MaskedLayer("root", "root", "nonfinite"),
    ])
    wrapped = bpda.wrap_layers(model, [layer.path for layer in found])
    self.assertAllEqual(wrapped(x), model(x))
    self.assertEqual(detect.masked_layers(wrapped, x), [])
    self.assertEqual(detect.input_gradient_status(wrapped, x), "ok")

  def test_skips_transforms_and_integer_inputs(self):
    f_b = attack_properties.tiny_model(seed=1, shape=(2,), classes=3)
    model = sequential(AdversarialTransform(f_b, epsilon=0.1, steps=2, seed=0),
                       Function(lambda v: tf.cast(v * 10.0, tf.int32), name="ints"),
                       Function(lambda v: tf.cast(v, tf.float32) / 10.0, name="floats"),
                       head())
    # The transform's gradient is None (it has its own estimators): skipped;
    # "floats" takes integers: skipped.
    self.assertEqual(detect.masked_layers(model, images()),
                     [detect.MaskedLayer("ints", "ints", "none")])
    self.assertEqual(detect.input_gradient_status(model, images()), "none")

  def test_names_bare_ops(self):
    # A raw op of a functional graph is no layer (BPDA cannot wrap it), but
    # it is found and named; the multiplication before it passes.
    inputs = keras.Input((2,))
    outputs = head()(keras.ops.round(inputs * 4.0))
    model = keras.Model(inputs, outputs)
    (found,) = detect.masked_layers(model, images())
    # Keras numbers op names per process: "round", "round_1", ...
    self.assertRegex(found.name, r"^round(_\d+)?$")
    self.assertEqual((found.path, found.reason), (found.name, "none"))
    self.assertEqual(detect.input_gradient_status(model, images()), "none")

  def test_does_not_shift_draws(self):
    model = sequential(Seeded(seed=1), Function(quantize, name="q"), head())
    generator = model.layers[0].seed_generator
    before = generator.state.numpy()
    detect.masked_layers(model, images())
    detect.input_gradient_status(model, images())
    self.assertAllEqual(generator.state.numpy(), before)

  def test_bad_arguments(self):
    model = sequential(head())
    with self.assertRaisesRegex(ValueError, "Received: probe_images=0"):
      detect.masked_layers(model, images(), probe_images=0)
    with self.assertRaisesRegex(TypeError, "Received: x.dtype=int32"):
      detect.masked_layers(model, tf.zeros([2, 2], tf.int32))
    with self.assertRaisesRegex(TypeError, "Received: x.dtype=int32"):
      detect.input_gradient_status(model, tf.zeros([2, 2], tf.int32))


class RandomnessTest(tf.test.TestCase):

  def test_randomized_models(self):
    f_b = attack_properties.tiny_model(seed=1, shape=(2,), classes=3)
    models = {
        "transform": sequential(
            AdversarialTransform(f_b, epsilon=0.1, steps=2, seed=0), head()),
        "seeded": sequential(Seeded(seed=2), head()),
        "gaussian": sequential(InferenceNoise(0.1, seed=3), head()),
        "unseeded": sequential(Unseeded(), head()),
        "stateful": sequential(Stateful(), head()),
    }
    for name, model in models.items():
      self.assertTrue(detect.is_randomized(model, images()), msg=name)

  def test_deterministic_models(self):
    keras.utils.set_random_seed(0)
    models = {
        "dense": sequential(keras.layers.Dense(4, activation="relu"), head()),
        "conv": sequential(keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
                           head(), shape=(8, 8, 3)),
        "dropout": sequential(keras.layers.Dropout(0.5, seed=1), head()),
        "noise at training only": sequential(keras.layers.GaussianNoise(0.1),
                                             head()),
        "jpeg": sequential(Function(jpeg), keras.layers.Flatten(), head(),
                           shape=(8, 8, 3)),
    }
    for name, model in models.items():
      shape = model.input_shape[1:]
      self.assertFalse(detect.is_randomized(model, images(shape), passes=3),
                       msg=name)

  def test_detection_restores_states(self):
    model = sequential(Seeded(seed=2), head())
    generator = model.layers[0].seed_generator
    before = generator.state.numpy()
    self.assertTrue(detect.is_randomized(model, images()))
    self.assertAllEqual(generator.state.numpy(), before)
    with self.assertRaisesRegex(ValueError, "Received: passes=1"):
      detect.is_randomized(model, images(), passes=1)

  def test_seed_generators(self):
    f_b = attack_properties.tiny_model(seed=1, shape=(2,), classes=3)
    transform = AdversarialTransform(f_b, epsilon=0.1, steps=2, seed=0)
    noise = InferenceNoise(0.1, seed=3)
    inner = sequential(Seeded(seed=1), noise, name="inner")
    inputs = keras.Input((2,))
    outputs = head()(inner(transform(inputs)))
    model = keras.Model(inputs, outputs)
    found = detect.seed_generators(model)
    expected = [transform.seed_generator, inner.layers[0].seed_generator,
                noise.seed_generator]
    self.assertLen(found, 3)
    self.assertCountEqual([id(g) for g in found], [id(g) for g in expected])
    self.assertEqual(detect.seed_generators(sequential(head())), [])


class SeededTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    f_b = attack_properties.tiny_model(seed=1, shape=(2,), classes=3)
    self.transform = AdversarialTransform(f_b, epsilon=0.1, steps=2, seed=0)
    # Two identical layers: inside `seeded` they still draw different noise.
    self.model = sequential(self.transform, Seeded(seed=5, name="a"),
                            Seeded(seed=5, name="b"), Unseeded(),
                            head())
    self.x = images()

  def test_same_seed_same_outputs_whatever_ran_before(self):
    with detect.seeded(self.model, 3):
      first = self.model(self.x, training=False)
    for _ in range(3):
      self.model(self.x, training=False)
    keras.random.normal([5])
    with detect.seeded(self.model, 3):
      second = self.model(self.x, training=False)
    self.assertAllEqual(first, second)
    with detect.seeded(self.model, 4):
      other = self.model(self.x, training=False)
    self.assertNotAllClose(first, other)

  def test_generators_get_distinct_streams(self):
    a, b = self.model.get_layer("a"), self.model.get_layer("b")
    zeros = tf.zeros([3, 2])
    self.assertAllEqual(a(zeros), b(zeros))  # Same seed outside.
    with detect.seeded(self.model, 0):
      self.assertNotAllClose(a(zeros), b(zeros))

  def test_restores_states_and_pins(self):
    generators = detect.seed_generators(self.model)
    before = [g.state.numpy() for g in generators]
    with detect.seeded(self.model, 1):
      self.assertTrue(self.transform.draws_pinned)
      self.model(self.x)
    self.assertFalse(self.transform.draws_pinned)
    for generator, state in zip(generators, before):
      self.assertAllEqual(generator.state.numpy(), state)
    with self.assertRaisesRegex(RuntimeError, "inside"):
      with detect.seeded(self.model, 1):
        self.model(self.x)
        raise RuntimeError("inside")
    self.assertFalse(self.transform.draws_pinned)
    for generator, state in zip(generators, before):
      self.assertAllEqual(generator.state.numpy(), state)

  def test_bad_seed(self):
    with self.assertRaisesRegex(ValueError, "Received: seed=-1"):
      with detect.seeded(self.model, -1):
        pass

  def test_replay(self):
    self.assertTrue(detect.replay_is_exact(self.model, self.x))
    self.assertTrue(detect.replay_is_exact(self.model, self.x, seed=9))
    # Stateful tf.random ops cannot be seeded: replay is not exact.
    stateful = sequential(Stateful(), head())
    self.assertFalse(detect.replay_is_exact(stateful, self.x))
    deterministic = sequential(head())
    self.assertTrue(detect.replay_is_exact(deterministic, self.x))

  def test_wrapped_model_replays_like_the_original(self):
    wrapped = bpda.wrap_layers(self.model, ["a"])
    with detect.seeded(self.model, 2):
      expected = self.model(self.x, training=False)
    with detect.seeded(wrapped, 2):
      got = wrapped(self.x, training=False)
    self.assertAllEqual(got, expected)
    self.assertTrue(np.all(np.isfinite(got)))


if __name__ == "__main__":
  tf.test.main()
