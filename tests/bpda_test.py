"""Tests for attacks.bpda (Athalye et al., 2018, Sec. 4.1)."""

import os

import keras
import tensorflow as tf

from attacks import bpda
from attacks import common
from attacks import detect
from attacks import pgd as pgd_lib
from attacks.defenses import layers as defense_layers

# y = x @ K: ∇_x Σ w · y = K w, worked out by hand in the tests.
KERNEL = [[1.0, 2.0], [3.0, 4.0]]


@keras.saving.register_keras_serializable(package="bpda_test")
class Quantize(keras.layers.Layer):
  """Rounds to multiples of 1/4: its input gradient is None."""

  def call(self, inputs):
    return tf.round(inputs * 4.0) / 4.0


@keras.saving.register_keras_serializable(package="bpda_test")
class ZeroQuantize(keras.layers.Layer):
  """`Quantize` whose input gradient is exactly zero instead of None."""

  def call(self, inputs):
    return tf.stop_gradient(tf.round(inputs * 4.0) / 4.0) + 0.0 * inputs


class Jpeg(keras.layers.Layer):
  """JPEG compression at quality 50 (gradient None: a uint8 round trip)."""

  def call(self, inputs):
    return tf.map_fn(lambda image: tf.image.adjust_jpeg_quality(image, 50),
                     inputs)


class UInt8(keras.layers.Layer):
  """Quantizes [0, 1] images to uint8 (an integer output)."""

  def call(self, inputs):
    return tf.cast(tf.round(inputs * 255.0), tf.uint8)


class Half(keras.layers.Layer):
  """Returns its input in float16 (an output dtype other than the input's)."""

  def call(self, inputs):
    return tf.cast(tf.round(inputs * 4.0) / 4.0, tf.float16)


class Noisy(keras.layers.Layer):
  """Adds seeded noise in inference and in training; doubles it in training."""

  def __init__(self, seed=0, **kwargs):
    super().__init__(**kwargs)
    self.seed_generator = keras.random.SeedGenerator(seed)

  def call(self, inputs, training=None):
    noise = keras.random.normal(tf.shape(inputs), stddev=0.1,
                                seed=self.seed_generator)
    return inputs + (2.0 if training else 1.0) * noise


def linear(name="linear"):
  return keras.layers.Dense(
      2, use_bias=False, name=name,
      kernel_initializer=keras.initializers.Constant(KERNEL))


def quantized_linear(layer_class=Quantize):
  return keras.Sequential(
      [keras.Input((2,)), layer_class(name="quantize"), linear()])


def input_gradient(fn, x, weights):
  with tf.GradientTape() as tape:
    tape.watch(x)
    total = tf.reduce_sum(weights * tf.cast(fn(x), tf.float32))
  return tape.gradient(total, x)


class LinearFixture(tf.test.TestCase):
  """Two 2-pixel images and the weights of the summed output."""

  def setUp(self):
    super().setUp()
    self.x = tf.constant([[0.3, 0.6], [0.1, 0.9]])
    self.w = tf.constant([[1.0, -1.0], [2.0, 0.5]])


