"""Tests of attacks.sanity: each check trips on a made case, quiet on a clean one."""

import dataclasses
import types

import keras
import numpy as np
import tensorflow as tf

import adv_layer
from attacks import sanity
from attacks import scoring
from attacks import suite
from tests import attack_properties

EPSILON = 0.06


def mean_classifier():
  """Two classes on 4x4x1 images: class 0 iff the mean pixel exceeds 0.5."""
  model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(2)])
  kernel = np.stack([np.full(16, 1 / 16), np.full(16, -1 / 16)], 1)
  model.layers[-1].set_weights([kernel.astype(np.float32),
                                np.array([-0.5, 0.5], np.float32)])
  return model


def masked(classifier):
  """Stop-gradient preprocessing in front of `classifier`: zero input gradients."""
  return keras.Sequential([
      keras.Input((4, 4, 1)),
      keras.layers.Lambda(lambda x: 0.0 * x + tf.stop_gradient(x)),
      classifier])


def near_boundary_images():
  """Constant images 0.03 to 0.04 from the boundary; PGD at 0.06 flips all."""
  values = np.array([0.53, 0.54, 0.47, 0.46, 0.535, 0.465], np.float32)
  x = np.ones((6, 4, 4, 1), np.float32) * values[:, None, None, None]
  return x, (values < 0.5).astype(np.int32)


class PureChecksTest(tf.test.TestCase):

  def test_failures(self):
    flag = sanity.check_failures({"hsj": "ValueError: empty"})
    self.assertTrue(flag.tripped)
    self.assertEqual(flag.message, "hsj: ValueError: empty")
    self.assertEqual(sanity.check_failures({}).status, "ok")

  def test_robust_le_clean(self):
    self.assertTrue(sanity.check_robust_le_clean(0.5, {"a": 0.6}).tripped)
    flag = sanity.check_robust_le_clean(0.5, {"a": 0.5, "b": 0.1})
    self.assertEqual(flag.status, "ok")
    self.assertEqual(sanity.check_robust_le_clean(0.5, {}).status, "not run")

  def test_slack_is_named_in_the_message(self):
    flag = sanity.check_robust_le_clean(0.5, {"a": 0.55}, tolerance=0.1)
    self.assertEqual(flag.status, "ok")
    self.assertEqual(flag.message, "every attack <= clean accuracy 0.5000 "
                     "(slack 0.1000 for draw noise)")
    self.assertTrue(sanity.check_robust_le_clean(0.5, {"a": 0.65},
                                                 tolerance=0.1).tripped)

  def test_draw_noise(self):
    # Per image p = 1/2, 1, 0 over R = 2 draws: sum p (1 - p) = 1/4, so
    # 2 sqrt(2 * (1/4) / 2) / 3 = 1/3.
    score = scoring.score_labels([[0, 0, 1], [1, 0, 1]], [0, 0, 0])
    self.assertAllClose(sanity.draw_noise(score), 1 / 3)
    deterministic = scoring.score_labels([[0, 1], [0, 1]], [0, 0])
    self.assertEqual(sanity.draw_noise(deterministic), 0.0)

  def test_monotone_epsilon(self):
    rising = {2 / 255: 0.5, 4 / 255: 0.4, 8 / 255: 0.45, 16 / 255: 0.1}
    self.assertTrue(sanity.check_monotone_epsilon(rising).tripped)
    falling = {2 / 255: 0.5, 4 / 255: 0.4, 8 / 255: 0.4, 16 / 255: 0.1}
    self.assertEqual(sanity.check_monotone_epsilon(falling).status, "ok")
    self.assertEqual(sanity.check_monotone_epsilon({0.1: 0.3}).status, "not run")

  def test_large_epsilon(self):
    self.assertTrue(sanity.check_large_epsilon(0.10).tripped)
    self.assertEqual(sanity.check_large_epsilon(0.09).status, "ok")
    self.assertEqual(sanity.check_large_epsilon(None).status, "not run")

  def test_gradient_masking(self):
    flag = sanity.check_gradient_masking({"pgd": 0.4, "apgd": 0.3},
                                         {"square": 0.2, "transfer": 0.5})
    self.assertTrue(flag.tripped)
    self.assertIn("square", flag.message)
    quiet = sanity.check_gradient_masking({"pgd": 0.2}, {"square": 0.2})
    self.assertEqual(quiet.status, "ok")
    self.assertEqual(sanity.check_gradient_masking({}, {"a": 0.1}).status,
                     "not run")

  def test_gradients(self):
    good = {"nonfinite": 0, "zero_examples": 0, "images": 4}
    self.assertEqual(sanity.check_gradients({"bpda": good}).status, "ok")
    nan = dict(good, nonfinite=3)
    self.assertTrue(sanity.check_gradients({"bpda": good, "x": nan}).tripped)
    zero = dict(good, zero_examples=1)
    self.assertTrue(sanity.check_gradients({"unrolled": zero}).tripped)
    self.assertEqual(sanity.check_gradients({}).status, "not run")

  def test_convergence(self):
    self.assertTrue(sanity.check_convergence(0.5, 0.4, "steps").tripped)
    self.assertEqual(sanity.check_convergence(0.5, 0.5, "steps").status, "ok")
    self.assertEqual(sanity.check_convergence(None, None, "restarts").name,
                     "converged-in-restarts")

  def test_eot_gradients(self):
    noisy = {"samples": 4, "relative_variance": [2.0, 5.0],
             "cosine": [0.5, 0.2]}
    flag = sanity.check_eot_gradients(noisy)
    self.assertTrue(flag.tripped)
    self.assertIn("up to 1.250", flag.message)
    quiet = dict(noisy, relative_variance=[2.0, 4.0])
    self.assertEqual(sanity.check_eot_gradients(quiet).status, "ok")
    zero = dict(noisy, relative_variance=[None], cosine=[None])
    self.assertTrue(sanity.check_eot_gradients(zero).tripped)
    self.assertEqual(sanity.check_eot_gradients(None).status, "not run")

  def test_format_flags_prints_every_status(self):
    text = sanity.format_flags([sanity.Flag("a", "ok", "m1"),
                                sanity.Flag("b", "FLAG", "m2")])
    self.assertEqual(text, "[ok] a: m1\n[FLAG] b: m2")


