"""Installs `adv_layer` (the defense) and `attacks` (its evaluation).

TensorFlow flavour: on Linux x86_64 the CPU-only wheel `tensorflow-cpu` is
required (the build CI and the CPU presets use, with no GPU kernels to
download); on every other platform plain `tensorflow`. For a GPU machine,
name the distribution at install time, e.g.

    ADV_LAYER_TENSORFLOW="tensorflow[and-cuda]>=2.16" pip install -e .

so that only one TensorFlow distribution ends up in the environment (two of
them write the same `tensorflow/` package over each other).
"""

import os
import re

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_TENSORFLOW = "2.16"  # the first release whose default Keras is Keras 3.


def read_version():
  """Returns `__version__` from adv_layer/version.py without importing it.

  Raises:
    RuntimeError: if the file defines no version.
  """
  with open(os.path.join(HERE, "adv_layer", "version.py"), encoding="utf-8") as f:
    match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE)
  if not match:
    raise RuntimeError("adv_layer/version.py defines no __version__")
  return match.group(1)


def tensorflow_requirements():
  """The TensorFlow requirement(s): see the module docstring."""
  override = os.environ.get("ADV_LAYER_TENSORFLOW")
  if override:
    return [override]
  return [
      f"tensorflow-cpu>={MIN_TENSORFLOW}; "
      'sys_platform == "linux" and platform_machine == "x86_64"',
      f"tensorflow>={MIN_TENSORFLOW}; "
      'sys_platform != "linux" or platform_machine != "x86_64"',
  ]


setuptools.setup(
    name="adv-layer",
    version=read_version(),
    description=("Resisting adversarial examples by adversarial examples "
                 "(Xiao & Zheng, CVPR 2020) as a Keras 3 layer, with an "
                 "adaptive-attack evaluation suite."),
    packages=setuptools.find_packages(
        include=["adv_layer", "adv_layer.*", "attacks", "attacks.*"]),
    python_requires=">=3.9",
    install_requires=tensorflow_requirements() + [
        "keras>=3",
        "tensorflow-datasets",
        "importlib_resources",  # tfds needs it to prepare data.
        "cleverhans",
        "absl-py",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"test": ["pytest"]},
    license="Apache-2.0",
)
