"""Tests of attacks.preflight: the checks an evaluation runs before any unit."""

import os
import sys
import tempfile
import textwrap

import keras
import numpy as np
import tensorflow as tf

import adv_layer
from attacks import preflight

# The CIFAR-10 copy of the tests (library code never names it).
# The offline CIFAR-10 copy (README, "Data"); .ci/run and make set it.
TFDS_DIR = os.environ.get("TFDS_DATA_DIR")


def logits_model(shape=(4, 4, 1), classes=3, seed=0):
  """A tiny classifier, logits out."""
  keras.utils.set_random_seed(seed)
  return keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                           keras.layers.Dense(8, activation="tanh"),
                           keras.layers.Dense(classes)])


def images(count=4, shape=(4, 4, 1), seed=0):
  return np.random.default_rng(seed).uniform(
      0, 1, (count,) + shape).astype(np.float32)


class CheckEpsilonTest(tf.test.TestCase):

  def test_pixel_levels_are_refused_with_the_fraction_meant(self):
    with self.assertRaisesRegex(
        ValueError, r"`epsilon`=8 is at least the width 1 .*did you mean "
        r"8/255 \(= 0\.0314\)\?.*--allow_large_epsilon.*Received: "
        r"epsilon=8\.0"):
      preflight.check_epsilon(8.0, (0.0, 1.0))
    # Exactly the width is refused too; on [-1, 1] the fraction is of 2.
    with self.assertRaisesRegex(ValueError,
                                r"`epsilon`=1 .*Received: epsilon=1"):
      preflight.check_epsilon(1, (0.0, 1.0))
    with self.assertRaisesRegex(ValueError, r"8/255 of the range width 2 "
                                r"\(= 0\.0627\)"):
      preflight.check_epsilon(8.0, (-1.0, 1.0))

  def test_usual_budgets_and_the_override_pass(self):
    self.assertEqual(preflight.check_epsilon(8 / 255, (0.0, 1.0)), 8 / 255)
    self.assertEqual(preflight.check_epsilon(0.0, (0.0, 1.0)), 0.0)
    self.assertEqual(preflight.check_epsilon(0.5, (0.0, 1.0)), 0.5)
    self.assertEqual(preflight.check_epsilon(8, (0.0, 255.0)), 8.0)
    self.assertEqual(
        preflight.check_epsilon(8.0, (0.0, 1.0), allow_large=True), 8.0)

  def test_not_a_budget_is_refused(self):
    for value in (-0.1, float("nan"), "8/255"):
      with self.assertRaisesRegex(ValueError, "Received: epsilon="):
        preflight.check_epsilon(value, (0.0, 1.0))
    with self.assertRaisesRegex(ValueError, "finite.*Received: epsilon=inf"):
      preflight.check_epsilon(float("inf"), (0.0, 1.0), allow_large=True)