class GradientStatsTest(tf.test.TestCase):

  def test_stop_gradient_counts_zero_examples(self):
    x, y = near_boundary_images()
    stats = sanity.gradient_stats(masked(mean_classifier()), x, y)
    self.assertEqual((stats["zero_examples"], stats["nonfinite"]), (6, 0))

  def test_plain_model_has_nonzero_gradients(self):
    x, y = near_boundary_images()
    stats = sanity.gradient_stats(mean_classifier(), x, y)
    self.assertEqual((stats["zero_examples"], stats["nonfinite"]), (0, 0))
    self.assertGreater(stats["mean_abs"], 0.0)

  def test_nonfinite_gradients_are_counted(self):
    model = keras.Sequential([keras.Input((4, 4, 1)),
                              keras.layers.Lambda(tf.sqrt), mean_classifier()])
    x = np.zeros((2, 4, 4, 1), np.float32)  # d sqrt / dx = inf at 0.
    stats = sanity.gradient_stats(model, x, np.array([0, 1]))
    self.assertEqual(stats["nonfinite"], 32)


def scaled_draws_fn(scales):
  """A 'random' model: copy k of a K-tiled batch has logits [c_k w.x, 0].

  The CE gradient for label 1 is then sigmoid(c_k w.x) c_k w: every draw's
  gradient is parallel to w, with length set by c_k.
  """
  w = np.linspace(-1.0, 1.0, 16).astype(np.float32)

  def model_fn(images):
    flat = tf.reshape(images, [tf.shape(images)[0], -1])
    count = tf.shape(images)[0] // len(scales)
    c = tf.repeat(tf.constant(scales, tf.float32), count)
    logit = c * tf.linalg.matvec(flat, tf.constant(w))
    return tf.stack([logit, tf.zeros_like(logit)], axis=-1)

  return model_fn, w


