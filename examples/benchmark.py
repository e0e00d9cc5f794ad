r"""Benchmark of the adversarial transform g(x) and of training with it.

Measures, in one run on one machine (figures: docs/PERFORMANCE.md):

1. The transform's throughput in images/s for the paper's f_b (small VGG,
   Xiao & Zheng Sec. 3.2 / Appendix A.1) at the paper's Δ = 0.2, N = 13, and
   its achieved FLOP rate as a fraction of this machine's fp32 matmul FLOP rate,
   measured in the same run. FLOPs are counted analytically per layer: one
   transform is 14 forward passes of f_b (one on the clean input for y_LL, one
   per step) and 13 input-gradient passes (N + 1 and N for `--steps=N`). A conv's (or dense layer's)
   input-gradient pass is counted as equal to its forward FLOPs (it is the
   transposed convolution with the same multiply-adds); weight gradients are
   not needed (f_b is frozen) and not counted; batch norm, ReLU, pooling, the
   loss and the projection are elementwise, with negligible FLOPs (not
   negligible time: max-pool gradients and the batch-norm multiplies take
   about 15% of it with oneDNN, a quarter without).
2. Time per training epoch of the defended model f_a(g(x)) vs PGD-7
   adversarial training (Madry et al.) of the same f_a on the same images,
   side by side, both with `model.fit`.
3. The evaluation's rate: an EOT white-box attack of the suite (PGD through
   BPDA-I, `attacks.suite.run_attack`, f_b passes counted by the suite) on
   f_a(g(x)) with the same f_b, in f_b forward passes per second beside the
   transform's own (14 per image per draw; target >= 0.8 of it: the
   evaluation is bound by the transform, not by Python).
4. Optionally (`--real_model`, off by default) a real evaluation of a
   published defended model (`adv_layer.zoo`), side by side in one run:
   (a) g alone (the model's own `AdversarialTransform`, the exact forward the
   attacks run, on the attack's whole tiled batch), in f_b passes/s;
   (b) f_a alone (the model behind g), forward and input-gradient backward
   compiled, in images/s; (c) an EOT attack as the evaluation runs it
   (`attacks.suite.run_attack`, by default `apgd_ce_bpda_identity`, 5 steps,
   EOT 4, R 4, 64 images), in f_b passes/s, as a fraction of g's rate and as
   a fraction of its floor: the time (a) needs for the attack's f_b passes
   plus the time (b) needs for its model passes, over the attack's time
   (target >= 0.85 of the floor, >= 0.6 of g's rate).
5. Optionally a bfloat16 inner loop: a copy of f_b under the
   `mixed_bfloat16` policy runs inside the same float32 LL-PGD loop (only the
   sign of its gradient is used); its speed, the fraction of pixels of g(x)
   equal to the float32 result under the same random start, and the fraction
   of first-step gradient signs that agree.

On CPUs without AVX-512 (e.g. AMD EPYC) TensorFlow leaves its oneDNN kernels
off; `TF_ENABLE_ONEDNN_OPTS=1` (set before the run) turns them on. The table
says which was in force.

Usage (the defaults are the paper's transform settings on CIFAR-10):
  TFDS_DATA_DIR=... python examples/benchmark.py
  TF_ENABLE_ONEDNN_OPTS=1 TFDS_DATA_DIR=... python examples/benchmark.py
  python examples/benchmark.py --data=random --batch_size=64 --repeats=2 \
      --train_images=256 --json_out=/tmp/bench.json
  # The real evaluation alone (4 above; CIFAR-10 test images):
  TFDS_DATA_DIR=... python examples/benchmark.py \
      --real_model=cifar10/defended_resnet18 --batch_size=0 --attack_images=0 \
      --train_images=0 --json_out=/tmp/real.json
"""

import os

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import json
import platform
import subprocess
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

