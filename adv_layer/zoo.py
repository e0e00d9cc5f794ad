"""Published models, loadable by name, each with a model card.

    >>> from adv_layer import zoo
    >>> zoo.available()
    ['cifar10/defended_resnet18', 'cifar10/resnet18_madry', ...]
    >>> model = zoo.load("cifar10/small_vgg_fgsm_rs")
    >>> zoo.card("cifar10/small_vgg_fgsm_rs")["clean_accuracy"]
    0.6199

A zoo is a folder (the package's `adv_layer/zoo_models/` by default; every
function takes `root` to use another one). A model named `dataset/model`
is two files under it: `dataset/model.keras`, the whole Keras model (for a
defended model f_a(g(x)), the `AdversarialTransform` with f_b inside), and
`dataset/model.json`, its model card. The names are the cards' paths
relative to the root, without `.json`.

The model card: one JSON object with these keys (all required).

    name              the model's name, e.g. "cifar10/small_vgg_fgsm_rs"
    description       what the model is: architecture, width, how it was
                      trained (e.g. "f_b: small_vgg at full width, FGSM-RS
                      at 8/255"), for a defended model f_a, f_b and g's settings
    data              the training and test data in words, e.g.
                      "CIFAR-10 (JPEG copy)"
    dataset           the tfds name of that data, e.g. "cifar10"
    training_command  the command line(s) that trained it, e.g.
                      "python examples/train_cifar10.py --preset=strong_cpu"
    seed              the training seed
    clean_accuracy    top-1 accuracy on `test_images` test images, in [0, 1];
                      for a model with an AdversarialTransform, one draw of g
                      per image
    test_images       the number of test images behind `clean_accuracy`
    check             {"split": "test[:500]", "seed": int, "accuracy": float}:
                      the accuracy `check_accuracy` reproduces, measured on
                      that tfds split with the draws of g pinned to `seed`
    wall_time_s       training wall time in seconds, all resumed runs together
    machine           where it was trained, e.g. "2 CPU cores (AVX-512), no GPU"
    date              when it was published, "YYYY-MM-DD"

`publish` writes both files and measures `check` itself, so a card's check
is always what this code measures.
"""

import datetime
import json
import os

import keras
import numpy as np

from adv_layer import data
from adv_layer import layer

ZOO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo_models")
CARD_KEYS = ("name", "description", "data", "dataset", "training_command",
             "seed", "clean_accuracy", "test_images", "check", "wall_time_s",
             "machine", "date")
CHECK_BATCH = 100  # Batch size of the check: part of the pinned draws.


def available(root=ZOO_DIR):
  """The names of the models in the zoo, sorted.

  Args:
    root: the zoo folder.

  Returns:
    A sorted list of names (card paths relative to `root`, without `.json`,
    with "/" separators); empty for a missing or empty folder.
  """
  names = []
  for folder, _, files in os.walk(root):
    for file_name in files:
      if file_name.endswith(".json"):
        relative = os.path.relpath(os.path.join(folder, file_name), root)
        names.append(relative[:-len(".json")].replace(os.sep, "/"))
  return sorted(names)


def entry_path(name, root, extension):
  """`root/name.extension` on this platform."""
  return os.path.join(root, *name.split("/")) + extension


def card(name, root=ZOO_DIR):
  """The model card of `name` (see the module docstring for its keys).

  Args:
    name: a name from `available(root)`.
    root: the zoo folder.

  Returns:
    The card as a dict.

  Raises:
    ValueError: for an unknown name (the message lists the known ones) or a
      card that lacks keys.
  """
  known = available(root)
  if name not in known:
    raise ValueError(
        f"Unknown zoo model {name!r}; the zoo at {root!r} has {known}. "
        f"Received: name={name!r}")
  with open(entry_path(name, root, ".json")) as file:
    entry = json.load(file)
  missing = [key for key in CARD_KEYS if key not in entry]
  if missing:
    raise ValueError(
        f"The model card of {name!r} lacks the keys {missing}. "
        f"Received: name={name!r}")
  return entry


def load(name, root=ZOO_DIR, compile=False):  # pylint: disable=redefined-builtin
  """Loads the published model `name`.

  Args:
    name: a name from `available(root)`.
    root: the zoo folder.
    compile: restore the training configuration too (not needed to predict
      or attack).

  Returns:
    The `keras.Model` (logits out).

  Raises:
    ValueError: for an unknown name or a bad card.
    FileNotFoundError: if the card's weights file is missing.

  Example:
    >>> defended = zoo.load("cifar10/defended_resnet18")
    >>> logits = defended.predict(images)
  """
  card(name, root)
  path = entry_path(name, root, ".keras")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"The zoo has a card for {name!r} but no weights file {path!r} (not "
        f"yet published, or the package was installed without its data). "
        f"Received: name={name!r}")
  return keras.saving.load_model(path, compile=compile)


