"""AdversarialTransform under tf.distribute.

Each scenario runs `tests/multi_worker_main.py` in fresh processes: a device
layout (two logical CPUs) must be set before TensorFlow initialises its
devices, and a multi-worker cluster needs one process per worker.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from tests import cluster as cluster_helpers

HERE = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.join(HERE, "multi_worker_main.py")
TIMEOUT_S = 240


def start_worker(mode, out_path, tf_config=None):
  """Starts `multi_worker_main.py mode out_path` in a fresh process."""
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("TF_CONFIG", None)
  if tf_config is not None:
    env["TF_CONFIG"] = json.dumps(tf_config)
  # Output goes to a file, not a pipe: a full pipe would stall a worker.
  with open(out_path + ".log", "w") as log:
    return subprocess.Popen([sys.executable, MAIN, mode, out_path], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def finish(processes):
  """Waits for every process (bounded); kills the rest if one fails."""
  try:
    for process in processes:
      process.wait(timeout=TIMEOUT_S)
      if process.returncode != 0:
        with open(process.args[-1] + ".log") as log:
          output = log.read()
        raise AssertionError(
            f"worker exited with {process.returncode}:\n{output[-4000:]}")
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()


def read_reports(paths):
  """Loads the JSON report of each worker."""
  reports = []
  for path in paths:
    with open(path) as f:
      reports.append(json.load(f))
  return reports


# All scenarios start together in setUpModule (separate processes), so
# the file's wall time is the slowest scenario's, not their sum.
OUT_DIR = tempfile.mkdtemp()
MIRRORED_PATHS = [os.path.join(OUT_DIR, "mirrored.json")]
WORKER_PATHS = [os.path.join(OUT_DIR, f"worker{i}.json") for i in range(2)]
LOOP_DIR = os.path.join(OUT_DIR, "training_loop")
LOOP_PATHS = [os.path.join(LOOP_DIR, f"worker{i}.json") for i in range(2)]
RUNS = {}


def start_cluster(mode, paths):
  """Starts one `mode` worker per path, a cluster on free localhost ports."""
  cluster = {"worker": [f"localhost:{cluster_helpers.free_port()}"
                        for _ in paths]}
  return [
      start_worker(mode, path,
                   {"cluster": cluster, "task": {"type": "worker", "index": i}})
      for i, path in enumerate(paths)
  ]


def setUpModule():
  RUNS["mirrored"] = [start_worker("mirrored", MIRRORED_PATHS[0])]
  RUNS["multi_worker"] = start_cluster("multi_worker", WORKER_PATHS)
  os.makedirs(LOOP_DIR)
  RUNS["training_loop"] = start_cluster("training_loop", LOOP_PATHS)


def tearDownModule():
  for processes in RUNS.values():
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  shutil.rmtree(OUT_DIR, ignore_errors=True)


class MirroredStrategyTest(tf.test.TestCase):

  def test_fit_and_random_starts_on_two_logical_cpus(self):
    finish(RUNS["mirrored"])
    report, = read_reports(MIRRORED_PATHS)
    self.assertEqual(report["replicas"], 2)
    self.assertTrue(np.all(np.isfinite(report["loss"])))
    self.assertTrue(report["f_b_unchanged"])
    self.assertTrue(report["f_a_changed"])
    # Two epochs of two steps: the generator advanced once per step.
    self.assertEqual(report["seed_state"], [5, 4])
    deltas = np.array(report["draws"]["deltas"])  # (call, replica, 2, 4, 4, 1)
    self.assertLessEqual(np.abs(deltas).max(), 0.2 + 1e-6)
    # Each replica draws its own start, and each call a new one.
    self.assertGreater(np.abs(deltas[0, 0] - deltas[0, 1]).min(), 0.0)
    self.assertGreater(np.abs(deltas[0, 0] - deltas[1, 0]).min(), 0.0)
    self.assertEqual(report["draws"]["seed_state"], [7, 2])


class MultiWorkerMirroredStrategyTest(tf.test.TestCase):
  """Two workers on localhost ports; a custom loop (see multi_worker_main)."""

  def test_two_worker_training_on_localhost(self):
    finish(RUNS["multi_worker"])
    reports = read_reports(WORKER_PATHS)
    for index, report in enumerate(reports):
      self.assertEqual(report["task"], {"type": "worker", "index": index})
      self.assertEqual(report["replicas"], 2)
      self.assertTrue(np.all(np.isfinite(report["loss"])))
      self.assertTrue(report["f_b_unchanged"])
      self.assertTrue(report["f_a_changed"])
    # Gradients are all-reduced: both workers end with the same f_a.
    self.assertAllClose(reports[0]["f_a_kernel"], reports[1]["f_a_kernel"],
                        rtol=0, atol=1e-6)
    # The custom step is the step `fit` runs: same losses as the two-replica
    # MirroredStrategy `fit` (same data, weights, seeds and replica ids).
    finish(RUNS["mirrored"])
    mirrored, = read_reports(MIRRORED_PATHS)
    self.assertAllClose(reports[0]["loss"], mirrored["loss"], rtol=0, atol=1e-6)
    self.assertEqual(reports[0]["seed_state"], [5, 4])
    self.assertEqual(reports[1]["seed_state"], [5, 4])
    # One replica per worker; each draws its own random start.
    deltas = [np.array(r["draws"]["deltas"]) for r in reports]  # (call, 1, 2, ...)
    self.assertLessEqual(max(np.abs(d).max() for d in deltas), 0.2 + 1e-6)
    self.assertGreater(np.abs(deltas[0][:, 0] - deltas[1][:, 0]).min(), 0.0)


class TrainingLoopTest(tf.test.TestCase):
  """`training.train` under MultiWorkerMirroredStrategy: its custom loop."""

  def test_two_workers_train_checkpoint_and_resume(self):
    finish(RUNS["training_loop"])
    reports = read_reports(LOOP_PATHS)
    for index, report in enumerate(reports):
      self.assertEqual(report["task"], {"type": "worker", "index": index})
      self.assertEqual(report["straight_epochs"], [0, 1])
      self.assertTrue(np.all(np.isfinite(report["straight_loss"])))
      # The rerun restored epoch 1 and trained epoch 2 only: 2 epochs of 2
      # steps in all, and the very weights of the uninterrupted run.
      self.assertEqual(report["resumed_epochs"], [1])
      self.assertEqual(report["resumed_iterations"], 4)
      self.assertAllEqual(report["resumed_kernel"], report["straight_kernel"])
      self.assertTrue(report["f_b_unchanged"])
      self.assertTrue(report["pgd_f_b_changed"])
    # Gradients are all-reduced: both workers end with the same weights.
    for key in ("straight_kernel", "pgd_f_b_kernel", "straight_loss"):
      self.assertAllEqual(reports[0][key], reports[1][key])
    # The chief alone wrote the .keras files; each worker kept its backups.
    self.assertCountEqual(
        [name for name in os.listdir(LOOP_DIR) if name.endswith(".keras")],
        ["defended.keras", "f_b.keras"])
    for backup in ("resumed_backup", "resumed_backup_worker1"):
      latest = tf.train.latest_checkpoint(os.path.join(LOOP_DIR, backup))
      self.assertEqual(os.path.basename(latest), "ckpt-2")


if __name__ == "__main__":
  tf.test.main()