import adv_layer
from adv_layer import folding
from adv_layer import models
from adv_layer import training
from adv_layer import transform
from adv_layer import zoo
from attacks import estimators
from attacks import preflight
from attacks import suite

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command-line flags; called by `__main__` only, so a test that
  imports this module defines none (and cannot clash with other examples)."""
  flags.DEFINE_enum("data", "cifar10", ["cifar10", "random"],
                    "Images to time on: the CIFAR-10 train split (tfds, found "
                    "through TFDS_DATA_DIR) or seeded uniform noise.")
  flags.DEFINE_integer("batch_size", 256, "Transform batch size.")
  flags.DEFINE_float("epsilon", 0.2, "Transform radius Δ.")
  flags.DEFINE_integer("steps", 13, "Transform steps N.")
  flags.DEFINE_integer("repeats", 3, "Timed repetitions (the best is reported).")
  flags.DEFINE_integer("matmul_size", 2048, "Side of the square fp32 matmul.")
  flags.DEFINE_bool("jit_compile", False, "Compile the transform with XLA.")
  flags.DEFINE_integer("bf16_batch_size", 32,
                       "Batch of the bfloat16 timing and agreement, a prefix of "
                       "the fp32 batch (bf16 is slow on CPUs without bf16 "
                       "units); 0 skips the bfloat16 mode.")
  flags.DEFINE_string("fb", None, "A trained f_b (.keras path or zoo:NAME); "
                      "default: the paper's small VGG with random weights "
                      "(same speed).")
  flags.DEFINE_integer("attack_images", 128,
                       "Images of the EOT attack's rate, a prefix of the batch "
                       "(0 skips it).")
  flags.DEFINE_integer("attack_eot_samples", 2,
                       "EOT samples of the attack's rate.")
  flags.DEFINE_string("real_model", "",
                      "A defended model whose real evaluation to time beside "
                      "g alone and f_a alone: zoo:NAME (e.g. "
                      "zoo:cifar10/defended_resnet18; a bare zoo name works "
                      "too) or a .keras path; empty skips it.")
  flags.DEFINE_string("real_attack", "apgd_ce_bpda_identity",
                      "The suite attack of the real evaluation.")
  flags.DEFINE_integer("real_images", 64, "Images of the real evaluation "
                       "(CIFAR-10 test images, or random with --data=random).")
  flags.DEFINE_integer("real_steps", 5, "Steps of the real evaluation's attack.")
  flags.DEFINE_integer("real_eot_samples", 4,
                       "EOT samples of the real evaluation's attack.")
  flags.DEFINE_integer("real_draws", 4, "R of the real evaluation's scoring.")
  flags.DEFINE_integer("real_repeats", 1,
                       "Attack runs of the real evaluation (the best is "
                       "reported); g and f_a are timed `repeats` times.")
  flags.DEFINE_integer("train_images", 512, "Images per training epoch (0 skips).")
  flags.DEFINE_integer("train_batch_size", 128, "Training batch size.")
  flags.DEFINE_enum("f_a", "small_cnn", ["small_cnn", "resnet18"], "Classifier f_a.")
  flags.DEFINE_integer("pgd_steps", 7, "Steps of the PGD adversarial training.")
  flags.DEFINE_float("pgd_epsilon", 8 / 255, "Budget of the PGD adversarial training.")
  flags.DEFINE_float("pgd_step_size", 2 / 255, "Step of the PGD adversarial training.")
  flags.DEFINE_integer("seed", 0, "Seed of the models, data and random starts.")
  flags.DEFINE_string("json_out", None, "Also write the results to this JSON file.")


def machine_info():
  """CPU model, core count and library versions of this machine.

  Returns:
    A dict of strings.
  """
  model = platform.processor() or platform.machine()
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True,
                           check=False).stdout
    for line in lscpu.splitlines():
      if line.startswith("Model name:"):
        model = line.split(":", 1)[1].strip()
  except OSError:
    pass
  return {
      "cpu": model,
      "cores": str(os.cpu_count()),
      "tensorflow": tf.__version__,
      "keras": keras.__version__,
      "oneDNN": onednn_state(),
  }


def onednn_state():
  """Whether TensorFlow's oneDNN kernels are on, and why.

  TensorFlow turns them on by default only on CPUs with AVX-512 class
  features; elsewhere (e.g. AMD EPYC) `TF_ENABLE_ONEDNN_OPTS=1`, set before
  TensorFlow is imported, turns them on.
  """
  setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
    enabled = "on" if _pywrap_util_port.IsMklEnabled() else "off"
  except (ImportError, AttributeError):
    enabled = "unknown"
  return f"{enabled} (TF_ENABLE_ONEDNN_OPTS={setting})"


def best_seconds(fn, repeats, warm_up=True):
  """Runs `fn` once to warm up (tracing), then `repeats` times.

  Args:
    fn: a callable with no arguments whose result can be converted with
      `np.asarray` (so the work is finished when the clock stops).
    repeats: timed calls, >= 1.
    warm_up: make the untimed first call.

  Returns:
    The shortest wall time of the timed calls, in seconds.
  """
  if warm_up:
    np.asarray(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    np.asarray(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def matmul_flop_rate(size=2048, repeats=3):
  """Measures this machine's fp32 matmul rate (the denominator of the target).

  The CPU may be shared: `run_benchmark` measures it before and after the
  transform and keeps the higher rate, which makes the reported fraction
  conservative.

  Args:
    size: side n of the square matrices (2 n^3 FLOPs per product).
    repeats: timed repetitions.

  Returns:
    FLOP/s of the best repetition.
  """
  a = tf.random.stateless_uniform((size, size), seed=(1, 2))
  b = tf.random.stateless_uniform((size, size), seed=(3, 4))
  matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)), autograph=False)
  return 2.0 * size**3 / best_seconds(matmul, repeats)


def layer_flops(model):
  """Forward FLOPs per image of each Conv2D and Dense layer of `model`.

  A convolution costs 2·H_out·W_out·k_h·k_w·C_in·C_out, a dense layer
  2·in·out (one multiply and one add per weight use). Other layers are
  elementwise and not counted.

  Args:
    model: a built functional or Sequential `keras.Model`.

  Returns:
    A list of `(layer name, FLOPs)`.
  """
  flops = []
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      kh, kw, c_in, c_out = layer.kernel.shape
      _, h_out, w_out, _ = layer.output.shape
      flops.append((layer.name, 2 * h_out * w_out * kh * kw * c_in * c_out))
    elif isinstance(layer, keras.layers.Dense):
      c_in, c_out = layer.kernel.shape
      flops.append((layer.name, 2 * c_in * c_out))
  return flops


def transform_flops(model, steps):
  """FLOPs per image of one transform: (steps + 1) forward + steps input-gradient passes.

  Args:
    model: f_b.
    steps: N.

  Returns:
    FLOPs per image; an input-gradient pass counts as one forward pass.
  """
  forward = sum(f for _, f in layer_flops(model))
  return (2 * steps + 1) * forward


def transform_fn(f_b, epsilon, steps, seed, jit_compile=False):
  """g as a compiled function of a batch (the loop of `adv_layer.ll_pgd`).

  Args:
    f_b: the frozen model (logits out).
    epsilon: Δ.
    steps: N.
    seed: integer seed of the random start (the same start every call).
    jit_compile: compile with XLA.

  Returns:
    A `tf.function` mapping float32 images to g(images).
  """
  return tf.function(
      lambda x: transform.ll_pgd(f_b, x, epsilon=epsilon, steps=steps, seed=seed),
      jit_compile=jit_compile, autograph=False)


def transform_throughput(g, x, repeats):
  """Images/s of `g` on the batch `x` (best of `repeats` after a warm-up).

  Args:
    g: a function of a batch, e.g. from `transform_fn`.
    x: the batch.
    repeats: timed repetitions.

  Returns:
    `(images per second, seconds per batch)`.
  """
  seconds = best_seconds(lambda: g(x), repeats)
  return x.shape[0] / seconds, seconds


def layer_call_throughputs(f_b, x, epsilon, steps, seed, repeats):
  """Images/s of `AdversarialTransform` called eagerly and inside a function.

  Users call a preprocessing layer eagerly (a notebook, a custom loop, a
  one-off preprocessing pass); the layer compiles its loop itself, so both
  ways should run at the same speed.

  Args:
    f_b: the model of the transform.
    x: the batch.
    epsilon: Δ.
    steps: N.
    seed: the layer's seed.
    repeats: timed repetitions.

  Returns:
    `(eager images/s, compiled images/s)`.
  """
  layer = adv_layer.AdversarialTransform(f_b, epsilon=epsilon, steps=steps,
                                         seed=seed)
  eager, _ = transform_throughput(layer, x, repeats)
  compiled, _ = transform_throughput(
      tf.function(lambda images: layer(images), autograph=False), x, repeats)
  return eager, compiled


def bfloat16_copy(f_b):
  """A copy of f_b computing in bfloat16 (float32 weights, `mixed_bfloat16`).

  The copy shares no variables with f_b: the original stays untouched, and the
  float32 LL-PGD loop of `adv_layer.ll_pgd` runs unchanged around it (it casts
  the logits back to float32; the input gradient arrives in float32).

  Args:
    f_b: a functional or Sequential `keras.Model`.

  Returns:
    The bfloat16 `keras.Model`, built, with f_b's weights, frozen.
  """
  def clone_layer(layer):
    config = layer.get_config()
    if not isinstance(layer, keras.layers.InputLayer):
      config["dtype"] = "mixed_bfloat16"
    return layer.__class__.from_config(config)

  copy = keras.models.clone_model(f_b, clone_function=clone_layer)
  copy.set_weights(f_b.get_weights())
  copy.trainable = False
  return copy


def pixel_agreement(a, b):
  """Fraction of entries of `a` and `b` that are exactly equal."""
  return float(np.mean(np.asarray(a) == np.asarray(b)))


def first_step_sign_agreement(f_b, f_b_other, x):
  """Fraction of pixels where both models' first LL-PGD step has the same sign.

  Both gradients are taken at the clean `x` toward f_b's least-likely class;
  this isolates one step from the path divergence that builds up over N steps.

  Args:
    f_b: the reference model.
    f_b_other: e.g. its bfloat16 copy.
    x: float32 images.

  Returns:
    A float in [0, 1].
  """
  x = tf.convert_to_tensor(x, tf.float32)
  labels, _ = transform.target_labels(transform.logits_float32(f_b, x),
                                      "least_likely")
  return pixel_agreement(tf.sign(transform.input_gradient(f_b, x, labels)),
                         tf.sign(transform.input_gradient(f_b_other, x, labels)))


def build_f_a(name, input_shape, seed):
  """f_a by name (`adv_layer.models`) for images of `input_shape`."""
  return models.build_model(name, input_shape=tuple(input_shape), seed=seed)


def epoch_seconds(model, x, y, batch_size):
  """Seconds of one `fit` epoch over `(x, y)` after a one-batch warm-up.

  Args:
    model: a compiled `keras.Model`.
    x: images.
    y: labels.
    batch_size: batch size.

  Returns:
    Wall seconds of the timed epoch.
  """
  model.fit(x[:batch_size], y[:batch_size], batch_size=batch_size, epochs=1,
            verbose=0, shuffle=False)
  start = time.perf_counter()
  model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
  return time.perf_counter() - start


def attack_rate(f_b, f_a_name, x, epsilon, steps, eot_samples, repeats, seed):
  """f_b forward passes per second of the suite's BPDA-I EOT PGD attack.

  Runs `bpda_identity_eot` (2 steps, 8/255, `eot_samples` draws per
  gradient, the default chunking) on f_a(g(x)) through
  `attacks.suite.run_attack`, the path of every evaluation, which counts f_b's
  passes and times the attack; the best of `repeats` runs after one untimed
  run (traces, first allocations).

  Args:
    f_b: the model of the transform.
    f_a_name: the classifier behind g (`build_f_a`).
    x: the images.
    epsilon: Δ of g.
    steps: N of g.
    eot_samples: draws per gradient.
    repeats: timed runs.
    seed: seed of f_a, the labels and the attack.

  Returns:
    dict with `f_b_passes_per_s`, `images`, `eot_samples`, `seconds`.
  """
  f_a = build_f_a(f_a_name, x.shape[1:], seed)
  model = training.defended_model(f_b, f_a, epsilon=epsilon, steps=steps,
                                  seed=seed)
  target = suite.Target(model)
  y = np.random.default_rng(seed).integers(0, 10, len(x)).astype(np.int32)
  budget = suite.Budget(steps=2, eot_samples=eot_samples)
  spec = suite.REGISTRY["bpda_identity_eot"]
  runs = []
  for _ in range(repeats + 1):
    result = suite.run_attack(target, "bpda_identity_eot", spec, np.asarray(x),
                              y, budget, seed=seed, draws=1)
    runs.append((result.elapsed_s, result.f_b_passes))
  seconds, passes = min(runs[1:])
  return {"f_b_passes_per_s": passes / seconds, "images": int(len(x)),
          "eot_samples": int(eot_samples), "seconds": seconds}


def classifier_behind(model, layer):
  """The part of `model` behind its transform `layer` (f_a), as a Keras model.

  Args:
    model: a functional or Sequential defended model whose input goes through
      `layer` first.
    layer: its `AdversarialTransform`.

  Returns:
    A `keras.Model` from g's output to the model's output (sharing weights).
  """
  return keras.Model(layer.output, model.outputs[0])


def input_gradient_fn(f_a):
  """Compiled images -> (logits, ∇ of the summed CE of the predicted class).

  The work of one EOT gradient of the model behind g: a forward pass and an
  input-gradient backward pass, compiled (no weight gradients).
  """
  def run(images):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(images)
      logits = tf.cast(f_a(images, training=False), tf.float32)
      labels = tf.argmax(logits, -1, output_type=tf.int32)
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=labels, logits=logits))
    return tape.gradient(loss, images)

  return tf.function(run, autograph=False, reduce_retracing=True)


def real_evaluation(model, x, y, attack, steps, eot_samples, draws, repeats,
                    attack_repeats, seed):
  """g alone, f_a alone and an EOT attack of the suite on one defended model.

  In one run, on the same machine: (a) g alone, the exact forward of the
  model's transform that BPDA-style attacks run
  (`attacks.estimators.exact_transform`, one fresh draw per image), on the
  attack's whole tiled batch (`len(x) * eot_samples` images); (b) f_a alone,
  its compiled forward and input-gradient pass (`input_gradient_fn`) on the
  same batch; (c) `attacks.suite.run_attack` of `attack` (the path of every
  evaluation: it counts f_b's and the model's passes, times the crafting,
  then scores with `draws` draws). (c) runs `attack_repeats` times (each run
  builds its attack, as an evaluation does); (a) and (b), after a warm-up,
  `repeats` times before each run and after the last, so that a shared
  machine's load falls on all three alike. Each keeps its best time.

  The floor of the attack is the time (a) needs for its f_b passes plus the
  time (b) needs for its model passes (each a forward and a backward pass).

  Args:
    model: a defended Keras model with one `AdversarialTransform` reading its
      input.
    x: float32 images in [0, 1].
    y: int32 labels.
    attack: a name in `attacks.suite.REGISTRY`.
    steps: the attack's steps.
    eot_samples: its EOT samples.
    draws: R of its scoring.
    repeats: timed runs of (a) and (b).
    attack_repeats: timed runs of (c).
    seed: the run's seed.

  Returns:
    A dict of figures (rates, seconds, passes, fractions).

  Raises:
    ValueError: for a model without a transform reading its input.
  """
  layers = estimators.transform_layers(model)
  layer = layers[0]
  if len(layers) != 1 or layer.input is not model.inputs[0]:
    raise ValueError("`model` must have one AdversarialTransform reading its "
                     f"input. Received: model={model.name!r}")
  tiled = tf.constant(np.tile(x, (eot_samples, 1, 1, 1)))
  generator = keras.random.SeedGenerator(seed)
  g = lambda: estimators.exact_transform(
      layer, tiled, transform.uniform_noise(tf.shape(tiled), layer.epsilon,
                                            generator))
  f_a = input_gradient_fn(classifier_behind(model, layer))
  np.asarray(g())  # Warm-up: traces.
  np.asarray(f_a(tiled))
  g_seconds, f_a_seconds = [], []

  def time_parts():
    for _ in range(repeats):
      g_seconds.append(best_seconds(g, 1, warm_up=False))
      f_a_seconds.append(best_seconds(lambda: f_a(tiled), 1, warm_up=False))

  target = suite.Target(model)
  budget = suite.Budget(steps=steps, eot_samples=eot_samples)
  runs, walls = [], []  # Wall: crafting and scoring.
  for _ in range(attack_repeats):  # On a shared machine: g, f_a, attack, ...
    time_parts()
    start = time.perf_counter()
    runs.append(suite.run_attack(target, attack, suite.REGISTRY[attack], x, y,
                                 budget, seed=seed, draws=draws))
    walls.append(time.perf_counter() - start)
  time_parts()
  g_rate = len(tiled) * (layer.steps + 1) / min(g_seconds)
  f_a_rate = len(tiled) / min(f_a_seconds)
  best = min(runs, key=lambda run: run.elapsed_s)
  floor = best.f_b_passes / g_rate + best.model_passes / f_a_rate
  return {
      "attack": attack, "images": int(len(x)), "steps": int(steps),
      "eot_samples": int(eot_samples), "draws": int(draws),
      "transform_steps": int(layer.steps), "batch": int(len(tiled)),
      "g_f_b_passes_per_s": g_rate,
      "f_a_images_per_s": f_a_rate,
      "attack_seconds": [run.elapsed_s for run in runs],
      "run_attack_seconds": walls,
      "attack_f_b_passes": best.f_b_passes,
      "attack_model_passes": best.model_passes,
      "attack_f_b_passes_per_s": best.f_b_passes / best.elapsed_s,
      "fraction_of_g": best.f_b_passes / best.elapsed_s / g_rate,
      "floor_seconds": floor,
      "fraction_of_floor": floor / best.elapsed_s,
  }


def real_rows(real):
  """The table rows of `real_evaluation`'s figures."""
  seconds = ", ".join(f"{s:.1f}" for s in real["attack_seconds"])
  return [
      ("real: g alone", f"{real['g_f_b_passes_per_s']:.0f} f_b passes/s "
       f"(batch {real['batch']}, N {real['transform_steps']})"),
      ("real: f_a alone", f"{real['f_a_images_per_s']:.1f} images/s forward + "
       "input gradient, compiled"),
      ("real: attack", f"{real['attack']} on {real['images']} images, "
       f"{real['steps']} steps, EOT {real['eot_samples']}, R {real['draws']}: "
       f"{real['attack_f_b_passes']} f_b + {real['attack_model_passes']} "
       f"model passes in {seconds} s (with scoring: "
       f"{', '.join(f'{s:.1f}' for s in real['run_attack_seconds'])} s)"),
      ("real: attack rate", f"{real['attack_f_b_passes_per_s']:.0f} f_b "
       f"passes/s = {real['fraction_of_g']:.2f} of g's (target >= 0.6)"),
      ("real: floor", f"{real['floor_seconds']:.1f} s (g + f_a alone): attack "
       f"at {real['fraction_of_floor']:.2f} of it (target >= 0.85)"),
  ]


