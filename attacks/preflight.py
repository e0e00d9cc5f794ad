"""Checks an evaluation runs once, before its first unit.

A bad input to an evaluation must stop it at once with one message a user
can act on, not after the model, the data and a surrogate's training, and
never end as a silent wrong answer. Each check here raises `ValueError`
(`FileNotFoundError` for a missing model file) whose message names the
argument (the command-line flag, where the program passes its name) and the
value received:

- `check_epsilon`: a budget at least as wide as the value range (`--epsilon=8`
  meant as 8/255) is refused, with the fraction the user probably meant and
  the override (`--allow_large_epsilon`);
- `probe_model`: one call of the model on a few images checks its input
  shape, its output shape against the data's classes, and that it returns
  logits, not probabilities (`adv_layer.layer.looks_like_probabilities`); it
  counts the images whose outputs are not finite (reported by the verdict,
  not refused here);
- `load_model`: a `.keras` path or `zoo:NAME`, with a clear message for a
  missing file, a file that is not a readable Keras archive and a class no
  imported module registers (`--import`);
- `import_modules`: the modules of `--import` (their registered classes);
- `check_report_dir`: the output folder exists (or is created) and is
  writable;
- `check_num_examples`: the split holds as many images as asked for.
"""

import dataclasses
import importlib
import os
import re
import tempfile
import zipfile
import zlib

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import adv_layer  # pylint: disable=unused-import  (registers its layers)
from adv_layer import layer as layer_lib
from adv_layer import zoo
from attacks import common

__all__ = [
    "LARGE_EPSILON_FLAG", "ModelProbe", "PROBE_IMAGES", "check_epsilon",
    "check_num_examples", "check_report_dir", "import_modules", "load_model",
    "probe_model"
]

# The flag that lets a budget as wide as the value range run (a sanity check).
LARGE_EPSILON_FLAG = "allow_large_epsilon"
# Most images `probe_model` calls the model on.
PROBE_IMAGES = 8
# Pixel levels of 8-bit images: the denominator users mean by "--epsilon=8".
PIXEL_LEVELS = 255
# File endings `keras.saving.load_model` reads that are not zip archives.
LEGACY_ENDINGS = (".h5", ".hdf5")
# Longest part of a library's own error message quoted in ours.
QUOTED_CHARS = 300


def check_epsilon(epsilon, value_range, allow_large=False, flag="`epsilon`"):
  """Refuses an L∞ budget at least as wide as the value range it perturbs.

  Such a budget lets an attack move any image anywhere in the range; it is
  almost always a budget in pixel levels (`--epsilon=8` meant as 8/255).
  The evaluation's large-budget sanity check runs one on purpose: pass
  `allow_large=True` (`--allow_large_epsilon`).

  Args:
    epsilon: the budget, a finite number >= 0.
    value_range: `(low, high)` of the pixel values.
    allow_large: run a budget >= high - low anyway.
    flag: how the caller names the budget, for the message (a library
      argument by default; the command line passes "--epsilon").

  Returns:
    `epsilon` as a float.

  Raises:
    ValueError: for a budget that is not a finite number >= 0, or one >=
      high - low unless `allow_large`.

  Example:
    >>> check_epsilon(8, (0.0, 1.0))  # ValueError: did you mean 8/255?
  """
  name = flag.strip("`-")
  common.check_number(name, epsilon, minimum=0)
  if not np.isfinite(epsilon):
    raise ValueError(f"{flag} must be a finite number. "
                     f"Received: {name}={epsilon!r}")
  low, high = float(value_range[0]), float(value_range[1])
  width = high - low
  if epsilon >= width and not allow_large:
    meant = epsilon / PIXEL_LEVELS * width
    of_range = "" if width == 1.0 else f" of the range width {width:g}"
    raise ValueError(
        f"{flag}={epsilon:g} is at least the width {width:g} of the value "
        f"range ({low:g}, {high:g}): an attack could move every image "
        f"anywhere in the range. For a budget in pixel levels, did you mean "
        f"{epsilon:g}/{PIXEL_LEVELS}{of_range} (= {meant:.4f})? To run such a "
        f"budget on purpose (a sanity check), add --{LARGE_EPSILON_FLAG} "
        f"({LARGE_EPSILON_FLAG}=True in Python). Received: {name}={epsilon!r}")
  return float(epsilon)


