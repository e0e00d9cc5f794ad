"""Tests of setup.py through the metadata and files of a wheel built from it.

The wheel is built once, offline (`pip wheel --no-deps --no-build-isolation
--no-index`), from a copy of setup.py, adv_layer/ and attacks/ in a temporary
folder, so the shared working tree gets no build/ or egg-info, and a model zoo
folder can be added to the copy.
"""

import email
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from packaging import requirements
from packaging import utils
import tensorflow as tf

from adv_layer import _tf_check
from adv_layer import version

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu")
# The zoo files the wheel must carry, and one it must leave out.
ZOO_FILES = ("cifar10/f_b.keras", "cifar10/f_b.json", "README.md")
ZOO_OTHER = "cifar10/notes.txt"
# (sys_platform, platform_machine) of the platforms checked.
LINUX_X86_64 = ("linux", "x86_64")
OTHER_PLATFORMS = (("linux", "aarch64"), ("darwin", "arm64"),
                   ("win32", "AMD64"))


def build_wheel(workdir):
  """Builds the wheel from a copy of the package sources plus a model zoo.

  Args:
    workdir: an empty folder to build in.

  Returns:
    The wheel's path.
  """
  src = os.path.join(workdir, "src")
  # The real zoo is left out: the wheel must hold exactly the made-up one.
  ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "zoo_models")
  for package in ("adv_layer", "attacks"):
    shutil.copytree(os.path.join(REPO, package), os.path.join(src, package),
                    ignore=ignore)
  shutil.copy(os.path.join(REPO, "setup.py"), src)
  zoo = os.path.join(src, "adv_layer", "zoo_models")
  os.makedirs(zoo, exist_ok=True)
  for name in ZOO_FILES + (ZOO_OTHER,):
    os.makedirs(os.path.dirname(os.path.join(zoo, name)), exist_ok=True)
    with open(os.path.join(zoo, name), "w", encoding="utf-8") as f:
      f.write(name)
  out = os.path.join(workdir, "wheels")
  result = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps",
       "--no-build-isolation", "--no-index", "--no-cache-dir", "-q",
       "-w", out, src],
      capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"pip wheel failed:\n{result.stdout}\n{result.stderr}")
  (wheel,) = os.listdir(out)
  return os.path.join(out, wheel)


def active_requirements(reqs, extra, platform):
  """The requirements pip installs for `extra` ("" for none) on `platform`."""
  environment = {"extra": extra, "sys_platform": platform[0],
                 "platform_machine": platform[1]}
  return [r for r in reqs if r.marker is None or r.marker.evaluate(environment)]


def tensorflow_requirements(reqs, extra, platform):
  """The TensorFlow distributions among `active_requirements`, as strings."""
  found = []
  for r in active_requirements(reqs, extra, platform):
    if utils.canonicalize_name(r.name) in TENSORFLOW_DISTRIBUTIONS:
      extras = f"[{','.join(sorted(r.extras))}]" if r.extras else ""
      found.append(f"{r.name}{extras}{r.specifier}")
  return sorted(found)


class WheelTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    with zipfile.ZipFile(build_wheel(cls.workdir)) as wheel:
      cls.files = set(wheel.namelist())
      (metadata,) = [n for n in cls.files if n.endswith(".dist-info/METADATA")]
      cls.metadata = email.message_from_string(wheel.read(metadata).decode())
    cls.reqs = [requirements.Requirement(line)
                for line in cls.metadata.get_all("Requires-Dist")]
    cls.minimum = f">={_tf_check.MIN_TENSORFLOW}"

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.workdir)
    super().tearDownClass()

  def test_name_version_and_extras(self):
    self.assertEqual(self.metadata["Name"], "adv-layer")
    self.assertEqual(self.metadata["Version"], version.__version__)
    self.assertCountEqual(self.metadata.get_all("Provides-Extra"),
                          ["cpu", "and-cuda", "test"])

  def test_no_tensorflow_without_an_extra(self):
    for platform in (LINUX_X86_64,) + OTHER_PLATFORMS:
      self.assertEqual(tensorflow_requirements(self.reqs, "", platform), [])

  def test_keras_3_always_tensorflow_only_in_extras(self):
    unconditional = {r.name: str(r.specifier) for r in self.reqs
                     if r.marker is None}
    self.assertEqual(unconditional["keras"], ">=3")
    for r in self.reqs:
      if utils.canonicalize_name(r.name) in TENSORFLOW_DISTRIBUTIONS:
        self.assertIn("extra == ", str(r.marker), msg=str(r))

  def test_cpu_extra_is_tensorflow_cpu_on_linux_x86_64_only(self):
    for extra in ("cpu", "test"):
      self.assertEqual(
          tensorflow_requirements(self.reqs, extra, LINUX_X86_64),
          [f"tensorflow-cpu{self.minimum}"])
      for platform in OTHER_PLATFORMS:
        self.assertEqual(tensorflow_requirements(self.reqs, extra, platform),
                         [f"tensorflow{self.minimum}"], msg=str(platform))

  def test_and_cuda_extra_is_tensorflow_with_cuda(self):
    for platform in (LINUX_X86_64,) + OTHER_PLATFORMS:
      self.assertEqual(
          tensorflow_requirements(self.reqs, "and-cuda", platform),
          [f"tensorflow[and-cuda]{self.minimum}"], msg=str(platform))

  def test_test_extra_adds_pytest(self):
    names = {r.name for r in active_requirements(self.reqs, "test",
                                                 LINUX_X86_64)}
    self.assertIn("pytest", names)
    self.assertNotIn("pytest", {r.name for r in active_requirements(
        self.reqs, "cpu", LINUX_X86_64)})

  def test_zoo_models_in_wheel(self):
    zoo = {n for n in self.files if n.startswith("adv_layer/zoo_models/")}
    self.assertEqual(zoo, {f"adv_layer/zoo_models/{n}" for n in ZOO_FILES})
    self.assertIn("adv_layer/_tf_check.py", self.files)


if __name__ == "__main__":
  tf.test.main()
