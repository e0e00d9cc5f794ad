"""Tests of `attacks.query_scores`: margins, draws, accept and confirm."""

import numpy as np
import tensorflow as tf

from attacks import query_scores
from tests.query_attacks_test import LuckyModel


class SequenceModel:
  """A 'random' model whose successive rows get margins from a fixed list.

  Row k of all queries so far (in order) gets logits (m_k, 0) for label 0,
  so its margin is m_k; the model records every batch it sees.
  """

  def __init__(self, margins):
    self.margins = list(margins)
    self.batches = []

  def __call__(self, images):
    images = np.asarray(images)
    self.batches.append(images)
    margin = np.array([self.margins.pop(0) for _ in range(len(images))],
                      np.float32)
    return tf.constant(np.stack([margin, np.zeros_like(margin)], 1))


class MarginsTest(tf.test.TestCase):

  def test_margin(self):
    logits = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]], np.float32)
    self.assertAllEqual(query_scores.margins(logits, np.array([0, 0])),
                        [1.0, -5.0])

  def test_draw_margins_tile_the_batch_once(self):
    # Two images, three draws: one call of six rows, copy-major order.
    model = SequenceModel([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    x = np.array([[0.1], [0.2]], np.float32)
    per_draw = query_scores.draw_margins(model, x, np.array([0, 0]), 3)
    self.assertAllEqual(per_draw, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    self.assertLen(model.batches, 1)
    self.assertAllEqual(model.batches[0][:, 0],
                        np.array([0.1, 0.2] * 3, np.float32))

  def test_draw_scores_average_and_count_misclassified_draws(self):
    model = SequenceModel([1.0, -2.0, -1.0, 4.0, -3.0, 0.0])
    x = np.array([[0.1], [0.2]], np.float32)
    score, fooled = query_scores.draw_scores(model, x, np.array([0, 0]), 3)
    self.assertAllClose(score, [-1.0, 2.0 / 3.0])
    self.assertAllClose(fooled, [2.0 / 3.0, 1.0 / 3.0])  # A zero margin is not.

  def test_no_images_need_no_query(self):
    model = SequenceModel([])
    per_draw = query_scores.draw_margins(model, np.zeros((0, 1), np.float32),
                                         np.zeros(0, np.int32), 4)
    self.assertEqual(per_draw.shape, (4, 0))
    self.assertEmpty(model.batches)

  def test_mostly_means_a_strict_majority(self):
    self.assertAllEqual(query_scores.mostly([0.4, 0.5, 0.6, 1.0]),
                        [False, False, True, True])

  def test_bad_query_draws_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: query_draws=0"):
      query_scores.check_query_draws(0)
    with self.assertRaisesRegex(ValueError, "Received: query_draws=1.5"):
      query_scores.check_query_draws(1.5)


class AcceptTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.x_best = np.zeros((2, 1), np.float32)
    self.best = np.array([0.5, 0.5], np.float32)
    self.candidates = np.array([[0.3], [0.4]], np.float32)
    self.y = np.array([0, 0])

  def test_lucky_low_score_is_refreshed_with_fresh_draws(self):
    # Candidate 0 scored −1 on lucky draws; three fresh draws give 2, 3, 4.
    # It replaces the incumbent, but the stored score is the fresh mean 3,
    # so later candidates need only beat 3, and the image is not broken.
    model = SequenceModel([2.0, 3.0, 4.0])
    done, spent = query_scores.accept(
        model, self.x_best, self.best, np.array([0, 1]), self.candidates,
        np.array([-1.0, 0.9]), np.array([1.0, 0.0]), self.y, draws=3)
    self.assertAllEqual(done, [False, False])
    self.assertAllEqual(spent, [3, 0])
    self.assertAllClose(self.best, [3.0, 0.5])
    self.assertAllEqual(self.x_best, np.array([[0.3], [0.0]], np.float32))
    self.assertLen(model.batches, 1)
    self.assertAllEqual(model.batches[0][:, 0], np.full(3, 0.3, np.float32))

  def test_broken_needs_most_fresh_draws_misclassified(self):
    # Fresh draws −1, −2, 5: two of three misclassify candidate 0.
    model = SequenceModel([-1.0, -2.0, 5.0])
    done, _ = query_scores.accept(
        model, self.x_best, self.best, np.array([0, 1]), self.candidates,
        np.array([-1.0, 0.9]), np.array([1.0, 0.0]), self.y, draws=3)
    self.assertAllEqual(done, [True, False])
    self.assertAllClose(self.best, [2.0 / 3.0, 0.5])

  def test_one_draw_keeps_the_score_and_spends_nothing(self):
    model = SequenceModel([])
    done, spent = query_scores.accept(
        model, self.x_best, self.best, np.array([1, 0]), self.candidates,
        np.array([-1.0, 0.9]), np.array([1.0, 0.0]), self.y, draws=1)
    self.assertAllEqual(done, [True, False])
    self.assertAllEqual(spent, [0, 0])
    self.assertAllClose(self.best, [0.5, -1.0])
    self.assertAllEqual(self.x_best, np.array([[0.0], [0.3]], np.float32))


class ConfirmTest(tf.test.TestCase):

  def test_only_mostly_misclassified_points_get_fresh_draws(self):
    model = LuckyModel([1.0, 0.0, 1.0], seed=0)
    x, y = model.images()
    done, spent = query_scores.confirm(model, x, y, np.array([0.8, 0.2, 0.4]),
                                       draws=5)
    self.assertAllEqual(done, [True, False, False])
    self.assertAllEqual(spent, [5, 0, 0])
    self.assertAllEqual(model.queries, [5, 0, 0])

  def test_fresh_draws_overrule_lucky_ones(self):
    model = LuckyModel([0.0], seed=0)
    x, y = model.images()
    done, _ = query_scores.confirm(model, x, y, np.array([1.0]), draws=5)
    self.assertAllEqual(done, [False])

  def test_one_draw_decides_alone(self):
    model = LuckyModel([0.0], seed=0)
    x, y = model.images()
    done, spent = query_scores.confirm(model, x, y, np.array([1.0]), draws=1)
    self.assertAllEqual(done, [True])
    self.assertAllEqual(spent, [0])
    self.assertAllEqual(model.queries, [0])


if __name__ == "__main__":
  tf.test.main()