class ProbeModelTest(tf.test.TestCase):

  def test_a_logits_model_passes_and_reports_its_width(self):
    probe = preflight.probe_model(logits_model(), images(), num_classes=3)
    self.assertEqual(probe, preflight.ModelProbe(output_width=3,
                                                 nonfinite_rows=0))

  def test_a_defended_model_passes(self):
    f_b = logits_model(seed=1)
    model = keras.Sequential([
        keras.Input((4, 4, 1)),
        adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=2, seed=0),
        logits_model(seed=2, classes=4)])
    self.assertEqual(preflight.probe_model(model, images(), 4),
                     preflight.ModelProbe(4, 0))

  def test_calls_the_model_once_on_at_most_eight_images(self):
    calls = []

    def model_fn(x):
      calls.append(x.shape[0])
      return tf.zeros((x.shape[0], 10)) + tf.range(10.0) * 3 - 5

    preflight.probe_model(model_fn, images(20), num_classes=10)
    self.assertEqual(calls, [8])

  def test_input_shape_mismatch_names_both_shapes(self):
    # A 28x28x1 model on CIFAR-10 images.
    model = logits_model(shape=(28, 28, 1), classes=10)
    with self.assertRaisesRegex(
        ValueError, r"`model` takes images of shape \(None, 28, 28, 1\), but "
        r"the data's images have shape \(None, 32, 32, 3\).*Received: model "
        r"input shape=\(None, 28, 28, 1\), images shape=\(None, 32, 32, 3\)"):
      preflight.probe_model(model, images(2, (32, 32, 3)), num_classes=10)

  def test_a_failing_call_names_both_shapes(self):
    # No input shape to compare first: the call's own shape error is caught.

    class Subclassed(keras.Model):

      def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(10)

      def call(self, x, training=None):
        return self.dense(keras.ops.reshape(x, (-1, 28 * 28)))

    with self.assertRaisesRegex(
        ValueError, r"`model` failed on 2 of the data's images, of shape "
        r"\(None, 32, 32, 3\).*Received: model input shape=None, images "
        r"shape=\(None, 32, 32, 3\)"):
      preflight.probe_model(Subclassed(), images(2, (32, 32, 3)), 10)

  def test_output_width_must_match_the_classes(self):
    # A 100-class model on CIFAR-10.
    with self.assertRaisesRegex(
        ValueError, r"`model` returns 100 logits per image, but the data has "
        r"10 classes.*Received: output width=100, num_classes=10"):
      preflight.probe_model(logits_model(classes=100), images(), 10)
    # Classes inferred from a few labels: only fewer logits are refused.
    self.assertEqual(preflight.probe_model(
        logits_model(classes=10), images(), 9, exact=False).output_width, 10)
    with self.assertRaisesRegex(ValueError, "Received: output width=3"):
      preflight.probe_model(logits_model(), images(), 4, exact=False)

  def test_outputs_must_be_one_row_per_image(self):
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Dense(3)])
    with self.assertRaisesRegex(
        ValueError, r"shape \(images, classes\).*Received: output "
        r"shape=\(4, 4, 4, 3\) for 4 images"):
      preflight.probe_model(model, images(), 3)

  def test_probabilities_are_refused(self):
    softmax = keras.Sequential([logits_model(classes=10),
                                keras.layers.Softmax()])
    with self.assertRaisesRegex(
        ValueError, r"`model` returns probabilities .*each row summing to 1.*"
        r"losses take logits: drop the final activation"):
      preflight.probe_model(softmax, images(), 10)
    sigmoid = keras.Sequential([logits_model(classes=10),
                                keras.layers.Activation("sigmoid")])
    with self.assertRaisesRegex(ValueError, "sigmoid.*drop the final"):
      preflight.probe_model(sigmoid, images(), 10)

  def test_non_finite_outputs_are_counted_not_refused(self):
    def model_fn(x):
      logits = tf.tile(tf.constant([[2.0, -1.0, 0.5]]), [x.shape[0], 1])
      bad = tf.range(x.shape[0])[:, None] < 3  # The first 3 images: NaN.
      return tf.where(bad, np.nan, logits)

    probe = preflight.probe_model(model_fn, images(5), 3)
    self.assertEqual(probe, preflight.ModelProbe(3, 3))
    all_nan = lambda x: tf.fill((x.shape[0], 3), np.nan)
    self.assertEqual(preflight.probe_model(all_nan, images(5), 3).nonfinite_rows, 5)

  def test_no_images_raise(self):
    with self.assertRaisesRegex(ValueError, r"Received: x.shape=\(0, 4, 4, 1\)"):
      preflight.probe_model(logits_model(), images(0), 3)