class BPDALayerTest(LinearFixture):

  def test_identity_gradient_is_the_linear_models(self):
    model = quantized_linear()
    self.assertIsNone(input_gradient(model, self.x, self.w))
    wrapped = bpda.wrap_layers(model, ["quantize"])
    # K w per row: K [1, -1] = [-1, -1]; K [2, .5] = [3, 8].
    expected = [[-1.0, -1.0], [3.0, 8.0]]
    self.assertAllEqual(input_gradient(wrapped, self.x, self.w), expected)
    compiled = tf.function(lambda v: input_gradient(wrapped, v, self.w))
    self.assertAllEqual(compiled(self.x), expected)

  def test_forward_is_exact(self):
    layer = Quantize()
    wrapped = bpda.bpda(layer)
    self.assertIsInstance(wrapped, bpda.BPDA)
    self.assertEqual(wrapped.name, f"bpda_{layer.name}")
    self.assertAllEqual(wrapped(self.x), [[0.25, 0.5], [0.0, 1.0]])
    self.assertAllEqual(tf.function(wrapped)(self.x), layer(self.x))

  def test_surrogate_backward_is_its_vjp(self):
    # s(x) = x², so the gradient is upstream · 2x.
    wrapped = bpda.BPDA(Quantize(), backward=tf.square)
    self.assertAllEqual(wrapped(self.x), Quantize()(self.x))
    self.assertAllClose(input_gradient(wrapped, self.x, self.w),
                        self.w * 2.0 * self.x, rtol=0, atol=0)

  def test_surrogate_layer_is_tracked_and_saved(self):
    surrogate = keras.layers.Rescaling(3.0)
    wrapped = bpda.BPDA(Quantize(), backward=surrogate)
    self.assertAllEqual(input_gradient(wrapped, self.x, self.w), 3.0 * self.w)
    restored = bpda.BPDA.from_config(wrapped.get_config())
    self.assertIsInstance(restored.backward, keras.layers.Rescaling)
    self.assertAllEqual(input_gradient(restored, self.x, self.w), 3.0 * self.w)
    # A surrogate with weights, inside tf.function: its VJP is K w.
    wrapped = bpda.BPDA(Quantize(), backward=linear())
    compiled = tf.function(lambda v: input_gradient(wrapped, v, self.w))
    self.assertAllEqual(compiled(self.x), [[-1.0, -1.0], [3.0, 8.0]])
    self.assertLen(wrapped.weights, 1)

  def test_plain_callable_surrogate_cannot_be_serialized(self):
    wrapped = bpda.BPDA(Quantize(), backward=tf.square)
    with self.assertRaisesRegex(TypeError, "Received: backward="):
      wrapped.get_config()

  def test_bad_arguments(self):
    with self.assertRaisesRegex(TypeError, "Received: layer="):
      bpda.BPDA(tf.round)
    with self.assertRaisesRegex(TypeError, "Received: backward=3"):
      bpda.BPDA(Quantize(), backward=3)
    with self.assertRaisesRegex(TypeError, "one tensor.*Received: inputs="):
      bpda.bpda(keras.layers.Add())([self.x, self.x])

  def test_identity_needs_the_input_shape(self):
    with self.assertRaisesRegex(
        ValueError, r"'wide'.*backward.*input shape=\(None, 2\), "
        r"output shape=\(None, 3\)"):
      keras.Sequential([keras.Input((2,)),
                        bpda.bpda(keras.layers.Dense(3, name="wide"))])
    with self.assertRaisesRegex(ValueError, r"input shape=\(2, 2\)"):
      bpda.bpda(keras.layers.Dense(3, name="wide2"))(self.x)

  def test_surrogate_allows_another_shape(self):
    dense = keras.layers.Dense(
        1, use_bias=False, kernel_initializer=keras.initializers.Ones())
    wrapped = bpda.BPDA(dense, backward=lambda v: tf.reduce_sum(
        3.0 * v, axis=-1, keepdims=True))
    with tf.GradientTape() as tape:
      tape.watch(self.x)
      total = tf.reduce_sum(wrapped(self.x))
    self.assertAllEqual(tape.gradient(total, self.x), tf.fill([2, 2], 3.0))

  def test_output_dtypes(self):
    half = bpda.bpda(Half())
    out = half(self.x)
    self.assertEqual(out.dtype, tf.float16)
    gradient = input_gradient(half, self.x, self.w)
    self.assertEqual(gradient.dtype, tf.float32)
    self.assertAllEqual(gradient, self.w)
    # An integer output is cast to the input's dtype, values unchanged.
    uint8 = bpda.bpda(UInt8())
    out = uint8(self.x)
    self.assertEqual(out.dtype, tf.float32)
    self.assertAllEqual(out, [[76.0, 153.0], [26.0, 230.0]])
    self.assertAllEqual(input_gradient(uint8, self.x, self.w), self.w)

  def test_training_is_passed_on(self):
    x = tf.zeros([3, 2])
    for training in (False, True):
      layer = Noisy(seed=4)
      wrapped = bpda.bpda(layer)
      state = layer.seed_generator.state.numpy()
      expected = layer(x, training=training)
      layer.seed_generator.state.assign(state)
      self.assertAllEqual(wrapped(x, training=training), expected)

  def test_eot_tiled_batches(self):
    model = quantized_linear()
    wrapped = bpda.wrap_layers(model, ["quantize"])
    y = tf.constant([0, 1])
    loss, grad = common.eot_loss_gradient(wrapped, self.x, y, common.ce_loss,
                                          eot_samples=3, chunk_size=4)
    _, single = common.eot_loss_gradient(wrapped, self.x, y, common.ce_loss)
    self.assertEqual(loss.shape, (2,))
    self.assertAllClose(grad, single, rtol=1e-6, atol=0)
    self.assertGreater(float(tf.reduce_max(tf.abs(single))), 0.0)