class EotGradientDiagnosticsTest(tf.test.TestCase):

  def test_parallel_draws_have_cosine_one_and_exact_spread(self):
    model_fn, w = scaled_draws_fn([1.0, 2.0, 4.0])
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    out = sanity.eot_gradient_diagnostics(model_fn, x, np.ones(2, np.int32),
                                          samples=3, steps=0)
    a = 0.5 * np.sum(w)  # w.x at x = 0.5.
    lengths = np.array([c / (1 + np.exp(-c * a)) for c in (1.0, 2.0, 4.0)])
    expected = np.mean((lengths - lengths.mean()) ** 2) / lengths.mean() ** 2
    self.assertAllClose(out["cosine"], [1.0], atol=1e-6)
    self.assertAllClose(out["relative_variance"], [expected], rtol=1e-4)
    self.assertEqual((out["samples"], out["steps"], out["images"]), (3, 0, 2))

  def test_deterministic_model_has_no_spread(self):
    out = sanity.eot_gradient_diagnostics(
        mean_classifier(), near_boundary_images()[0],
        near_boundary_images()[1], samples=2, steps=2, epsilon=EPSILON)
    self.assertLen(out["cosine"], 3)
    self.assertAllClose(out["cosine"], [1.0] * 3, atol=1e-6)
    self.assertAllClose(out["relative_variance"], [0.0] * 3, atol=1e-10)

  def test_opposite_draws_cancel(self):
    model_fn, _ = scaled_draws_fn([1.0, -1.0])
    x = np.zeros((1, 4, 4, 1), np.float32)  # w.x = 0: equal lengths.
    out = sanity.eot_gradient_diagnostics(model_fn, x, np.ones(1, np.int32),
                                          samples=2, steps=1)
    self.assertEqual(out["cosine"], [None, None])
    self.assertTrue(sanity.check_eot_gradients(out).tripped)

  def test_one_sample_raises(self):
    with self.assertRaisesRegex(ValueError, "Received: samples=1"):
      sanity.eot_gradient_diagnostics(mean_classifier(),
                                      *near_boundary_images(), samples=1)


