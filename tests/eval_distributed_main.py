"""Subprocess body of tests/runner_test.py: an evaluation on two logical CPUs.

The device layout must be fixed before TensorFlow initialises its devices, so
this runs in a fresh process: it splits the CPU into two logical devices,
runs the runner test's evaluation under `MirroredStrategy` over both
(`attacks.distributed.run`) and writes what it saw as JSON.

Usage:
  python eval_distributed_main.py FOLDER
      FOLDER holds model.keras and data.npz; units go to FOLDER/mirrored,
      findings to FOLDER/mirrored.json.
"""

import json
import os
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

import adv_layer  # pylint: disable=unused-import  (registers the layer)
from attacks import distributed
from attacks import runner
from attacks import suite
from tests import runner_test


def main(folder):
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  model = keras.saving.load_model(os.path.join(folder, "model.keras"))
  with np.load(os.path.join(folder, "data.npz")) as arrays:
    x, y = arrays["x"], arrays["y"]
  threads = []
  target = suite.Target(model)
  plan = runner.make_plan(target, x, y, runner_test.ATTACKS,
                          runner_test.BUDGET, seed=0, draws=runner_test.DRAWS,
                          unit_size=runner_test.UNIT_SIZE)
  summary = distributed.run(
      plan, strategy, target, x, y, os.path.join(folder, "mirrored"),
      progress=lambda *_: threads.append(threading.current_thread().name))
  replicas = distributed.replicate(suite.Target(model),
                                   distributed.local_devices(strategy))
  with open(os.path.join(folder, "mirrored.json"), "w") as f:
    json.dump({
        "ran": len(summary.ran),
        "threads": sorted(set(threads)),
        "devices": [device for device, _ in replicas],
        "weight_devices": [sorted({w.value.device for w in r.model.weights})
                           for _, r in replicas],
    }, f)


if __name__ == "__main__":
  main(sys.argv[1])
