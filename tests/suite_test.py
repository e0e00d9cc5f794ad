"""Tests of attacks.suite: registry, presets, planning, pass counting, worst case."""

import keras
import numpy as np
import tensorflow as tf

import adv_layer
from attacks import registry
from attacks import scoring
from attacks import suite
from tests import attack_properties


def tiny_defended(steps=2):
  """f_a(g(x)) on 4x4x1 images with tiny dense f_b and f_a."""
  f_b = attack_properties.tiny_model(seed=1)
  f_a = attack_properties.tiny_model(seed=2, classes=4)  # DLR-T needs >= 4.
  return keras.Sequential([
      keras.Input((4, 4, 1)),
      adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=steps, seed=0),
      f_a])


def coin_flip_defended():
  """A defended model whose class on a 0.5-gray image is a fair coin per draw.

  f_a predicts class 0 iff pixel 0 exceeds 0.5; f_b ignores pixel 0, so g
  leaves it at its random start 0.5 + U[-0.2, 0.2].
  """
  f_b = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                          keras.layers.Dense(3)])
  kernel = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
  kernel[0] = 0.0
  f_b.layers[-1].set_weights([kernel, np.zeros(3, np.float32)])
  f_a = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                          keras.layers.Dense(2)])
  kernel = np.zeros((16, 2), np.float32)
  kernel[0] = [1.0, -1.0]
  f_a.layers[-1].set_weights([kernel, np.array([-0.5, 0.5], np.float32)])
  return keras.Sequential([
      keras.Input((4, 4, 1)),
      adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=2, seed=0), f_a])


def result(name, robust, kind=suite.WHITE_BOX, draws=None):
  """An AttackResult whose images are robust exactly where `robust` is True."""
  correct = np.array([robust]) if draws is None else draws
  score = scoring.score_labels(np.where(correct, 0, 1), np.zeros(len(robust)))
  return suite.AttackResult(name, kind, "", {}, score, 1.0, 0, 0)


class WorstCaseTest(tf.test.TestCase):

  def test_worst_case_is_per_example(self):
    clean = result("clean", [True] * 4).score
    a = result("A", [False, False, True, True])
    b = result("B", [True, True, False, True])
    worst = suite.worst_case(clean, [a, b])
    self.assertAllEqual(worst["robust"], [False, False, False, True])
    self.assertEqual(worst["strict_accuracy"], 0.25)
    self.assertEqual(worst["strongest"], "A")
    self.assertEqual(worst["attacks"], ["A", "B"])

  def test_clean_mistakes_count_as_not_robust(self):
    clean = result("clean", [False, True]).score
    worst = suite.worst_case(clean, [result("A", [True, True])])
    self.assertAllEqual(worst["robust"], [False, True])

  def test_mean_takes_per_example_minimum_over_draws(self):
    clean = result("clean", [True, True]).score
    # A: image 0 correct in 1 of 2 draws; B: image 1 correct in 0 of 2 draws.
    a = result("A", [True, True], draws=np.array([[True, True], [False, True]]))
    b = result("B", [True, True], draws=np.array([[True, False], [True, False]]))
    worst = suite.worst_case(clean, [a, b])
    self.assertEqual(worst["mean_accuracy"], 0.25)
    self.assertEqual(worst["strict_accuracy"], 0.0)

  def test_intervals_and_success_probability(self):
    clean = result("clean", [True, True, True, False]).score
    # A fools image 0 in both draws and image 1 in one of two.
    a = result("A", [True] * 4, draws=np.array([[False, True, True, True],
                                                 [False, False, True, True]]))
    worst = suite.worst_case(clean, [a])
    self.assertAllClose(worst["per_example_success"], [1.0, 0.5, 0.0, 1.0])
    self.assertEqual(worst["strict_accuracy_ci95"],
                     scoring.clopper_pearson(1, 4))
    self.assertEqual(worst["mean_accuracy"], 0.375)
    self.assertEqual(worst["mean_accuracy_ci95"],
                     scoring.clopper_pearson(1.5, 4))

  def test_kinds_filter(self):
    clean = result("clean", [True, True]).score
    a = result("A", [True, False], kind=suite.TRANSFER)
    b = result("B", [True, True])
    worst = suite.worst_case(clean, [a, b], kinds=(suite.WHITE_BOX,))
    self.assertEqual((worst["strict_accuracy"], worst["strongest"]), (1.0, "B"))