@dataclasses.dataclass(frozen=True)
class ModelProbe:
  """What one call of the model on a few clean images showed.

  Attributes:
    output_width: the number of logits per image.
    nonfinite_rows: the images (of those probed) whose outputs had a NaN or
      infinite entry.
  """
  output_width: int
  nonfinite_rows: int


def _input_shape(model):
  """The model's input shape (batch axis first) when known, else None."""
  inputs = getattr(model, "inputs", None)
  if not inputs or len(inputs) != 1:
    return None
  return tuple(inputs[0].shape)


def _first_line(error):
  """The first line of an error's message, at most `QUOTED_CHARS` long."""
  text = str(error).strip().splitlines()
  line = text[0] if text else ""
  return line if len(line) <= QUOTED_CHARS else line[:QUOTED_CHARS] + " ..."


def probe_model(model, x, num_classes, flag="`model`", exact=True):
  """Calls the model once on a few images and checks what it returns.

  Checks, before any attack runs: the model takes images of the data's shape
  (compared with `model.inputs[0].shape` where known, before the call; a
  failing call is reported with both shapes too), it returns a 2-D batch
  `(images, classes)` of `num_classes` logits per image, and its outputs do
  not look like probabilities (`adv_layer.layer.looks_like_probabilities`:
  the suite's losses take logits). Outputs that are not finite are counted,
  not refused: the verdict reports them.

  Args:
    model: a Keras model (called with `training=False`) or a callable images
      -> logits.
    x: the evaluation's images, `(images, ...)`; the first `PROBE_IMAGES`
      are used.
    num_classes: the data's number of classes, or None (not checked).
    flag: how the caller names the model, for the messages (a library
      argument by default; the command line passes "--model").
    exact: require exactly `num_classes` logits; False only refuses fewer
      (for classes inferred from the labels of a few images).

  Returns:
    A `ModelProbe`.

  Raises:
    ValueError: for no images, a shape mismatch, outputs of the wrong shape
      or width, or outputs that look like probabilities.

  Example:
    >>> probe = probe_model(model, x_test, num_classes=10)
    >>> probe.output_width, probe.nonfinite_rows
    (10, 0)
  """
  x = np.asarray(x)
  if x.ndim < 1 or len(x) == 0:
    raise ValueError(f"{flag} can only be probed on at least one image. "
                     f"Received: x.shape={x.shape}")
  images = x[:PROBE_IMAGES].astype(np.float32)
  expected = _input_shape(model)
  received = (None,) + tuple(images.shape[1:])
  if expected is not None and (
      len(expected) != len(received) or
      any(e is not None and e != r for e, r in zip(expected[1:], received[1:]))):
    raise ValueError(
        f"{flag} takes images of shape {expected}, but the data's images "
        f"have shape {received}: evaluate the model on data of its own shape "
        f"(or resize the images). Received: model input shape={expected}, "
        f"images shape={received}")
  try:
    if isinstance(model, keras.Model):
      outputs = model(tf.constant(images), training=False)
    else:
      outputs = model(tf.constant(images))
    outputs = np.asarray(tf.cast(outputs, tf.float32))
  except (ValueError, TypeError, tf.errors.InvalidArgumentError) as error:
    raise ValueError(
        f"{flag} failed on {len(images)} of the data's images, of shape "
        f"{received} (its input shape: {expected or 'not known'}); check that "
        f"it takes such images. The model's error: {_first_line(error)} "
        f"Received: model input shape={expected}, images shape={received}"
    ) from error
  if outputs.ndim != 2 or outputs.shape[0] != len(images):
    raise ValueError(
        f"{flag} must return logits of shape (images, classes): one row of "
        f"{num_classes or 'class'} logits per image. Received: output "
        f"shape={outputs.shape} for {len(images)} images")
  width = int(outputs.shape[1])
  if num_classes is not None and (width < num_classes or
                                  (exact and width != num_classes)):
    raise ValueError(
        f"{flag} returns {width} logits per image, but the data has "
        f"{num_classes} classes: evaluate the model on the data it was "
        f"trained for. Received: output width={width}, "
        f"num_classes={num_classes}")
  finite = np.all(np.isfinite(outputs), axis=1)
  kind = layer_lib.probability_kind(outputs[finite])
  if kind is not None:
    what = ("each row summing to 1: a softmax head" if kind == "softmax" else
            "a sigmoid or other squashing head")
    raise ValueError(
        f"{flag} returns probabilities (every output in [0, 1], {what}), "
        f"but the suite's losses take logits: drop the final activation "
        f"(e.g. `activation=None` in the last Dense layer, or remove the "
        f"last Softmax/Activation layer) and save the model again. Received: "
        f"outputs[0]={np.round(outputs[finite][0], 4).tolist()}")
  return ModelProbe(output_width=width,
                    nonfinite_rows=int(np.sum(~finite)))


