"""Tests of adv_layer.folding: batch norm folded into f_b's convolutions."""

import keras
import numpy as np
import tensorflow as tf

from adv_layer import folding
from adv_layer import models
from adv_layer import transform
from examples import fold_benchmark

randomize_batch_norm = fold_benchmark.randomize_batch_norm


def images(count, seed=2):
  return tf.constant(np.random.default_rng(seed).uniform(
      0.0, 1.0, (count, 32, 32, 3)).astype(np.float32))


def batch_norms(model):
  return [l for l in model.layers
          if isinstance(l, keras.layers.BatchNormalization)]


class FoldArithmeticTest(tf.test.TestCase):

  def test_dense_and_batch_norm_fold_exactly(self):
    # s = γ/√(σ² + ϵ) = [4/√(3+1), 3/√(0+1)] = [2, 3];
    # kernel·s = [[1·2, 2·3], [3·2, 4·3]]; bias = (0 − μ)·s + β = [-1.5, -1].
    inputs = keras.Input((2,))
    norm = keras.layers.BatchNormalization(epsilon=1.0)
    model = keras.Model(
        inputs, norm(keras.layers.Dense(2, use_bias=False)(inputs)))
    model.layers[1].set_weights([np.array([[1.0, 2.0], [3.0, 4.0]])])
    norm.set_weights([np.array([4.0, 3.0]), np.array([0.5, -1.0]),
                      np.array([1.0, 0.0]), np.array([3.0, 0.0])])
    folded = folding.fold_batch_norm(model)
    self.assertEqual([type(l) for l in folded.layers],
                     [keras.layers.InputLayer, keras.layers.Dense])
    kernel, bias = folded.layers[1].get_weights()
    self.assertAllEqual(kernel, [[2.0, 6.0], [6.0, 12.0]])
    self.assertAllEqual(bias, [-1.5, -1.0])
    x = np.array([[1.0, -2.0]], np.float32)  # BN([-5, -6]) = [-11.5, -19].
    self.assertAllEqual(model(x, training=False), [[-11.5, -19.0]])
    self.assertAllEqual(folded(x), [[-11.5, -19.0]])

  def test_existing_bias_is_folded(self):
    inputs = keras.Input((1,))
    norm = keras.layers.BatchNormalization(epsilon=0.0, center=False,
                                           scale=False)
    model = keras.Model(inputs, norm(keras.layers.Dense(1)(inputs)))
    model.layers[1].set_weights([np.array([[2.0]]), np.array([5.0])])
    norm.set_weights([np.array([1.0]), np.array([4.0])])  # (2x + 5 − 1) / 2.
    kernel, bias = folding.fold_batch_norm(model).layers[1].get_weights()
    self.assertAllEqual(kernel, [[1.0]])
    self.assertAllEqual(bias, [2.0])


class FoldModelsTest(tf.test.TestCase):

  def assert_same_logits(self, model, folded, x, default_stats=None):
    """Folded logits equal `model`'s up to float32 rounding.

    `default_stats`, the same model with its initial batch norm weights,
    shows that the randomized statistics matter (agreement is not trivial).
    """
    expected = model(x, training=False)
    if default_stats is not None:
      self.assertNotAllClose(default_stats(x, training=False), expected,
                             rtol=1e-2, atol=1e-2)
    self.assertAllClose(folded(x, training=False), expected, rtol=1e-5,
                        atol=1e-5)

  def test_small_vgg_logits_match_without_batch_norm(self):
    f_b = randomize_batch_norm(models.small_vgg(width=0.125, seed=0), seed=1)
    folded = folding.fold_batch_norm(f_b)
    self.assertEmpty(batch_norms(folded))
    self.assertLen(folded.layers, len(f_b.layers) - 6)
    self.assertFalse(folded.trainable)
    self.assertTrue(all(l.use_bias for l in folded.layers
                        if isinstance(l, keras.layers.Conv2D)))
    self.assert_same_logits(f_b, folded, images(8),
                            models.small_vgg(width=0.125, seed=0))

  def test_resnet18_logits_match_without_batch_norm(self):
    f_b = randomize_batch_norm(models.resnet18(width=2, seed=0), seed=1)
    folded = folding.fold_batch_norm(f_b)
    self.assertEmpty(batch_norms(folded))
    self.assertLen(folded.layers, len(f_b.layers) - 20)  # 17 + 3 shortcut BNs.
    self.assert_same_logits(f_b, folded, images(4),
                            models.resnet18(width=2, seed=0))

  def test_folded_model_shares_no_variables(self):
    f_b = randomize_batch_norm(models.small_cnn(width=2, seed=0), seed=1)
    folded = folding.fold_batch_norm(f_b)
    originals = {id(v) for v in f_b.weights}
    self.assertFalse(any(id(v) in originals for v in folded.weights))

  def test_sequential_model_is_folded(self):
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(3, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4),
    ])
    randomize_batch_norm(model, seed=3)
    folded = folding.fold_batch_norm(model)
    self.assertEmpty(batch_norms(folded))
    self.assert_same_logits(model, folded, images(2))

  def test_refresh_follows_weights_changed_after_folding(self):
    f_b = models.small_vgg(width=0.125, seed=0)
    folded = folding.fold_batch_norm(f_b)
    randomize_batch_norm(f_b, seed=4)
    x = images(4)
    self.assertNotAllClose(folded(x), f_b(x, training=False))
    variables = [id(v) for v in folded.weights]
    folding.refresh_folded(folded, f_b)
    self.assertEqual([id(v) for v in folded.weights], variables)
    self.assert_same_logits(f_b, folded, x)

  def test_refresh_rejects_a_model_that_was_not_folded(self):
    folded = folding.fold_batch_norm(models.small_vgg(width=0.125, seed=0))
    other = models.small_cnn(width=2, seed=0)
    with self.assertRaisesRegex(ValueError, "not the fold of `model`"):
      folding.refresh_folded(folded, other)