class RegistryTest(tf.test.TestCase):

  def test_presets(self):
    self.assertEqual(suite.resolve_attacks("paper"), list(suite.PRESETS["paper"]))
    full = suite.resolve_attacks(["full"])
    self.assertCountEqual(full, set(suite.PRESETS["paper"]) |
                          set(suite.PRESETS["adaptive"]) |
                          set(suite.PRESETS["autoattack_rand"]))
    # AutoAttack's `rand` version: APGD-CE and untargeted APGD-DLR through
    # each estimator of g.
    self.assertEqual(
        suite.PRESETS["autoattack_rand"],
        ("apgd_ce_bpda_identity", "apgd_dlr_bpda_identity", "apgd_ce_bpda",
         "apgd_dlr_bpda", "apgd_ce_straight_through", "apgd_dlr_straight_through",
         "apgd_ce_bpda_exact_path", "apgd_dlr_bpda_exact_path"))
    for name in suite.PRESETS["autoattack_rand"]:
      self.assertEqual(suite.REGISTRY[name].fields,
                       ("epsilon", "steps", "restarts", "eot_samples"))
    self.assertEqual(suite.resolve_attacks(["square", "adaptive", "square"])[0],
                     "square")
    for name in full:
      self.assertIn(name, suite.REGISTRY)

  def test_unknown_attack_raises(self):
    with self.assertRaisesRegex(ValueError, "attacks='nope'"):
      suite.resolve_attacks(["nope"])

  def test_plain_classifier_plan(self):
    target = suite.Target(attack_properties.tiny_model())
    runs, skipped = suite.plan(target, suite.resolve_attacks("full"))
    names = [name for name, _ in runs]
    self.assertEqual(names, ["pgd", "hop_skip_jump", "gen_attack",
                             "pgd_restarts", "apgd_ce", "apgd_dlr_t", "square",
                             "apgd_dlr"])
    self.assertIn("no surrogate", skipped["blackbox_transfer"])
    self.assertIn("plain classifier", skipped["whitebox_transfer"])
    self.assertIn("same as pgd", skipped["bpda_tanh"])

  def test_defended_plan_keeps_every_estimator(self):
    target = suite.Target(tiny_defended(), surrogate=attack_properties.tiny_model(),
                          adversarial_surrogate=attack_properties.tiny_model(1))
    runs, skipped = suite.plan(target, suite.resolve_attacks("full"))
    self.assertEqual(skipped, {})
    self.assertEqual([n for n, _ in runs], suite.resolve_attacks("full"))

  def test_not_run_on_a_plain_classifier_names_families(self):
    # The undefended Table 3 run: one attack per family ran, no surrogates.
    missing = suite.not_run(["pgd_restarts", "apgd_ce", "apgd_dlr_t", "pgd"],
                            defended=False)
    self.assertEqual(missing, ["blackbox_transfer", "blackbox_transfer_mi_di",
                               "adv_surrogate_transfer",
                               "adv_surrogate_transfer_mi_di", "square"])

  def test_not_run_on_a_defended_model_names_each_estimator(self):
    ran = list(suite.PRESETS["adaptive"])
    self.assertEqual(suite.not_run(ran, defended=True), [])
    ran.remove("apgd_ce_bpda")
    ran.remove("square")
    self.assertEqual(suite.not_run(ran, defended=True),
                     ["apgd_ce_bpda", "square"])

  def test_not_run_unknown_preset_raises(self):
    with self.assertRaisesRegex(ValueError, "preset='nope'"):
      suite.not_run([], defended=True, preset="nope")

  def test_budget_helpers(self):
    budget = suite.Budget(steps=10, queries=1000)
    self.assertEqual(registry.spsa_samples(budget), 98)  # 1 + 10 * 99 <= 1000.
    self.assertEqual(registry.genattack_generations(budget), 166)
    # Cost of iteration t: 100 sqrt(t) + 25. 125 + 166.4 + 198.2 + 225 + 248.6
    # = 963.2 <= 1000; a sixth (269.9) would exceed the budget.
    self.assertEqual(registry.hsj_iterations(budget), 5)

  def test_budget_helpers_pay_for_query_draws(self):
    budget = suite.Budget(steps=10, queries=1000)
    # Scores: 11 points x 4 draws x 2 (fresh re-scores) = 88; (1000 - 88) / 10
    # = 91.2 -> 90 (even).
    self.assertEqual(registry.spsa_samples(budget, query_draws=4), 90)
    # (6 + 1) x 4 queries per generation: 1000 // 28 = 35.
    self.assertEqual(registry.genattack_generations(budget, query_draws=4), 35)
    # Cost of iteration t: 100 sqrt(t) + 25 x 4. 200 + 241.4 + 273.2 = 714.6;
    # a fourth (300) would exceed the budget.
    self.assertEqual(registry.hsj_iterations(budget, query_draws=4), 3)

  def test_bad_budget_raises(self):
    with self.assertRaisesRegex(ValueError, "queries"):
      suite.Budget(queries=0).validate()
    with self.assertRaisesRegex(ValueError, "eot_samples"):
      suite.Budget(eot_samples=0).validate()
    with self.assertRaisesRegex(ValueError, "Received: query_draws=0"):
      suite.Budget(query_draws=0).validate()