def training_comparison(f_b, f_a_name, x, y, epsilon, steps, pgd_epsilon,
                        pgd_step_size, pgd_steps, batch_size, seed):
  """Times one epoch of f_a(g(x)) and of PGD adversarial training of f_a.

  Both start from the same initial f_a weights (same builder and seed), use
  SGD (lr 0.1, momentum 0.9, the paper's optimiser) and `model.fit`.

  Args:
    f_b: the transform's model.
    f_a_name: name of the f_a builder in `adv_layer.models`.
    x: float32 images in [0, 1].
    y: int32 labels.
    epsilon: Δ of the transform.
    steps: N of the transform.
    pgd_epsilon: budget of the PGD training.
    pgd_step_size: step of the PGD training.
    pgd_steps: steps of the PGD training.
    batch_size: training batch size.
    seed: seed of f_a's initial weights and of the random starts.

  Returns:
    `{"defended": seconds, "pgd": seconds}` for one epoch over `x`.
  """
  def compile_model(model):
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    return model

  defended = compile_model(keras.Sequential([
      keras.Input(x.shape[1:]),
      adv_layer.AdversarialTransform(f_b, epsilon=epsilon, steps=steps, seed=seed),
      build_f_a(f_a_name, x.shape[1:], seed),
  ]))
  madry = compile_model(training.AdversarialTrainer(
      build_f_a(f_a_name, x.shape[1:], seed), epsilon=pgd_epsilon,
      steps=pgd_steps, step_size=pgd_step_size, seed=seed))
  return {
      "defended": epoch_seconds(defended, x, y, batch_size),
      "pgd": epoch_seconds(madry, x, y, batch_size),
  }


