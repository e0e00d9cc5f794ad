"""Tests of examples/train_cifar10.py's baselines (`--defense=none|madry`).

Each test runs the program on a few CIFAR-10 images from TFDS_DATA_DIR.
"""

import os
import subprocess
import sys
import tempfile

import keras
import tensorflow as tf

from adv_layer import layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("--preset=smoke", "--epochs=1", "--train_examples=64",
        "--test_examples=32", "--batch_size=32", "--width=4", "--verbose=0")


def train(*flags):
  """Runs examples/train_cifar10.py with `TINY` and `flags`; the result."""
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
             CUDA_VISIBLE_DEVICES="")
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "examples", "train_cifar10.py"),
       *TINY, *flags], cwd=ROOT, env=env, capture_output=True, text=True,
      check=False)


class BaselineTest(tf.test.TestCase):

  def test_madry_baseline_is_a_plain_classifier_trained_on_pgd(self):
    output = os.path.join(tempfile.mkdtemp(), "madry.keras")
    run = train("--defense=madry", f"--output={output}")
    self.assertEqual(run.returncode, 0, msg=run.stderr[-3000:])
    self.assertIn("Trained f_a (madry baseline) (small_cnn on PGD examples "
                  "(eps 0.0314, 7 steps of 0.0078, random start))", run.stdout)
    self.assertIn("Clean accuracy of f_a (madry baseline) on 32 cifar10 test "
                  "images: ", run.stdout)
    model = keras.saving.load_model(output)
    self.assertEqual(layer.find_transforms(model), [])
    self.assertEqual(model.output_shape, (None, 10))
    # The per-epoch backup next to the output is gone once the run finished.
    self.assertFalse(os.path.exists(output[:-len(".keras")] + "_backup"))

  def test_cached_draws_need_the_transform(self):
    run = train("--defense=none", "--cached_draws=2")
    self.assertNotEqual(run.returncode, 0)
    self.assertIn("Received: cached_draws=2, defense='none'", run.stderr)


class LoadFbTest(tf.test.TestCase):

  def test_fb_takes_a_zoo_name(self):
    from examples import train_cifar10  # pylint: disable=g-import-not-at-top
    f_b = train_cifar10.load_fb("zoo:cifar10/small_vgg_fgsm_rs", {},
                                (32, 32, 3), 10)
    self.assertEqual(tuple(f_b.output_shape), (None, 10))
    with self.assertRaisesRegex(FileNotFoundError, "zoo:NAME"):
      train_cifar10.load_fb("runs/none/f_b.keras", {}, (32, 32, 3), 10)


if __name__ == "__main__":
  tf.test.main()