class LiveFoldTest(tf.test.TestCase):

  def test_follows_weights_changed_after_folding_inside_a_function(self):
    f_b = models.small_vgg(width=0.125, seed=0)
    live = folding.LiveFold(f_b)
    logits = tf.function(lambda x: live(x, training=False))
    x = images(4)
    before = logits(x)
    randomize_batch_norm(f_b, seed=4)
    after = logits(x)  # The same trace reads the new variables.
    self.assertNotAllClose(after, before)
    self.assertAllClose(after, f_b(x, training=False), rtol=1e-5, atol=1e-5)

  def test_transform_equals_the_copied_fold_exactly(self):
    f_b = randomize_batch_norm(models.small_vgg(width=0.125, seed=0), seed=1)
    x = images(8)
    self.assertAllEqual(
        transform.ll_pgd(folding.LiveFold(f_b), x, steps=2, seed=0),
        transform.ll_pgd(folding.fold_batch_norm(f_b), x, steps=2, seed=0))

  def test_model_without_batch_norm_is_called_as_it_is(self):
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(
        keras.layers.GlobalAveragePooling2D()(inputs)))
    live = folding.LiveFold(model)
    self.assertIs(live.folded, model)
    self.assertAllEqual(live(images(2)), model(images(2)))

  def test_training_mode_is_rejected(self):
    live = folding.LiveFold(models.small_cnn(width=2, seed=0))
    with self.assertRaisesRegex(ValueError, "Received: training=True"):
      live(images(1), training=True)


class TransformAgreementTest(tf.test.TestCase):
  """g(x) with the folded f_b equals g(x) with f_b up to rounding.

  Folding changes f_b's input gradient by float rounding only; a pixel of
  g(x) can differ only where a gradient entry is so close to 0 that rounding
  flips its sign, after which the paths may drift apart. Measured here
  (oneDNN on, 2 cores): every pixel equal after 3 steps from x for both
  models; the bound below allows 0.1%.
  """

  def assert_first_step_signs_agree(self, model, folded, x):
    labels, _ = transform.target_labels(model(x, training=False),
                                        "least_likely")
    grad = transform.input_gradient(model, x, labels).numpy()
    grad_folded = transform.input_gradient(folded, x, labels).numpy()
    scale = np.abs(grad).max()
    self.assertAllClose(grad_folded / scale, grad / scale, rtol=0, atol=1e-5)
    flipped = np.sign(grad) != np.sign(grad_folded)
    # Only entries within rounding of 0 may change sign.
    self.assertLess(np.abs(grad[flipped]).max(initial=0.0), 1e-5 * scale)

  def assert_transforms_agree(self, model, x):
    folded = folding.fold_batch_norm(model)
    self.assertIsNot(folded, model)
    self.assert_first_step_signs_agree(model, folded, x)
    g_x = transform.ll_pgd(model, x, steps=3, random_start=False)
    g_x_folded = transform.ll_pgd(folded, x, steps=3, random_start=False)
    self.assertNotAllClose(g_x, x)  # The steps moved the pixels.
    self.assertGreaterEqual(np.mean(g_x.numpy() == g_x_folded.numpy()), 0.999)

  def test_small_vgg(self):
    self.assert_transforms_agree(
        randomize_batch_norm(models.small_vgg(width=0.125, seed=0), seed=1),
        images(16))

  def test_resnet18(self):
    self.assert_transforms_agree(
        randomize_batch_norm(models.resnet18(width=2, seed=0), seed=1),
        images(8))


class FallbackTest(tf.test.TestCase):

  def test_model_without_batch_norm_passes_through(self):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    self.assertIs(folding.fold_batch_norm(model), model)

  def test_batch_norm_not_after_a_linear_layer_passes_through(self):
    inputs = keras.Input((8, 8, 3))
    after_relu = keras.layers.BatchNormalization()(
        keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Flatten()(after_relu))
    self.assertIs(folding.fold_batch_norm(model), model)

  def test_batch_norm_on_another_axis_passes_through(self):
    inputs = keras.Input((8, 8, 3))
    norm = keras.layers.BatchNormalization(axis=1)
    model = keras.Model(inputs, norm(keras.layers.Conv2D(4, 3)(inputs)))
    self.assertIs(folding.fold_batch_norm(model), model)

  def test_convolution_output_read_twice_keeps_its_batch_norm(self):
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3)(inputs)
    normed = keras.layers.BatchNormalization()(conv)
    model = keras.Model(inputs, keras.layers.Add()([normed, conv]))
    self.assertIs(folding.fold_batch_norm(model), model)

  def test_subclassed_model_passes_through(self):

    class Subclassed(keras.Model):

      def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(2, 3)
        self.norm = keras.layers.BatchNormalization()

      def call(self, x, training=False):
        return self.norm(self.conv(x), training=training)

    model = Subclassed()
    model(np.zeros((1, 8, 8, 3), np.float32))
    self.assertIs(folding.fold_batch_norm(model), model)

  def test_non_model_is_rejected(self):
    with self.assertRaisesRegex(ValueError, "Received: model="):
      folding.fold_batch_norm(keras.layers.Dense(2))


if __name__ == "__main__":
  tf.test.main()
