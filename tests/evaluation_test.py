"""Tests of attacks.evaluation: any Keras defense, evaluated from Python.

Tiny models on 4x4x1 images, each labelled with its own clean predictions
(clean accuracy 100% before any attack): a randomized one (noise at
inference) gets EOT and R draws without being told; one behind a rounding
layer (input gradient None) gets identity BPDA, and its attack succeeds
where the plain-gradient one cannot move; the same model with BPDA turned
off, or with a zero-gradient layer, is never reported COMPLETE.
"""

import os
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf

import adv_layer
from attacks import evaluation
from attacks import model_checks
from attacks import plan as plan_lib
from attacks import suite
from attacks.defenses import layers as defense_layers
from tests import attack_properties

STEP = 1 / 32  # The rounding grid: one step is about epsilon (8/255).


@keras.saving.register_keras_serializable(package="evaluation_test")
class Rounding(keras.layers.Layer):
  """Rounds to the grid; TensorFlow gives its input gradient as None."""

  def call(self, inputs):
    return tf.round(inputs / STEP) * STEP


@keras.saving.register_keras_serializable(package="evaluation_test")
class FlatRounding(keras.layers.Layer):
  """Rounds to the grid with an exactly zero input gradient."""

  def call(self, inputs):
    return tf.stop_gradient(tf.round(inputs / STEP) * STEP) + 0.0 * inputs


@keras.saving.register_keras_serializable(package="evaluation_test")
class Noise(keras.layers.Layer):
  """Gaussian noise at inference too, from a seeded generator."""

  def __init__(self, seed=0, **kwargs):
    super().__init__(**kwargs)
    self.seed = seed
    self.generator = keras.random.SeedGenerator(seed)

  def call(self, inputs):
    return inputs + 0.05 * keras.random.normal(tf.shape(inputs),
                                               seed=self.generator)

  def get_config(self):
    return super().get_config() | {"seed": self.seed}


class TiledRounding(keras.layers.Layer):
  """Two copies of the rounded channel: masked, and the shape changes."""

  def call(self, inputs):
    return tf.round(tf.concat([inputs, inputs], -1) / STEP) * STEP

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], 2 * input_shape[-1])


@tf.custom_gradient
def _shattered_round(inputs):
  """Rounds to the grid; its gradient oscillates with the input, as a
  sawtooth's would (Athalye et al. 2018's shattered gradients): non-zero,
  finite, and no guide to the rounding's slope."""
  def backward(upstream):
    return upstream * tf.sin(inputs * 997.0) * 50.0
  return tf.round(inputs / STEP) * STEP, backward


@keras.saving.register_keras_serializable(package="evaluation_test")
class ShatteredRounding(keras.layers.Layer):
  """Rounds to the grid with a shattered input gradient."""

  def call(self, inputs):
    return _shattered_round(inputs)


@keras.saving.register_keras_serializable(package="evaluation_test")
class Smooth(keras.layers.Layer):
  """A smooth layer (a soft staircase): must never be flagged."""

  def call(self, inputs):
    return inputs + 0.01 * tf.sin(inputs * 6.0)


class RoundingClassifier(keras.Model):
  """A subclassed model (no layer graph) that rounds before a dense layer."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.flatten = keras.layers.Flatten()
    self.dense = keras.layers.Dense(3, kernel_initializer="ones")

  def call(self, inputs):
    return self.dense(self.flatten(tf.round(inputs / STEP) * STEP))


class Wrapper(keras.Model):
  """A subclassed model around another model (no get_config of its own)."""

  def __init__(self, inner, **kwargs):
    super().__init__(**kwargs)
    self.inner = inner

  def call(self, inputs):
    return self.inner(inputs)


def defended(front):
  """`front` in front of the tiny classifier."""
  classifier = attack_properties.tiny_model(seed=5, classes=3)
  return keras.Sequential([keras.Input((4, 4, 1)), front] +
                          classifier.layers)


def own_labels(model, count=8):
  """Images and the model's own clean predictions (one pinned draw)."""
  x, _ = attack_properties.tiny_batch(seed=6, batch=count)
  return x, np.argmax(model(x, training=False), axis=-1).astype(np.int32)


# A radius of eight grid steps: the tiny classifier's margins need it.
BUDGET = suite.Budget(epsilon=8 * STEP, steps=10, eot_samples=4, queries=20,
                      query_draws=2)


def run_options(**options):
  return dict(dict(draws=3, unit_size=8, eot_curve=(), grid_images=0,
                   convergence=False, num_classes=3), **options)


def run(model, x, y, attacks, **options):
  return evaluation.evaluate(model, x, y, attacks=attacks, budget=BUDGET,
                             report_dir=tempfile.mkdtemp(),
                             **run_options(**options))


class RandomizedModelTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    model = defended(Noise(seed=1))
    x, y = own_labels(model)
    cls.result = run(model, x, y, ["apgd_ce_bpda_identity", "square",
                                   "apgd_ce_expected_bpda_identity"])

  def test_randomness_is_detected_and_stated(self):
    self.assertTrue(self.result.checks.randomized)
    self.assertIn("disagree", self.result.checks.randomized_why)
    self.assertTrue(self.result.checks.replay_exact)
    self.assertTrue(self.result.report["randomized"])

  def test_eot_query_draws_and_r_as_requested(self):
    budgets = {row["name"]: row["budget"] for row in self.result.rows}
    self.assertEqual(budgets["apgd_ce"]["eot_samples"], 4)
    self.assertEqual(budgets["square"]["query_draws"], 2)
    self.assertEqual(self.result.suite_result.draws, 3)
    self.assertEqual(self.result.suite_result.clean.correct.shape, (3, 8))

  def test_expected_output_attack_runs_on_a_randomized_model(self):
    self.assertIn("apgd_ce_expected", [r["name"] for r in self.result.rows])

  def test_weaker_than_reference_lists_the_random_fields(self):
    fields = {w["field"] for w in self.result.suite_result.weaker_than_reference}
    self.assertContainsSubset({"eot_samples", "query_draws", "draws"}, fields)

  def test_budget_line_is_the_budget_that_ran(self):
    with open(self.result.paths["md"]) as f:
      text = f.read()
    self.assertIn("eot_samples=4, queries=20, query_draws=2.", text)


class NonDifferentiableModelTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = defended(Rounding(name="rounding"))
    cls.x, cls.y = own_labels(cls.model)
    cls.result = run(cls.model, cls.x, cls.y, ["apgd_ce_bpda_identity"])

  def test_the_masked_layer_is_found_and_wrapped(self):
    checks = self.result.checks
    self.assertEqual(checks.masked_layers, {"rounding": "input gradient None"})
    self.assertEqual(list(checks.bpda_layers), ["rounding"])
    self.assertFalse(checks.randomized)
    self.assertIn("BPDA (identity backward) applied to: rounding",
                  open(self.result.paths["md"]).read())

  def test_bpda_attack_succeeds_where_plain_gradients_fail(self):
    rows = {row["name"]: row for row in self.result.rows}
    self.assertEqual(list(rows), ["apgd_ce", suite.NO_BPDA_SPEC])
    self.assertEqual(rows["apgd_ce"]["budget"]["bpda_layers"], ["rounding"])
    # Without BPDA the gradient is None (read as zero): nothing moves.
    self.assertEqual(rows[suite.NO_BPDA_SPEC]["strict_accuracy"], 1.0)
    self.assertLess(rows["apgd_ce"]["strict_accuracy"], 0.5)
    self.assertNotEqual(self.result.verdict, suite.INCOMPLETE)

  def test_bpda_off_is_suspect(self):
    result = run(self.model, self.x, self.y, ["apgd_ce_bpda_identity"],
                 bpda="off")
    self.assertEqual(result.checks.bpda_layers, {})
    self.assertEqual(result.verdict, suite.SUSPECT)
    self.assertIn("zero-or-nan-gradients", result.report["masking_signs"])
    self.assertEqual(evaluation.exit_status(result), 2)

  def test_zero_gradient_model_without_bpda_is_not_complete(self):
    model = defended(FlatRounding(name="flat"))
    x, y = own_labels(model)
    result = run(model, x, y, ["apgd_ce_bpda_identity", "square"],
                 bpda="off")
    self.assertEqual(result.checks.masked_layers,
                     {"flat": "input gradient zero"})
    self.assertNotEqual(result.verdict, suite.COMPLETE)
    self.assertTrue(result.report["verdict"].startswith("SUSPECT"))
    with open(result.paths["md"]) as f:
      self.assertIn("Verdict: SUSPECT (gradient masking)", f.read())


