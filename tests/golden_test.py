"""The golden evaluation (`tests/golden.py`) reproduces its kept outputs.

Reruns the two evaluations of `tests/golden/` with this checkout's
`examples/attack_eval.py` and compares every unit file (names included: they
carry the budget and model digests, so a resumed evaluation from before a
change still finds its units), report.json, robustbench.json and
adversarial.npz, field by field and bit for bit, timings and the machine
excepted.
"""

import os
import tempfile

import numpy as np
import tensorflow as tf

from tests import golden


class GoldenTest(tf.test.TestCase):

  def assert_same(self, expected, actual, where):
    if isinstance(expected, dict):
      self.assertEqual(sorted(expected), sorted(actual), where)
      for key in expected:
        self.assert_same(expected[key], actual[key], f"{where}/{key}")
    elif isinstance(expected, np.ndarray):
      self.assertEqual(expected.dtype, actual.dtype, where)
      self.assertEqual(expected.shape, actual.shape, where)
      self.assertTrue(np.array_equal(expected, actual), where)
    else:
      self.assertEqual(expected, actual, where)

  def check(self, name):
    out = os.path.join(tempfile.mkdtemp(), name)
    golden.run(name, os.path.join(golden.GOLDEN, "inputs"), out)
    expected = golden.canonical(os.path.join(golden.GOLDEN, name))
    self.assert_same(expected, golden.canonical(out), name)

  def test_defended_evaluation_is_unchanged(self):
    self.check("defended")

  def test_plain_evaluation_is_unchanged(self):
    self.check("plain")


if __name__ == "__main__":
  tf.test.main()
