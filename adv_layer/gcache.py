"""A disk cache of K draws of g(x) over a training set, for cheaper training of f_a.

Training f_a behind g (Sec. 3.2) runs g on every image of every epoch: 14
forward and 13 gradient passes of f_b per image, far more than f_a's own
step. The method only asks that f_a sees a fresh draw of g(x) for each of its
training inputs; this module computes K independent draws of g over the
training set once (`precompute_draws`) and then serves, each epoch, a fresh
pick among them with the usual augmentation (`cached_training_data`). The
defended model is still f_a(g(x)) with the real `AdversarialTransform` in
front: only the inputs f_a trains on come from the cache.

What the cache holds. Draw k of image i is g(x_i), with x_i the *raw*
(un-augmented) training image, computed by the layer's own `transform` on the
batch b that holds i, with the stateless seed `[draw_seed(seed, k, b), 0]`:
exactly what a fresh `AdversarialTransform(f_b, seed=draw_seed(seed, k, b))`
returns for that batch on a training call (`training=True`). Different draws
(and batches) get different seeds, so the K draws of an image are independent
random starts (and random targets in the `"random"` mode), each then run
through the full N-step LL-PGD loop. Values are float32, as g returns them (not rounded
to 1/255: g's output is not on that grid).

Raw, not augmented, images. At training time the crop (after 4-pixel zero
padding) and flip of `adv_layer.data` are applied to the cached g(x), so f_a
trains on crop(flip(g(x))) instead of g(crop(flip(x))) as with a fresh draw
per step. The two differ because g does not commute with crop or flip: f_b
sees a shifted or mirrored image, so its least-likely class, its gradients and
hence the perturbation change (f_b is neither shift- nor flip-invariant:
border padding, pooling grid, learned asymmetric filters); and the padded
border stays exactly zero instead of being perturbed by up to Δ. Each cached
input is still an L∞ ≤ Δ least-likely adversarial example of f_b -- for the
un-augmented image, moved along with it. What this changes: (1) at test time
g runs on un-augmented images, which is exactly the distribution of the
cached draws before augmentation, so training matches inference at least as
well as before; (2) augmentation keeps its full variety (every epoch a new
crop and flip), whereas draws on augmented images would freeze K crops per
image; (3) the perturbation seen by f_a is a shifted or mirrored copy of one
computed for the un-shifted image, a small distribution shift during
training only. Whether f_a trained this way matches one trained with a fresh
draw per step is an empirical question, not measured side by side here;
this module only makes it cheap to try.

A fresh pick each epoch. Each pass over `cached_training_data` picks one of
the K draws for the whole epoch (uniformly, independently per epoch, seeded),
then shuffles and augments. Since the K draws of one image are i.i.d. and
independent across images, every image then sees a fresh uniform pick among
its K draws, as with a per-image pick, while reading only 1/K of the cache per
epoch. A run resumed from a backup restarts this sequence of picks (as the
shuffle order of `adv_layer.data` restarts); the picks stay uniform.

On disk, under `folder`:

    manifest.json                   settings, seed, batch size, shard size,
                                    f_b's name and weights digest, the
                                    numbers of examples and shards
    draw_000/shard_00000.tfrecord   draw 0 of the first `shard_batches` batches
    draw_000/shard_00001.tfrecord   ...
    draw_001/...                    one folder per draw

Each shard is a TFRecord file (readable with `tf.data.TFRecordDataset`) of
`tf.train.Example`s with features `image` (the float32 image's raw
little-endian bytes) and `label` (int64), in the input's order. A shard is
written to a temporary file and renamed when complete, so a killed run leaves
only whole shards; rerunning the same call computes the missing shards and
skips the others. Every shard's content depends only on the settings, the
seed and its position, so a resumed cache is byte-identical to one computed
in a single run. Size: K × (examples × image size × 4 bytes), e.g. 614 MB per
draw for the 50,000 CIFAR-10 training images.
"""

import hashlib
import json
import numbers
import os
import time

import keras
import numpy as np
import tensorflow as tf

from adv_layer import data
from adv_layer import layer as layer_lib

MANIFEST = "manifest.json"
# Manifest keys that must match for a rerun to continue an existing cache.
SETTINGS = ("draws", "seed", "batch_size", "shard_batches", "image_shape",
            "epsilon", "steps", "step_size", "target", "random_start",
            "value_range", "clip_to_range", "f_b", "f_b_weights", "examples")