class MaskedGradientsThatAreNotZeroTest(tf.test.TestCase):
  """Shattered gradients and raw ops: named, BPDA where a layer exists."""

  def test_a_shattered_layer_is_found_wrapped_and_broken(self):
    model = defended(ShatteredRounding(name="shattered"))
    x, y = own_labels(model)
    result = run(model, x, y, ["apgd_ce_bpda_identity"])
    self.assertEqual(result.checks.masked_layers,
                     {"shattered": model_checks.reason_text("shattered")})
    self.assertEqual(list(result.checks.bpda_layers), ["shattered"])
    rows = {row["name"]: row for row in result.rows}
    # BPDA breaks it; the shattered gradient itself does not.
    self.assertLess(rows["apgd_ce"]["strict_accuracy"], 0.5)
    self.assertGreater(rows[suite.NO_BPDA_SPEC]["strict_accuracy"],
                       rows["apgd_ce"]["strict_accuracy"])
    self.assertIn("shattered", open(result.paths["md"]).read())

  def test_a_smooth_layer_is_not_flagged(self):
    model = defended(Smooth(name="smooth"))
    x, _ = own_labels(model)
    checks = model_checks.check_model(model, x)
    self.assertEqual((checks.masked_layers, checks.whole_gradient), ({}, "ok"))

  def test_raw_ops_with_a_zero_gradient_are_named_and_not_complete(self):
    inputs = keras.Input((4, 4, 1))
    rounded = keras.ops.round(inputs / STEP) * STEP
    classifier = attack_properties.tiny_model(seed=5, classes=3)
    model = keras.Model(inputs, classifier(rounded))
    x, y = own_labels(model)
    result = run(model, x, y, ["apgd_ce_bpda_identity"])
    self.assertEqual(result.checks.whole_gradient, "none")
    (masked,) = result.checks.masked_layers  # "round", or "round_1", ...
    self.assertTrue(masked.startswith("round"), masked)
    self.assertEqual(result.checks.bpda_layers, {})
    self.assertEqual(result.verdict, suite.SUSPECT)
    self.assertIn("masked-layers", result.report["masking_signs"])


class ShapeChangingMaskedLayerTest(tf.test.TestCase):

  def test_a_layer_with_its_own_surrogate_is_wrapped_with_it(self):
    classifier = attack_properties.tiny_model(seed=5, shape=(4, 4, 16),
                                              classes=3)
    model = keras.Sequential(
        [keras.Input((4, 4, 1)),
         defense_layers.ThermometerEncoding(levels=16, name="thermometer")]
        + classifier.layers)
    x, y = own_labels(model)
    result = run(model, x, y, ["apgd_ce_bpda_identity"])
    why = ("input gradient None, detected; backward: SoftThermometer (the "
           "layer's own)")
    self.assertEqual(result.checks.masked_layers,
                     {"thermometer": "input gradient None"})
    self.assertEqual(result.checks.bpda_layers, {"thermometer": why})
    self.assertEqual(list(result.checks.notes), [])
    named = model_checks.check_model(model, x, bpda=["thermometer"])
    self.assertEqual(named.bpda_layers, {"thermometer": why.replace(
        ", detected", "")})
    with open(result.paths["md"]) as f:
      self.assertIn("BPDA (identity backward unless a surrogate is named) "
                    f"applied to: thermometer ({why}).", f.read())
    rows = {row["name"]: row for row in result.rows}
    # The model's own gradient is None: only the random start moves the
    # images without the surrogate; through it the attack succeeds.
    # (0.75 and 0.0 here).
    self.assertGreaterEqual(rows[suite.NO_BPDA_SPEC]["strict_accuracy"], 0.5)
    self.assertLess(rows["apgd_ce"]["strict_accuracy"], 0.5)

  def test_a_layer_without_one_is_stated_not_wrapped(self):
    classifier = attack_properties.tiny_model(seed=5, shape=(4, 4, 2),
                                              classes=3)
    model = keras.Sequential([keras.Input((4, 4, 1)),
                              TiledRounding(name="tiled")]
                             + classifier.layers)
    x, _ = own_labels(model)
    checks = model_checks.check_model(model, x)
    self.assertEqual(checks.masked_layers, {"tiled": "input gradient None"})
    self.assertEqual(checks.bpda_layers, {})
    self.assertIn("Layer tiled (input gradient None) changes the shape of "
                  "its input: identity BPDA does not apply",
                  " ".join(checks.notes))


class PrepareTest(tf.test.TestCase):
  """`prepare`: the checked, planned start that a program runs in pieces."""

  def test_two_shards_report_what_evaluate_reports(self):
    model = defended(Noise(seed=1))
    x, y = own_labels(model)
    attacks = ["apgd_ce_bpda_identity", "square"]
    whole = run(model, x, y, attacks, unit_size=4)
    prepared = evaluation.prepare(model, x, y, attacks, BUDGET,
                                  tempfile.mkdtemp(),
                                  **run_options(unit_size=4))
    self.assertTrue(prepared.checks.randomized)
    self.assertTrue(prepared.target.randomized)
    ran = [len(prepared.run(shard=plan_lib.Shard(2, i)).ran) for i in (0, 1)]
    self.assertEqual(ran, [3, 3])  # 2 blocks x (clean + 2 attacks), split.
    pieces = prepared.report({"data": "tiny"})
    self.assertEqual(pieces.verdict, whole.verdict)
    self.assertEqual(pieces.rows, whole.rows)
    self.assertAllEqual(pieces.worst["robust"], whole.worst["robust"])
    self.assertEqual(pieces.report["meta"]["model_checks"],
                     whole.report["meta"]["model_checks"])
    other = evaluation.prepare(attack_properties.tiny_model(seed=9, classes=3),
                               x, y, attacks, BUDGET, prepared.report_dir,
                               **run_options(unit_size=4))
    with self.assertRaisesRegex(ValueError, "ran on another model"):
      other.report({"data": "tiny"})

  def test_surrogates_are_made_once_the_checks_are_known(self):
    model = defended(Noise(seed=1))
    x, y = own_labels(model)
    surrogate = attack_properties.tiny_model(seed=7, classes=3)
    seen = []

    def with_surrogate(given, checks):
      seen.append((given, checks.randomized))
      return suite.Target(given, surrogate=surrogate)

    prepared = evaluation.prepare(model, x, y, ["blackbox_transfer"], BUDGET,
                                  tempfile.mkdtemp(),
                                  surrogates=with_surrogate, **run_options())
    self.assertEqual(seen, [(model, True)])
    self.assertIs(prepared.target.surrogate, surrogate)
    self.assertTrue(prepared.target.randomized)


