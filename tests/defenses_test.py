"""Tests of examples/defenses.py: the preprocessing defenses, old files and the program."""

import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from adv_layer import zoo
from examples import defenses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Files saved before the layers moved to attacks.defenses (registered as
# "examples.defenses"): tiny_classifier() behind each defense, seed 4.
LEGACY = os.path.join(ROOT, "tests", "legacy")
LEGACY_NAMES = ("random_resize_pad", "bit_depth_jpeg", "gaussian_noise")


def images(batch=4, size=8, seed=0):
  """Float32 images in [0, 1]."""
  return np.random.RandomState(seed).uniform(
      size=(batch, size, size, 3)).astype("float32")


def tiny_classifier(size=8):
  """A small logits model over `(size, size, 3)` images, seeded weights."""
  init = keras.initializers.GlorotUniform
  return keras.Sequential([
      keras.Input((size, size, 3)),
      keras.layers.Conv2D(2, 3, kernel_initializer=init(seed=0)),
      keras.layers.Flatten(),
      keras.layers.Dense(3, kernel_initializer=init(seed=1))])


class RandomResizePadTest(tf.test.TestCase):

  def test_one_draw_by_hand(self):
    resize_pad = defenses.RandomResizePad(min_size=3, max_size=3, seed=0)
    resize_pad.build((None, 4, 4, 1))
    x = tf.reshape(tf.range(1.0, 17.0), (1, 4, 4, 1)) / 16.0
    out = resize_pad.apply(x, tf.constant([1]), tf.constant([1]),
                           tf.constant([0]))
    # Nearest neighbour, half-pixel centres: output p of 3 reads input
    # floor((p + 1/2) * 4/3) = 0, 2, 3; placed from row 1, column 0.
    expected = np.zeros((4, 4), np.float32)
    expected[1:, :3] = np.array([[1, 3, 4], [9, 11, 12], [13, 15, 16]]) / 16.0
    self.assertAllEqual(out[0, :, :, 0], expected)

  def test_defaults_scale_the_paper_and_draws_stay_in_range(self):
    resize_pad = defenses.RandomResizePad(seed=0)
    resize_pad.build((None, 32, 32, 3))
    # round(32 * 299 / 331) = 29; 331 excluded in the paper -> 31.
    self.assertEqual(resize_pad.sizes, (29, 31))
    shrink, top, left = (t.numpy() for t in resize_pad.draw(2000))
    self.assertEqual(sorted(set(shrink)), [1, 2, 3])
    for offset in (top, left):
      self.assertTrue(np.all((offset >= 0) & (offset <= shrink)))
      self.assertEqual(sorted(set(offset[shrink == 3])), [0, 1, 2, 3])

  def test_shape_range_gradient_and_zero_padding(self):
    resize_pad = defenses.RandomResizePad(min_size=5, max_size=7, seed=3)
    x = tf.constant(images())
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = resize_pad(x)
    self.assertEqual(out.shape, x.shape)
    self.assertEqual(out.dtype, tf.float32)
    self.assertAllInRange(out, 0.0, 1.0)
    gradient = tape.gradient(out, x).numpy()
    # Each output pixel copies one input pixel or is padding: the gradient
    # of the sum counts the r * r * 3 copies of each image, and each image
    # has (8 - r) zero rows.
    copies = gradient.sum(axis=(1, 2, 3))
    zero_rows = np.sum(np.all(out.numpy() == 0, axis=(2, 3)), axis=1)
    self.assertAllEqual(copies, 3 * (8 - zero_rows) ** 2)
    self.assertTrue(np.all((zero_rows >= 1) & (zero_rows <= 3)))

  def test_seeded_and_random_in_training_and_inference(self):
    x = images()
    first = defenses.RandomResizePad(min_size=4, max_size=7, seed=5)
    second = defenses.RandomResizePad(min_size=4, max_size=7, seed=5)
    self.assertAllEqual(first(x), second(x))
    self.assertAllEqual(first(x, training=True), second(x, training=True))
    self.assertNotAllEqual(first(x), first(x))
    unseeded = [defenses.RandomResizePad(min_size=4, max_size=7)(x)
                for _ in range(2)]
    self.assertNotAllEqual(unseeded[0], unseeded[1])

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: min_size=0"):
      defenses.RandomResizePad(min_size=0)
    with self.assertRaisesRegex(ValueError,
                                "Received: min_size=7, max_size=5"):
      defenses.RandomResizePad(min_size=7, max_size=5)
    with self.assertRaisesRegex(ValueError, "Received: pad_value=2"):
      defenses.RandomResizePad(pad_value=2)
    with self.assertRaisesRegex(ValueError, "Received: seed=1.5"):
      defenses.RandomResizePad(seed=1.5)
    with self.assertRaisesRegex(ValueError, "Received: min_size=5, "
                                "max_size=9, input_shape=.None, 8, 8, 3."):
      defenses.RandomResizePad(min_size=5, max_size=9).build((None, 8, 8, 3))
    with self.assertRaisesRegex(ValueError, "Received: input_shape"):
      defenses.RandomResizePad().build((None, 8, 3))
    with self.assertRaisesRegex(TypeError, "Received: inputs.dtype=uint8"):
      defenses.RandomResizePad(seed=0)(np.zeros((1, 8, 8, 3), np.uint8))


class BitDepthJpegTest(tf.test.TestCase):

  def test_bit_depth_grid_before_jpeg(self):
    defense = defenses.BitDepthJpeg(bits=3)
    x = images()
    reduced = defense.reduce_bits(x).numpy()
    self.assertAllEqual(reduced, np.round(x * 7) / 7)
    self.assertLess(np.max(np.abs(reduced * 7 - np.round(reduced * 7))), 1e-5)
    self.assertEqual(len(np.unique(np.round(reduced * 7))), 8)

  def test_flat_images_survive_jpeg_on_the_uint8_grid(self):
    defense = defenses.BitDepthJpeg()
    for level in range(8):
      out = defense(np.full((1, 8, 8, 3), level / 7, np.float32)).numpy()
      # The uint8 conversion of tf.image: floor(x * 255.5); a flat image
      # decodes to the same byte.
      self.assertAllClose(out, np.full(out.shape, np.floor(level / 7 * 255.5)
                                       / 255), atol=1e-6, rtol=0)

  def test_deterministic_in_range_and_gradient_none(self):
    x = tf.constant(images())
    defense = defenses.BitDepthJpeg(bits=4, quality=50)
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = defense(x)
    self.assertIsNone(tape.gradient(out, x))
    self.assertEqual(out.shape, x.shape)
    self.assertAllInRange(out, 0.0, 1.0)
    self.assertAllEqual(out, defense(x, training=True))
    self.assertAllEqual(out, defenses.BitDepthJpeg(bits=4, quality=50)(x))
    # JPEG changes the reduced image (it is not the identity on it).
    self.assertNotAllEqual(out, defense.reduce_bits(x))

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: bits=9"):
      defenses.BitDepthJpeg(bits=9)
    with self.assertRaisesRegex(ValueError, "Received: bits=0"):
      defenses.BitDepthJpeg(bits=0)
    with self.assertRaisesRegex(ValueError, "Received: quality=101"):
      defenses.BitDepthJpeg(quality=101)
    with self.assertRaisesRegex(ValueError, "Received: input_shape"):
      defenses.BitDepthJpeg().build((None, 8, 8, 2))


class GaussianNoiseTest(tf.test.TestCase):

  def test_noise_moments_clip_and_gradient(self):
    x = tf.fill((8, 32, 32, 3), 0.5)
    defense = defenses.GaussianNoise(sigma=0.03, seed=0)
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = defense(x)
    noise = (out - x).numpy()
    # 24,576 draws: the sample mean's standard error is 0.0002, the sample
    # standard deviation's 0.00014.
    self.assertAllClose(noise.mean(), 0.0, atol=0.001)
    self.assertAllClose(noise.std(), 0.03, atol=0.001)
    # No pixel reaches the clip 16 sigma away: the gradient is 1 everywhere.
    self.assertAllEqual(tape.gradient(out, x), tf.ones_like(x))
    clipped = defenses.GaussianNoise(sigma=1.0, seed=0)(x).numpy()
    self.assertAllInRange(clipped, 0.0, 1.0)
    self.assertGreater(np.mean((clipped == 0) | (clipped == 1)), 0.5)

  def test_seeded_and_random_in_training_and_inference(self):
    x = images()
    first = defenses.GaussianNoise(seed=1)
    second = defenses.GaussianNoise(seed=1)
    self.assertAllEqual(first(x), second(x))
    self.assertAllEqual(first(x, training=False), second(x, training=False))
    self.assertNotAllEqual(first(x), first(x))
    self.assertNotAllEqual(defenses.GaussianNoise()(x),
                           defenses.GaussianNoise()(x))

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: sigma=0"):
      defenses.GaussianNoise(sigma=0)
    with self.assertRaisesRegex(ValueError, "Received: seed='0'"):
      defenses.GaussianNoise(seed="0")


class SerializationTest(tf.test.TestCase):

  def test_config_round_trip_keeps_config_and_draws(self):
    x = images()
    for defense in (defenses.RandomResizePad(min_size=5, seed=2),
                    defenses.BitDepthJpeg(bits=2, quality=90),
                    defenses.GaussianNoise(sigma=0.05, seed=2)):
      copy = type(defense).from_config(defense.get_config())
      self.assertEqual(copy.get_config(), defense.get_config())
      self.assertAllEqual(copy(x), defense(x))
      self.assertEqual(copy.compute_output_shape((None, 8, 8, 3)),
                       (None, 8, 8, 3))
      self.assertFalse(copy.supports_jit)
    self.assertEqual(defenses.GaussianNoise(seed=7).get_config()["seed"], 7)

  def test_saved_models_reload_with_the_same_draws(self):
    x = images()
    folder = tempfile.mkdtemp()
    for name in defenses.DEFENSES:
      model = defenses.build(name, tiny_classifier(), seed=4)
      path = os.path.join(folder, f"{name}.keras")
      model.save(path)
      loaded = keras.saving.load_model(path)
      self.assertIsInstance(loaded.layers[0], defenses.DEFENSES[name])
      self.assertEqual(loaded.layers[0].get_config(),
                       model.layers[0].get_config())
      self.assertAllEqual(loaded.predict(x, verbose=0),
                          model.predict(x, verbose=0))

  def test_build_puts_the_defense_before_the_zoo_classifier(self):
    classifier = zoo.load("cifar10/resnet18_undefended")
    model = defenses.build("gaussian_noise", classifier, seed=3, sigma=0.05)
    self.assertEqual(model.input_shape, (None, 32, 32, 3))
    self.assertEqual(model.output_shape, (None, 10))
    self.assertEqual(model.layers[0].get_config()["sigma"], 0.05)
    self.assertIs(model.layers[1], classifier)
    path = os.path.join(tempfile.mkdtemp(), "noise.keras")
    model.save(path)
    x = images(batch=2, size=32)
    self.assertAllClose(keras.saving.load_model(path).predict(x, verbose=0),
                        model.predict(x, verbose=0), atol=1e-5, rtol=0)
    # A deterministic defense has no seed.
    jpeg = defenses.build("bit_depth_jpeg", classifier, seed=3)
    self.assertNotIn("seed", jpeg.layers[0].get_config())
    with self.assertRaisesRegex(ValueError, "Received: name='blur'"):
      defenses.build("blur", classifier)


class LegacyFilesTest(tf.test.TestCase):

  def test_files_saved_under_the_old_package_name_load(self):
    x = images()
    for name in LEGACY_NAMES:
      path = os.path.join(LEGACY, f"{name}.keras")
      loaded = keras.saving.load_model(path)
      self.assertIsInstance(loaded.layers[0], defenses.DEFENSES[name])
      rebuilt = defenses.build(name, tiny_classifier(), seed=4)
      self.assertAllClose(loaded.predict(x, verbose=0),
                          rebuilt.predict(x, verbose=0), atol=1e-6, rtol=0)

  def test_old_files_load_with_only_the_package_imported(self):
    # A fresh process that imports attacks.defenses, not examples.defenses.
    code = (
        "import sys, keras, attacks.defenses\n"
        "for path in sys.argv[1:]:\n"
        "  layer = keras.saving.load_model(path).layers[0]\n"
        "  print(type(layer).__module__, type(layer).__name__)\n")
    paths = [os.path.join(LEGACY, f"{n}.keras") for n in LEGACY_NAMES]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([sys.executable, "-c", code, *paths], cwd=ROOT,
                         env=env, capture_output=True, text=True,
                         check=False)
    self.assertEqual(run.returncode, 0, msg=run.stderr[-3000:])
    self.assertEqual(run.stdout.split("\n")[:3], [
        "attacks.defenses.layers RandomResizePad",
        "attacks.defenses.layers BitDepthJpeg",
        "attacks.defenses.layers GaussianNoise"])

  def test_new_files_record_the_new_name_and_old_names_stay_registered(self):
    for cls in (defenses.RandomResizePad, defenses.BitDepthJpeg,
                defenses.GaussianNoise):
      self.assertEqual(keras.saving.get_registered_name(cls),
                       f"attacks.defenses>{cls.__name__}")
      self.assertIs(keras.saving.get_registered_object(
          f"examples.defenses>{cls.__name__}"), cls)


class CleanAccuracyTest(tf.test.TestCase):

  def test_non_finite_rows_count_as_wrong(self):
    # Class 0 on dark images, NaN logits on bright ones; every label is 0.
    nan_when_bright = keras.layers.Lambda(lambda v: tf.where(
        tf.reduce_mean(v, axis=[1, 2, 3])[:, None] > 0.5,
        tf.fill([tf.shape(v)[0], 3], float("nan")),
        tf.tile([[1.0, 0.0, 0.0]], [tf.shape(v)[0], 1])))
    model = keras.Sequential([keras.Input((2, 2, 1)), nan_when_bright])
    x = np.concatenate([np.full((2, 2, 2, 1), 0.2), np.full((2, 2, 2, 1), 0.8)])
    x = x.astype(np.float32)
    self.assertEqual(defenses.clean_accuracy(model, x, np.zeros(4)), 0.5)
    with self.assertRaisesRegex(ValueError, r"Received: y.shape=\(4, 1\)"):
      defenses.clean_accuracy(model, x, np.zeros((4, 1)))


class ProgramTest(tf.test.TestCase):

  def run_program(self, *flags):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, "-m", "examples.defenses", *flags], cwd=ROOT,
        env=env, capture_output=True, text=True, check=False)

  def test_main_saves_checks_and_prints_the_command(self):
    folder = tempfile.mkdtemp()
    classifier = os.path.join(folder, "tiny.keras")
    tiny_classifier().save(classifier)
    arrays = os.path.join(folder, "data.npz")
    np.savez(arrays, x=images(batch=6), y=np.array([0, 1, 2, 0, 1, 2]))
    output = os.path.join(folder, "out", "defended.keras")
    run = self.run_program("--defense=random_resize_pad",
                           f"--classifier={classifier}", f"--output={output}",
                           f"--data_npz={arrays}", "--check_images=5",
                           "--min_size=6")
    self.assertEqual(run.returncode, 0, msg=run.stderr[-3000:])
    self.assertIn("Saved random_resize_pad_defended (random_resize_pad "
                  "{'min_size': 6, 'max_size': None, 'pad_value': 0.0, "
                  f"'seed': 0}} in front of {classifier}) to {output}",
                  run.stdout)
    self.assertIn(f"Clean accuracy on 5 {arrays} images (one draw, seed 0, "
                  "batches of 100): ", run.stdout)
    self.assertIn("python examples/attack_eval.py --import=examples.defenses "
                  f"--model={output} ", run.stdout)
    loaded = keras.saving.load_model(output)
    self.assertEqual(loaded.layers[0].get_config()["min_size"], 6)
    self.assertEqual(loaded.layers[0].seed, 0)
    # A flag of another defense is refused.
    bad = self.run_program("--defense=bit_depth_jpeg",
                           f"--classifier={classifier}", f"--output={output}",
                           "--check_images=0", "--sigma=0.1")
    self.assertNotEqual(bad.returncode, 0)
    self.assertIn("Received: sigma=0.1", bad.stderr)
    # The median window of median_smoothing is --size.
    median = self.run_program("--defense=median_smoothing",
                              f"--classifier={classifier}",
                              f"--output={output}", "--check_images=0",
                              "--size=3")
    self.assertEqual(median.returncode, 0, msg=median.stderr[-3000:])
    self.assertEqual(keras.saving.load_model(output).layers[0].size, 3)


if __name__ == "__main__":
  tf.test.main()
