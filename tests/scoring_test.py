"""Tests of attacks.scoring: mean and strict accuracy over draws, seeding."""

import json

import keras
import numpy as np
import tensorflow as tf

import adv_layer
from attacks import scoring


def linear_model():
  """Two classes on 2-pixel images: class 0 iff pixel 0 > pixel 1."""
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
  model.layers[0].set_weights([np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32),
                               np.zeros(2, np.float32)])
  return model


class ScriptedModel:
  """A 'random' model whose r-th call predicts `script[r]` (one class per image)."""

  def __init__(self, script, classes=3):
    self.script = np.asarray(script)
    self.classes = classes
    self.calls = 0

  def __call__(self, images):
    labels = self.script[self.calls % len(self.script)][:images.shape[0]]
    self.calls += 1
    return tf.one_hot(labels, self.classes)


class NanModel:
  """`linear_model`'s logits, NaN (or inf) on the images listed in `bad`."""

  def __init__(self, bad=None, value=np.nan):
    self.model = linear_model()
    self.bad = bad
    self.value = value

  def __call__(self, images):
    logits = self.model(images).numpy()
    rows = np.arange(len(logits)) if self.bad is None else self.bad
    rows = [r for r in rows if r < len(logits)]
    logits[rows, 0] = self.value
    return tf.constant(logits)


def defended_model(seed=0):
  keras.utils.set_random_seed(seed)
  f_b = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                          keras.layers.Dense(3)])
  return keras.Sequential([
      keras.Input((4, 4, 1)),
      adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=2, seed=seed),
      keras.layers.Flatten(), keras.layers.Dense(3)])


class ScoreLabelsTest(tf.test.TestCase):

  def test_exact_figures(self):
    predictions = [[0, 1, 2, 0], [0, 1, 1, 0], [0, 2, 2, 0]]
    s = scoring.score_labels(predictions, [0, 1, 2, 1], seed=3)
    # Correct per draw: [1,1,1,0], [1,1,0,0], [1,0,1,0] -> 7 of 12 pairs.
    self.assertAllClose(s.mean_accuracy, 7 / 12)
    self.assertAllEqual(s.robust, [True, False, False, False])
    self.assertEqual(s.strict_accuracy, 0.25)
    self.assertAllClose(s.per_example_mean, [1.0, 2 / 3, 2 / 3, 0.0])
    self.assertEqual((s.draws, s.seed), (3, 3))

  def test_shape_mismatch_raises(self):
    with self.assertRaisesRegex(ValueError, "predictions"):
      scoring.score_labels([[0, 1]], [0, 1, 2])

  def test_first_images_keeps_their_draws(self):
    predictions = [[0, 1, 2, 0], [0, 1, 1, 0], [0, 2, 2, 0]]
    s = scoring.first_images(scoring.score_labels(predictions, [0, 1, 2, 1],
                                                  seed=3), 2)
    # Correct per draw on the first two images: [1,1], [1,1], [1,0].
    self.assertAllClose(s.mean_accuracy, 5 / 6)
    self.assertAllEqual(s.robust, [True, False])
    self.assertEqual(s.strict_accuracy, 0.5)
    self.assertEqual((s.images, s.draws, s.seed), (2, 3, 3))

  def test_first_images_refuses_a_bad_count(self):
    s = scoring.score_labels([[0, 1]], [0, 1])
    for count in (0, 3, 1.0, True):
      with self.assertRaisesRegex(ValueError, "count"):
        scoring.first_images(s, count)

  def test_to_dict_lists_per_example_values(self):
    d = scoring.score_labels([[0, 1]], [0, 0]).to_dict()
    self.assertEqual(d["robust"], [1, 0])
    self.assertEqual(d["strict_accuracy"], 0.5)