def draw_seed(seed, draw, batch):
  """The integer seed of g's random start for one batch of one draw.

  Args:
    seed: the cache's seed.
    draw: the draw index k, 0 <= k < K.
    batch: the batch index b in the input's order.

  Returns:
    An int in [0, 2**31 - 2), a function of `(seed, draw, batch)` only (the
    range `adv_layer.transform.stateless_seed` keeps unchanged).
  """
  state = np.random.SeedSequence([seed, draw, batch]).generate_state(1)
  return int(state[0]) % (2**31 - 2)


def shard_path(folder, draw, shard):
  """Path of shard `shard` of draw `draw` under `folder`."""
  return os.path.join(folder, f"draw_{draw:03d}", f"shard_{shard:05d}.tfrecord")


def read_manifest(folder):
  """The manifest of the cache in `folder`, or None if there is none."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as file:
    return json.load(file)


def write_manifest(folder, manifest):
  """Writes `manifest` to `folder` atomically (temporary file, then rename)."""
  path = os.path.join(folder, MANIFEST)
  with open(path + ".tmp", "w") as file:
    json.dump(manifest, file, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def weights_digest(model):
  """SHA-256 hex digest of `model`'s weights (which f_b made a cache)."""
  digest = hashlib.sha256()
  for weights in model.get_weights():
    digest.update(np.ascontiguousarray(weights).tobytes())
  return digest.hexdigest()


def as_transform(f_b_or_layer, transform_kwargs):
  """The `AdversarialTransform` to draw from.

  Raises:
    ValueError: for a layer together with transform settings, or neither a
      layer nor a Keras model.
  """
  if isinstance(f_b_or_layer, layer_lib.AdversarialTransform):
    if transform_kwargs:
      raise ValueError(
          "Transform settings go to the layer, not to `precompute_draws`, when "
          "an AdversarialTransform is given. Received: "
          + ", ".join(f"{k}={v!r}" for k, v in transform_kwargs.items()))
    return f_b_or_layer
  if isinstance(f_b_or_layer, keras.Model):
    return layer_lib.AdversarialTransform(f_b_or_layer, **transform_kwargs)
  raise ValueError(
      "`f_b_or_layer` must be an AdversarialTransform or a keras.Model (f_b). "
      f"Received: f_b_or_layer={f_b_or_layer!r}")


def check_count(name, value):
  """Raises ValueError unless `value` is an integer >= 1."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")


def input_batches(images, batch_size):
  """`(images, labels)` batches of `batch_size` from a dataset or arrays."""
  if isinstance(images, tf.data.Dataset):
    if len(images.element_spec[0].shape) == 4:  # Batched: re-batch.
      images = images.unbatch()
    return images.batch(batch_size)
  if isinstance(images, (tuple, list)) and len(images) == 2:
    return tf.data.Dataset.from_tensor_slices(
        (np.asarray(images[0]), np.asarray(images[1]))).batch(batch_size)
  raise ValueError(
      "`images` must be a tf.data.Dataset of (images, labels) or a pair of "
      f"arrays (x, y). Received: images={images!r}")


def count_examples(batches):
  """The number of examples in a finite dataset of `(images, labels)` batches."""
  return int(batches.reduce(
      tf.constant(0, tf.int64),
      lambda count, batch: count + tf.shape(batch[1], out_type=tf.int64)[0]))


def check_images(x, value_range):
  """Raises ValueError unless `x` (numpy) holds float images in `value_range`."""
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(
        "Images must be float (e.g. x / 255), not integers. Received: "
        f"images.dtype={x.dtype.name}")
  low, high = float(x.min()), float(x.max())
  if low < value_range[0] or high > value_range[1]:
    raise ValueError(
        f"Images must lie in value_range={value_range}. Received: images min, "
        f"max = {low}, {high}")


def serialize(image, label):
  """One `tf.train.Example` (float32 image bytes, int64 label), serialized."""
  features = {
      "image": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[np.asarray(image, "<f4").tobytes()])),
      "label": tf.train.Feature(int64_list=tf.train.Int64List(
          value=[int(label)])),
  }
  return tf.train.Example(
      features=tf.train.Features(feature=features)).SerializeToString()


def write_shard(path, images, labels):
  """Writes one shard to a temporary file, then renames it into place."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path + ".tmp") as writer:
    for image, label in zip(images, labels):
      writer.write(serialize(image, label))
  os.replace(path + ".tmp", path)


