"""Tests of adv_layer.models: shapes, logits, exact parameter counts, seeding."""

import keras
import numpy as np
import tensorflow as tf

from adv_layer import models


def conv_bn(cin, cout, k=3):
  """Parameters of a bias-free k x k convolution followed by batch norm."""
  return k * k * cin * cout + 4 * cout


def dense(cin, cout):
  return cin * cout + cout


class BuildersTest(tf.test.TestCase):

  def test_small_vgg_matches_the_paper_topology(self):
    f_b = models.small_vgg(seed=0)
    # 64-M-128-M-64-64-M-128-128-M, then 512-512-10 on a 2x2x128 map.
    expected = (conv_bn(3, 64) + conv_bn(64, 128) + conv_bn(128, 64) +
                conv_bn(64, 64) + conv_bn(64, 128) + conv_bn(128, 128) +
                dense(2 * 2 * 128, 512) + dense(512, 512) + dense(512, 10))
    self.assertEqual(f_b.count_params(), expected)
    convs = [l.filters for l in f_b.layers if isinstance(l, keras.layers.Conv2D)]
    self.assertEqual(convs, [64, 128, 64, 64, 128, 128])
    pools = [l for l in f_b.layers if isinstance(l, keras.layers.MaxPooling2D)]
    self.assertLen(pools, 4)
    self.assertEqual(f_b.output_shape, (None, 10))

  def test_small_vgg_width_scales_every_layer(self):
    f_b = models.small_vgg(num_classes=7, width=0.25, seed=0)
    convs = [l.filters for l in f_b.layers if isinstance(l, keras.layers.Conv2D)]
    units = [l.units for l in f_b.layers if isinstance(l, keras.layers.Dense)]
    self.assertEqual(convs, [16, 32, 16, 16, 32, 32])
    self.assertEqual(units, [128, 128, 7])

  def test_resnet18_has_the_standard_parameter_count(self):
    f_a = models.resnet18(seed=0)
    # The usual figure counts trainable parameters (no batch norm statistics).
    trainable = sum(int(np.prod(w.shape)) for w in f_a.trainable_weights)
    self.assertEqual(trainable, 11_173_962)
    self.assertEqual(f_a.output_shape, (None, 10))
    self.assertFalse(
        any(isinstance(l, keras.layers.MaxPooling2D) for l in f_a.layers))
    self.assertEqual(f_a.layers[1].strides, (1, 1))  # 3x3 stride-1 stem.
    self.assertEqual(f_a.layers[1].kernel_size, (3, 3))

  def test_outputs_are_logits_of_the_right_shape(self):
    x = tf.random.stateless_uniform((3, 32, 32, 3), seed=(1, 2))
    for name, kwargs in (("small_vgg", dict(width=0.125)),
                         ("resnet18", dict(width=4)),
                         ("small_cnn", dict(width=4))):
      model = models.build_model(name, num_classes=5, seed=0, **kwargs)
      logits = model(x, training=False).numpy()
      self.assertEqual(logits.shape, (3, 5), msg=name)
      self.assertEqual(model.layers[-1].activation.__name__, "linear", msg=name)
      self.assertFalse(np.allclose(logits.sum(axis=-1), 1.0), msg=name)

  def test_other_input_shapes(self):
    model = models.small_vgg(num_classes=200, input_shape=(64, 64, 3),
                             width=0.125, seed=0)
    self.assertEqual(model(tf.zeros((2, 64, 64, 3))).shape, (2, 200))

  def test_same_seed_same_weights_other_seed_other_weights(self):
    for name, kwargs in (("small_vgg", dict(width=0.125)),
                         ("resnet18", dict(width=4)),
                         ("small_cnn", dict(width=4))):
      first = models.build_model(name, seed=3, **kwargs).get_weights()
      second = models.build_model(name, seed=3, **kwargs).get_weights()
      other = models.build_model(name, seed=4, **kwargs).get_weights()
      for a, b in zip(first, second):
        self.assertAllEqual(a, b)
      self.assertFalse(np.array_equal(first[0], other[0]), msg=name)

  def test_layers_get_distinct_initialisations(self):
    model = models.small_vgg(width=0.125, seed=0)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    a, b = convs[2].kernel.numpy(), convs[3].kernel.numpy()  # 16->8, 8->8.
    self.assertFalse(np.array_equal(a[..., :8, :], b))

  def test_bad_arguments_raise(self):
    cases = (
        (lambda: models.build_model("vgg16"), "name='vgg16'"),
        (lambda: models.small_vgg(width=0), "width=0"),
        (lambda: models.resnet18(width=2.5), "width=2.5"),
        (lambda: models.small_cnn(num_classes=1), "num_classes=1"),
        (lambda: models.small_cnn(input_shape=(32, 32)), "input_shape=(32, 32)"),
        (lambda: models.small_cnn(seed=1.5), "seed=1.5"),
    )
    for build, received in cases:
      with self.assertRaisesRegex(ValueError, "Received: " + received.replace(
          "(", r"\(").replace(")", r"\)")):
        build()


if __name__ == "__main__":
  tf.test.main()
