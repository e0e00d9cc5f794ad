"""Tests of attacks.verdict: a verdict word that cannot overstate its figure.

COMPLETE only at the reference budget with a convergence check run and
passed and no masking sign; UPPER BOUND for a sound figure short of that;
SUSPECT for a masking sign (a masked layer no BPDA bridges among them);
INCOMPLETE when an attack raised. Each state has its own exit status.
"""

import types

import tensorflow as tf

from attacks import evaluation
from attacks import suite
from attacks import verdict

OK, FLAG, NOT_RUN = verdict.OK, verdict.TRIPPED, verdict.NOT_RUN


def result(weaker=(), epsilon=8 / 255):
  return types.SimpleNamespace(weaker_than_reference=list(weaker),
                               budget=suite.Budget(epsilon=epsilon))


def flags(steps=OK, restarts=NOT_RUN, eot=NOT_RUN, **others):
  made = [verdict.Flag("converged-in-steps", steps, ""),
          verdict.Flag("converged-in-restarts", restarts, ""),
          verdict.Flag("converged-in-eot_samples", eot, "")]
  return made + [verdict.Flag(name.replace("_", "-"), status, "")
                 for name, status in others.items()]


def state(suite_result, made, failed=None):
  return verdict.verdict(failed or {}, made,
                         verdict.shortfalls(suite_result, made))


class StatesTest(tf.test.TestCase):

  def test_complete_needs_reference_budget_and_a_passed_convergence_check(self):
    self.assertEqual(verdict.shortfalls(result(), flags()), [])
    self.assertEqual(state(result(), flags()), suite.COMPLETE)

  def test_fewer_images_are_not_a_shortfall(self):
    images = [{"field": "images", "used": 100, "reference": 10000}]
    self.assertEqual(state(result(images), flags()), suite.COMPLETE)

  def test_each_shortfall_makes_an_upper_bound(self):
    below = [{"field": "steps", "used": 20, "reference": 100},
             {"field": "eot_samples", "used": 4, "reference": 20}]
    cases = {
        "steps 20 (ref. 100)": (result(below), flags()),
        "epsilon 0": (result(epsilon=0.0), flags()),
        "not converged (converged-in-steps)": (result(), flags(steps=FLAG)),
        "convergence not shown": (result(), flags(steps=NOT_RUN)),
        "EOT mean gradient dominated by noise": (
            result(), flags(eot_gradient_noise=FLAG)),
    }
    for reason, (suite_result, made) in cases.items():
      self.assertEqual(state(suite_result, made), suite.UPPER_BOUND, reason)
      self.assertTrue(any(r.startswith(reason) for r in
                          verdict.shortfalls(suite_result, made)),
                      (reason, verdict.shortfalls(suite_result, made)))
    self.assertEqual(verdict.shortfalls(result(below), flags())[:2],
                     ["steps 20 (ref. 100)", "eot_samples 4 (ref. 20)"])

  def test_masking_and_failures_outrank_an_upper_bound(self):
    below = [{"field": "steps", "used": 20, "reference": 100}]
    masked = flags(gradient_masking=FLAG)
    self.assertEqual(state(result(below), masked), suite.SUSPECT)
    self.assertEqual(state(result(below), masked, {"apgd_ce": "boom"}),
                     suite.INCOMPLETE)
    # A flag that is no masking sign and no shortfall changes nothing.
    self.assertEqual(state(result(), flags(robust_le_clean=FLAG)),
                     suite.COMPLETE)

  def test_every_state_has_its_own_exit_status(self):
    statuses = {name: evaluation.exit_status(types.SimpleNamespace(
        failed={"a": "e"} if name == suite.INCOMPLETE else {}, verdict=name))
                for name in suite.STATES}
    self.assertEqual(statuses, {suite.COMPLETE: 0, suite.INCOMPLETE: 1,
                                suite.SUSPECT: 2, suite.UPPER_BOUND: 4})
    self.assertEqual(evaluation.exit_status(types.SimpleNamespace(
        failed={"a": "e"}, verdict=suite.INCOMPLETE), keep_going=True), 0)


class MaskedLayersFlagTest(tf.test.TestCase):

  def checks(self, masked=None, wrapped=None, whole="ok"):
    return {"masked_layers": masked or {}, "bpda_layers": wrapped or {},
            "whole_gradient": whole}

  def test_wrapped_layers_pass_and_bare_ones_trip(self):
    masked = {"q": "input gradient shattered", "round": "input gradient None"}
    flag = verdict.check_masked_layers(self.checks(masked, {"q": "detected"}))
    self.assertTrue(flag.tripped)
    self.assertIn("round (input gradient None)", flag.message)
    self.assertNotIn("q (", flag.message)
    wrapped = dict.fromkeys(masked, "detected")
    self.assertEqual(verdict.check_masked_layers(
        self.checks(masked, wrapped)).status, OK)
    self.assertIn("masked-layers", verdict.MASKING_SIGNS)

  def test_a_whole_model_gradient_without_a_layer_trips(self):
    flag = verdict.check_masked_layers(self.checks(whole="zero"))
    self.assertTrue(flag.tripped)
    self.assertIn("(whole model) (input gradient zero", flag.message)
    self.assertEqual(verdict.check_masked_layers(self.checks()).status, OK)
    self.assertEqual(verdict.check_masked_layers(None).status, NOT_RUN)


if __name__ == "__main__":
  tf.test.main()