def _missing_class(error):
  """`(kind, name)` of the class or function Keras could not locate, or None."""
  found = re.search(r"Could not locate (class|function) '([^']+)'", str(error))
  return (found.group(1), found.group(2)) if found else None


def _load_file(path, flag, import_flag):
  """`keras.saving.load_model(path)` with errors that name the flag."""
  unreadable = (
      f"--{flag}={path!r} exists but is not a readable Keras archive (a "
      f".keras file is a zip archive; this one may be truncated or of "
      f"another format): save the model again with model.save(...).")
  if os.path.isdir(path):
    raise ValueError(f"--{flag}={path!r} is a folder, not a .keras file. "
                     f"Received: {flag}={path!r}")
  if not path.endswith(LEGACY_ENDINGS) and not zipfile.is_zipfile(path):
    raise ValueError(f"{unreadable} Received: {flag}={path!r}")
  try:
    return keras.saving.load_model(path)
  except (zipfile.BadZipFile, zlib.error, EOFError, KeyError) as error:
    raise ValueError(f"{unreadable} Keras' error: {_first_line(error)} "
                     f"Received: {flag}={path!r}") from error
  except (ValueError, TypeError) as error:
    missing = _missing_class(error)
    if missing is None and "File not found" in str(error):
      raise ValueError(f"{unreadable} Received: {flag}={path!r}") from error
    if missing is None:
      raise ValueError(
          f"--{flag}={path!r} could not be loaded as a Keras model. Keras' "
          f"error: {_first_line(error)} Received: {flag}={path!r}") from error
    kind, name = missing
    raise ValueError(
        f"--{flag}={path!r} uses the {kind} {name!r}, which no imported "
        f"module registers: register the module that defines it with "
        f"--{import_flag}=my_pkg.layers (its classes decorated with "
        f"@keras.saving.register_keras_serializable). Received: "
        f"{flag}={path!r}") from error


def load_model(spec, flag="model", zoo_prefix="zoo:", import_flag="import"):
  """A model flag's model: a `.keras` path, or `zoo:NAME` from `adv_layer.zoo`.

  Args:
    spec: the flag's value.
    flag: the flag's name, for the error messages.
    zoo_prefix: the prefix of a published model's name.
    import_flag: the flag that imports the modules of custom classes.

  Returns:
    The `keras.Model`.

  Raises:
    ValueError: for an empty value, an unknown zoo name, a file that is a
      folder or not a readable Keras archive, a class or function no
      imported module registers (naming `--import`), or any other load
      failure (naming the flag).
    FileNotFoundError: for a missing file.

  Example:
    >>> model = load_model("zoo:cifar10/defended_resnet18")
  """
  if not spec:
    raise ValueError(f"--{flag} is required: a .keras path or {zoo_prefix}NAME "
                     f"(one of {zoo.available()}). Received: {flag}={spec!r}")
  if spec.startswith(zoo_prefix):
    return zoo.load(spec[len(zoo_prefix):])
  if not os.path.exists(spec):
    raise FileNotFoundError(
        f"No model file at {spec!r}. Received: {flag}={spec!r}")
  return _load_file(spec, flag, import_flag)