def load_images(data, count, seed):
  """`count` float32 images in [0, 1] and int32 labels.

  Args:
    data: "cifar10" (the first `count` train images, via tfds) or "random".
    count: number of images.
    seed: seed of the random images.

  Returns:
    `(images, labels)` as numpy arrays.
  """
  if data == "random":
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1, (count, 32, 32, 3)).astype(np.float32),
            rng.integers(0, 10, count).astype(np.int32))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  images, labels = tfds.as_numpy(tfds.load(
      "cifar10", split=f"train[:{count}]", batch_size=-1, as_supervised=True,
      download=False))
  return images.astype(np.float32) / 255.0, labels.astype(np.int32)


def format_table(rows):
  """Two aligned columns, one `(name, value)` row per line."""
  width = max(len(name) for name, _ in rows)
  return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def load_test_images(data, count, seed):
  """`count` float32 test images in [0, 1] and int32 labels.

  Args:
    data: "cifar10" (the first `count` test images, `adv_layer.data`) or
      "random" (as `load_images`).
    count: number of images.
    seed: seed of the random images.

  Returns:
    `(images, labels)` as numpy arrays.
  """
  if data == "random":
    return load_images(data, count, seed)
  from adv_layer import data as data_lib  # pylint: disable=g-import-not-at-top
  images, labels = data_lib.load_arrays("cifar10", f"test[:{count}]")
  return images.astype(np.float32), labels.astype(np.int32)