class ReferenceBudgetTest(tf.test.TestCase):

  def test_defaults_are_autoattack_rand_and_square(self):
    budget = suite.Budget()
    self.assertEqual((budget.steps, budget.eot_samples, budget.restarts,
                      budget.queries, budget.query_draws),
                     (100, 20, 1, 5000, 8))
    reference = suite.BUDGET_PRESETS["reference"]
    self.assertEqual((reference.budget, reference.draws, reference.images),
                     (budget, 20, 10_000))

  def test_reference_is_not_weaker(self):
    reference = suite.BUDGET_PRESETS["reference"]
    fields = {"steps", "restarts", "eot_samples", "queries", "query_draws"}
    self.assertEqual(suite.weaker_than_reference(
        reference.budget, fields, reference.images, reference.draws,
        defended=True), [])

  def test_smoke_lists_every_shortfall(self):
    smoke = suite.BUDGET_PRESETS["smoke"]
    fields = {"epsilon", "steps", "restarts", "eot_samples", "queries",
              "query_draws"}
    weaker = suite.weaker_than_reference(smoke.budget, fields, smoke.images,
                                         smoke.draws, defended=True)
    self.assertEqual(weaker, [
        {"field": "steps", "used": 5, "reference": 100},
        {"field": "eot_samples", "used": 2, "reference": 20},
        {"field": "queries", "used": 100, "reference": 5000},
        {"field": "query_draws", "used": 2, "reference": 8},
        {"field": "images", "used": 20, "reference": 10_000},
        {"field": "draws", "used": 2, "reference": 20}])

  def test_unused_fields_and_randomness_on_a_plain_model_are_ignored(self):
    budget = suite.Budget(steps=5, eot_samples=1, queries=10, restarts=3)
    weaker = suite.weaker_than_reference(budget, {"steps", "eot_samples"},
                                         10_000, 1, defended=False)
    self.assertEqual(weaker, [{"field": "steps", "used": 5, "reference": 100}])

  def test_target_needs_keras_model(self):
    with self.assertRaisesRegex(TypeError, "model"):
      suite.Target(lambda x: x)


class CountPassesTest(tf.test.TestCase):

  def test_counts_f_b_and_model_forwards(self):
    model = tiny_defended(steps=3)
    x, _ = attack_properties.tiny_batch()
    with suite.count_passes(model, adv_layer.find_transforms(model)) as counters:
      model(x)
      tf.function(lambda images: model(images))(x)
    # Per image: 1 forward for y_LL, then 3 steps -> 4 f_b forwards.
    self.assertEqual(int(counters["f_b"].numpy()), 2 * 6 * 4)
    self.assertEqual(int(counters["model"].numpy()), 2 * 6)
    self.assertNotIn("call", model.__dict__)


