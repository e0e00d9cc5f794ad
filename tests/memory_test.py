"""Memory of one EOT step on a paper-width f_b (issue 10, item 0).

The exact g(x) inside an estimator must not be recorded by the attack's
gradient tape: recorded, its N = 13 inner forward/backward passes of f_b stay
alive until the gradient is taken (about 30 MiB per image for the paper's
small_vgg), which killed a 200-image, EOT-4 evaluation on a 24 GB machine.
Peak memory is read from TensorFlow's CPU allocator
(`tf.config.experimental.get_memory_info`).
"""

import keras
import numpy as np
import tensorflow as tf

from adv_layer import AdversarialTransform
from adv_layer import models
from attacks import common
from attacks import estimators
from attacks import model_fns

BATCH, EOT = 4, 2


def peak_bytes(fn):
  """Peak allocator bytes above the current level while `fn()` runs."""
  tf.config.experimental.reset_memory_stats("CPU:0")
  before = tf.config.experimental.get_memory_info("CPU:0")["current"]
  fn()
  return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


class EotStepMemoryTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.layer = AdversarialTransform(models.small_vgg(seed=0), seed=0)
    f_a = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
    self.model = keras.Sequential([keras.Input((32, 32, 3)), self.layer, f_a])
    rng = np.random.default_rng(0)
    self.x = tf.constant(rng.uniform(0, 1, (BATCH, 32, 32, 3)), tf.float32)
    self.y = tf.zeros([BATCH], tf.int32)
    # Bound: a few passes of f_b per image (EXACT_FACTOR), never N = 13.
    self.bound = (BATCH * EOT * model_fns.EXACT_FACTOR *
                  common.activation_bytes(self.layer.f_b))

  def test_one_eot_step_holds_no_inner_pass_of_f_b(self):
    model_fn = model_fns.defended_model_fn(self.model, "bpda_identity", seed=0)
    model_fn(self.x[:1])  # Builds and warms up outside the measurement.
    peak = peak_bytes(lambda: common.eot_loss_gradient(
        model_fn, self.x, self.y, common.ce_loss, eot_samples=EOT))
    self.assertLess(peak, self.bound)

  def test_a_recorded_exact_forward_exceeds_the_bound(self):
    # The old behaviour: g(x) computed on the watched input under a tape that
    # watches f_b's weights, its result cut by tf.stop_gradient.
    recorded = lambda layer, v: v + tf.stop_gradient(layer.transform(v) - v)
    tiled = tf.tile(self.x, [EOT, 1, 1, 1])

    def step():
      with estimators.substitute_transform(self.model, recorded):
        with tf.GradientTape() as tape:
          tape.watch(tiled)
          loss = tf.reduce_sum(common.ce_loss(self.model(tiled),
                                              tf.tile(self.y, [EOT])))
        return tape.gradient(loss, tiled)

    self.assertGreater(peak_bytes(step), 4 * self.bound)


if __name__ == "__main__":
  tf.test.main()