def run_benchmark(f_b, x, epsilon, steps, repeats, matmul_size, jit_compile,
                  bf16_batch_size, seed):
  """Parts (a) and (c): the transform's speed, FLOP fraction and bf16 mode.

  Args:
    f_b: the model of the transform.
    x: the fp32 batch.
    epsilon: Δ.
    steps: N.
    repeats: timed repetitions of each measurement.
    matmul_size: side of the square matmul of the peak rate.
    jit_compile: compile the transforms with XLA.
    bf16_batch_size: images of the bfloat16 measurement (0 skips it).
    seed: seed of the random start (the same in fp32 and bf16).

  Returns:
    A dict of results (rates in images/s and FLOP/s).
  """
  g = transform_fn(f_b, epsilon, steps, seed, jit_compile)
  matmul_before = matmul_flop_rate(matmul_size, repeats)
  images_per_s, batch_s = transform_throughput(g, x, repeats)
  folded_images_per_s, _ = transform_throughput(
      transform_fn(folding.LiveFold(f_b), epsilon, steps, seed, jit_compile),
      x, repeats)
  matmul_rate = max(matmul_before, matmul_flop_rate(matmul_size, repeats))
  flops = transform_flops(f_b, steps)
  eager, compiled = layer_call_throughputs(f_b, x, epsilon, steps, seed,
                                          repeats)
  xla_images_per_s = None
  if not jit_compile:  # The loop under XLA, which the layer opts out of.
    xla_images_per_s, _ = transform_throughput(
        transform_fn(f_b, epsilon, steps, seed, jit_compile=True), x, repeats)
  results = {
      "batch_size": int(x.shape[0]),
      "steps": int(steps),
      "layer_eager_images_per_s": eager,
      "layer_compiled_images_per_s": compiled,
      "eager_over_compiled": eager / compiled,
      "xla_images_per_s": xla_images_per_s,
      "matmul_flops_per_s": matmul_rate,
      "transform_flops_per_image": flops,
      "transform_images_per_s": images_per_s,
      "transform_seconds_per_batch": batch_s,
      "transform_flops_per_s": flops * images_per_s,
      "fraction_of_matmul": flops * images_per_s / matmul_rate,
      "folded_images_per_s": folded_images_per_s,
      "folded_fraction_of_matmul": flops * folded_images_per_s / matmul_rate,
  }
  if bf16_batch_size:
    x_bf16 = x[:bf16_batch_size]
    f_b_bf16 = bfloat16_copy(f_b)
    g_bf16 = transform_fn(f_b_bf16, epsilon, steps, seed, jit_compile)
    results["bf16_batch_size"] = int(x_bf16.shape[0])
    results["bf16_images_per_s"], _ = transform_throughput(g_bf16, x_bf16, repeats)
    results["bf16_pixel_agreement"] = pixel_agreement(g(x_bf16), g_bf16(x_bf16))
    results["bf16_sign_agreement"] = first_step_sign_agreement(
        f_b, f_b_bf16, x_bf16)
  return results