class RunSuiteTest(tf.test.TestCase):

  def test_query_attack_on_defended_model(self):
    model = tiny_defended()
    x, y = attack_properties.tiny_batch()
    target = suite.Target(model)
    budget = suite.Budget(queries=8, query_draws=2)
    first = suite.run_suite(target, x, y, ["square"], budget, seed=3, draws=2)
    second = suite.run_suite(target, x, y, ["square"], budget, seed=3, draws=2)
    run = first.results[0]
    self.assertEqual(run.budget, {"epsilon": 8 / 255, "queries": 8,
                                  "query_draws": 2})
    self.assertGreater(run.model_passes, 0)
    self.assertEqual(run.f_b_passes, 3 * run.model_passes)  # 1 + N, N = 2.
    self.assertLessEqual(np.abs(run.x_adv - x).max(), 8 / 255 + 1e-6)
    self.assertAllEqual(run.x_adv, second.results[0].x_adv)
    self.assertAllEqual(run.score.correct, second.results[0].score.correct)
    self.assertEqual(first.worst["attacks"], ["square"])
    self.assertTrue(first.defended)
    self.assertEqual(first.verdict, suite.UPPER_BOUND)  # No convergence shown.
    self.assertEqual(first.weaker_than_reference, [
        {"field": "queries", "used": 8, "reference": 5000},
        {"field": "query_draws", "used": 2, "reference": 8},
        {"field": "images", "used": 6, "reference": 10_000},
        {"field": "draws", "used": 2, "reference": 20}])

  def test_every_run_is_scored_with_its_own_draws(self):
    target = suite.Target(coin_flip_defended())
    x, y = np.full((6, 4, 4, 1), 0.5, np.float32), np.zeros(6, np.int32)
    # At epsilon 0 both attacks return x itself: only the draws differ.
    budget = suite.Budget(epsilon=0.0, steps=1, eot_samples=1)
    out = suite.run_suite(target, x, y, ["bpda_identity_eot", "unrolled"],
                          budget, seed=4, draws=4)
    self.assertEqual(out.clean.seed, suite.scoring_seed(4, "clean"))
    seeds = {out.clean.seed}
    for run in out.results:
      self.assertAllEqual(run.x_adv, x)
      self.assertEqual(run.score.seed, suite.scoring_seed(4, run.name))
      self.assertNotEqual(run.score.seed, run.seed)
      seeds.add(run.score.seed)
    self.assertLen(seeds, 3)
    first, second = (r.score.correct for r in out.results)
    self.assertNotAllEqual(first, second)
    self.assertNotAllEqual(first, out.clean.correct)
    again = suite.rerun(target, "unrolled", x, y, budget, seed=4, draws=4)
    self.assertAllEqual(again.score.correct, second)

  def test_white_box_on_plain_model_and_rerun(self):
    model = attack_properties.tiny_model()
    x, y = attack_properties.tiny_batch()
    target = suite.Target(model)
    budget = suite.Budget(epsilon=0.3, steps=5, eot_samples=4)
    out = suite.run_suite(target, x, y, ["bpda_identity_eot", "bpda_tanh"],
                          budget, seed=0, draws=1)
    self.assertEqual([r.name for r in out.results], ["pgd"])
    self.assertEqual(out.results[0].budget["eot_samples"], 1)  # Deterministic.
    self.assertEqual(out.results[0].f_b_passes, 0)
    zero = suite.rerun(target, "pgd", x, y, budget, seed=0, draws=1, epsilon=0.0)
    self.assertAllEqual(zero.x_adv, x)
    with self.assertRaisesRegex(ValueError, "name='unrolled'"):
      suite.rerun(target, "unrolled", x, y, budget)

  def test_keep_going_records_a_failing_attack(self):
    target = suite.Target(attack_properties.tiny_model())  # 3 classes.
    x, y = attack_properties.tiny_batch()
    names = ["apgd_dlr_t_bpda_identity", "square"]  # DLR-T needs >= 4 classes.
    budget = suite.Budget(steps=2, queries=3)
    with self.assertRaisesRegex(ValueError, "dlr_targeted"):
      suite.run_suite(target, x, y, names, budget, draws=1)
    out = suite.run_suite(target, x, y, names, budget, draws=1, keep_going=True)
    self.assertEqual([r.name for r in out.results], ["square"])
    self.assertIn("ValueError", out.failed["apgd_dlr_t"])
    self.assertEqual(out.verdict, suite.INCOMPLETE)
    # The failed attack's budget fields still count against the reference.
    self.assertIn({"field": "steps", "used": 2, "reference": 100},
                  out.weaker_than_reference)

  def test_attack_seed_depends_on_name_and_seed(self):
    self.assertEqual(suite.attack_seed(1, "a"), suite.attack_seed(1, "a"))
    self.assertNotEqual(suite.attack_seed(1, "a"), suite.attack_seed(1, "b"))
    self.assertNotEqual(suite.attack_seed(1, "a"), suite.attack_seed(2, "a"))
    self.assertIsNone(suite.attack_seed(None, "a"))
    self.assertNotEqual(suite.scoring_seed(1, "a"), suite.attack_seed(1, "a"))
    self.assertNotEqual(suite.scoring_seed(1, "a"), suite.scoring_seed(1, "b"))
    self.assertEqual(suite.scoring_seed(1, "a"), suite.scoring_seed(1, "a"))


