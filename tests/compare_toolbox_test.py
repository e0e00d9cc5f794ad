"""Tests of examples/compare_toolbox.py: EOT logits and the per-example comparison."""

import numpy as np
import tensorflow as tf

from examples import compare_toolbox
from tests import attack_properties


class EotLogitsTest(tf.test.TestCase):

  def test_mean_over_tiled_draws(self):
    calls = []

    def model_fn(x):
      calls.append(int(x.shape[0]))
      # Copy k of the tiled batch gets offset k: the mean offset is (K-1)/2.
      offsets = tf.repeat(tf.range(3, dtype=tf.float32), tf.shape(x)[0] // 3)
      return tf.reshape(x, [tf.shape(x)[0], -1])[:, :2] + offsets[:, None]

    x = tf.constant(np.arange(8, dtype=np.float32).reshape(2, 2, 2, 1))
    logits = compare_toolbox.eot_logits_fn(model_fn, 3)(x)
    self.assertEqual(calls, [6])
    self.assertAllClose(logits, [[1.0, 2.0], [5.0, 6.0]])


class CompareTest(tf.test.TestCase):

  def test_plain_model_against_its_own_report(self):
    model = attack_properties.tiny_model()
    x, _ = attack_properties.tiny_batch(batch=8)
    y = np.argmax(model(x), axis=-1).astype(np.int32)
    budget = {"epsilon": 0.3, "steps": 5, "eot_samples": 1,
              "value_range": [0.0, 1.0]}
    report = {"seed": 0, "draws": 1, "budget": budget,
              "meta": {"data": "synthetic"},
              "worst_case": {"robust": [1] * 8}}
    result = compare_toolbox.compare(model, report, x, y)
    self.assertEqual(set(result["peer_attacks"]),
                     {"cleverhans_pgd", "cleverhans_mim"})
    pgd = result["peer_attacks"]["cleverhans_pgd"]
    # The report claims every image robust; PGD at 0.3 fools some of them, so
    # the comparison must count them and deny "at least as strong".
    self.assertGreater(pgd["fooled_by_peer_only"], 0)
    self.assertEqual(pgd["fooled_by_peer_only"],
                     round((1.0 - pgd["strict_accuracy"]) * 8))
    self.assertFalse(result["suite_at_least_as_strong"])
