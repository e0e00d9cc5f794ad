"""Tests of attacks.report: report.json / report.md / PNGs are written and parse."""

import dataclasses
import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

import adv_layer
from attacks import report
from attacks import sanity
from attacks import scoring
from attacks import suite
from tests import attack_properties

PNG_MAGIC = b"\x89PNG"


def hand_made_suite(failed=None, weaker=None):
  """Four images: A (white-box) fools {0, 1}, B (transfer) fools {2}.

  B fools image 2 in one of its two draws, A fools its images in both.
  """
  y = np.zeros(4, np.int32)
  clean = scoring.score_labels(np.zeros((2, 4), np.int32), y, seed=0)

  def run(name, kind, fooled, budget, draws_fooled=(0, 1)):
    predictions = np.zeros((2, 4), np.int32)
    predictions[np.ix_(draws_fooled, fooled)] = 1
    return suite.AttackResult(name, kind, f"{name} attack", budget,
                              scoring.score_labels(predictions, y, seed=0),
                              elapsed_s=2.0, f_b_passes=100, model_passes=10,
                              x_adv=np.full((4, 4, 4, 1), 0.5, np.float32),
                              seed=7)

  results = [run("A", suite.WHITE_BOX, [0, 1],
                 {"epsilon": 8 / 255, "steps": 10, "eot_samples": 4}),
             run("B", suite.TRANSFER, [2], {"epsilon": 8 / 255, "steps": 10},
                 draws_fooled=(1,))]
  budget = suite.Budget(steps=10, eot_samples=4)
  if weaker is None:
    weaker = suite.weaker_than_reference(budget, {"steps", "eot_samples"}, 4,
                                         2, defended=True)
  return suite.SuiteResult(
      clean=clean, results=results, skipped={"square": "not requested"},
      failed={"spsa": "ValueError: broken"} if failed is None else failed,
      worst=suite.worst_case(clean, results),
      worst_white_box=suite.worst_case(clean, results, kinds=(suite.WHITE_BOX,)),
      budget=budget, seed=0, draws=2, defended=True,
      weaker_than_reference=weaker)


