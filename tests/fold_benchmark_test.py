"""Tests of examples/fold_benchmark.py on a tiny f_b (no timing asserted)."""

import numpy as np
import tensorflow as tf

from adv_layer import models
from examples import fold_benchmark


class FoldBenchmarkTest(tf.test.TestCase):

  def test_nudged_copy_moves_each_kernel_by_one_ulp_only(self):
    f_b = models.small_vgg(width=0.125, seed=0)
    nudged = fold_benchmark.nudged_copy(f_b)
    for layer, copy in zip(f_b.layers, nudged.layers):
      for weight, weight_copy in zip(layer.weights, copy.weights):
        before, after = weight.numpy(), weight_copy.numpy()
        if weight.path.endswith("kernel"):
          self.assertAllEqual(after, np.nextafter(before, np.inf))
        else:
          self.assertAllEqual(after, before)

  def test_measure_rows(self):
    f_b = models.small_vgg(width=0.125, seed=0)
    fold_benchmark.randomize_batch_norm(f_b, seed=0)
    rows, matmul_rate = fold_benchmark.measure(
        f_b, [4], repeats=1, epsilon=0.2, steps=1, channels_first=False,
        matmul_size=64, seed=0)
    self.assertGreater(matmul_rate, 0)
    self.assertEqual([row[:2] for row in rows],
                     [(4, "original"), (4, "folded"), (4, "live fold"),
                      (4, "original, 2 half batches"),
                      (4, "original, kernels +1 ulp")])
    self.assertEqual(rows[0][3], 1.0)  # original's speed relative to itself.
    self.assertEqual([row[5] for row in rows[:4]], [1.0] * 4)  # One step.
    self.assertEqual(rows[3][2:5], (None, None, None))


if __name__ == "__main__":
  tf.test.main()