def shards_of(batches, shard_batches):
  """Groups `(x, y)` batches into `(shard, [x...], [y...])` numpy lists."""
  shard, xs, ys = 0, [], []
  for x, y in batches.as_numpy_iterator():
    xs.append(x)
    ys.append(y)
    if len(xs) == shard_batches:
      yield shard, xs, ys
      shard, xs, ys = shard + 1, [], []
  if xs:
    yield shard, xs, ys


def precompute_draws(f_b_or_layer,
                     images,
                     folder,
                     draws=4,
                     seed=0,
                     batch_size=256,
                     shard_batches=20,
                     verbose=1,
                     **transform_kwargs):
  """Computes K independent draws of g over `images` into `folder`, resumably.

  Rerun the same call after a kill: finished shards are kept, the others
  computed (see the module docstring for the layout and the seeds).

  Args:
    f_b_or_layer: the `AdversarialTransform` whose g to draw (its settings
      are used, its own seed is not), or f_b itself, then wrapped in an
      `AdversarialTransform(f_b, **transform_kwargs)`.
    images: the training set, raw (not augmented), in a fixed order: a
      `tf.data.Dataset` of `(images, labels)` (batched or not, e.g.
      `data.load_tfds(..., training=False)`) or a pair of arrays `(x, y)`;
      float images in the transform's value range.
    folder: the cache folder (created).
    draws: the number K of independent draws per image.
    seed: seed of all draws (see `draw_seed`).
    batch_size: images per call of g (part of the cache's seeding: a rerun
      must use the same value).
    shard_batches: batches per shard file (the unit of resumption).
    verbose: 0 silent, otherwise one line per shard written.
    **transform_kwargs: `AdversarialTransform` arguments (`epsilon`,
      `steps`, ...) when `f_b_or_layer` is f_b.

  Returns:
    The number of shard files written by this call (0 when the cache was
    already complete).

  Raises:
    ValueError: for counts < 1, bad images, or a `folder` holding a cache
      made with other settings (the message names them).

  Example:
    >>> train = data.load_tfds("cifar10", "train", 256)   # evaluation order
    >>> precompute_draws(f_b, train, "runs/g_cache", draws=8, seed=0)
  """
  for name, value in (("draws", draws), ("batch_size", batch_size),
                      ("shard_batches", shard_batches)):
    check_count(name, value)
  transform = as_transform(f_b_or_layer, transform_kwargs)
  batches = input_batches(images, batch_size)
  manifest = {
      "draws": draws, "seed": seed, "batch_size": batch_size,
      "shard_batches": shard_batches,
      "image_shape": list(batches.element_spec[0].shape[1:]),
      "epsilon": transform.epsilon, "steps": transform.steps,
      "step_size": transform.step_size, "target": transform.target,
      "random_start": transform.random_start,
      "value_range": list(transform.value_range),
      "clip_to_range": transform.clip_to_range,
      "f_b": transform.f_b.name,
      "f_b_weights": weights_digest(transform.f_b),
      "examples": count_examples(batches),
  }
  shard_size = batch_size * shard_batches  # Images per shard.
  manifest["shards"] = -(-manifest["examples"] // shard_size)
  os.makedirs(folder, exist_ok=True)
  existing = read_manifest(folder)
  if existing is not None:
    different = [key for key in SETTINGS if existing.get(key) != manifest[key]]
    if different:
      raise ValueError(
          f"The cache in {folder!r} was made with other settings ({different}); "
          "use another folder or the same settings. Received: "
          + ", ".join(f"{key}={manifest[key]!r} (cache: {existing.get(key)!r})"
                      for key in different))
  write_manifest(folder, manifest)

  g = tf.function(lambda x, stateless: transform.transform(x, seed=stateless))
  written = 0
  for shard, xs, ys in shards_of(batches, shard_batches):
    labels = np.concatenate(ys)
    missing = [draw for draw in range(draws)
               if not os.path.exists(shard_path(folder, draw, shard))]
    for x in xs if missing else ():
      check_images(x, transform.value_range)
    for draw in missing:
      start = time.time()
      outputs = []
      for index, x in enumerate(xs):
        stateless = tf.constant(
            [draw_seed(seed, draw, shard * shard_batches + index), 0], tf.int32)
        outputs.append(g(x.astype(np.float32), stateless).numpy())
      write_shard(shard_path(folder, draw, shard), np.concatenate(outputs),
                  labels)
      written += 1
      if verbose:
        print(f"g cache: draw {draw + 1}/{draws}, shard {shard} "
              f"({len(labels)} images, "
              f"{len(labels) / (time.time() - start):.1f} images/s)", flush=True)
  return written


def complete_manifest(folder):
  """The manifest of a complete cache in `folder`.

  Raises:
    FileNotFoundError: if `folder` holds no cache, an unfinished one, or
      misses a shard file.
  """
  manifest = read_manifest(folder)
  if manifest is None:
    raise FileNotFoundError(
        f"No g cache in {folder!r}: run `precompute_draws` first. "
        f"Received: folder={folder!r}")
  for draw in range(manifest["draws"]):
    for shard in range(manifest["shards"]):
      if not os.path.exists(shard_path(folder, draw, shard)):
        raise FileNotFoundError(
            f"The g cache in {folder!r} misses {shard_path(folder, draw, shard)!r}"
            f"; rerun `precompute_draws` to finish it. Received: folder={folder!r}")
  return manifest


def parse(record, image_shape):
  """A serialized shard record -> `(float32 image, int32 label)`."""
  example = tf.io.parse_single_example(record, {
      "image": tf.io.FixedLenFeature([], tf.string),
      "label": tf.io.FixedLenFeature([], tf.int64)})
  image = tf.reshape(tf.io.decode_raw(example["image"], tf.float32),
                     image_shape)
  return image, tf.cast(example["label"], tf.int32)


def load_draw(folder, draw):
  """One cached draw of g over the whole input, in the input's order.

  Args:
    folder: a folder completed by `precompute_draws`.
    draw: the draw index k, 0 <= k < K.

  Returns:
    `(x, y)`: float32 g(x) images, shape `(examples, *image_shape)`, and
    int32 labels, shape `(examples,)`.

  Raises:
    FileNotFoundError: for a missing or unfinished cache.
    ValueError: for a draw index out of range.
  """
  manifest = complete_manifest(folder)
  if (isinstance(draw, bool) or not isinstance(draw, numbers.Integral) or
      not 0 <= draw < manifest["draws"]):
    raise ValueError(
        f"`draw` must be an integer in [0, {manifest['draws']}). "
        f"Received: draw={draw!r}")
  files = [shard_path(folder, draw, shard) for shard in range(manifest["shards"])]
  dataset = tf.data.TFRecordDataset(files).map(
      lambda record: parse(record, manifest["image_shape"]))
  x, y = dataset.batch(manifest["examples"]).get_single_element()
  return x.numpy(), y.numpy()


def cached_training_data(folder,
                         batch_size,
                         seed=None,
                         augment=True,
                         shuffle_buffer=10_000):
  """Training batches of cached g(x): each epoch a fresh pick among the K draws.

  Args:
    folder: a folder completed by `precompute_draws`.
    batch_size: examples per batch.
    seed: seed of the per-epoch pick, the shuffle and the augmentation; None
      draws them afresh.
    augment: apply `adv_layer.data`'s random crop and flip to the cached
      g(x) (see the module docstring); the examples are shuffled either way.
    shuffle_buffer: shuffle buffer size.

  Returns:
    A finite `tf.data.Dataset` of `(float32 g(x) images, int32 labels)`
    batches, one epoch per iteration, with a known number of batches.

  Raises:
    FileNotFoundError: for a missing or unfinished cache.
    ValueError: for a bad batch size.

  Example:
    >>> train = cached_training_data("runs/g_cache", batch_size=128, seed=0)
    >>> training.train(f_a, train, epochs=30)
  """
  manifest = complete_manifest(folder)
  files = tf.constant([[shard_path(folder, draw, shard)
                        for shard in range(manifest["shards"])]
                       for draw in range(manifest["draws"])])
  # The pick's own seed, so that it is not the augmentation's stream.
  pick_seed = (None if seed is None else
               int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
  picks = tf.data.Dataset.random(seed=pick_seed,
                                 rerandomize_each_iteration=True)
  dataset = picks.take(1).flat_map(
      lambda r: tf.data.TFRecordDataset(
          tf.gather(files, tf.math.floormod(r, manifest["draws"]))))
  dataset = dataset.map(lambda record: parse(record, manifest["image_shape"]),
                        num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.apply(
      tf.data.experimental.assert_cardinality(manifest["examples"]))
  if not augment:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
  return data.finish(dataset, batch_size, training=augment, seed=seed,
                     shuffle_buffer=shuffle_buffer)
