"""Installs `adv_layer` (the defense) and `attacks` (its evaluation).

The package (distribution name `adv-layer`) is not published on PyPI:
install it from a clone of the repository, in its root folder.
TensorFlow is left to the user, as TensorFlow add-ons do: an extra names its
flavour, or a TensorFlow installed beforehand is used as it is.

    pip install -e '.[cpu]'       # CPU only: tensorflow-cpu on Linux
                                  # x86_64, tensorflow elsewhere
    pip install -e '.[and-cuda]'  # NVIDIA GPU: tensorflow[and-cuda]
    pip install -e .              # beside a TensorFlow you installed

Name one flavour only: `tensorflow` and `tensorflow-cpu` are two
distributions that write the same `tensorflow/` package over each other. The
`test` extra brings the CPU flavour and pytest (on a GPU machine install
`[and-cuda]` and pytest instead). `import adv_layer` raises an ImportError
naming these commands when TensorFlow is missing or older than
`MIN_TENSORFLOW` (adv_layer/_tf_check.py, where that minimum is defined).
"""

import os
import re

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


def read_string(relative_path, name):
  """Returns a module's string constant `name = "..."` without importing it.

  Args:
    relative_path: the module's path relative to this file.
    name: the constant's name.

  Returns:
    The constant's value.

  Raises:
    RuntimeError: if the file defines no such constant.
  """
  with open(os.path.join(HERE, relative_path), encoding="utf-8") as f:
    match = re.search(rf'^{re.escape(name)} = "([^"]+)"', f.read(),
                      re.MULTILINE)
  if not match:
    raise RuntimeError(f"{relative_path} defines no {name}")
  return match.group(1)


def read_version():
  """Returns `__version__` from adv_layer/version.py without importing it.

  Raises:
    RuntimeError: if the file defines no version.
  """
  return read_string(os.path.join("adv_layer", "version.py"), "__version__")


def tensorflow_extras():
  """The extras that install TensorFlow, one per flavour (module docstring)."""
  minimum = read_string(os.path.join("adv_layer", "_tf_check.py"),
                        "MIN_TENSORFLOW")
  cpu = [
      f"tensorflow-cpu>={minimum}; "
      'sys_platform == "linux" and platform_machine == "x86_64"',
      f"tensorflow>={minimum}; "
      'sys_platform != "linux" or platform_machine != "x86_64"',
  ]
  return {
      "cpu": cpu,
      "and-cuda": [f"tensorflow[and-cuda]>={minimum}"],
      "test": cpu + ["pytest"],
  }


setuptools.setup(
    name="adv-layer",
    version=read_version(),
    description=("Resisting adversarial examples by adversarial examples "
                 "(Xiao & Zheng, CVPR 2020) as a Keras 3 layer, with an "
                 "adaptive-attack evaluation suite."),
    packages=setuptools.find_packages(
        include=["adv_layer", "adv_layer.*", "attacks", "attacks.*"]),
    # Pretrained models shipped with the package (the model zoo).
    package_data={
        "adv_layer": [
            "zoo_models/*.md", "zoo_models/*/*.keras", "zoo_models/*/*.json"
        ],
    },
    python_requires=">=3.9",
    install_requires=[
        "keras>=3",
        "numpy",
        "scipy",
        "tensorflow-datasets",
        "importlib_resources",  # tfds needs it to prepare data.
        "cleverhans",
        "absl-py",
        "matplotlib",
        "tqdm",
    ],
    extras_require=tensorflow_extras(),
    license="Apache-2.0",
)