class ClopperPearsonTest(tf.test.TestCase):

  def test_closed_forms_at_the_ends(self):
    # k = 0: (0, 1 - (alpha/2)^(1/n)); k = n: ((alpha/2)^(1/n), 1).
    self.assertAllClose(scoring.clopper_pearson(0, 10),
                        (0.0, 1 - 0.025 ** (1 / 10)), atol=1e-12)
    self.assertAllClose(scoring.clopper_pearson(10, 10),
                        (0.025 ** (1 / 10), 1.0), atol=1e-12)
    # n = 1, k = 1 at 90%: (0.05, 1).
    self.assertAllClose(scoring.clopper_pearson(1, 1, confidence=0.9),
                        (0.05, 1.0), atol=1e-12)

  def test_known_values(self):
    # 5 of 10: the textbook interval (0.1871, 0.8129).
    low, high = scoring.clopper_pearson(5, 10)
    self.assertAllClose((low, high), (0.18709, 0.81291), atol=5e-6)
    self.assertAllClose(low, 1 - high, atol=1e-12)  # Symmetric at k = n / 2.

  def test_no_images_is_uninformative(self):
    self.assertEqual(scoring.clopper_pearson(0, 0), (0.0, 1.0))

  def test_fractional_count_lies_between_its_neighbours(self):
    below, middle, above = (scoring.clopper_pearson(k, 20)
                            for k in (7, 7.5, 8))
    self.assertLess(below[0], middle[0])
    self.assertLess(middle[0], above[0])
    self.assertLess(below[1], middle[1])
    self.assertLess(middle[1], above[1])

  def test_narrows_with_more_trials(self):
    small = scoring.clopper_pearson(5, 10)
    large = scoring.clopper_pearson(500, 1000)
    self.assertLess(large[1] - large[0], (small[1] - small[0]) / 5)

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: successes=11"):
      scoring.clopper_pearson(11, 10)
    with self.assertRaisesRegex(ValueError, "Received: trials=-1"):
      scoring.clopper_pearson(0, -1)
    with self.assertRaisesRegex(ValueError, "Received: confidence=1.0"):
      scoring.clopper_pearson(1, 2, confidence=1.0)


class ScoreIntervalsTest(tf.test.TestCase):

  def test_intervals_and_success_probability(self):
    # Image 0 always correct, 1 in 1 of 2 draws, 2 and 3 never: mean 3/8.
    s = scoring.score_labels([[0, 1, 0, 0], [0, 0, 0, 0]], [0, 1, 2, 2])
    self.assertEqual(s.images, 4)
    self.assertAllClose(s.per_example_success, [0.0, 0.5, 1.0, 1.0])
    self.assertEqual(s.strict_interval, scoring.clopper_pearson(1, 4))
    self.assertEqual(s.mean_interval, scoring.clopper_pearson(1.5, 4))
    d = s.to_dict()
    self.assertEqual(d["strict_accuracy_ci95"], list(s.strict_interval))
    self.assertEqual(d["mean_accuracy_ci95"], list(s.mean_interval))
    self.assertLessEqual(d["mean_accuracy_ci95"][0], d["mean_accuracy"])
    self.assertGreaterEqual(d["mean_accuracy_ci95"][1], d["mean_accuracy"])
    self.assertIsNone(d["scoring_seed"])

  def test_default_is_twenty_draws(self):
    s = scoring.score(linear_model(), np.array([[0.9, 0.1]], np.float32), [0])
    self.assertEqual(s.draws, 20)


class NonFiniteOutputTest(tf.test.TestCase):
  """A non-finite output is never a correct prediction, and is counted."""

  def test_predict_labels_gives_minus_one_for_a_non_finite_row(self):
    x = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    for value in (np.nan, np.inf, -np.inf):
      labels = scoring.predict_labels(NanModel(bad=[1], value=value), x)
      self.assertAllEqual(labels, [0, -1, 0])

  def test_an_all_nan_model_scores_zero_and_reports_the_count(self):
    # Every label is 0, which argmax of an all-NaN row used to predict.
    model = lambda images: tf.fill((images.shape[0], 3), np.nan)
    s = scoring.score(model, np.zeros((4, 2), np.float32), [0] * 4, draws=3)
    self.assertEqual((s.mean_accuracy, s.strict_accuracy), (0.0, 0.0))
    self.assertEqual(s.nonfinite, 12)
    self.assertAllEqual(s.nonfinite_pairs, np.ones((3, 4), bool))
    self.assertEqual(s.to_dict()["nonfinite_outputs"], 12)

  def test_nan_on_some_images_makes_only_those_wrong(self):
    x = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    y = [0, 1, 0, 1]  # linear_model gets all four right.
    s = scoring.score(NanModel(bad=[0, 3]), x, y, draws=2, batch_size=3)
    self.assertAllEqual(s.robust, [False, True, True, False])
    self.assertEqual((s.mean_accuracy, s.strict_accuracy), (0.5, 0.5))
    self.assertEqual(s.nonfinite, 4)
    head = scoring.first_images(s, 2)
    self.assertEqual(head.nonfinite, 2)
    self.assertEqual(head.to_dict()["nonfinite_outputs"], 2)

  def test_finite_models_keep_their_exact_figures_and_report(self):
    x = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    s = scoring.score(linear_model(), x, [0, 1, 1, 1], draws=5, seed=0)
    self.assertEqual(s.nonfinite, 0)
    self.assertIsNone(s.nonfinite_pairs)
    # Byte for byte the report written before non-finite outputs counted.
    self.assertEqual(json.dumps(s.to_dict()), (
        '{"mean_accuracy": 0.75, "mean_accuracy_ci95": [0.19412044968324346, '
        '0.9936905367902902], "strict_accuracy": 0.75, "strict_accuracy_ci95": '
        '[0.19412044968324346, 0.9936905367902902], "draws": 5, '
        '"scoring_seed": 0, "robust": [1, 1, 0, 1], "per_example_mean": '
        '[1.0, 1.0, 0.0, 1.0]}'))

  def test_score_labels_takes_minus_one_and_a_nonfinite_mask(self):
    s = scoring.score_labels([[0, -1], [-1, 1]], [0, 1],
                             nonfinite=[[False, True], [True, False]])
    self.assertAllEqual(s.correct, [[True, False], [False, True]])
    self.assertEqual((s.mean_accuracy, s.nonfinite), (0.5, 2))
    # A mask marks a pair wrong even where its label happens to match.
    s = scoring.score_labels([[0, 1]], [0, 1], nonfinite=[[True, False]])
    self.assertAllEqual(s.correct, [[False, True]])
    with self.assertRaisesRegex(ValueError, r"Received: nonfinite.shape=\(2,\)"):
      scoring.score_labels([[0, 1]], [0, 1], nonfinite=[True, False])


