"""Tests for attacks.common: EOT expectations and memory-budgeted chunks."""

import keras
import numpy as np
import tensorflow as tf

from attacks import common


class TwoDrawModel:
  """A "random" model with two draws: logits (±4x, 0) for draws 1 and 2.

  The draw of a row is its position in the tiled batch (`eot_loss_gradient`
  tiles draw-major), so the two draws of every image are known exactly.
  """

  def __call__(self, images):
    rows = images.shape[0]
    sign = np.where(np.arange(rows) // (rows // 2) == 0, 4.0, -4.0)
    scaled = images[:, 0] * tf.constant(sign, tf.float32)
    return tf.stack([scaled, tf.zeros_like(scaled)], axis=1)


class ExpectationTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    # At x = .5 the draws give logits (2, 0) and (-2, 0): p_0 = σ(2), σ(-2).
    self.x = tf.constant([[0.5], [0.5], [0.5]])
    self.y = tf.zeros([3], tf.int32)
    self.p = 1 / (1 + np.exp(-2.0))

  def run_eot(self, expectation, chunk_size=None):
    return common.eot_loss_gradient(TwoDrawModel(), self.x, self.y,
                                    common.ce_loss, eot_samples=2,
                                    chunk_size=chunk_size,
                                    expectation=expectation)

  def test_mean_of_losses(self):
    # E[CE] = (−log σ(2) − log σ(−2)) / 2; d/dx = mean of ±4 (p_0 − 1).
    loss, grad = self.run_eot("loss")
    self.assertAllClose(loss, [-(np.log(self.p) + np.log(1 - self.p)) / 2] * 3)
    self.assertAllClose(grad, [[(4 * (self.p - 1) - 4 * (1 - self.p - 1)) / 2]] * 3)

  def test_loss_of_the_expected_softmax(self):
    # E[p_0] = (σ(2) + σ(−2)) / 2 = 1/2: CE = log 2, and the two draws'
    # gradients cancel exactly; the mean of losses has gradient 4σ(2) − 2.
    for chunk_size in (None, 2, 4):
      loss, grad = self.run_eot("softmax", chunk_size)
      self.assertAllClose(loss, [np.log(2.0)] * 3, msg=chunk_size)
      self.assertAllClose(grad, [[0.0]] * 3, atol=1e-6, msg=chunk_size)
    _, mean_loss_grad = self.run_eot("loss")
    self.assertAllClose(mean_loss_grad, [[4 * self.p - 2]] * 3)

  def test_logits_of_every_draw_come_back_draw_major(self):
    # TwoDrawModel tells draws apart within one call: the whole tiled batch.
    for chunk_size in (None, 6):
      loss, grad, logits = common.eot_loss_gradient(
          TwoDrawModel(), self.x, self.y, common.ce_loss, eot_samples=2,
          chunk_size=chunk_size, return_logits=True)
      # Rows 0-2: draw 1 of images 0-2, logits (2, 0); rows 3-5: (-2, 0).
      self.assertAllClose(logits, [[2.0, 0.0]] * 3 + [[-2.0, 0.0]] * 3,
                          msg=chunk_size)
      expected_loss, expected_grad = self.run_eot("loss", chunk_size)
      self.assertAllEqual(loss, expected_loss)
      self.assertAllEqual(grad, expected_grad)
    with self.assertRaisesRegex(ValueError, "Received: expectation='softmax'"):
      common.eot_loss_gradient(TwoDrawModel(), self.x, self.y, common.ce_loss,
                               eot_samples=2, expectation="softmax",
                               return_logits=True)

  def test_a_model_fn_may_compute_its_own_loss_and_gradient(self):
    calls = []

    class Own:
      """Logits (4x, 0); computes the first chunk itself, declines the rest."""

      def __call__(self, images):
        return tf.stack([4.0 * images[:, 0], tf.zeros_like(images[:, 0])], 1)

      def loss_and_gradient(self, x, y, loss_fn):
        calls.append(int(x.shape[0]))
        if len(calls) > 1:
          return None
        return (tf.fill([x.shape[0]], 7.0), tf.fill(x.shape, 1.0),
                tf.zeros([x.shape[0], 2]))

    loss, grad = common.eot_loss_gradient(Own(), self.x, self.y,
                                          common.ce_loss, eot_samples=2,
                                          chunk_size=3)
    self.assertEqual(calls, [3, 3])
    # Draw 1 (the first chunk) from the method, draw 2 from the tape:
    # CE −log σ(2), gradient 4 (σ(2) − 1).
    self.assertAllClose(loss, [(7.0 - np.log(self.p)) / 2] * 3)
    self.assertAllClose(grad, [[(1.0 + 4 * (self.p - 1)) / 2]] * 3)

  def test_bad_expectation_raises(self):
    with self.assertRaisesRegex(ValueError, "Received: expectation='mean'"):
      self.run_eot("mean")
    with self.assertRaisesRegex(ValueError, "Received: chunk_size=0"):
      self.run_eot("loss", chunk_size=0)


class ParseEpsilonTest(tf.test.TestCase):

  def test_fractions_and_numbers(self):
    self.assertEqual(common.parse_epsilon("8/255"), 8 / 255)
    self.assertEqual(common.parse_epsilon("0.031"), 0.031)
    self.assertEqual(common.parse_epsilon("0"), 0.0)

  def test_bad_text_names_the_flag(self):
    for text in ("8/0", "eight", "8/255/2", "-0.1", "nan", ""):
      with self.assertRaisesRegex(ValueError, f"Received: eps={text!r}"):
        common.parse_epsilon(text, name="eps")


class ChunkTest(tf.test.TestCase):

  def test_chunk_fits_the_budget(self):
    self.assertEqual(common.eot_chunk_size(100, 50, memory_budget=1000), 10)
    self.assertEqual(common.eot_chunk_size(100, 5, memory_budget=1000), 5)
    self.assertEqual(common.eot_chunk_size(10**6, 5, memory_budget=1000), 1)
    self.assertEqual(common.eot_chunk_size(None, 7), 7)
    with self.assertRaisesRegex(ValueError, "Received: memory_budget=0"):
      common.eot_chunk_size(100, 5, memory_budget=0)

  def test_budget_sets_the_chunks(self):
    calls = []
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model_fn = lambda images: calls.append(images.shape[0]) or net(images)
    model_fn.bytes_per_image = lambda: 2 * common.activation_bytes(net)
    x = tf.ones([5, 4])
    # 2 x 12 bytes per image (Dense(3) output and its gradient): 2 per 60 B.
    common.eot_loss_gradient(model_fn, x, tf.zeros([5], tf.int32), common.ce_loss,
                             eot_samples=2, memory_budget=60)
    self.assertEqual(calls, [2, 2, 2, 2, 2])

  def test_margin_loss(self):
    logits = tf.constant([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    self.assertAllClose(common.margin_loss(logits, tf.constant([0, 0])), [-1.0, 5.0])


if __name__ == "__main__":
  tf.test.main()
