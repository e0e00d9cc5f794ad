"""The golden evaluation (`tests/golden.py`) reproduces its kept outputs.

Reruns the two evaluations of `tests/golden/` with this checkout's
`examples/attack_eval.py` and compares every unit file (names included: they
carry the budget and model digests, so a resumed evaluation from before a
change still finds its units), report.json, robustbench.json and
adversarial.npz, field by field, timings and the machine excepted.

Every field is compared exactly (bit for bit for arrays) except the few float
diagnostics in `TOLERANCES`, which are sums over float32 gradients: their last
bits depend on the order in which the CPU's kernels add (oneDNN on an AVX-512
CPU, oneDNN on AVX2, TensorFlow's own kernels with oneDNN off all differ), so
they are compared within a stated tolerance. Exact by construction, and so
compared exactly:

- integers, booleans, strings, seeds, digests and the unit files' names;
- the decisions (`correct`, `clean_correct`, `robust`) and everything counted
  from them (accuracies, per-image means and successes, their Clopper-Pearson
  intervals, the epsilon and EOT curves, the doubled-budget reruns);
- the images: `x` is the input, and `x_adv` comes out of elementwise
  arithmetic (a signed step, a projection, a clip; Square's ±epsilon squares)
  with no reduction in it, so it is the same bits on every CPU for the same
  decisions (gradient signs, accepted queries, APGD's step halvings). When one
  of those decisions differs, pixels move by a step, not by ulps: a tolerance
  of a few ulps would absorb nothing and one of a step would hide a change.
  Measured: bit-identical with `ONEDNN_MAX_CPU_ISA=AVX2` and with
  `TF_ENABLE_ONEDNN_OPTS=0`.

The Makefile's `pytest-portable` reruns this test with oneDNN off, so a field
that starts to depend on the kernels shows in CI.
"""

import math
import os
import re
import tempfile

import numpy as np
import tensorflow as tf

from tests import golden

# Relative tolerance of the float diagnostics below (about 84 float32
# epsilons). Measured: with ONEDNN_MAX_CPU_ISA=AVX2 or TF_ENABLE_ONEDNN_OPTS=0
# the relative variances moved by at most 7.4e-7 (6 epsilons; 0.0076862080 ->
# 0.0076862052 on an AVX2 EPYC); the tolerance is 13 times that. Why that
# size: the gradients carry a relative error of a few epsilons from the order
# of the sums in f_b's and f_a's products, and the relative variance
# mean_k |g_k - m|^2 / |m|^2 subtracts nearly equal vectors (|g_k - m| is
# 5-9% of |m| here), which magnifies that error up to 2 / sqrt(0.0028) = 38
# times. A change of behaviour moves these figures by more: even the
# smallest mutation tried, the diagnostic walk's step epsilon / 4 ->
# epsilon / 3.9, moved a relative variance by 6.3e-5 relative (85 times the
# kernels' difference), and fails.
REDUCTION_RTOL = 1e-5
# A cosine near 1 (0.997-0.9995 here) is a float32 whose ulp is 6e-8; the
# kernels moved it by one ulp. The tolerance, eight such ulps (4 epsilons,
# 4.8e-7), is under 1e-3 of its informative part 1 - cos (5.8e-4 to 2.5e-3
# here), so a change that moves 1 - cos by 0.1% fails.
COSINE_ATOL = 4 * float(np.finfo(np.float32).eps)

# (regular expression on the field's path, absolute tolerance, relative
# tolerance): the float diagnostics computed by reductions over float32
# gradients. Every other field is compared exactly.
TOLERANCES = (
    (r"/report\.json/extras/eot_gradients/relative_variance\[\d+\]$", 0.0,
     REDUCTION_RTOL),
    (r"/report\.json/extras/eot_gradients/cosine\[\d+\]$", COSINE_ATOL, 0.0),
    (r"/report\.json/extras/gradients/[^/]+/mean_abs$", 0.0, REDUCTION_RTOL),
)


def tolerance(where):
  """`(atol, rtol)` of the field at path `where`, or None: compared exactly."""
  for pattern, atol, rtol in TOLERANCES:
    if re.search(pattern, where):
      return atol, rtol
  return None


class GoldenTest(tf.test.TestCase):

  def assert_same(self, expected, actual, where):
    if isinstance(expected, dict):
      self.assertIsInstance(actual, dict, where)
      self.assertEqual(sorted(expected), sorted(actual), where)
      for key in expected:
        self.assert_same(expected[key], actual[key], f"{where}/{key}")
    elif isinstance(expected, list):
      self.assertIsInstance(actual, list, where)
      self.assertEqual(len(expected), len(actual), where)
      for index, (item, other) in enumerate(zip(expected, actual)):
        self.assert_same(item, other, f"{where}[{index}]")
    elif isinstance(expected, np.ndarray):
      self.assertEqual(expected.dtype, actual.dtype, where)
      self.assertEqual(expected.shape, actual.shape, where)
      self.assertTrue(np.array_equal(expected, actual), where)
    elif isinstance(expected, float) and tolerance(where) is not None:
      atol, rtol = tolerance(where)
      self.assertIsInstance(actual, float, where)
      self.assertTrue(math.isfinite(expected) and math.isfinite(actual),
                      f"{where}: {expected} vs {actual}")
      self.assertLessEqual(abs(actual - expected), atol + rtol * abs(expected),
                           f"{where}: {expected} vs {actual} (atol {atol}, "
                           f"rtol {rtol})")
    else:
      self.assertEqual(type(expected), type(actual), where)
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

  def test_only_float_diagnostics_have_a_tolerance(self):
    # The decisions, counts, images and seeds stay exact.
    for where in ("defended/report.json/attacks[0]/mean_accuracy",
                  "defended/report.json/extras/accuracy_vs_eot/2",
                  "defended/units/square.b00000.npz/x_adv",
                  "defended/adversarial.npz/correct",
                  "defended/report.json/clean/strict_accuracy_ci95[0]"):
      self.assertIsNone(tolerance(where), where)
    self.assertEqual(
        tolerance("defended/report.json/extras/eot_gradients/cosine[3]"),
        (COSINE_ATOL, 0.0))
    self.assertEqual(tolerance(
        "defended/report.json/extras/eot_gradients/relative_variance[0]"),
                     (0.0, REDUCTION_RTOL))

  def test_a_tolerated_field_still_fails_beyond_its_tolerance(self):
    where = "defended/report.json/extras/eot_gradients/relative_variance[0]"
    value = 0.007686208002269268
    self.assert_same(value, 0.0076862052, where)  # An AVX2 CPU's value.
    with self.assertRaises(AssertionError):
      self.assert_same(value, value * (1 + 2 * REDUCTION_RTOL), where)
    with self.assertRaises(AssertionError):  # Exact elsewhere.
      self.assert_same(0.25, 0.25 + 1e-12, "defended/report.json/clean/"
                       "mean_accuracy")


if __name__ == "__main__":
  tf.test.main()