class EvaluateArgumentsTest(tf.test.TestCase):

  def test_bad_options_raise(self):
    model = attack_properties.tiny_model()
    x, y = attack_properties.tiny_batch()
    with self.assertRaisesRegex(ValueError, "Received: randomized='maybe'"):
      evaluation.evaluate(model, x, y, budget="smoke", randomized="maybe")
    with self.assertRaisesRegex(ValueError, "Received: bpda='all'"):
      evaluation.evaluate(model, x, y, budget="smoke", bpda="all")
    with self.assertRaisesRegex(TypeError, "unexpected keyword"):
      evaluation.evaluate(model, x, y, budget="smoke", steps=3)

  def test_a_masked_layer_beside_a_transform_is_stated_not_wrapped(self):
    f_b = attack_properties.tiny_model(seed=2, classes=3)
    model = keras.Sequential([
        keras.Input((4, 4, 1)), Rounding(name="rounding"),
        adv_layer.AdversarialTransform(f_b, epsilon=0.1, steps=1, seed=0)]
        + attack_properties.tiny_model(seed=5, classes=3).layers)
    x, _ = own_labels(model)
    checks = model_checks.check_model(model, x)
    self.assertEqual(checks.masked_layers, {"rounding": "input gradient None"})
    self.assertEqual(checks.bpda_layers, {})
    self.assertIn("rounding (input gradient None) is not wrapped with BPDA",
                  " ".join(checks.notes))
    with self.assertRaisesRegex(ValueError, r"Received: bpda=\['rounding'\]"):
      model_checks.check_model(model, x, bpda=["rounding"])

  def test_a_masked_subclassed_model_is_stated_not_wrapped(self):
    model = RoundingClassifier()
    x, _ = own_labels(defended(Rounding()))
    checks = model_checks.check_model(model, x)
    self.assertEqual(checks.masked_layers,
                     {model.name: "input gradient None"})
    self.assertEqual(checks.bpda_layers, {})
    self.assertIn("cannot be wrapped with BPDA", " ".join(checks.notes))

  def test_bad_images_labels_and_draws_raise(self):
    model = attack_properties.tiny_model()
    x, y = attack_properties.tiny_batch(batch=8)
    cases = {
        "min(y)=-1": (x, np.where(np.arange(8) % 4 == 0, -1, y), {}),
        "not whole numbers": (x, y - 1e-4, {}),
        "y=None": (x, None, {}),
        "at least one image": (x[:0], y[:0], {}),
        "1 are NaN": (np.where(np.arange(x.size).reshape(x.shape) == 3,
                               np.nan, x), y, {}),
        "Received: draws=0": (x, y, {"draws": 0}),
        "Received: attacks=[]": (x, y, {"attacks": []}),
    }
    for phrase, (images, labels, extra) in cases.items():
      with self.assertRaisesRegex(ValueError, re.escape(phrase)):
        evaluation.evaluate(model, images, labels, **dict(
            dict(attacks="apgd_ce", budget="smoke"), **extra))

  def test_a_subclassed_model_wrapping_another_is_evaluated(self):
    inner = attack_properties.tiny_model(seed=5, classes=3)
    model = Wrapper(inner)
    x, y = own_labels(model)
    result = run(model, x, y, ["apgd_ce_bpda_identity"])
    self.assertEqual(result.verdict, suite.UPPER_BOUND)
    self.assertEqual(len(result.rows), 1)

  def test_a_named_layer_that_does_not_exist_raises(self):
    model = defended(Rounding(name="rounding"))
    x, _ = own_labels(model)
    with self.assertRaisesRegex(ValueError, "nope"):
      model_checks.check_model(model, x, bpda=["nope"])


if __name__ == "__main__":
  tf.test.main()