if __name__ == "__main__":
  tf.test.main()


class EveryAttackTest(tf.test.TestCase):

  def test_full_preset_and_spsa_run_on_a_tiny_defended_model(self):
    x, y = attack_properties.tiny_batch(batch=4, classes=4)
    train = attack_properties.tiny_batch(seed=1, batch=64)[0]
    surrogate = attack_properties.tiny_model(seed=3, classes=4)
    target = suite.Target(tiny_defended(), surrogate=surrogate,
                          train_images=train,
                          adversarial_surrogate=attack_properties.tiny_model(
                              seed=4, classes=4))
    budget = suite.Budget(steps=2, eot_samples=2, queries=12, query_draws=2)
    names = suite.resolve_attacks(["full", "spsa"])
    out = suite.run_suite(target, x, y, names, budget, seed=0, draws=2)
    self.assertEqual([r.name for r in out.results], names)
    for run in out.results:
      self.assertLessEqual(np.abs(run.x_adv - x).max(), 8 / 255 + 1e-6, run.name)
      self.assertEqual(run.budget["epsilon"], 8 / 255)
      self.assertGreater(run.elapsed_s, 0.0)
      if run.kind == suite.QUERY:
        self.assertEqual(run.budget["query_draws"], 2, run.name)
    passes = {r.name: r.f_b_passes for r in out.results}
    self.assertEqual(passes["whitebox_transfer"], 0)  # f_a alone.
    self.assertGreater(passes["bpda_softsign"], passes["bpda_identity_eot"])

  def test_every_attack_reads_only_its_declared_budget_fields(self):
    # Unit keys of attacks.runner and `weaker_than_reference` trust
    # `AttackSpec.fields`; `chunk_size` and `value_range` count for all.

    class Recording:
      """Forwards to a Budget and records every field read."""

      def __init__(self, budget):
        self.budget, self.read = budget, set()

      def __getattr__(self, name):
        self.read.add(name)
        return getattr(self.budget, name)

    x, y = attack_properties.tiny_batch(batch=4, classes=4)
    defended = suite.Target(
        tiny_defended(),
        surrogate=attack_properties.tiny_model(seed=3, classes=4),
        train_images=attack_properties.tiny_batch(seed=1, batch=64)[0],
        adversarial_surrogate=attack_properties.tiny_model(seed=4, classes=4))
    budget = suite.Budget(steps=2, eot_samples=2, queries=12, query_draws=2)
    # The plain-gradient comparison runs on a model with a BPDA-wrapped layer.
    wrapped = suite.Target(keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Rescaling(1.0, name="front"),
         keras.layers.Flatten(), keras.layers.Dense(4)]), bpda_layers=["front"])
    for name, spec in suite.REGISTRY.items():
      target = wrapped if spec.needs_bpda else defended
      # What the attack runs with (`derive`) reads its declared fields.
      recording = Recording(budget)
      derived = spec.derive(recording, target)
      self.assertEqual(recording.read, set(spec.fields), name)
      self.assertContainsSubset(spec.fields, derived, name)
      # The builder reads nothing else.
      recording = Recording(budget)
      spec.build(target, tf.constant(x), tf.constant(y), recording, 0,
                 derived)
      self.assertContainsSubset(
          recording.read, set(spec.fields) | set(suite.ALWAYS_USED), name)