class ScoreTest(tf.test.TestCase):

  def test_deterministic_model(self):
    x = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    s = scoring.score(linear_model(), x, [0, 1, 1, 1], draws=5, seed=0)
    self.assertEqual(s.mean_accuracy, 0.75)
    self.assertEqual(s.strict_accuracy, 0.75)
    self.assertEqual(s.correct.shape, (5, 4))

  def test_random_model_mean_and_strict_differ(self):
    model = ScriptedModel([[0, 1, 2], [0, 1, 0], [0, 2, 0], [0, 1, 2]])
    s = scoring.score(model, np.zeros((3, 2), np.float32), [0, 1, 2], draws=4,
                      batch_size=3)
    # Correct: [1,1,1], [1,1,0], [1,0,0], [1,1,1] -> 9 of 12; only image 0 always.
    self.assertEqual(s.mean_accuracy, 0.75)
    self.assertAllClose(s.strict_accuracy, 1 / 3)
    self.assertEqual(model.calls, 4)

  def test_batches_cover_every_image(self):
    x = np.array([[0.9, 0.1]] * 5, np.float32)
    s = scoring.score(linear_model(), x, [0] * 5, draws=1, batch_size=2)
    self.assertEqual(s.correct.shape, (1, 5))
    self.assertEqual(s.strict_accuracy, 1.0)

  def test_same_seed_same_draws_and_state_restored(self):
    model = defended_model()
    layer = adv_layer.find_transforms(model)[0]
    x = np.random.default_rng(0).uniform(0.3, 0.7, (8, 4, 4, 1)).astype(np.float32)
    y = np.zeros(8, np.int32)
    state = layer.seed_generator.state.numpy()
    first = scoring.score(model, x, y, draws=3, seed=5)
    self.assertAllEqual(layer.seed_generator.state.numpy(), state)
    model(x)  # Advances the layer's generator.
    with scoring.reseeded(model, 5):
      g_first = layer.transform(tf.constant(x))
    with scoring.reseeded(model, 5):
      g_second = layer.transform(tf.constant(x))
    second = scoring.score(model, x, y, draws=3, seed=5)
    self.assertAllEqual(first.correct, second.correct)
    self.assertAllEqual(g_first, g_second)

  def test_reseeded_pins_the_draws_and_restores_the_pin(self):
    model = defended_model()
    layer = adv_layer.find_transforms(model)[0]
    self.assertFalse(layer.draws_pinned)
    with scoring.reseeded(model, 3):
      self.assertTrue(layer.draws_pinned)
    self.assertFalse(layer.draws_pinned)

  def test_different_seeds_give_different_draws(self):
    layer = adv_layer.find_transforms(defended_model())[0]
    model = keras.Sequential([keras.Input((4, 4, 1)), layer])
    x = tf.fill((2, 4, 4, 1), 0.5)
    with scoring.reseeded(model, 1):
      a = layer.transform(x)
    with scoring.reseeded(model, 2):
      b = layer.transform(x)
    self.assertGreater(float(tf.reduce_max(tf.abs(a - b))), 0.0)

  def test_bad_draws_raise(self):
    with self.assertRaisesRegex(ValueError, "draws"):
      scoring.score(linear_model(), np.zeros((1, 2), np.float32), [0], draws=0)

  def test_label_shape_mismatch_raises(self):
    with self.assertRaisesRegex(ValueError, "y"):
      scoring.score(linear_model(), np.zeros((2, 2), np.float32), [0])


if __name__ == "__main__":
  tf.test.main()