class LoadModelTest(tf.test.TestCase):
  """What `load_model` adds; a path, a zoo name and a missing file are in
  tests/attack_eval_test.py (`attack_eval.load_model` is this function)."""

  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    self.path = os.path.join(self.dir, "m.keras")
    logits_model().save(self.path)

  def test_a_truncated_file_is_not_a_readable_archive(self):
    with open(self.path, "rb") as f:
      data = f.read()
    truncated = os.path.join(self.dir, "truncated.keras")
    with open(truncated, "wb") as f:
      f.write(data[:len(data) // 2])
    with self.assertRaisesRegex(ValueError, "File not found"):
      keras.saving.load_model(truncated)  # Keras' own, misleading message.
    with self.assertRaisesRegex(
        ValueError, r"--model='.*truncated.keras' exists but is not a "
        r"readable Keras archive.*Received: model='.*truncated.keras'"):
      preflight.load_model(truncated)
    with self.assertRaisesRegex(ValueError, "is a folder.*Received: model="):
      preflight.load_model(self.dir)

  def test_an_unregistered_class_names_the_import_flag(self):

    @keras.saving.register_keras_serializable(package="preflight_test")
    class Doubling(keras.layers.Layer):

      def call(self, inputs):
        return 2 * inputs

    path = os.path.join(self.dir, "custom.keras")
    keras.Sequential([keras.Input((3,)), Doubling(),
                      keras.layers.Dense(2)]).save(path)
    del keras.saving.get_custom_objects()["preflight_test>Doubling"]
    with self.assertRaisesRegex(
        ValueError, r"uses the class 'Doubling', which no imported module "
        r"registers: register the module that defines it with "
        r"--import=my_pkg.layers.*Received: model='.*custom.keras'"):
      preflight.load_model(path)


class ImportModulesTest(tf.test.TestCase):

  def test_imports_and_registers_the_classes(self):
    folder = self.get_temp_dir()
    with open(os.path.join(folder, "preflight_layers.py"), "w") as f:
      f.write(textwrap.dedent("""
          import keras

          @keras.saving.register_keras_serializable(package="preflight_mod")
          class Halving(keras.layers.Layer):
            def call(self, inputs):
              return inputs / 2
          """))
    sys.path.insert(0, folder)
    try:
      modules = preflight.import_modules(["preflight_layers", ""])
    finally:
      sys.path.remove(folder)
    self.assertEqual([m.__name__ for m in modules], ["preflight_layers"])
    self.assertIn("preflight_mod>Halving", keras.saving.get_custom_objects())

  def test_a_module_that_fails_names_the_flag_and_value(self):
    with self.assertRaisesRegex(
        ValueError, r"--import='no_such_pkg.layers' could not be imported "
        r"\(ModuleNotFoundError.*Received: import='no_such_pkg.layers'"):
      preflight.import_modules(["os", "no_such_pkg.layers"])


class CheckReportDirTest(tf.test.TestCase):

  def test_creates_the_folder_and_leaves_it_empty(self):
    path = os.path.join(self.get_temp_dir(), "new", "report")
    self.assertEqual(preflight.check_report_dir(path), path)
    self.assertTrue(os.path.isdir(path))
    self.assertEqual(os.listdir(path), [])  # The probe file is gone.

  def test_a_file_is_refused(self):
    path = os.path.join(self.get_temp_dir(), "report.json")
    with open(path, "w") as f:
      f.write("{}")
    with self.assertRaisesRegex(
        ValueError, r"`report_dir`='.*report.json' is a file, not a folder.*"
        r"Received: report_dir="):
      preflight.check_report_dir(path)
    with self.assertRaisesRegex(ValueError, "cannot be created.*Received: "
                                "report_dir='.*report.json/sub'"):
      preflight.check_report_dir(os.path.join(path, "sub"))

  def test_a_folder_that_is_not_writable_is_refused(self):
    # /proc refuses new files even to root (chmod would not stop root).
    with self.assertRaisesRegex(ValueError, "--out='/proc' is not writable.*"
                                "Received: out='/proc'"):
      preflight.check_report_dir("/proc", flag="--out")
    with self.assertRaisesRegex(ValueError, "Received: report_dir=''"):
      preflight.check_report_dir("")


class CheckNumExamplesTest(tf.test.TestCase):

  def test_more_than_the_split_holds_is_refused(self):
    with self.assertRaisesRegex(
        ValueError, r"--num_examples=20000 asks for more images than the "
        r"10,000 of cifar10's 'test' split.*Received: num_examples=20000"):
      preflight.check_num_examples(20000, "cifar10", "test", TFDS_DIR)

  def test_counts_within_the_split_pass(self):
    for count in (1, 10000):
      self.assertEqual(
          preflight.check_num_examples(count, "cifar10", "test", TFDS_DIR),
          10000)
    self.assertIsNone(
        preflight.check_num_examples(None, "cifar10", "test", TFDS_DIR))
    with self.assertRaisesRegex(ValueError, "Received: num_examples=0"):
      preflight.check_num_examples(0, "cifar10", "test", TFDS_DIR)

  def test_an_unprepared_dataset_is_left_to_the_loader(self):
    self.assertIsNone(preflight.check_num_examples(
        20000, "cifar10", "test", tempfile.mkdtemp()))


if __name__ == "__main__":
  tf.test.main()