def import_modules(names, flag="import"):
  """Imports each named module (so its registered Keras classes load).

  Args:
    names: dotted module names (e.g. `["my_pkg.layers"]`); empty entries are
      skipped.
    flag: the flag's name, for the message.

  Returns:
    The imported modules, in order.

  Raises:
    ValueError: for a module that fails to import, naming the flag, the
      value and the error.

  Example:
    >>> import_modules(["my_pkg.defenses"])
  """
  if isinstance(names, str):
    names = [names]
  modules = []
  for name in names or ():
    if not name:
      continue
    try:
      modules.append(importlib.import_module(name))
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(
          f"--{flag}={name!r} could not be imported ({type(error).__name__}: "
          f"{_first_line(error)}): give the dotted name of a module on the "
          f"Python path (run from the folder that holds its package). "
          f"Received: {flag}={name!r}") from error
  return modules


def check_report_dir(path, flag="`report_dir`"):
  """Makes sure the output folder exists (creating it) and is writable.

  Writability is tested by writing and removing a probe file.

  Args:
    path: the folder.
    flag: how the caller names the folder, for the message (a library
      argument by default; the command line passes "--report_dir").

  Returns:
    `path`.

  Raises:
    ValueError: for an empty path, a path that is a file, a folder that
      cannot be created, or one that is not writable.
  """
  name = flag.strip("`-")
  if not path:
    raise ValueError(f"{flag} is required. Received: {name}={path!r}")
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag}={path!r} is a file, not a folder: name a "
                     f"folder for the report. Received: {name}={path!r}")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    raise ValueError(f"{flag}={path!r} cannot be created "
                     f"({type(error).__name__}: {_first_line(error)}). "
                     f"Received: {name}={path!r}") from error
  try:
    with tempfile.NamedTemporaryFile(dir=path, prefix=".preflight_"):
      pass
  except OSError as error:
    raise ValueError(f"{flag}={path!r} is not writable "
                     f"({type(error).__name__}: {_first_line(error)}). "
                     f"Received: {name}={path!r}") from error
  return path


def check_num_examples(count, dataset, split, data_dir=None,
                       flag="num_examples"):
  """Refuses asking for more images than the split holds.

  Reads the split's size from the prepared dataset's info
  (`tfds.builder(dataset, data_dir=data_dir).info.splits[split]`); where it
  cannot be read (the dataset is not prepared there, or unknown to tfds) it
  returns without a word and leaves the loading to report.

  Args:
    count: the number of images asked for (None: not checked).
    dataset: the tfds name.
    split: the split (e.g. "test").
    data_dir: the tfds data folder, or None (tfds' default).
    flag: the count's flag, for the message.

  Returns:
    The split's size, or None where it was not read (`count` None, or the
    dataset's info not readable).

  Raises:
    ValueError: for a count that is not an integer >= 1, or one above the
      split's size.
  """
  if count is None:
    return None
  common.check_number(flag, count, minimum=1, integer=True)
  try:
    splits = tfds.builder(dataset, data_dir=data_dir).info.splits
    size = splits[split].num_examples
  except Exception:  # pylint: disable=broad-except
    return None  # Not prepared here, or not readable: the loader will say.
  if count > size:
    raise ValueError(
        f"--{flag}={count} asks for more images than the {size:,} of "
        f"{dataset}'s {split!r} split: use --{flag}={size} or fewer. "
        f"Received: {flag}={count}")
  return size
