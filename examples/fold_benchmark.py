r"""Speed of g(x) with f_b's batch norm folded into its convolutions, side by side.

For each batch size, times in one process, with interleaved repetitions (the
best of each is kept, so a load spike hits every variant alike):

- `original`: `adv_layer.ll_pgd` on f_b as built (conv -> batch norm -> ReLU);
- `folded`: the same loop on `adv_layer.folding.fold_batch_norm(f_b)`;
- `live fold`: on `adv_layer.folding.LiveFold(f_b)` (folds at every call);
- with `--channels_first`, both again on a channels-first (NCHW) copy of f_b,
  the batch transposed in and out inside the timed function (oneDNN's native
  layout; TensorFlow's own CPU kernels need NHWC, so this needs oneDNN on).

Every variant starts from the same random start δ, so g(x) can be compared
pixel by pixel. The table gives each one's images/s, its speed relative to
`original`, its fraction of this machine's fp32 matmul rate (FLOPs counted as
in `examples/benchmark.py`) and the fraction of pixels of g(x) equal to
`original`'s; the last two rows are rounding references: `original` on the
same images run as two half batches, and on a copy of f_b whose kernels are
one ulp larger (the smallest weight change float32 can express).

Usage (from the repository root; paper f_b shape, Δ = 0.2, N = 13):
  python -m examples.fold_benchmark --batch_sizes=128,256 --repeats=3
  python -m examples.fold_benchmark --fb=runs/demo/f_b.keras --nochannels_first
"""

import os

# As in examples/benchmark.py: oneDNN on before TensorFlow loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import sys
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from adv_layer import folding
from adv_layer import models
from adv_layer import transform
from attacks import preflight
try:
  from examples import benchmark
