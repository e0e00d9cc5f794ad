"""Input pipelines: tfds image classification datasets and local image folders.

Images come out as float32 in [0, 1] (the value range of the paper, Sec. 4:
Δ = 0.2 is measured on [0, 1] pixels), labels as int32. Training pipelines
shuffle and augment as in the paper's CIFAR-10 setting (random crop after
4-pixel zero padding, random horizontal flip), both seeded; evaluation
pipelines keep the dataset's own order, so they repeat exactly.

Where data is found: tfds reads `data_dir`, else the `TFDS_DATA_DIR`
environment variable, else `~/tensorflow_datasets`; with network access it
downloads and prepares a missing dataset as usual. Without network, a missing
dataset fails within seconds with an error that says how to point tfds at a
prepared copy, instead of tfds retrying its download for minutes.
"""

import numbers
import os
import socket

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

PAD = 4  # Pixels of zero padding before the random crop.
NETWORK_PROBE = ("storage.googleapis.com", 443)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def network_available(address=NETWORK_PROBE, timeout=3.0):
  """Whether a TCP connection to `address` opens within `timeout` seconds.

  Args:
    address: `(host, port)` to probe (tfds' own storage by default).
    timeout: seconds to wait.

  Returns:
    True if the connection opened.
  """
  try:
    with socket.create_connection(address, timeout=timeout):
      return True
  except OSError:
    return False


def prepared_builder(name, data_dir=None):
  """Returns the tfds builder of `name`, downloading it only if that can work.

  Args:
    name: a tfds dataset name, e.g. "cifar10" or "cifar10:3.0.2".
    data_dir: tfds data directory; None means `TFDS_DATA_DIR` or tfds' default.

  Returns:
    A prepared `tfds.core.DatasetBuilder`.

  Raises:
    FileNotFoundError: if the dataset is not prepared in the data directory
      and the network cannot be reached (within a few seconds).
  """
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    if not network_available():
      raise FileNotFoundError(
          f"tfds dataset {name!r} is not prepared under {builder.data_dir!r} and "
          "the network is unreachable, so it cannot be downloaded. Point the "
          "TFDS_DATA_DIR environment variable (or the examples' --data_dir flag) "
          "at a directory holding a prepared copy. "
          f"Received: name={name!r}, data_dir={data_dir!r}")
    builder.download_and_prepare()
  return builder


def dataset_spec(name="cifar10", data_dir=None):
  """Image shape and number of classes of a tfds image classification dataset.

  Args:
    name: tfds dataset name with features "image" and "label".
    data_dir: tfds data directory; None means `TFDS_DATA_DIR` or tfds' default.

  Returns:
    `(image_shape, num_classes)`, e.g. `((32, 32, 3), 10)` for CIFAR-10.

  Raises:
    FileNotFoundError: when the data is missing and cannot be downloaded.
  """
  features = prepared_builder(name, data_dir).info.features
  return tuple(features["image"].shape), features["label"].num_classes


def first_examples(split, examples):
  """The split string for the first `examples` examples ("train[:5000]").

  Args:
    split: a tfds split name.
    examples: a positive count, or None/0 for the whole split.

  Returns:
    A tfds split string.
  """
  return f"{split}[:{examples}]" if examples else split


def to_float(image, label):
  """uint8 image -> float32 in [0, 1]; label -> int32."""
  return tf.image.convert_image_dtype(image, tf.float32), tf.cast(label, tf.int32)


def augment(image, seed):
  """Random crop after 4-pixel zero padding, then a random horizontal flip.

  Args:
    image: one float image `(height, width, channels)`.
    seed: a stateless seed, int64 tensor of shape `(2,)`.

  Returns:
    The augmented image, same shape.
  """
  shape = tf.shape(image)
  padded = tf.pad(image, [[PAD, PAD], [PAD, PAD], [0, 0]])
  seeds = tf.random.experimental.stateless_split(seed, 2)
  cropped = tf.image.stateless_random_crop(padded, shape, seed=seeds[0])
  return tf.image.stateless_random_flip_left_right(cropped, seed=seeds[1])


