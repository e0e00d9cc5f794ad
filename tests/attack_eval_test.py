"""Tests of examples/attack_eval.py: budget presets and overrides, exit status."""

import os
import tempfile
import types

import keras
import tensorflow as tf

from adv_layer import zoo
from attacks import suite
from examples import attack_eval

NO_OVERRIDES = dict.fromkeys(attack_eval.OVERRIDES)


class MakeBudgetTest(tf.test.TestCase):

  def test_default_preset_is_the_reference(self):
    budget, draws, images = attack_eval.make_budget("reference", 8 / 255,
                                                    NO_OVERRIDES)
    self.assertEqual(budget, suite.Budget())
    self.assertEqual((draws, images), (20, 10_000))

  def test_makefile_demo_flags_override_the_preset(self):
    # SMOKE_ATTACK_FLAGS of the Makefile's `make demo`.
    overrides = dict(NO_OVERRIDES, num_examples=20, steps=5, eot_samples=2,
                     queries=100, draws=2)
    budget, draws, images = attack_eval.make_budget("reference", 0.1,
                                                    overrides)
    self.assertEqual((budget.epsilon, budget.steps, budget.eot_samples,
                      budget.queries, budget.restarts, budget.query_draws),
                     (0.1, 5, 2, 100, 1, 8))
    self.assertEqual((draws, images), (2, 20))

  def test_smoke_preset(self):
    budget, draws, images = attack_eval.make_budget(
        "smoke", 8 / 255, dict(NO_OVERRIDES, steps=7))
    self.assertEqual((budget.steps, budget.eot_samples, budget.queries),
                     (7, 2, 100))
    self.assertEqual((draws, images), (2, 20))

  def test_bad_values_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: budget='huge'"):
      attack_eval.make_budget("huge", 8 / 255, NO_OVERRIDES)
    with self.assertRaisesRegex(ValueError, "Received: draws=0"):
      attack_eval.make_budget("smoke", 8 / 255, dict(NO_OVERRIDES, draws=0))
    with self.assertRaisesRegex(ValueError, "Received: query_draws=0"):
      attack_eval.make_budget("smoke", 8 / 255,
                              dict(NO_OVERRIDES, query_draws=0))


class ExitStatusTest(tf.test.TestCase):

  def test_a_failed_attack_exits_non_zero_unless_keep_going(self):
    failed = types.SimpleNamespace(failed={"spsa": "ValueError: x"})
    self.assertEqual(attack_eval.exit_status(failed, keep_going=False), 1)
    self.assertEqual(attack_eval.exit_status(failed, keep_going=True), 0)
    complete = types.SimpleNamespace(failed={})
    self.assertEqual(attack_eval.exit_status(complete, keep_going=False), 0)


class LoadModelTest(tf.test.TestCase):

  def test_a_zoo_name_loads_the_published_model(self):
    name = "cifar10/small_vgg_fgsm_rs"
    model = attack_eval.load_model("zoo:" + name)
    self.assertAllEqual(model.weights[0], zoo.load(name).weights[0])

  def test_a_path_loads_the_file(self):
    path = os.path.join(tempfile.mkdtemp(), "m.keras")
    saved = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    saved.save(path)
    self.assertAllEqual(attack_eval.load_model(path).weights[0],
                        saved.weights[0])

  def test_bad_specs_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: model=None"):
      attack_eval.load_model(None)
    with self.assertRaisesRegex(ValueError, "Received: name='cifar10/nope'"):
      attack_eval.load_model("zoo:cifar10/nope")
    with self.assertRaisesRegex(FileNotFoundError,
                                "Received: model='missing.keras'"):
      attack_eval.load_model("missing.keras")
    with self.assertRaisesRegex(FileNotFoundError,
                                "Received: surrogate='s.keras'"):
      attack_eval.load_model("s.keras", "surrogate")


if __name__ == "__main__":
  tf.test.main()
