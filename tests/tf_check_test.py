"""Tests of adv_layer/_tf_check.py: the import-time TensorFlow check."""

import subprocess
import sys
import types
from unittest import mock

import tensorflow as tf

from adv_layer import _tf_check


def fake_tensorflow(version):
  module = types.ModuleType("tensorflow")
  module.__version__ = version
  return module


class CheckVersionTest(tf.test.TestCase):

  def test_minimum_and_newer_pass(self):
    for version in ("2.16.0", "2.16.0rc0", "2.16.1", "2.21.0",
                    "2.22.0-dev20261101", "3.0.0"):
      self.assertIsNone(_tf_check.check_version(version), msg=version)

  def test_older_raises_naming_the_install_commands(self):
    # "2.9" is older than "2.16" as a number, though not as text.
    for version in ("2.15.1", "2.15.0rc1", "2.9.0", "1.15.5"):
      with self.assertRaisesRegex(
          ImportError,
          r"TensorFlow >= 2\.16 .*pip install -e '\.\[cpu\]'.*"
          r"pip install -e '\.\[and-cuda\]'.*"
          rf"Received: tensorflow\.__version__={version}$"):
        _tf_check.check_version(version)

  def test_not_a_version_raises(self):
    with self.assertRaisesRegex(ValueError, r"Received: version='nightly'$"):
      _tf_check.check_version("nightly")


class EnsureTensorflowTest(tf.test.TestCase):

  def test_missing_tensorflow_raises_naming_the_install_commands(self):
    # A None entry in sys.modules makes `import tensorflow` raise ImportError.
    with mock.patch.dict(sys.modules, {"tensorflow": None}):
      with self.assertRaisesRegex(
          ImportError, r"TensorFlow >= 2\.16, and importing it failed "
          r".*pip install -e '\.\[cpu\]'.*"
          r"pip install -e '\.\[and-cuda\]'") as raised:
        _tf_check.ensure_tensorflow()
    self.assertIsInstance(raised.exception.__cause__, ImportError)

  def test_checks_the_imported_version(self):
    too_old = {"tensorflow": fake_tensorflow("2.15.0")}
    with mock.patch.dict(sys.modules, too_old):
      with self.assertRaisesRegex(
          ImportError, r"Received: tensorflow\.__version__=2\.15\.0$"):
        _tf_check.ensure_tensorflow()
    minimum = {"tensorflow": fake_tensorflow("2.16.0")}
    with mock.patch.dict(sys.modules, minimum):
      self.assertIsNone(_tf_check.ensure_tensorflow())


class PackageImportTest(tf.test.TestCase):

  def test_importing_the_packages_without_tensorflow_names_the_extras(self):
    for package in ("adv_layer", "attacks"):
      script = ("import sys; sys.modules['tensorflow'] = None; "
                f"import {package}")
      result = subprocess.run([sys.executable, "-c", script], timeout=300,
                              capture_output=True, text=True, check=False)
      self.assertNotEqual(result.returncode, 0, msg=package)
      self.assertIn("pip install -e '.[cpu]'", result.stderr, msg=package)


if __name__ == "__main__":
  tf.test.main()
