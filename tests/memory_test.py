"""Memory of one EOT step on a paper-width f_b.

The exact g(x) inside an estimator must not be recorded by the attack's
gradient tape: recorded, its N = 13 inner forward/backward passes of f_b stay
alive until the gradient is taken (about 30 MiB per image for the paper's
small_vgg), which killed a 200-image, EOT-4 evaluation on a 24 GB machine.

The peak is measured in two ways, and each test asserts on every one that
this machine supports:

- "allocator": TensorFlow's CPU allocator statistics
  (`tf.config.experimental.get_memory_info`), in this process, where the
  allocator keeps them: oneDNN's does (an AVX-512 CPU), TensorFlow's default
  CPU allocator does not (an AVX2 EPYC; any CPU with TF_ENABLE_ONEDNN_OPTS=0),
  and this measurement is left out there.
- "resident": on every Linux machine whatever its CPU, the rise of the peak
  resident size (VmHWM, reset through /proc/self/clear_refs) of a child
  process while it runs the step, after one warm-up run of that step that
  traces and loads everything (one child measures both steps in turn). The
  child's tensors come from malloc (`TF_ONEDNN_USE_SYSTEM_ALLOCATOR`, no BFC
  pool) and glibc's mmap threshold is pinned at 64 KiB, so every tensor
  buffer of 64 KiB or more is mapped when allocated and unmapped when freed:
  the rise is the bytes alive at once, to the page. Measured (bound 33 MiB):
  6-15 MiB for the EOT step with oneDNN on, on AVX2 and off, 243 MiB for the
  recorded forward.

The second test is what keeps the first honest: the recorded forward must
exceed 4x the bound by the same measurement, so a measurement that stopped
seeing the step's tensors (a pool that keeps freed memory, say) fails there
instead of passing the first test for nothing.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from adv_layer import AdversarialTransform
from adv_layer import models
from attacks import common
from attacks import estimators
from attacks import model_fns

BATCH, EOT = 4, 2
STEPS = ("eot", "recorded")  # The steps `Case.step` builds.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLEAR_REFS = "/proc/self/clear_refs"
# The child's environment (see the module docstring): the system allocator,
# and glibc's mmap and trim thresholds fixed (setting them also stops glibc
# from raising the mmap threshold as large blocks are freed).
RESIDENT_ENV = {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1",
                "MALLOC_MMAP_THRESHOLD_": str(64 * 1024),
                "MALLOC_TRIM_THRESHOLD_": str(128 * 1024),
                "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


class Case:
  """The defended model, its batch and the two steps the tests measure."""

  def __init__(self):
    self.layer = AdversarialTransform(models.small_vgg(seed=0), seed=0)
    f_a = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
    self.model = keras.Sequential([keras.Input((32, 32, 3)), self.layer, f_a])
    rng = np.random.default_rng(0)
    self.x = tf.constant(rng.uniform(0, 1, (BATCH, 32, 32, 3)), tf.float32)
    self.y = tf.zeros([BATCH], tf.int32)
    # Bound: a few passes of f_b per image (EXACT_FACTOR), never N = 13.
    self.bound = (BATCH * EOT * model_fns.EXACT_FACTOR *
                  common.activation_bytes(self.layer.f_b))

  def step(self, name):
    """The step `name` ("eot" or "recorded"), built and warmed up."""
    if name == "eot":
      model_fn = model_fns.defended_model_fn(self.model, "bpda_identity",
                                             seed=0)
      model_fn(self.x[:1])  # Builds and warms up outside the measurement.
      return lambda: common.eot_loss_gradient(
          model_fn, self.x, self.y, common.ce_loss, eot_samples=EOT)
    # The old behaviour: g(x) computed on the watched input under a tape that
    # watches f_b's weights, its result cut by tf.stop_gradient.
    recorded = lambda layer, v: v + tf.stop_gradient(layer.transform(v) - v)
    tiled = tf.tile(self.x, [EOT, 1, 1, 1])

    def step():
      with estimators.substitute_transform(self.model, recorded):
        with tf.GradientTape() as tape:
          tape.watch(tiled)
          loss = tf.reduce_sum(common.ce_loss(self.model(tiled),
                                              tf.tile(self.y, [EOT])))
        return tape.gradient(loss, tiled)

    return step


def allocator_peak(fn):
  """Peak allocator bytes above the current level while `fn()` runs.

  Returns None where the CPU allocator keeps no statistics.
  """
  try:
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
  except ValueError:  # "Cannot reset memory stats": none kept.
    return None
  fn()
  return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def _status_bytes(field):
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024  # "VmHWM:  123456 kB".
  raise ValueError(f"/proc/self/status has no {field}")


def resident_child():
  """In the child: prints the resident peak rise of each step as JSON."""
  case = Case()
  peaks = {"bound": case.bound}
  for name in STEPS:
    step = case.step(name)
    step()  # Warm-up: traces, kernels and their buffers stay loaded.
    before = _status_bytes("VmRSS")
    with open(CLEAR_REFS, "w") as clear_refs:
      clear_refs.write("5")  # Resets VmHWM to the current resident size.
    step()
    peaks[name] = _status_bytes("VmHWM") - before
  print(json.dumps(peaks))


_resident = {}


def resident_peaks():
  """`{step: resident peak rise, "bound": bytes}`, from one child process.

  The child (see the module docstring) is started once for both tests.
  """
  if not _resident:
    env = dict(os.environ, PYTHONPATH=ROOT, **RESIDENT_ENV)
    env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)  # A BFC pool keeps freed memory.
    done = subprocess.run(
        [sys.executable, "-c",
         "from tests import memory_test; memory_test.resident_child()"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
      raise RuntimeError(
          f"child exit {done.returncode}:\n{done.stderr[-3000:]}")
    _resident.update(json.loads(done.stdout.strip().splitlines()[-1]))
  return _resident


def resident_measurable():
  """Why the resident peak cannot be measured here, or None when it can."""
  if not sys.platform.startswith("linux"):
    return f"no /proc/self/clear_refs on {sys.platform}"
  if not os.access(CLEAR_REFS, os.W_OK):
    return f"{CLEAR_REFS} is not writable (kernel or sandbox)"
  return None


class EotStepMemoryTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.case = Case()

  def peaks(self, name):
    """`{measurement: peak bytes}` of step `name`, every one available."""
    peaks = {}
    peak = allocator_peak(self.case.step(name))
    if peak is not None:
      peaks["allocator"] = peak
    if resident_measurable() is None:
      child = resident_peaks()
      self.assertEqual(child["bound"], self.case.bound)
      peaks["resident"] = child[name]
    if not peaks:
      self.skipTest("no peak measurement here: the CPU allocator keeps no "
                    f"statistics and {resident_measurable()}")
    return peaks

  def test_one_eot_step_holds_no_inner_pass_of_f_b(self):
    for how, peak in self.peaks("eot").items():
      self.assertLess(peak, self.case.bound, how)

  def test_a_recorded_exact_forward_exceeds_the_bound(self):
    for how, peak in self.peaks("recorded").items():
      self.assertGreater(peak, 4 * self.case.bound, how)


if __name__ == "__main__":
  tf.test.main()
