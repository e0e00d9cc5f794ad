"""Tests of adv_layer.gcache: K cached draws of g, resumable, served per epoch."""

import os
import tempfile

import numpy as np
import tensorflow as tf

from adv_layer import data
from adv_layer import gcache
from adv_layer import layer
from adv_layer import models

SIZE = 8
SETTINGS = dict(epsilon=0.2, steps=3)


def tiny_fb(seed=0):
  return models.small_cnn(num_classes=4, input_shape=(SIZE, SIZE, 3), width=2,
                          seed=seed)


def tiny_images(n=10, seed=0):
  """Random images in [0, 1]; label i for image i (an id, to match images)."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 1.0, (n, SIZE, SIZE, 3)).astype(np.float32)
  return x, np.arange(n, dtype=np.int32)


def folder_bytes(folder):
  """{relative path: file bytes} of every file under `folder`."""
  contents = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as file:
        contents[os.path.relpath(path, folder)] = file.read()
  return contents


def one_epoch(dataset):
  """One pass over `dataset` as a list of `(x, y)` numpy batches."""
  return [(x.numpy(), y.numpy()) for x, y in dataset]


def by_id(batches):
  """An epoch's batches as `(x, y)` arrays, sorted by label (= image id)."""
  x = np.concatenate([b[0] for b in batches])
  y = np.concatenate([b[1] for b in batches])
  order = np.argsort(y)
  return x[order], y[order]


class PrecomputeTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.f_b = tiny_fb()
    cls.x, cls.y = tiny_images()
    cls.folder = tempfile.mkdtemp()
    cls.written = gcache.precompute_draws(
        cls.f_b, (cls.x, cls.y), cls.folder, draws=3, seed=1, batch_size=4,
        shard_batches=2, verbose=0, **SETTINGS)

  def test_layout_shapes_and_dtypes(self):
    # 10 images in batches of 4, 2 batches a shard: shards of 8 and 2 images.
    self.assertEqual(self.written, 6)
    self.assertCountEqual(os.listdir(self.folder),
                          ["manifest.json", "draw_000", "draw_001", "draw_002"])
    self.assertCountEqual(os.listdir(os.path.join(self.folder, "draw_001")),
                          ["shard_00000.tfrecord", "shard_00001.tfrecord"])
    manifest = gcache.read_manifest(self.folder)
    self.assertEqual((manifest["examples"], manifest["shards"]), (10, 2))
    self.assertEqual(manifest["image_shape"], [SIZE, SIZE, 3])
    x, y = gcache.load_draw(self.folder, 2)
    self.assertEqual((x.shape, x.dtype), ((10, SIZE, SIZE, 3), np.float32))
    self.assertEqual((y.shape, y.dtype), ((10,), np.int32))
    self.assertAllEqual(y, self.y)  # The input's order.

  def test_each_draw_is_the_layers_g_under_its_seed(self):
    for draw in range(3):
      cached, _ = gcache.load_draw(self.folder, draw)
      for batch, start in enumerate(range(0, 10, 4)):
        transform = layer.AdversarialTransform(
            self.f_b, seed=gcache.draw_seed(1, draw, batch), **SETTINGS)
        self.assertAllEqual(cached[start:start + 4],
                            transform(self.x[start:start + 4], training=True))

  def test_draws_are_distinct_adversarial_examples_in_the_ball(self):
    draws = [gcache.load_draw(self.folder, draw)[0] for draw in range(3)]
    for first in range(3):
      self.assertLessEqual(np.abs(draws[first] - self.x).max(), 0.2 + 1e-6)
      self.assertGreater(np.abs(draws[first] - self.x).mean(), 0.05)
      for second in range(first + 1, 3):
        # Different random starts: no image is the same in two draws.
        per_image = np.abs(draws[first] - draws[second]).max(axis=(1, 2, 3))
        self.assertGreater(per_image.min(), 0.01)
    seeds = {gcache.draw_seed(1, d, b) for d in range(3) for b in range(3)}
    self.assertLen(seeds, 9)

  def test_a_layer_keeps_its_settings_and_target_mode(self):
    transform = layer.AdversarialTransform(self.f_b, epsilon=0.1, steps=2,
                                           target="random", seed=7)
    with tempfile.TemporaryDirectory() as folder:
      gcache.precompute_draws(transform, (self.x[:4], self.y[:4]), folder,
                              draws=2, seed=3, batch_size=4, verbose=0)
      self.assertEqual(gcache.read_manifest(folder)["target"], "random")
      for draw in range(2):
        fresh = layer.AdversarialTransform(
            self.f_b, epsilon=0.1, steps=2, target="random",
            seed=gcache.draw_seed(3, draw, 0))
        self.assertAllEqual(gcache.load_draw(folder, draw)[0],
                            fresh(self.x[:4], training=True))

  def test_rerun_after_a_kill_finishes_with_identical_files(self):
    reference = folder_bytes(self.folder)
    with tempfile.TemporaryDirectory() as folder:
      run = lambda: gcache.precompute_draws(
          self.f_b, (self.x, self.y), folder, draws=3, seed=1, batch_size=4,
          shard_batches=2, verbose=0, **SETTINGS)
      run()
      # A kill: two shards never written, one half-written temporary file.
      os.remove(gcache.shard_path(folder, 0, 1))
      os.remove(gcache.shard_path(folder, 2, 0))
      with open(gcache.shard_path(folder, 2, 0) + ".tmp", "wb") as file:
        file.write(b"partial")
      kept = gcache.shard_path(folder, 1, 0)
      kept_time = os.stat(kept).st_mtime_ns
      with self.assertRaisesRegex(FileNotFoundError, "misses .*shard_00001"):
        gcache.cached_training_data(folder, batch_size=4)
      self.assertEqual(run(), 2)
      self.assertEqual(os.stat(kept).st_mtime_ns, kept_time)  # Not redone.
      self.assertEqual(folder_bytes(folder), reference)
      self.assertEqual(run(), 0)

  def test_a_dataset_in_other_batches_gives_the_same_cache(self):
    dataset = tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(3)
    with tempfile.TemporaryDirectory() as folder:
      gcache.precompute_draws(self.f_b, dataset, folder, draws=3, seed=1,
                              batch_size=4, shard_batches=2, verbose=0,
                              **SETTINGS)
      self.assertEqual(folder_bytes(folder), folder_bytes(self.folder))

  def test_a_missing_shard_or_other_settings_raise(self):
    with tempfile.TemporaryDirectory() as folder:
      gcache.precompute_draws(self.f_b, (self.x[:4], self.y[:4]), folder,
                              draws=2, seed=0, batch_size=4, verbose=0,
                              **SETTINGS)
      with self.assertRaisesRegex(ValueError, r"\['draws', 'seed'\]"):
        gcache.precompute_draws(self.f_b, (self.x[:4], self.y[:4]), folder,
                                draws=3, seed=1, batch_size=4, verbose=0,
                                **SETTINGS)
      with self.assertRaisesRegex(ValueError, r"\['f_b_weights'\]"):
        gcache.precompute_draws(tiny_fb(seed=5), (self.x[:4], self.y[:4]),
                                folder, draws=2, seed=0, batch_size=4,
                                verbose=0, **SETTINGS)
      with self.assertRaisesRegex(ValueError, r"\['examples'\]"):
        gcache.precompute_draws(self.f_b, (self.x[:8], self.y[:8]), folder,
                                draws=2, seed=0, batch_size=4, verbose=0,
                                **SETTINGS)
      os.remove(gcache.shard_path(folder, 1, 0))
      with self.assertRaisesRegex(FileNotFoundError, "shard_00000"):
        gcache.load_draw(folder, 0)
    with self.assertRaisesRegex(FileNotFoundError, "No g cache"):
      gcache.load_draw(os.path.join(self.folder, "draw_000"), 0)

  def test_bad_arguments_raise(self):
    with tempfile.TemporaryDirectory() as folder:
      with self.assertRaisesRegex(ValueError, "Received: draws=0"):
        gcache.precompute_draws(self.f_b, (self.x, self.y), folder, draws=0)
      with self.assertRaisesRegex(ValueError, "value_range"):
        gcache.precompute_draws(self.f_b, (self.x * 2, self.y), folder,
                                verbose=0, **SETTINGS)
      with self.assertRaisesRegex(ValueError, "Received: f_b_or_layer="):
        gcache.precompute_draws("f_b", (self.x, self.y), folder)
    with self.assertRaisesRegex(ValueError, "Received: draw=3"):
      gcache.load_draw(self.folder, 3)


class CachedTrainingDataTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.x, cls.y = tiny_images()
    cls.folder = tempfile.mkdtemp()
    gcache.precompute_draws(tiny_fb(), tiny_images(), cls.folder, draws=3,
                            seed=2, batch_size=4, verbose=0, **SETTINGS)
    cls.draws = [gcache.load_draw(cls.folder, draw)[0] for draw in range(3)]

  def picked_draw(self, x):
    """The index of the draw that all of an epoch's images come from."""
    matches = [draw for draw in range(3) if np.array_equal(x, self.draws[draw])]
    self.assertLen(matches, 1)
    return matches[0]

  def test_each_epoch_serves_one_fresh_pick_shuffled(self):
    dataset = gcache.cached_training_data(self.folder, batch_size=4, seed=0,
                                          augment=False)
    self.assertEqual(int(dataset.cardinality()), 3)
    picks, orders = [], set()
    for _ in range(12):
      batches = one_epoch(dataset)
      self.assertEqual([x.shape for x, _ in batches],
                       [(4, SIZE, SIZE, 3), (4, SIZE, SIZE, 3),
                        (2, SIZE, SIZE, 3)])
      self.assertEqual(batches[0][0].dtype, np.float32)
      self.assertEqual(batches[0][1].dtype, np.int32)
      orders.add(tuple(np.concatenate([y for _, y in batches])))
      x, y = by_id(batches)
      self.assertAllEqual(y, self.y)
      picks.append(self.picked_draw(x))
    self.assertEqual(set(picks), {0, 1, 2})  # 12 picks: all 3 draws (p > 0.99).
    self.assertGreater(len(orders), 1)
    again = gcache.cached_training_data(self.folder, batch_size=4, seed=0,
                                        augment=False)
    self.assertEqual(
        [self.picked_draw(by_id(one_epoch(again))[0]) for _ in range(12)],
        picks)  # Seeded: the same sequence of picks.

  def test_augmentation_is_a_crop_and_flip_of_the_picked_draw(self):
    dataset = gcache.cached_training_data(self.folder, batch_size=10, seed=5)
    shifted = 0
    for _ in range(3):
      (x, y), = one_epoch(dataset)
      for image, label in zip(x, y):
        candidates = [np.stack(self.crops_and_flips(self.draws[draw][label]))
                      for draw in range(3)]
        found = [np.any(np.all(c == image, axis=(1, 2, 3))) for c in candidates]
        self.assertTrue(any(found))
        shifted += not any(np.array_equal(image, self.draws[draw][label])
                           for draw in range(3))
    self.assertGreater(shifted, 15)  # Of 30: most are moved or flipped.

  def crops_and_flips(self, image):
    """Every output of `data.augment` for `image` (9 x 9 crops x 2 flips)."""
    padded = np.pad(image, [(data.PAD, data.PAD), (data.PAD, data.PAD), (0, 0)])
    crops = [padded[i:i + SIZE, j:j + SIZE]
             for i in range(2 * data.PAD + 1) for j in range(2 * data.PAD + 1)]
    return crops + [crop[:, ::-1] for crop in crops]