class GradientMaskingSuiteTest(tf.test.TestCase):
  """A stop-gradient model trips the masking flag while transfer succeeds."""

  def run_checks(self, model, classifier, attacks=("bpda_identity_eot",
                                                    "blackbox_transfer"),
                 convergence=False):
    x, y = near_boundary_images()
    target = suite.Target(model, surrogate=classifier)
    budget = suite.Budget(epsilon=EPSILON, steps=5)
    result = suite.run_suite(target, x, y, list(attacks), budget, seed=0,
                             draws=2)
    flags, extras = sanity.run_checks(target, result, x, y,
                                      convergence=convergence)
    return result, {f.name: f for f in flags}, extras

  def test_masked_model_trips_masking_and_gradient_flags(self):
    classifier = mean_classifier()
    result, flags, _ = self.run_checks(masked(classifier), classifier)
    accuracy = {r.name: r.score.mean_accuracy for r in result.results}
    self.assertEqual(accuracy, {"pgd": 1.0, "blackbox_transfer": 0.0})
    self.assertTrue(flags["gradient-masking"].tripped)
    self.assertTrue(flags["zero-or-nan-gradients"].tripped)
    self.assertEqual(flags["converged-in-steps"].status, "not run")

  def test_plain_model_is_quiet(self):
    classifier = mean_classifier()
    result, flags, extras = self.run_checks(classifier, classifier)
    self.assertEqual(result.results[0].score.mean_accuracy, 0.0)
    for name in ("attacks-failed", "sanity-runs-failed", "robust<=clean",
                 "monotone-in-epsilon",
                 "large-epsilon",
                 "gradient-masking", "zero-or-nan-gradients"):
      self.assertEqual(flags[name].status, "ok", flags[name].message)
    self.assertEqual(extras["reference_attack"], "pgd")
    self.assertLen(extras["accuracy_vs_epsilon"], 5)

  def test_extra_runs_on_the_first_images(self):
    classifier = mean_classifier()
    x, y = near_boundary_images()
    target = suite.Target(classifier, surrogate=classifier)
    result = suite.run_suite(target, x, y, ["bpda_identity_eot",
                                            "blackbox_transfer"],
                             suite.Budget(epsilon=EPSILON, steps=5), seed=0,
                             draws=2)
    flags, extras = sanity.run_checks(target, result, x, y, convergence=True,
                                      images=2)
    flags = {f.name: f for f in flags}
    self.assertEqual(extras["sanity_images"], 2)
    self.assertEqual(extras["sanity_clean_accuracy"],
                     result.clean.correct[:, :2].mean())
    self.assertEqual(extras["gradients"]["direct"]["images"], 2)
    self.assertEqual(extras["doubled_steps"], {"attack": "pgd",
                                               "accuracy": 0.0})
    self.assertEqual(flags["converged-in-steps"].status, "ok")
    self.assertLen(extras["accuracy_vs_epsilon"], 5)
    # Every extra attack run goes through the given `rerun`.
    changes = []

    def recording(*args, **kwargs):
      changes.append(kwargs)
      return suite.rerun(*args, **kwargs)

    sanity.run_checks(target, result, x, y, convergence=True, images=2,
                      rerun=recording)
    swept = sanity.EPSILON_SWEEP + (sanity.LARGE_EPSILON,)
    self.assertCountEqual(
        changes, [{"epsilon": e} for e in swept if e != EPSILON] +
        [{"steps": 10}])
    for images in (7, 0, 2.0):
      with self.assertRaisesRegex(ValueError, f"Received: images={images}"):
        sanity.run_checks(target, result, x, y, images=images)

  def test_first_images_of_a_suite_result(self):
    x, y = near_boundary_images()
    target = suite.Target(mean_classifier())
    result = suite.run_suite(target, x, y, ["bpda_identity_eot"],
                             suite.Budget(epsilon=EPSILON, steps=1), seed=0,
                             draws=2)
    head = sanity.first_images(result, 3)
    self.assertEqual(head.clean.images, 3)
    self.assertEqual([r.score.images for r in head.results], [3])
    self.assertAllEqual(head.clean.correct, result.clean.correct[:, :3])
    self.assertEqual(head.worst, result.worst)

  def test_a_raising_sanity_run_is_flagged_not_fatal(self):
    classifier = mean_classifier()
    x, y = near_boundary_images()
    target = suite.Target(classifier)
    result = suite.run_suite(target, x, y, ["bpda_identity_eot"],
                             suite.Budget(epsilon=EPSILON, steps=2), seed=0,
                             draws=1)
    result.results[0].name = "unrolled"  # Not runnable on a plain model.
    flags, _ = sanity.run_checks(target, result, x, y, convergence=True)
    flags = {f.name: f for f in flags}
    failed = flags["sanity-runs-failed"]
    self.assertTrue(failed.tripped)
    self.assertIn("epsilon sweep: ValueError", failed.message)
    self.assertIn("2x steps: ValueError", failed.message)
    self.assertEqual(flags["monotone-in-epsilon"].status, "not run")
    self.assertEqual(flags["converged-in-steps"].status, "not run")
    self.assertEqual(flags["zero-or-nan-gradients"].status, "ok")

  def test_convergence_reruns_with_double_steps_and_restarts(self):
    classifier = mean_classifier()
    _, flags, extras = self.run_checks(
        classifier, classifier, attacks=("bpda_identity_eot",
                                         "pgd_restarts_bpda_identity"),
        convergence=True)
    self.assertEqual(flags["converged-in-steps"].status, "ok")
    self.assertEqual(flags["converged-in-restarts"].status, "ok")
    self.assertEqual(extras["doubled_restarts"],
                     {"attack": "pgd_restarts", "accuracy": 0.0})
    self.assertIn("pgd_restarts: accuracy", flags["converged-in-restarts"].message)


