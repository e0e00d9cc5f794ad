"""Tests of examples/compare_apgd.py without the peer: scoring and the table."""

from unittest import mock

import numpy as np
import tensorflow as tf

from examples import compare_apgd
from tests import attack_properties


class CompareApgdTest(tf.test.TestCase):

  def test_without_the_peer_one_line_names_the_install(self):
    with mock.patch.object(compare_apgd.importlib.util, "find_spec",
                           return_value=None):
      self.assertEqual(compare_apgd.missing_peer(),
                       "pip install torch pyautoattack")

  def test_robust_needs_clean_and_adversarial_correct(self):
    model = attack_properties.tiny_model()
    x, _ = attack_properties.tiny_batch()
    y = np.argmax(model(x), -1).astype(np.int32)
    y[0] = (y[0] + 1) % 3  # Wrong on the clean image: never robust.
    self.assertAllEqual(compare_apgd.robust(model, x, x, y, 0.0),
                        [False] + [True] * 5)
    with self.assertRaisesRegex(ValueError, "epsilon=0.01"):
      compare_apgd.robust(model, x, x + 0.02, y, 0.01)

  def test_rows_hold_every_configuration_and_attack(self):
    model = attack_properties.tiny_model()
    x, _ = attack_properties.tiny_batch()
    y = np.argmax(model(x), -1).astype(np.int32)
    unmoved = lambda model, x, y, epsilon, steps, loss, seed: x
    rows = compare_apgd.compare(
        model, x, y, {"ours": compare_apgd.ours_apgd, "unmoved": unmoved},
        epsilons=[0.3], steps_list=[2, 4], losses=["ce"], seeds=[0, 1])
    self.assertEqual([(r["loss"], r["steps"]) for r in rows], [("ce", 2), ("ce", 4)])
    for row in rows:
      self.assertEqual(row["unmoved"], [1.0, 1.0])
      self.assertLen(row["ours"], 2)
      self.assertLess(max(row["ours"]), 1.0)  # APGD at ε = 0.3 fools some.


if __name__ == "__main__":
  tf.test.main()
