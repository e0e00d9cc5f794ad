"""Tests of attacks.scoring: mean and strict accuracy over draws, seeding."""

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

  def test_to_dict_lists_per_example_values(self):
    d = scoring.score_labels([[0, 1]], [0, 0]).to_dict()
    self.assertEqual(d["robust"], [1, 0])
    self.assertEqual(d["strict_accuracy"], 0.5)


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
