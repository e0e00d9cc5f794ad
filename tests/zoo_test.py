"""Tests of adv_layer.zoo: names, cards, loading, and every card's accuracy.

The CIFAR-10 data comes from the prepared copy that `TFDS_DATA_DIR` points at.
"""

import io
import json
import os
import shutil
import tempfile
import zipfile

import h5py
import keras
import numpy as np
import tensorflow as tf

from adv_layer import data
from adv_layer import layer
from adv_layer import models
from adv_layer import training
from adv_layer import zoo

CARD_FIELDS = dict(
    description="test model", data="CIFAR-10 (JPEG copy)", dataset="cifar10",
    training_command="tests/zoo_test.py", seed=0, test_images=500,
    wall_time_s=1.0, machine="test machine")


# The card check's split, test[:500]: an accuracy is a count of these.
CHECK_IMAGES = 500
# Images whose decision may differ from the card when another machine's
# kernels measure a published model (the zoo's cards were measured on an
# AVX-512 CPU with oneDNN). Measured with TF_ENABLE_ONEDNN_OPTS=0 against the
# cards: the logits of the models without g moved by at most 1.5e-5, and
# their smallest top-2 margin is 2.6e-4 (resnet18_madry), so none flipped;
# one image allows one near-tie on coarser kernels. Through g (13 signed
# steps on f_b's gradient) a component near zero can change sign and send
# g(x) elsewhere: 24 of the 500 images of defended_resnet18 got another g(x),
# and 1 decision flipped (364 correct against the card's 363; an AVX2 EPYC
# measured 362 or 364). A diverged image's decision changes as between two
# draws of g, for 12-14% of images (62 and 71 of 500 for the seeds 1 and 2
# against 0): about 3 changed decisions, each +1 or -1, so the count moves by
# a difference of two Poisson(1.55) counts; more than 5 images has
# probability 0.3%. A new seed derivation (+6 and -3 images for the seeds 1
# and 2) or a broken loader (far from the card) is what the check is for; the
# golden test pins the draws themselves.
DETERMINISTIC_FLIPS = 1
RANDOMIZED_FLIPS = 5


def image_count(accuracy, name):
  """`accuracy` as the count of correct images of CHECK_IMAGES it is."""
  count = round(accuracy * CHECK_IMAGES)
  if abs(count - accuracy * CHECK_IMAGES) > 1e-6:
    raise AssertionError(f"{name}: {accuracy} is not a count of "
                         f"{CHECK_IMAGES} images")
  return count


def flips_allowed(root, name):
  """Images of the check that may differ from `name`'s card (see above).

  0 for the models this test publishes: their cards are measured here, on
  these kernels, so they reproduce exactly.
  """
  if root != zoo.ZOO_DIR:
    return 0
  with zipfile.ZipFile(zoo.entry_path(name, root, ".keras")) as file:
    randomized = '"AdversarialTransform"' in file.read("config.json").decode()
  return RANDOMIZED_FLIPS if randomized else DETERMINISTIC_FLIPS


def tiny_trained_classifier():
  """small_cnn at width 4, two epochs on 512 CIFAR-10 training images."""
  keras.utils.set_random_seed(0)
  model = models.small_cnn(width=4, seed=0)
  train = data.load_tfds("cifar10", "train[:512]", 64, training=True, seed=0)
  training.train(model, train, epochs=2, learning_rate=0.05, verbose=0)
  return model


class ZooTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.x, cls.y = data.load_arrays("cifar10", "test[:500]")
    cls.plain = tiny_trained_classifier()
    f_b = models.small_cnn(width=2, seed=1)
    cls.defended = training.defended_model(f_b, cls.plain, steps=2, seed=0)
    for name, model in (("cifar10/plain", cls.plain),
                        ("cifar10/defended", cls.defended)):
      accuracy = float(np.mean(np.argmax(
          model.predict(cls.x, verbose=0), axis=-1) == cls.y))
      zoo.publish(model, name, dict(CARD_FIELDS, clean_accuracy=accuracy),
                  root=cls.root)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def test_available_lists_the_cards_sorted(self):
    self.assertEqual(zoo.available(self.root),
                     ["cifar10/defended", "cifar10/plain"])
    self.assertEqual(zoo.available(os.path.join(self.root, "none")), [])
    self.assertNotIn("README", " ".join(zoo.available()))

  def test_card_has_every_field(self):
    entry = zoo.card("cifar10/plain", root=self.root)
    self.assertCountEqual(entry, zoo.CARD_KEYS)
    self.assertEqual(entry["name"], "cifar10/plain")
    self.assertEqual(entry["data"], "CIFAR-10 (JPEG copy)")
    self.assertEqual(entry["check"]["split"], "test[:500]")
    self.assertRegex(entry["date"], r"^\d{4}-\d\d-\d\d$")

  def test_published_files_hold_no_optimizer_state(self):
    # Both models hold the compiled `plain` (the defended one nested).
    for name in ("cifar10/plain", "cifar10/defended"):
      with zipfile.ZipFile(zoo.entry_path(name, self.root, ".keras")) as file:
        with h5py.File(io.BytesIO(file.read("model.weights.h5")), "r") as h5:
          paths = []
          h5.visit(paths.append)
      self.assertNotIn("optimizer", " ".join(paths), msg=name)
      self.assertIn("vars", " ".join(paths), msg=name)

  def test_a_subclassed_model_is_refused(self):

    class Subclassed(keras.Model):

      def call(self, inputs):
        return inputs

    with self.assertRaisesRegex(ValueError, "Received: model=Subclassed"):
      zoo.inference_copy(Subclassed())
    self.assertLen(zoo.inference_copy(self.defended).weights,
                   len(self.defended.weights))

  def test_load_returns_the_published_model(self):
    loaded = zoo.load("cifar10/plain", root=self.root)
    self.assertAllClose(loaded.predict(self.x[:20], verbose=0),
                        self.plain.predict(self.x[:20], verbose=0),
                        rtol=0, atol=1e-6)
    defended = zoo.load("cifar10/defended", root=self.root)
    self.assertLen(layer.find_transforms(defended), 1)

  def test_plain_check_is_the_clean_accuracy_measured_here(self):
    # A model without g is deterministic: its check equals the accuracy
    # measured in setUpClass on the same 500 images.
    entry = zoo.card("cifar10/plain", root=self.root)
    self.assertEqual(entry["check"]["accuracy"], entry["clean_accuracy"])
    # Trained: above chance (0.1; 0.13 is 3 standard errors above it).
    self.assertGreater(entry["clean_accuracy"], 0.13)

  def test_every_model_reproduces_its_card(self):
    # The zoo's published models (adv_layer/zoo_models) and this
    # test's two models, one of them randomized (g pinned to the card's seed).
    # Accuracies are counts of CHECK_IMAGES images, compared as integers.
    entries = ([(zoo.ZOO_DIR, name) for name in zoo.available()] +
               [(self.root, name) for name in zoo.available(self.root)])
    self.assertGreaterEqual(len(entries), 2)
    for root, name in entries:
      entry = zoo.card(name, root=root)
      self.assertEqual(entry["check"]["split"], "test[:500]")
      measured, published = zoo.check_accuracy(name, root=root)
      measured_count, published_count = (
          image_count(measured, name), image_count(published, name))
      allowed = flips_allowed(root, name)
      self.assertLessEqual(
          abs(measured_count - published_count), allowed,
          f"{name}: {measured_count} of {CHECK_IMAGES} images correct, the "
          f"card says {published_count} (at most {allowed} may differ)")

  def test_unknown_name_lists_the_known_ones(self):
    with self.assertRaisesRegex(
        ValueError, r"\['cifar10/defended', 'cifar10/plain'\]\. "
        r"Received: name='cifar10/nope'"):
      zoo.load("cifar10/nope", root=self.root)
    with self.assertRaisesRegex(ValueError, "Received: name='x'"):
      zoo.card("x", root=self.root)

  def test_card_without_weights_or_keys_raises(self):
    with tempfile.TemporaryDirectory() as root:
      os.makedirs(os.path.join(root, "cifar10"))
      entry = zoo.card("cifar10/plain", root=self.root)
      with open(os.path.join(root, "cifar10", "orphan.json"), "w") as file:
        json.dump(entry, file)
      with self.assertRaisesRegex(FileNotFoundError, "orphan.keras"):
        zoo.load("cifar10/orphan", root=root)
      del entry["machine"]
      with open(os.path.join(root, "cifar10", "bad.json"), "w") as file:
        json.dump(entry, file)
      with self.assertRaisesRegex(ValueError, r"lacks the keys \['machine'\]"):
        zoo.card("cifar10/bad", root=root)

  def test_publish_rejects_bad_names_and_fields(self):
    with self.assertRaisesRegex(ValueError, "Received: name='plain'"):
      zoo.publish(self.plain, "plain", CARD_FIELDS, root=self.root)
    with self.assertRaisesRegex(ValueError, r"missing \['clean_accuracy'\]"):
      zoo.publish(self.plain, "cifar10/x", CARD_FIELDS, root=self.root)