def results_rows(info, settings, results):
  """The rows of the printed table."""
  rows = [(k, v) for k, v in info.items()] + [(k, v) for k, v in settings.items()]
  if "transform_images_per_s" not in results:  # --batch_size=0.
    return rows + (real_rows(results["real"]) if "real" in results else [])
  rows += [
      ("fp32 matmul rate", f"{results['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s"),
      ("transform FLOPs/image",
       f"{results['transform_flops_per_image'] / 1e9:.3f} GFLOP "
       f"({results['steps'] + 1} fwd + {results['steps']} input-grad passes, "
       "input-grad = fwd)"),
      ("transform fp32", f"{results['transform_images_per_s']:.1f} images/s "
       f"({results['transform_seconds_per_batch']:.2f} s/batch)"),
      ("transform FLOP rate", f"{results['transform_flops_per_s'] / 1e9:.1f} GFLOP/s "
       f"= {100 * results['fraction_of_matmul']:.1f}% of matmul (target >= 80%)"),
      ("transform fp32, folded BN",
       f"{results['folded_images_per_s']:.1f} images/s = "
       f"{100 * results['folded_fraction_of_matmul']:.1f}% of matmul "
       f"({results['folded_images_per_s'] / results['transform_images_per_s']:.2f}x "
       "unfolded; opt-in, adv_layer.folding.LiveFold)"),
      ("layer called eagerly", f"{results['layer_eager_images_per_s']:.1f} images/s"),
      ("layer in a tf.function",
       f"{results['layer_compiled_images_per_s']:.1f} images/s (eager / compiled "
       f"= {results['eager_over_compiled']:.2f}, target >= 0.9)"),
  ]
  if results.get("xla_images_per_s"):
    rows.append(("transform fp32, XLA",
                 f"{results['xla_images_per_s']:.1f} images/s (the layer opts "
                 "out of XLA; this is what that gives up)"))
  if "bf16_images_per_s" in results:
    rows += [
        ("transform bf16", f"{results['bf16_images_per_s']:.1f} images/s "
         f"(batch {results['bf16_batch_size']})"),
        ("bf16 vs fp32 g(x)",
         f"{100 * results['bf16_pixel_agreement']:.2f}% of pixels equal; "
         f"first-step gradient signs {100 * results['bf16_sign_agreement']:.1f}% "
         "equal"),
    ]
  if "attack" in results:
    attack = results["attack"]
    transform_rate = (results["transform_images_per_s"] *
                      (results["steps"] + 1))
    rows.append((
        "EOT attack (BPDA-I PGD)",
        f"{attack['f_b_passes_per_s']:.0f} f_b passes/s on "
        f"{attack['images']} images x EOT {attack['eot_samples']}; transform "
        f"{transform_rate:.0f} f_b passes/s: ratio "
        f"{attack['f_b_passes_per_s'] / transform_rate:.2f} (target >= 0.8)"))
  if "real" in results:
    rows += real_rows(results["real"])
  if "epoch_seconds" in results:
    epoch = results["epoch_seconds"]
    rows += [
        ("epoch f_a(g(x))", f"{epoch['defended']:.1f} s"),
        ("epoch PGD adv. training", f"{epoch['pgd']:.1f} s "
         f"(defended / PGD = {epoch['defended'] / epoch['pgd']:.2f})"),
    ]
  return rows


