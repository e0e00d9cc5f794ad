"""Checks at import that TensorFlow is installed and recent enough.

Installing the package without an extra (`pip install -e .` in a clone; it
is not on PyPI) leaves TensorFlow to the user, as TensorFlow add-ons do
(setup.py): the `cpu` and `and-cuda` extras install a flavour, or the user
installs one. Importing this module checks that a TensorFlow is there and is
at least `MIN_TENSORFLOW`, and raises an ImportError naming the install
commands otherwise, before any other module of the package imports it.
setup.py reads `MIN_TENSORFLOW` from this file, so it is defined once.
"""

import re

MIN_TENSORFLOW = "2.16"  # the first release whose default Keras is Keras 3.

INSTALL_HINT = (
    "Install a TensorFlow flavour with the package, in the root of its "
    "clone (it is not on PyPI): "
    "`pip install -e '.[cpu]'` (CPU only) or "
    "`pip install -e '.[and-cuda]'` (NVIDIA GPU), or upgrade the "
    "TensorFlow distribution you installed yourself; install one flavour "
    "only (`tensorflow` and `tensorflow-cpu` overwrite each other's files).")


def _major_minor(version):
  """Returns (major, minor) of a version string such as "2.16.0rc0".

  Args:
    version: a version string that starts with "<major>.<minor>".

  Returns:
    A tuple of two ints.

  Raises:
    ValueError: if `version` does not start with "<major>.<minor>".
  """
  match = re.match(r"(\d+)\.(\d+)", str(version))
  if not match:
    raise ValueError("Expected a version string that starts with "
                     f"'<major>.<minor>'. Received: version={version!r}")
  return int(match.group(1)), int(match.group(2))


def check_version(version):
  """Raises an ImportError when a TensorFlow version is below the minimum.

  Release candidates and nightlies of the minimum release pass: only major
  and minor are compared, as numbers ("2.9" is older than "2.16").

  Args:
    version: TensorFlow's version string, e.g. `tf.__version__`.

  Raises:
    ImportError: if `version` is older than `MIN_TENSORFLOW`.
    ValueError: if `version` does not start with "<major>.<minor>".
  """
  if _major_minor(version) < _major_minor(MIN_TENSORFLOW):
    raise ImportError(
        f"adv_layer needs TensorFlow >= {MIN_TENSORFLOW} (the first release "
        f"whose default Keras is Keras 3). {INSTALL_HINT} "
        f"Received: tensorflow.__version__={version}")


def ensure_tensorflow():
  """Imports TensorFlow and checks its version.

  Raises:
    ImportError: if TensorFlow is not installed or is older than
      `MIN_TENSORFLOW`; the message names the install commands.
  """
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"adv_layer needs TensorFlow >= {MIN_TENSORFLOW}, and importing it "
        f"failed ({e}). {INSTALL_HINT}") from e
  check_version(tensorflow.__version__)


ensure_tensorflow()