class WriteReportTest(tf.test.TestCase):

  def new_dir(self):
    directory = tempfile.TemporaryDirectory()
    self.addCleanup(directory.cleanup)
    return directory.name

  def test_files_written_and_parse(self):
    directory = self.new_dir()
    flags = [sanity.Flag("large-epsilon", "FLAG", "accuracy 0.5 at 0.5"),
             sanity.Flag("gradient-masking", "ok", "no")]
    extras = {"reference_attack": "A",
              "accuracy_vs_epsilon": {"0.01": 0.75, "0.03": 0.5, "0.5": 0.0}}
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    paths, written = report.write_report(
        directory, hand_made_suite(), flags, extras,
        meta={"data": "CIFAR-10 (JPEG copy)", "model": "m.keras"},
        grid={"x": x, "g(x)": x + 0.1, "E[g(x)]": x, "x_adv": x},
        eot_curve={1: 0.6, 4: 0.5})
    self.assertCountEqual(paths, ["json", "md", "epsilon_png", "eot_png",
                                  "grid_png"])
    for key in ("epsilon_png", "eot_png", "grid_png"):
      with open(paths[key], "rb") as f:
        self.assertEqual(f.read(4), PNG_MAGIC)
    with open(paths["json"]) as f:
      data = json.load(f)
    self.assertEqual(json.loads(json.dumps(written)), data)
    self.assertEqual(data["extras"]["accuracy_vs_eot"], {"1": 0.6, "4": 0.5})
    self.assertEqual(data["meta"]["data"], "CIFAR-10 (JPEG copy)")
    self.assertEqual((data["seed"], data["images"], data["draws"]), (0, 4, 2))
    self.assertEqual(data["worst_case"]["strict_accuracy"], 0.25)
    self.assertEqual(data["worst_case"]["strongest"], "A")
    self.assertEqual(data["worst_case"]["per_example_success"],
                     [1.0, 1.0, 0.5, 0.0])
    self.assertEqual(data["worst_case_white_box"]["strict_accuracy"], 0.5)
    # 1 of 4 robust: Clopper-Pearson (0.0063, 0.8059).
    self.assertAllClose(data["worst_case"]["strict_accuracy_ci95"],
                        [0.00631, 0.80588], atol=5e-6)
    self.assertEqual(data["verdict"], "INCOMPLETE")
    self.assertEqual(data["weaker_than_reference"], [
        {"field": "steps", "used": 10, "reference": 100},
        {"field": "eot_samples", "used": 4, "reference": 20},
        {"field": "images", "used": 4, "reference": 10000},
        {"field": "draws", "used": 2, "reference": 20}])
    self.assertEqual(data["budget"]["query_draws"], 8)
    first = data["attacks"][0]
    self.assertEqual(first["budget"]["eot_samples"], 4)
    self.assertEqual((first["elapsed_s"], first["f_b_passes"],
                      first["f_b_passes_per_s"]), (2.0, 100, 50.0))
    self.assertEqual(first["robust"], [0, 0, 1, 1])
    self.assertEqual((first["seed"], first["scoring_seed"]), (7, 0))
    # 2 of 4: Clopper-Pearson (0.0676, 0.9324).
    self.assertAllClose(first["strict_accuracy_ci95"], [0.06759, 0.93241],
                        atol=5e-6)
    self.assertEqual(data["flags"][0]["status"], "FLAG")
    self.assertEqual(data["extras"]["accuracy_vs_eot"], {"1": 0.6, "4": 0.5})
    self.assertIn("tensorflow", data["machine"])
    with open(paths["md"]) as f:
      text = f.read()
    self.assertIn("| Attack | Kind | Budget | Mean acc. [95% CI] | Strict acc. "
                  "[95% CI] |", text)
    self.assertIn("| A | white-box | eps=8/255, steps=10, eot_samples=4 | 50.0% "
                  "[6.8, 93.2] | 50.0% [6.8, 93.2] | 2.00 | 100 | 50 |", text)
    # Mean 0.375: k = 1.5 of 4 images, Beta(1.5, 3.5) and Beta(2.5, 2.5)
    # quantiles (checked by numerical integration of the densities).
    self.assertIn("| **worst case, all attacks (A_rob)** | per example | by A | "
                  "37.5% [2.8, 87.7] | **25.0%** [0.6, 80.6] |", text)
    self.assertIn("fooled in every draw 2, in at least half 1, in fewer than "
                  "half 0, never 1.", text)
    self.assertIn("[FLAG] large-epsilon", text)
    self.assertIn("CIFAR-10 (JPEG copy)", text)
    self.assertIn("- square: not requested", text)
    self.assertIn("## Failed (not in the worst case: verdict INCOMPLETE)\n\n"
                  "- spsa: ValueError: broken", text)
    self.assertTrue(text.startswith(
        "# Robustness report\n\n**Verdict: INCOMPLETE.** Attacks that raised: "
        "spsa. The worst case below omits them"))
    self.assertIn("**WEAKER THAN REFERENCE:** steps 10 (reference 100), "
                  "eot_samples 4 (reference 20), draws 2 (reference 20).", text)
    # Fewer images widen the intervals; they are not a weaker attack.
    self.assertIn("Fewer images than the reference (4, reference 10000): "
                  "wider intervals, not a weaker attack.", text)
    self.assertEqual(data["failed"], {"spsa": "ValueError: broken"})
    # A and B are not registry attacks: the whole preset is missing.
    adaptive = len(suite.PRESETS["adaptive"])
    self.assertIn(f"**Not run:** {adaptive} attacks of the `adaptive` preset "
                  "that apply to this model: pgd_restarts_bpda_identity, ", text)

  def test_optional_plots_skipped_without_data(self):
    directory = self.new_dir()
    paths, _ = report.write_report(directory, hand_made_suite(), [])
    self.assertCountEqual(paths, ["json", "md"])
    self.assertCountEqual(os.listdir(directory), ["report.json", "report.md"])

  def test_print_summary_reads_json(self):
    directory = self.new_dir()
    paths, _ = report.write_report(directory, hand_made_suite(),
                                   [sanity.Flag("a", "not run", "b")])
    text = report.print_summary(paths["json"])
    self.assertIn("| B | transfer |", text)
    self.assertTrue(text.startswith("**Verdict: INCOMPLETE.**"))
    self.assertIn("**WEAKER THAN REFERENCE:** steps 10", text)
    self.assertTrue(text.endswith("[not run] a: b"))

  def test_complete_run_at_reference_strength_says_so(self):
    converged = [sanity.Flag("converged-in-steps", sanity.OK, "")]
    text = report.print_summary(report.report_dict(
        hand_made_suite(failed={}, weaker=[]), converged))
    self.assertTrue(text.startswith(
        "Verdict: COMPLETE (every planned attack ran at the reference "
        "budget; convergence checks passed)."))
    self.assertIn("Budget at reference strength.", text)
    self.assertNotIn("WEAKER", text)

  def test_a_run_without_convergence_shown_is_an_upper_bound(self):
    written = report.report_dict(hand_made_suite(failed={}, weaker=[]), [])
    self.assertEqual(written["verdict"], suite.UPPER_BOUND)
    self.assertEqual(written["upper_bound"], [
        "convergence not shown (no 2x steps, restarts or EOT rerun ran)"])
    text = report.print_summary(written)
    self.assertTrue(text.startswith("**Verdict: UPPER BOUND.** Every planned "
                                    "attack ran"), text)
    self.assertNotIn("COMPLETE", text)

  def test_full_adaptive_preset_says_so(self):
    suite_result = hand_made_suite(failed={})
    names = suite.PRESETS["adaptive"]
    suite_result.results = [dataclasses.replace(suite_result.results[0],
                                                name=name) for name in names]
    text = report.print_summary(report.report_dict(suite_result, []))
    self.assertIn("Every attack of the `adaptive` preset that applies to this "
                  "model ran.", text)
    self.assertNotIn("Not run", text)


  def test_sanity_runs_on_fewer_images_are_named(self):
    suite_result = hand_made_suite()
    images = suite_result.clean.images
    text = report.markdown(report.report_dict(
        suite_result, [], extras={"sanity_images": images - 1}))
    self.assertIn(f"used the first {images - 1} of the {images} images", text)
    text = report.markdown(report.report_dict(
        suite_result, [], extras={"sanity_images": images}))
    self.assertNotIn("used the first", text)


class SuccessHistogramTest(tf.test.TestCase):

  def test_bins(self):
    counts = report.success_histogram([0.0, 0.0, 0.25, 0.5, 0.95, 1.0])
    self.assertEqual(counts, {"never": 2, "below_half": 1, "half_or_more": 2,
                              "always": 1})


class TransformViewsTest(tf.test.TestCase):

  def test_views_stay_in_the_transform_ball(self):
    layer = adv_layer.AdversarialTransform(attack_properties.tiny_model(),
                                           epsilon=0.2, steps=2, seed=0)
    keras.Sequential([keras.Input((4, 4, 1)), layer])
    x, _ = attack_properties.tiny_batch(batch=3)
    g_x, mean_g_x = report.transform_views(layer, x, samples=8)
    self.assertEqual(g_x.shape, x.shape)
    self.assertEqual(mean_g_x.shape, x.shape)
    self.assertLessEqual(np.abs(g_x - x).max(), 0.2 + 1e-6)
    self.assertLessEqual(np.abs(mean_g_x - x).max(), 0.2 + 1e-6)
    self.assertGreater(np.abs(g_x - x).max(), 0.0)


if __name__ == "__main__":
  tf.test.main()