def measure_accuracy(model, x, y, seed):
  """Top-1 accuracy of `model` with every transform's draws pinned to `seed`.

  Each `AdversarialTransform` in `model` gets the seed generator state
  `[seed + index, 0]` and pinned inference draws, so the measurement repeats
  exactly (the model is changed: use a freshly loaded one).

  Args:
    model: a Keras model, logits out.
    x: float32 images.
    y: int labels.
    seed: an integer.

  Returns:
    The accuracy as a float in [0, 1].
  """
  for index, transform in enumerate(layer.find_transforms(model)):
    state = transform.seed_generator.state
    state.assign(np.array([seed + index, 0]).astype(state.dtype))
    transform.pin_draws(True)
  logits = model.predict(x, batch_size=CHECK_BATCH, verbose=0)
  return float(np.mean(np.argmax(logits, axis=-1) == y))


def check_accuracy(name, root=ZOO_DIR, data_dir=None):
  """Measures `name`'s accuracy as its card's `check` says, afresh.

  Args:
    name: a name from `available(root)`.
    root: the zoo folder.
    data_dir: tfds data directory; None means `TFDS_DATA_DIR` or tfds' default.

  Returns:
    `(measured, published)` accuracies.

  Raises:
    ValueError, FileNotFoundError: as `load` and `data.load_arrays`.
  """
  entry = card(name, root)
  x, y = data.load_arrays(entry["dataset"], entry["check"]["split"], data_dir)
  measured = measure_accuracy(load(name, root), x, y, entry["check"]["seed"])
  return measured, entry["check"]["accuracy"]


def inference_copy(model):
  """`model` without its training state, for publishing.

  A compiled model, or one holding a compiled model (f_a inside f_a(g(x))),
  saves its optimizer's slots too: as much again as the weights under SGD
  with momentum. The copy has the same layers and weights (the transform's
  variables included) and no optimizer.

  Args:
    model: a Sequential or functional `keras.Model`.

  Returns:
    A new functional model, uncompiled.

  Raises:
    ValueError: for a subclassed model (it has no graph of layers to copy).
  """
  if type(model).__name__ not in ("Sequential", "Functional"):
    raise ValueError(
        "`model` must be a Sequential or functional keras.Model to publish "
        "(a subclassed model cannot be copied from its config). Received: "
        f"model={type(model).__name__}")
  # `clone_model` recompiles a compiled model but rebuilds the layers inside
  # it from their configs alone; a new, uncompiled functional model over the
  # same layers is the one it cannot recompile.
  uncompiled = keras.Model(model.inputs, model.outputs, name=model.name)
  copy = keras.models.clone_model(uncompiled)
  copy.set_weights(model.get_weights())
  return copy


def publish(model, name, card_fields, root=ZOO_DIR, check_split="test[:500]",
            check_seed=0, data_dir=None):
  """Adds `model` to the zoo: its `.keras` file and its card.

  Args:
    model: the trained model (logits out), Sequential or functional.
    name: its name, "dataset/model".
    card_fields: every card key except `name`, `check` and `date` (see the
      module docstring).
    root: the zoo folder.
    check_split: the tfds split of the card's check.
    check_seed: the seed of the check's pinned draws.
    data_dir: tfds data directory; None means `TFDS_DATA_DIR` or tfds' default.

  Returns:
    The card written. The `.keras` file holds `inference_copy(model)`.

  Raises:
    ValueError: for a name that is not "dataset/model" or missing or extra
      card fields.
  """
  parts = name.split("/")
  if len(parts) != 2 or not all(parts):
    raise ValueError(
        f"`name` must read 'dataset/model'. Received: name={name!r}")
  expected = set(CARD_KEYS) - {"name", "check", "date"}
  if set(card_fields) != expected:
    raise ValueError(
        f"`card_fields` must have exactly the keys {sorted(expected)}; missing "
        f"{sorted(expected - set(card_fields))}, extra "
        f"{sorted(set(card_fields) - expected)}. Received: "
        f"card_fields={card_fields!r}")
  path = entry_path(name, root, ".keras")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  inference_copy(model).save(path)
  x, y = data.load_arrays(card_fields["dataset"], check_split, data_dir)
  check = {"split": check_split, "seed": check_seed,
           "accuracy": measure_accuracy(keras.saving.load_model(path), x, y,
                                        check_seed)}
  entry = dict(card_fields, name=name, check=check,
               date=datetime.date.today().isoformat())
  with open(entry_path(name, root, ".json"), "w") as file:
    json.dump(entry, file, indent=2, sort_keys=True)
  return entry