except ModuleNotFoundError as error:  # Run by path: `examples` not importable.
  if error.name != "examples":
    raise
  sys.exit(f"fold_benchmark.py: error: {error}: it imports the `examples` package; "
           "run it from the repository root as a module: "
           "python -m examples.fold_benchmark ...")

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command-line flags (called by `__main__` only)."""
  flags.DEFINE_list("batch_sizes", ["128", "256"], "Transform batch sizes.")
  flags.DEFINE_integer("repeats", 3, "Timed repetitions of each variant.")
  flags.DEFINE_float("epsilon", 0.2, "Transform radius Δ.")
  flags.DEFINE_integer("steps", 13, "Transform steps N.")
  flags.DEFINE_bool("channels_first", True, "Also time NCHW copies of f_b.")
  flags.DEFINE_string("fb", None, "A trained f_b (.keras path or zoo:NAME); "
                      "default: the paper's small VGG with seeded random "
                      "batch norm statistics.")
  flags.DEFINE_integer("matmul_size", 2048, "Side of the square fp32 matmul.")
  flags.DEFINE_integer("seed", 0, "Seed of f_b, the images and δ.")


def randomize_batch_norm(model, seed):
  """Seeded non-trivial γ, β, moving mean and variance for every batch norm.

  A freshly built f_b has γ = 1, β = 0, μ = 0, σ² = 1, under which folding
  barely changes a weight; a trained f_b has statistics like these.

  Returns:
    `model`, changed in place.
  """
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0.0, 0.1, n),
                         rng.normal(0.0, 0.1, n), rng.uniform(0.5, 2.0, n)])
  return model


def channels_first_copy(model):
  """A copy of a functional NHWC `model` computing on NCHW images.

  Convolutions, pooling and `Flatten` switch data format (`Flatten` then
  reorders to NHWC, so dense weights stay valid), batch norm moves to axis 1;
  every weight is copied.
  """
  def clone_layer(layer):
    config = layer.get_config()
    if "data_format" in config:
      config["data_format"] = "channels_first"
    if isinstance(layer, keras.layers.BatchNormalization):
      config["axis"] = 1
    return layer.__class__.from_config(config)

  height, width, channels = model.input_shape[1:]
  copy = keras.models.clone_model(
      model, input_tensors=keras.Input((channels, height, width)),
      clone_function=clone_layer)
  for original, layer in zip(model.layers[1:], copy.layers[1:]):
    layer.set_weights(original.get_weights())
  return copy


def nudged_copy(model):
  """A copy of `model` with every Conv2D and Dense kernel one ulp larger.

  The smallest change of f_b's weights that float32 can express: g(x) with
  it shows how far rounding alone moves g(x) (the signs of near-zero
  gradient entries flip, then the paths drift apart).
  """
  copy = keras.models.clone_model(model)
  copy.set_weights(model.get_weights())
  for layer in copy.layers:
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
      kernel = layer.kernel.numpy()
      layer.kernel.assign(np.nextafter(kernel, np.inf, dtype=kernel.dtype))
  return copy


def transform_fn(f_b, epsilon, steps, channels_first):
  """g(x, δ) as a compiled function of NHWC images and their random start."""
  def nhwc(x, noise):
    return transform.ll_pgd(f_b, x, epsilon=epsilon, steps=steps, noise=noise)

  def nchw(x, noise):
    to_nchw = lambda t: tf.transpose(t, [0, 3, 1, 2])
    return tf.transpose(nhwc(to_nchw(x), to_nchw(noise)), [0, 2, 3, 1])

  return tf.function(nchw if channels_first else nhwc, autograph=False)


def interleaved_seconds(functions, args, repeats):
  """Best wall time of each function, timing them in turn `repeats` times.

  Args:
    functions: a dict `{name: function of *args}`; each is called once
      first (tracing) and its result kept.
    args: the arguments of every call.
    repeats: timed rounds, >= 1.

  Returns:
    `({name: best seconds}, {name: first result as numpy})`.
  """
  results = {name: np.asarray(fn(*args)) for name, fn in functions.items()}
  best = {name: float("inf") for name in functions}
  for _ in range(repeats):
    for name, fn in functions.items():
      start = time.perf_counter()
      np.asarray(fn(*args))
      best[name] = min(best[name], time.perf_counter() - start)
  return best, results


def variants(f_b, epsilon, steps, channels_first):
  """The compiled transforms to compare, by name."""
  functions = {
      "original": transform_fn(f_b, epsilon, steps, False),
      "folded": transform_fn(folding.fold_batch_norm(f_b), epsilon, steps,
                             False),
      "live fold": transform_fn(folding.LiveFold(f_b), epsilon, steps, False),
  }
  if channels_first:
    f_b_nchw = channels_first_copy(f_b)
    functions["NCHW"] = transform_fn(f_b_nchw, epsilon, steps, True)
    functions["NCHW folded"] = transform_fn(
        folding.fold_batch_norm(f_b_nchw), epsilon, steps, True)
  return functions


def measure(f_b, batch_sizes, repeats, epsilon, steps, channels_first,
            matmul_size, seed):
  """Rows of the table: each variant at each batch size.

  Args:
    f_b: the model of the transform (NHWC).
    batch_sizes: batch sizes to time; the batches are prefixes of one set of
      seeded random images, with one seeded random start δ.
    repeats: timed rounds (the best of each variant is kept).
    epsilon: Δ.
    steps: N.
    channels_first: also time NCHW copies of f_b.
    matmul_size: side of the square matmul of the peak rate.
    seed: seed of the images and δ.

  Returns:
    `(rows, matmul FLOP/s)`; each row is `(batch size, name, images/s, speed
    vs original, fraction of the matmul rate, fraction of pixels of g(x)
    equal to original's)`, the speed figures None on the rounding-reference
    rows.
  """
  functions = variants(f_b, epsilon, steps, channels_first)
  nudged = transform_fn(nudged_copy(f_b), epsilon, steps, False)
  flops = benchmark.transform_flops(f_b, steps)
  size = max(batch_sizes)
  rng = np.random.default_rng(seed)
  x_all = tf.constant(rng.uniform(0, 1, (size,) + f_b.input_shape[1:]),
                      tf.float32)
  noise_all = tf.constant(
      rng.uniform(-epsilon, epsilon, x_all.shape), tf.float32)
  matmul_before = benchmark.matmul_flop_rate(matmul_size, repeats)
  timed = []
  for batch in batch_sizes:
    x, noise = x_all[:batch], noise_all[:batch]
    seconds, outputs = interleaved_seconds(functions, (x, noise), repeats)
    original = outputs["original"]
    for name in functions:
      timed.append((batch, name, batch / seconds[name],
                    seconds["original"] / seconds[name],
                    float(np.mean(outputs[name] == original))))
    half = batch // 2
    halves = np.concatenate([functions["original"](x[:half], noise[:half]),
                             functions["original"](x[half:], noise[half:])])
    timed.append((batch, "original, 2 half batches", None, None,
                  float(np.mean(halves == original))))
    timed.append((batch, "original, kernels +1 ulp", None, None,
                  float(np.mean(np.asarray(nudged(x, noise)) == original))))
  # The CPU may be shared: the higher of the two rates makes the fractions
  # conservative, as in examples/benchmark.py.
  matmul_rate = max(matmul_before,
                    benchmark.matmul_flop_rate(matmul_size, repeats))
  rows = [(batch, name, rate, speed,
           None if rate is None else flops * rate / matmul_rate, equal)
          for batch, name, rate, speed, equal in timed]
  return rows, matmul_rate


def main(argv):
  del argv
  keras.utils.set_random_seed(FLAGS.seed)
  if FLAGS.fb:
    f_b = preflight.load_model(FLAGS.fb, "fb")  # A .keras path or zoo:NAME.
  else:
    f_b = models.small_vgg(seed=FLAGS.seed)
    randomize_batch_norm(f_b, FLAGS.seed)
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  rows, matmul_rate = measure(f_b, batch_sizes, FLAGS.repeats, FLAGS.epsilon,
                              FLAGS.steps, FLAGS.channels_first,
                              FLAGS.matmul_size, FLAGS.seed)
  print(f"oneDNN {benchmark.onednn_state()}; fp32 matmul "
        f"{matmul_rate / 1e9:.1f} GFLOP/s; f_b {FLAGS.fb or 'small_vgg'}; "
        f"epsilon={FLAGS.epsilon} steps={FLAGS.steps}; best of {FLAGS.repeats}")
  print(f"{'batch':>5}  {'variant':<25} {'images/s':>9} {'speed':>6} "
        f"{'of matmul':>9} {'pixels equal':>12}")
  for batch, name, rate, speed, fraction, equal in rows:
    numbers = (f"{rate:9.1f} {speed:6.2f} {100 * fraction:8.1f}%"
               if rate is not None else f"{'':9} {'':6} {'':9}")
    print(f"{batch:>5}  {name:<25} {numbers} {100 * equal:11.3f}%")


if __name__ == "__main__":
  define_flags()
  app.run(main)