def finish(dataset, batch_size, training, seed=None, shuffle_buffer=10_000):
  """Shuffles and augments (training) or keeps order (evaluation), then batches.

  Args:
    dataset: unbatched `(float image, int32 label)` pairs.
    batch_size: examples per batch.
    training: shuffle and augment (seeded, a new order and new crops every
      epoch) when True; keep the order and the images when False.
    seed: integer seed of shuffling and augmentation, or None.
    shuffle_buffer: shuffle buffer size.

  Returns:
    The batched, prefetched dataset.

  Raises:
    ValueError: for a batch size < 1.
  """
  if (isinstance(batch_size, bool) or
      not isinstance(batch_size, numbers.Integral) or batch_size < 1):
    raise ValueError(
        f"`batch_size` must be an integer >= 1. Received: batch_size={batch_size!r}")
  options = tf.data.Options()
  options.deterministic = True
  dataset = dataset.with_options(options)
  if training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip((dataset, randoms.batch(2)))
    dataset = dataset.map(
        lambda pair, r: (augment(pair[0], r), pair[1]),
        num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_tfds(name="cifar10",
              split="train",
              batch_size=128,
              training=False,
              data_dir=None,
              seed=None,
              shuffle_buffer=10_000):
  """A tfds image classification dataset as `(image, label)` batches.

  Args:
    name: tfds dataset name with supervised keys `(image, label)`, e.g.
      "cifar10", "cifar100", "svhn_cropped".
    split: tfds split, slices allowed ("train[:5000]", "test[:1000]").
    batch_size: examples per batch.
    training: shuffle and augment (see `finish`) or keep the order.
    data_dir: tfds data directory; None means `TFDS_DATA_DIR` or tfds' default.
    seed: integer seed of shuffling and augmentation.
    shuffle_buffer: shuffle buffer size.

  Returns:
    A `tf.data.Dataset` of float32 images in [0, 1] and int32 labels.

  Raises:
    FileNotFoundError: when the data is missing and cannot be downloaded.
    ValueError: for a bad batch size.

  Example:
    >>> test = load_tfds("cifar10", split="test[:1000]", batch_size=100)
  """
  builder = prepared_builder(name, data_dir)
  dataset = builder.as_dataset(split=split, as_supervised=True,
                               shuffle_files=False)
  dataset = dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
  return finish(dataset, batch_size, training, seed, shuffle_buffer)


def folder_classes(root, split):
  """Sorted class folder names of `root/split`.

  Raises:
    FileNotFoundError: if `root/split` is not a folder or holds no class folder.
  """
  directory = os.path.join(root, split)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"No folder {directory!r}: expected the layout root/split/class/image. "
        f"Received: root={root!r}, split={split!r}")
  classes = sorted(entry for entry in os.listdir(directory)
                   if os.path.isdir(os.path.join(directory, entry)))
  if not classes:
    raise FileNotFoundError(
        f"No class folders under {directory!r}. Received: root={root!r}, "
        f"split={split!r}")
  return classes


def folder_files(root, split, classes):
  """Image paths and labels of `root/split/<class>/*`, in sorted order."""
  paths, labels = [], []
  for label, name in enumerate(classes):
    directory = os.path.join(root, split, name)
    for file_name in sorted(os.listdir(directory)):
      if file_name.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(os.path.join(directory, file_name))
        labels.append(label)
  return paths, labels


def load_image_folder(root,
                      split="train",
                      batch_size=128,
                      training=False,
                      seed=None,
                      classes=None,
                      image_size=None,
                      shuffle_buffer=10_000):
  """Images stored as `root/split/<class>/<image>` (e.g. Tiny ImageNet converted).

  Labels are the indices of the class folders in sorted order (or in
  `classes`), so every split of one root shares one labelling.

  Args:
    root: the dataset folder.
    split: the split folder under `root` ("train", "val", ...).
    batch_size: examples per batch.
    training: shuffle and augment (see `finish`) or keep the sorted order.
    seed: integer seed of shuffling and augmentation.
    classes: class folder names in label order; None means the sorted folders
      of this split.
    image_size: `(height, width)` to resize to, or None to keep the stored
      size (then every image must have the same size).
    shuffle_buffer: shuffle buffer size.

  Returns:
    A `tf.data.Dataset` of float32 RGB images in [0, 1] and int32 labels.

  Raises:
    FileNotFoundError: for a missing split folder or one without images.
    ValueError: for a bad batch size.
  """
  classes = list(classes) if classes is not None else folder_classes(root, split)
  paths, labels = folder_files(root, split, classes)
  if not paths:
    raise FileNotFoundError(
        f"No images ({', '.join(IMAGE_EXTENSIONS)}) under "
        f"{os.path.join(root, split)!r}. Received: root={root!r}, split={split!r}")

  def decode(path, label):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                               expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    if image_size is not None:
      image = tf.image.resize(image, image_size)
    return image, label

  dataset = tf.data.Dataset.from_tensor_slices(
      (paths, np.asarray(labels, np.int32)))
  dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  return finish(dataset, batch_size, training, seed, shuffle_buffer)


def load_arrays(name="cifar10", split="test[:1000]", data_dir=None,
                batch_size=1000):
  """A tfds split (slice) as numpy arrays, in the dataset's order (for attacks).

  Args:
    name: tfds dataset name (see `load_tfds`).
    split: tfds split or slice.
    data_dir: tfds data directory; None means `TFDS_DATA_DIR` or tfds' default.
    batch_size: read batch size (memory only; no effect on the result).

  Returns:
    `(x, y)`: float32 images in [0, 1], shape `(n, height, width, channels)`,
    and int32 labels, shape `(n,)`.

  Raises:
    FileNotFoundError: when the data is missing and cannot be downloaded.
  """
  batches = list(tfds.as_numpy(
      load_tfds(name, split, batch_size, training=False, data_dir=data_dir)))
  return (np.concatenate([x for x, _ in batches]),
          np.concatenate([y for _, y in batches]))