def load_real_model(spec):
  """`--real_model`: zoo:NAME or a .keras path (`preflight.load_model`).

  A bare published name (`cifar10/defended_resnet18`, this flag's older
  form) is read as zoo:NAME.
  """
  if (not spec.startswith("zoo:") and not os.path.exists(spec) and
      spec in zoo.available()):
    spec = "zoo:" + spec
  return preflight.load_model(spec, "real_model")


def main(argv):
  del argv
  keras.utils.set_random_seed(FLAGS.seed)
  count = max(FLAGS.batch_size, FLAGS.train_images, FLAGS.attack_images)
  images, labels = load_images(FLAGS.data, count, FLAGS.seed) if count else (
      None, None)
  if FLAGS.fb:
    f_b = preflight.load_model(FLAGS.fb, "fb")
  else:
    f_b = models.small_vgg(seed=FLAGS.seed)
  results = {}
  if FLAGS.batch_size:
    results = run_benchmark(f_b, tf.constant(images[:FLAGS.batch_size]),
                            FLAGS.epsilon, FLAGS.steps, FLAGS.repeats,
                            FLAGS.matmul_size, FLAGS.jit_compile,
                            FLAGS.bf16_batch_size,
                            FLAGS.seed)
  if FLAGS.real_model:
    real_x, real_y = load_test_images(FLAGS.data, FLAGS.real_images, FLAGS.seed)
    results["real"] = real_evaluation(
        load_real_model(FLAGS.real_model), real_x, real_y, FLAGS.real_attack,
        FLAGS.real_steps, FLAGS.real_eot_samples, FLAGS.real_draws,
        FLAGS.repeats, FLAGS.real_repeats, FLAGS.seed)
  if FLAGS.attack_images and FLAGS.batch_size:
    results["attack"] = attack_rate(
        f_b, FLAGS.f_a, images[:FLAGS.attack_images], FLAGS.epsilon,
        FLAGS.steps, FLAGS.attack_eot_samples, FLAGS.repeats, FLAGS.seed)
  if FLAGS.train_images:
    results["epoch_seconds"] = training_comparison(
        f_b, FLAGS.f_a, images[:FLAGS.train_images], labels[:FLAGS.train_images],
        FLAGS.epsilon, FLAGS.steps, FLAGS.pgd_epsilon, FLAGS.pgd_step_size,
        FLAGS.pgd_steps, FLAGS.train_batch_size, FLAGS.seed)
  settings = {
      "data": FLAGS.data,
      "f_b": FLAGS.fb or "small_vgg, random weights (speed does not depend "
                         "on training; agreement does)",
      "transform": f"epsilon={FLAGS.epsilon} steps={FLAGS.steps} "
                   f"batch={FLAGS.batch_size} jit_compile={FLAGS.jit_compile}",
      "training": f"f_a={FLAGS.f_a} images={FLAGS.train_images} "
                  f"batch={FLAGS.train_batch_size} PGD-{FLAGS.pgd_steps} "
                  f"eps={FLAGS.pgd_epsilon:.4f}",
      "seed": str(FLAGS.seed),
  }
  if FLAGS.real_model:
    settings["real"] = (f"model={FLAGS.real_model} attack={FLAGS.real_attack} "
                        f"images={FLAGS.real_images} steps={FLAGS.real_steps} "
                        f"eot={FLAGS.real_eot_samples} R={FLAGS.real_draws}")
  info = machine_info()
  print(format_table(results_rows(info, settings, results)))
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
      json.dump({"machine": info, "settings": settings, "results": results}, f,
                indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