class DefendedChecksTest(tf.test.TestCase):

  def test_gradients_measured_per_estimator(self):
    f_b = attack_properties.tiny_model(seed=1)
    model = keras.Sequential([
        keras.Input((4, 4, 1)),
        adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=2, seed=0),
        attack_properties.tiny_model(seed=2)])
    x, y = attack_properties.tiny_batch(batch=4)
    target = suite.Target(model)
    # target_selection is white-box without an estimator of g.
    result = suite.run_suite(target, x, y, ["bpda_identity_eot", "unrolled",
                                            "target_selection"],
                             suite.Budget(steps=2, eot_samples=2), seed=0,
                             draws=2)
    flags, extras = sanity.run_checks(target, result, x, y, convergence=True)
    self.assertEqual(sorted(extras["gradients"]), ["bpda_identity", "unrolled"])
    self.assertEqual(extras["gradients"]["bpda_identity"]["zero_examples"], 0)
    self.assertEqual(extras["gradients"]["bpda_identity"]["nonfinite"], 0)
    by_name = {f.name: f.status for f in flags}
    self.assertEqual(by_name["gradient-masking"], "not run")  # No black box.
    self.assertEqual(by_name["zero-or-nan-gradients"], "ok")
    self.assertIn(by_name["eot-gradient-noise"], ("ok", "FLAG"))
    self.assertIn(by_name["converged-in-eot_samples"], ("ok", "FLAG"))
    eot = extras["eot_gradients"]
    self.assertEqual(eot["attack"], extras["doubled_eot_samples"]["attack"])
    self.assertEqual((eot["samples"], eot["images"]), (2, 4))
    self.assertLen(eot["cosine"], sanity.DIAGNOSTIC_STEPS + 1)
    for cosine in eot["cosine"]:
      self.assertBetween(cosine, -1.0, 1.0)


if __name__ == "__main__":
  tf.test.main()


class ReferenceAttackTest(tf.test.TestCase):

  def result(self, name, strict, mean, passes, kind=suite.WHITE_BOX,
             seconds=1.0):
    score = scoring.score_labels(np.zeros((1, 1), np.int32),
                                        np.zeros(1, np.int32))
    score = dataclasses.replace(score, strict_accuracy=strict,
                                mean_accuracy=mean)
    return suite.AttackResult(name=name, kind=kind, description="", budget={},
                              score=score, elapsed_s=seconds,
                              f_b_passes=passes, model_passes=passes)

  def test_strongest_then_cheapest_white_box_run(self):
    results = [self.result("slow", 0.2, 0.3, 90),
               self.result("fast", 0.2, 0.3, 10),
               self.result("weak", 0.5, 0.5, 1),
               self.result("query", 0.0, 0.0, 1, kind=suite.QUERY)]
    fake = types.SimpleNamespace(results=results)
    self.assertEqual(sanity.reference_attack(fake).name, "fast")

  def test_ties_do_not_depend_on_seconds(self):
    # Equal figures and passes: the first in report order, however long
    # each took on a loaded machine.
    results = [self.result("first", 0.2, 0.3, 10, seconds=50.0),
               self.result("second", 0.2, 0.3, 10, seconds=1.0)]
    fake = types.SimpleNamespace(results=results)
    self.assertEqual(sanity.reference_attack(fake).name, "first")