class WrapLayersTest(LinearFixture):

  def test_sequential_shares_weights_and_leaves_model_untouched(self):
    model = quantized_linear()
    wrapped = bpda.wrap_layers(model, "quantize")
    self.assertIsNot(wrapped, model)
    self.assertIsInstance(wrapped.layers[0], bpda.BPDA)
    self.assertIs(wrapped.layers[0].layer, model.layers[0])
    self.assertIs(wrapped.layers[1], model.layers[1])
    self.assertNotIsInstance(model.layers[0], bpda.BPDA)
    self.assertIs(wrapped.weights[0], model.weights[0])
    model.layers[1].kernel.assign(tf.eye(2))
    self.assertAllEqual(wrapped(self.x), [[0.25, 0.5], [0.0, 1.0]])

  def test_random_functional_model_is_bit_exact_under_a_seed(self):
    inputs = keras.Input((2,))
    hidden = Quantize(name="quantize")(Noisy(seed=3, name="noise")(inputs))
    outputs = keras.layers.Dense(3, name="head")(hidden)
    model = keras.Model(inputs, outputs)
    wrapped = bpda.wrap_layers(model, ["quantize", "noise"])
    x = tf.random.stateless_uniform([8, 2], seed=[1, 2])
    with detect.seeded(model, 5):
      expected = model(x, training=False)
    with detect.seeded(wrapped, 5):
      got = wrapped(x, training=False)
    self.assertAllEqual(got, expected)
    gradient = input_gradient(wrapped, x, tf.ones([8, 3]))
    self.assertIsNotNone(gradient)
    # Identity through both wrapped layers: the head's kernel summed per row.
    head = model.get_layer("head").kernel
    self.assertAllClose(gradient, tf.tile(
        tf.reduce_sum(head, 1)[None], [8, 1]), rtol=0, atol=0)

  def test_nested_models(self):
    inner = keras.Sequential([keras.Input((2,)), Quantize(name="q_in"),
                              linear("lin_in")], name="inner")
    inputs = keras.Input((2,))
    outputs = linear("lin_out")(inner(inputs))
    model = keras.Model(inputs, outputs)
    self.assertEqual([path for path, _ in bpda.layer_paths(model)],
                     ["inner", "inner/q_in", "inner/lin_in", "lin_out"])
    self.assertIsNone(input_gradient(model, self.x, self.w))
    for names in (["inner/q_in"], ["q_in"]):
      wrapped = bpda.wrap_layers(model, names)
      self.assertAllEqual(wrapped(self.x), model(self.x))
      # K K w: K K [1, -1] = [-3, -7] (K K = [[7, 10], [15, 22]]).
      self.assertAllEqual(input_gradient(wrapped, self.x, self.w)[0],
                          [-3.0, -7.0])
      self.assertIs(wrapped.get_layer("lin_out"), model.get_layer("lin_out"))
      self.assertNotIsInstance(inner.layers[0], bpda.BPDA)
    # The whole nested model wrapped: the identity replaces all of it.
    square = bpda.wrap_layers(model, ["inner"])
    self.assertAllEqual(square(self.x), model(self.x))
    self.assertAllEqual(input_gradient(square, self.x, self.w)[0], [-1.0, -1.0])

  def test_unknown_names(self):
    model = quantized_linear()
    with self.assertRaisesRegex(
        ValueError, r"No layer named 'jpeg'.*\['quantize', 'linear'\]"):
      bpda.wrap_layers(model, ["jpeg"])
    with self.assertRaisesRegex(ValueError, "Received: names=\\[\\]"):
      bpda.wrap_layers(model, [])
    with self.assertRaisesRegex(TypeError, "Received: model="):
      bpda.wrap_layers(Quantize(), ["quantize"])

  def test_jpeg_gradient_is_the_identity_backward(self):
    keras.utils.set_random_seed(0)
    classifier = keras.Sequential([keras.Input((8, 8, 3)),
                                   keras.layers.Flatten(),
                                   keras.layers.Dense(4)], name="classifier")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, classifier(Jpeg(name="jpeg")(inputs)))
    x = tf.random.stateless_uniform([2, 8, 8, 3], seed=[3, 4])
    weights = tf.random.stateless_normal([2, 4], seed=[5, 6])
    self.assertIsNone(input_gradient(model, x, weights))
    wrapped = bpda.wrap_layers(model, ["jpeg"])
    self.assertAllEqual(wrapped(x), model(x))
    compressed = Jpeg()(x)
    self.assertAllEqual(input_gradient(wrapped, x, weights),
                        input_gradient(classifier, compressed, weights))

  def test_a_layer_declaring_a_surrogate_gets_it_unless_one_is_given(self):
    classifier = keras.Sequential([keras.Input((2, 2, 8)),
                                   keras.layers.Flatten(),
                                   keras.layers.Dense(3)])
    encode = defense_layers.ThermometerEncoding(levels=4, name="codes")
    model = keras.Sequential([keras.Input((2, 2, 2)), encode, classifier])
    self.assertIsNone(bpda.surrogate_of(classifier))
    self.assertIsInstance(bpda.surrogate_of(encode),
                          defense_layers.SoftThermometer)
    x = tf.random.stateless_uniform([3, 2, 2, 2], seed=[7, 8])
    weights = tf.random.stateless_normal([3, 3], seed=[9, 10])
    self.assertIsNone(input_gradient(model, x, weights))
    wrapped = bpda.wrap_layers(model, ["codes"])
    self.assertAllEqual(wrapped(x), model(x))
    soft = defense_layers.SoftThermometer(levels=4)
    with tf.GradientTape() as tape:
      tape.watch(x)
      smooth = soft(x)
    expected = tape.gradient(smooth, x, output_gradients=input_gradient(
        classifier, encode(x), weights))
    # The same vector-Jacobian product, taken in two graphs: equal up to
    # float32 rounding of sums of a few terms of size about L |w|.
    self.assertAllClose(input_gradient(wrapped, x, weights), expected,
                        atol=1e-6, rtol=0)
    # An explicit backward replaces the declared one.
    halves = bpda.wrap_layers(model, ["codes"],
                              backward=lambda v: 0.5 * soft(v))
    self.assertAllClose(input_gradient(halves, x, weights), 0.5 * expected,
                        atol=1e-6, rtol=0)

  def test_saved_and_loaded(self):
    model = bpda.wrap_layers(quantized_linear(), ["quantize"])
    path = os.path.join(self.get_temp_dir(), "wrapped.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    self.assertIsInstance(loaded.layers[0], bpda.BPDA)
    self.assertAllEqual(loaded(self.x), model(self.x))
    self.assertAllEqual(input_gradient(loaded, self.x, self.w),
                        [[-1.0, -1.0], [3.0, 8.0]])


class PGDThroughBPDATest(tf.test.TestCase):

  def test_bpda_makes_pgd_succeed(self):
    # logits = Q(x) @ [[1, -1], [-1, 1]]: class 0 while Q(x0) > Q(x1).
    model = keras.Sequential([
        keras.Input((2,)), ZeroQuantize(name="quantize"),
        keras.layers.Dense(2, use_bias=False, kernel_initializer=(
            keras.initializers.Constant([[1.0, -1.0], [-1.0, 1.0]])))])
    x = tf.constant([[0.7, 0.3], [0.65, 0.4]])
    y = tf.constant([0, 0])
    self.assertEqual(detect.input_gradient_status(model, x), "zero")
    kwargs = dict(epsilon=0.35, steps=10, random_start=False, seed=0)
    plain = pgd_lib.pgd(lambda v: model(v, training=False), x, y, **kwargs)
    self.assertAllEqual(tf.argmax(model(plain), -1), [0, 0])
    self.assertAllEqual(plain, x)
    wrapped = bpda.wrap_layers(model, ["quantize"])
    x_adv = pgd_lib.pgd(lambda v: wrapped(v, training=False), x, y, **kwargs)
    self.assertAllEqual(tf.argmax(model(x_adv), -1), [1, 1])
    self.assertLessEqual(float(tf.reduce_max(tf.abs(x_adv - x))), 0.35 + 1e-6)


if __name__ == "__main__":
  tf.test.main()
