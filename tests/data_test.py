"""Tests of adv_layer.data: tfds pipelines, image folders, fast missing-data error.

The CIFAR-10 tests read the prepared copy that `TFDS_DATA_DIR` points at.
"""

import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from adv_layer import data


def batches(dataset):
  return [(x.numpy(), y.numpy()) for x, y in dataset]


class TfdsTest(tf.test.TestCase):

  def test_eval_pipeline_values_shapes_and_fixed_order(self):
    dataset = data.load_tfds("cifar10", split="test[:40]", batch_size=16)
    first, second = batches(dataset), batches(dataset)
    self.assertEqual([x.shape for x, _ in first],
                     [(16, 32, 32, 3), (16, 32, 32, 3), (8, 32, 32, 3)])
    for (x1, y1), (x2, y2) in zip(first, second):
      self.assertEqual(x1.dtype, np.float32)
      self.assertEqual(y1.dtype, np.int32)
      self.assertAllEqual(x1, x2)
      self.assertAllEqual(y1, y2)
    x = np.concatenate([x for x, _ in first])
    self.assertGreaterEqual(x.min(), 0.0)
    self.assertLessEqual(x.max(), 1.0)
    self.assertGreater(x.max(), 0.9)  # Scaled by 1/255, not by something else.
    self.assertTrue(np.all(np.isin(np.round(x * 255), np.arange(256))))

  def test_load_arrays_matches_the_pipeline(self):
    x, y = data.load_arrays("cifar10", split="test[:30]", batch_size=7)
    self.assertEqual(x.shape, (30, 32, 32, 3))
    self.assertEqual(y.shape, (30,))
    x_ref, y_ref = batches(data.load_tfds("cifar10", "test[:30]", batch_size=30))[0]
    self.assertAllEqual(x, x_ref)
    self.assertAllEqual(y, y_ref)
    self.assertTrue(set(y.tolist()) <= set(range(10)))

  def test_training_pipeline_is_seeded_and_keeps_shapes(self):
    def one_epoch(seed):
      dataset = data.load_tfds("cifar10", "train[:64]", batch_size=64,
                               training=True, seed=seed, shuffle_buffer=64)
      return batches(dataset)[0]

    x_a, y_a = one_epoch(seed=1)
    x_b, y_b = one_epoch(seed=1)
    x_c, _ = one_epoch(seed=2)
    self.assertEqual(x_a.shape, (64, 32, 32, 3))
    self.assertAllEqual(x_a, x_b)
    self.assertAllEqual(y_a, y_b)
    self.assertFalse(np.array_equal(x_a, x_c))
    self.assertGreaterEqual(x_a.min(), 0.0)
    self.assertLessEqual(x_a.max(), 1.0)
    clean_x, clean_y = batches(data.load_tfds("cifar10", "train[:64]", 64))[0]
    self.assertCountEqual(y_a.tolist(), clean_y.tolist())  # Same examples.
    self.assertFalse(np.array_equal(x_a, clean_x))

  def test_epochs_differ_but_repeat_under_the_seed(self):
    def two_epochs(seed):
      dataset = data.load_tfds("cifar10", "train[:16]", batch_size=16,
                               training=True, seed=seed)
      return batches(dataset)[0][0], batches(dataset)[0][0]

    first, second = two_epochs(seed=5)
    again_first, again_second = two_epochs(seed=5)
    self.assertFalse(np.array_equal(first, second))
    self.assertAllEqual(first, again_first)
    self.assertAllEqual(second, again_second)


class AugmentTest(tf.test.TestCase):

  def test_crop_is_a_shift_of_at_most_four_pixels_and_flip(self):
    image = tf.reshape(tf.range(8 * 8 * 1, dtype=tf.float32) + 1.0, (8, 8, 1))
    shifted_or_flipped = 0
    for i in range(20):
      out = data.augment(image, tf.constant([i, 7], tf.int64)).numpy()
      self.assertEqual(out.shape, (8, 8, 1))
      padded = np.pad(image.numpy(), ((4, 4), (4, 4), (0, 0)))
      windows = [padded[r:r + 8, c:c + 8] for r in range(9) for c in range(9)]
      match = any(np.array_equal(out, w) or np.array_equal(out, w[:, ::-1])
                  for w in windows)
      self.assertTrue(match, msg=f"seed {i}")
      shifted_or_flipped += not np.array_equal(out, image.numpy())
    self.assertGreater(shifted_or_flipped, 10)

  def test_same_seed_same_augmentation(self):
    image = tf.random.stateless_uniform((32, 32, 3), seed=(0, 1))
    seed = tf.constant([3, 4], tf.int64)
    self.assertAllEqual(data.augment(image, seed), data.augment(image, seed))


class ImageFolderTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp(dir=self.get_temp_dir())
    rng = np.random.default_rng(0)
    self.images = {}
    for split, per_class in (("train", 3), ("val", 2)):
      for name in ("n02", "n01"):  # Unsorted on purpose.
        folder = os.path.join(self.root, split, name)
        os.makedirs(folder)
        for i in range(per_class):
          pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
          tf.io.write_file(os.path.join(folder, f"{i}.png"),
                           tf.io.encode_png(pixels))
          self.images[(split, name, i)] = pixels

  def test_sorted_classes_labels_values_and_order(self):
    self.assertEqual(data.folder_classes(self.root, "val"), ["n01", "n02"])
    dataset = data.load_image_folder(self.root, "val", batch_size=3)
    x, y = (np.concatenate(parts) for parts in zip(*batches(dataset)))
    self.assertAllEqual(y, [0, 0, 1, 1])
    expected = [self.images[("val", name, i)] for name in ("n01", "n02")
                for i in range(2)]
    self.assertAllClose(x, np.stack(expected).astype(np.float32) / 255.0,
                        atol=1e-7, rtol=0)

  def test_training_and_resize(self):
    dataset = data.load_image_folder(self.root, "train", batch_size=6,
                                     training=True, seed=0, image_size=(8, 8))
    x, y = batches(dataset)[0]
    self.assertEqual(x.shape, (6, 8, 8, 3))
    self.assertCountEqual(y.tolist(), [0, 0, 0, 1, 1, 1])
    again = batches(data.load_image_folder(self.root, "train", batch_size=6,
                                           training=True, seed=0,
                                           image_size=(8, 8)))[0][0]
    self.assertAllEqual(x, again)

  def test_missing_split_raises(self):
    with self.assertRaisesRegex(FileNotFoundError, "split='test'"):
      data.load_image_folder(self.root, "test")


class MissingDataTest(tf.test.TestCase):

  def test_fails_fast_naming_tfds_data_dir_without_network(self):
    original = data.network_available
    data.network_available = lambda *args, **kwargs: False
    try:
      start = time.monotonic()
      with self.assertRaisesRegex(FileNotFoundError,
                                  "TFDS_DATA_DIR.*--data_dir.*Received: name='cifar10'"):
        data.load_tfds("cifar10", "test[:10]", data_dir=self.get_temp_dir())
      self.assertLess(time.monotonic() - start, 5.0)
    finally:
      data.network_available = original

  def test_network_probe_reports_a_closed_port(self):
    self.assertFalse(data.network_available(("127.0.0.1", 9), timeout=1.0))

  def test_bad_batch_size(self):
    with self.assertRaisesRegex(ValueError, "Received: batch_size=0"):
      data.load_tfds("cifar10", "test[:10]", batch_size=0)


if __name__ == "__main__":
  tf.test.main()
