"""Tests of examples/compare_fb_training.py and examples/publish_model.py."""

import os
import tempfile

import numpy as np
import tensorflow as tf

from adv_layer import models
from adv_layer import training
from examples import compare_fb_training
from examples import publish_model

SHAPE = (16, 16, 3)


def tiny_vgg(seed):
  return models.build_model("small_vgg", num_classes=10, input_shape=SHAPE,
                            width=0.0625, seed=seed)


class CompareFbTrainingTest(tf.test.TestCase):

  def test_trainer_backup_loads_into_the_architecture(self):
    trained = tiny_vgg(seed=1)
    trainer = training.AdversarialTrainer(trained, name="pgd_trainer")
    path = os.path.join(tempfile.mkdtemp(), "latest.weights.h5")
    trainer.save_weights(path)
    loaded = compare_fb_training.load_checkpoint(path, "small_vgg", 0.0625,
                                                 SHAPE, 10)
    for a, b in zip(trained.weights, loaded.weights):
      self.assertAllEqual(a, b)
    # A fresh build (seed 0) differs: the weights came from the file.
    self.assertNotAllEqual(tiny_vgg(seed=0).weights[0], loaded.weights[0])

  def test_other_files_are_refused(self):
    with self.assertRaisesRegex(ValueError, "path='f_b.h5'"):
      compare_fb_training.load_checkpoint("f_b.h5", "small_vgg", 1.0, SHAPE, 10)

  def test_pgd_correct_implies_clean_correct(self):
    x = np.random.default_rng(0).uniform(size=(6,) + SHAPE).astype(np.float32)
    f_b = tiny_vgg(seed=2)
    y = np.argmax(f_b.predict(x, verbose=0), -1).astype(np.int32)
    y[:2] = (y[:2] + 1) % 10  # Two images wrong before any attack.
    clean, robust = compare_fb_training.evaluate(
        f_b, x, y, epsilon=8 / 255, steps=2, restarts=1, seed=0, batch_size=4)
    self.assertAllEqual(clean, [False, False, True, True, True, True])
    self.assertFalse(np.any(robust & ~clean))

  def test_interval_text(self):
    self.assertEqual(
        compare_fb_training.percent_with_interval(np.array([1, 1, 1, 0], bool)),
        "75.0% [19.4, 99.4]")


class PublishModelTest(tf.test.TestCase):

  def test_epoch_times_are_summed_over_logs(self):
    folder = tempfile.mkdtemp()
    paths = [os.path.join(folder, f"{i}.log") for i in range(2)]
    with open(paths[0], "w") as f:
      f.write("Epoch 1/3\n391/391 - 125s - 319ms/step - accuracy: 0.18\n"
              "Epoch 2/3\n391/391 - 195s - 498ms/step - accuracy: 0.23\n")
    with open(paths[1], "w") as f:
      f.write("noise 12/13 - 7s\n 391/391 - 10s - 1s/step - loss: 1.0\n")
    self.assertEqual(publish_model.logged_seconds(paths), 330.0)

  def test_g_cache_shards_count_as_images_over_rate(self):
    path = os.path.join(tempfile.mkdtemp(), "train.log")
    with open(path, "w") as f:
      f.write("g cache: draw 1/4, shard 0 (5120 images, 40.0 images/s)\n"
              "g cache: draw 2/4, shard 9 (1000 images, 12.5 images/s)\n"
              "391/391 - 300s - 767ms/step - accuracy: 0.29\n")
    self.assertEqual(publish_model.logged_seconds([path]), 128 + 80 + 300)

  def test_a_log_without_epochs_is_refused(self):
    path = os.path.join(tempfile.mkdtemp(), "empty.log")
    with open(path, "w") as f:
      f.write("Epoch 1/3\n")
    with self.assertRaisesRegex(ValueError, "No epoch lines"):
      publish_model.logged_seconds([path])


if __name__ == "__main__":
  tf.test.main()
