"""Tests of attacks.runner: units, resume after kill -9, shards, merge, replay.

One evaluation of a tiny defended model (4x4x1 images, dense f_b and f_a,
2 LL-PGD steps; 8 images in 2 blocks of 4; clean + BPDA-I+EOT PGD + Square =
6 units, scored with 2 draws of g) runs once in this process (the
reference), once as 2 shard processes of examples/attack_eval.py, once as a
process killed with SIGKILL after its first unit file appears (then resumed
here), once under MirroredStrategy on two logical CPUs
(tests/eval_distributed_main.py) and once as a 2-worker
MultiWorkerMirroredStrategy cluster on localhost (attack_eval.py
--strategy=multi_worker). All of them start together in `setUpClass`.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

import adv_layer
from attacks import distributed
from attacks import runner
from attacks import suite
from tests import attack_properties
from tests import cluster as cluster_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACKS = ["bpda_identity_eot", "square"]
# The CLI's flags below give this budget (its other fields at their defaults).
BUDGET = suite.Budget(steps=3, eot_samples=2, queries=10, query_draws=1)
DRAWS, UNIT_SIZE, IMAGES = 2, 4, 8
UNITS = 2 * (1 + len(ATTACKS))


def run_eval(target, x, y, attacks, report_dir, budget, seed=0, draws=DRAWS,
             unit_size=UNIT_SIZE, num_shards=1, shard_index=0, **kwargs):
  """Plans an evaluation and runs one shard of it (`runner.run`)."""
  plan = runner.make_plan(target, x, y, attacks, budget, seed, draws,
                          unit_size)
  return runner.run(plan, target, x, y, report_dir,
                    runner.Shard(num_shards, shard_index), **kwargs)


def tiny_defended():
  """f_a(g(x)) with dense f_b and f_a and 2 LL-PGD steps."""
  f_b = attack_properties.tiny_model(seed=1)
  f_a = attack_properties.tiny_model(seed=2, classes=4)
  return keras.Sequential([
      keras.Input((4, 4, 1)),
      adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=2, seed=0), f_a])


def cli(folder, *extra, tf_config=None):
  """Starts examples/attack_eval.py with the evaluation's flags."""
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
             CUDA_VISIBLE_DEVICES="")
  env.pop("TF_CONFIG", None)
  if tf_config is not None:
    env["TF_CONFIG"] = json.dumps(tf_config)
  return subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "examples", "attack_eval.py"),
       f"--model={folder}/model.keras", f"--data_npz={folder}/data.npz",
       "--attacks=" + ",".join(ATTACKS), "--steps=3", "--eot_samples=2",
       "--queries=10", "--query_draws=1",
       f"--draws={DRAWS}", f"--num_examples={IMAGES}",
       f"--unit_size={UNIT_SIZE}", "--seed=0", "--nokeep_going", *extra],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_after_first_unit(process, units_dir, finished):
  """SIGKILLs `process` once a unit file exists; records the files left."""
  while process.poll() is None:
    if os.path.isdir(units_dir) and any(
        name.endswith(".npz") for name in os.listdir(units_dir)):
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.005)
  process.wait()
  finished.extend(n for n in os.listdir(units_dir) if n.endswith(".npz"))


class RunnerTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.folder = tempfile.mkdtemp()
    tiny_defended().save(os.path.join(cls.folder, "model.keras"))
    cls.x, cls.y = attack_properties.tiny_batch(batch=IMAGES, classes=4)
    np.savez(os.path.join(cls.folder, "data.npz"), x=cls.x, y=cls.y)
    dirs = {name: os.path.join(cls.folder, name)
            for name in ("single", "sharded", "killed", "mirrored",
                         "multi_worker")}
    shards = [cli(cls.folder, "--num_shards=2", f"--shard_index={i}",
                  f"--report_dir={dirs['sharded']}") for i in range(2)]
    mirrored = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "eval_distributed_main.py"),
         cls.folder], env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cluster = {"worker": [f"localhost:{cluster_helpers.free_port()}"
                          for _ in range(2)]}
    workers = [cli(cls.folder, "--strategy=multi_worker", "--convergence=false",
                   "--eot_curve=", f"--report_dir={dirs['multi_worker']}",
                   tf_config={"cluster": cluster,
                              "task": {"type": "worker", "index": i}})
               for i in range(2)]
    killed = cli(cls.folder, f"--report_dir={dirs['killed']}")
    cls.killed_files = []
    watcher = threading.Thread(target=kill_after_first_unit, args=(
        killed, os.path.join(dirs["killed"], "units"), cls.killed_files))
    watcher.start()
    cls.model = keras.saving.load_model(os.path.join(cls.folder, "model.keras"))
    cls.target = suite.Target(cls.model)
    cls.dirs = dirs
    cls.first = cls.evaluate(dirs["single"])
    cls.single = runner.merge(dirs["single"])
    watcher.join()
    cls.resumed = cls.evaluate(dirs["killed"])
    cls.shard_logs = [p.communicate()[0].decode() for p in shards]
    cls.shard_codes = [p.returncode for p in shards]
    cls.mirrored_log = mirrored.communicate()[0].decode()
    cls.mirrored_code = mirrored.returncode
    cls.worker_logs = [p.communicate()[0].decode() for p in workers]
    cls.worker_codes = [p.returncode for p in workers]

  @classmethod
  def evaluate(cls, report_dir, model=None, **changes):
    return run_eval(suite.Target(model) if model else cls.target, cls.x,
                    cls.y, ATTACKS, report_dir, BUDGET, seed=0, draws=DRAWS,
                    unit_size=UNIT_SIZE, **changes)

  def assert_same_result(self, a, b):
    """Every figure, per-example result, image, seed and count agrees."""
    ra, rb = a.suite_result, b.suite_result
    self.assertAllEqual(ra.clean.correct, rb.clean.correct)
    self.assertEqual([r.name for r in ra.results], [r.name for r in rb.results])
    for x, y in zip(ra.results, rb.results):
      self.assertAllEqual(x.score.correct, y.score.correct)
      self.assertEqual(x.x_adv.tobytes(), y.x_adv.tobytes())
      self.assertEqual((x.budget, x.f_b_passes, x.model_passes),
                       (y.budget, y.f_b_passes, y.model_passes))
    for key in ("strict_accuracy", "mean_accuracy", "strongest"):
      self.assertEqual(ra.worst[key], rb.worst[key])
    self.assertAllEqual(ra.worst["robust"], rb.worst["robust"])
    self.assertAllEqual(a.unit_seeds, b.unit_seeds)
    for name in a.score_seeds:
      self.assertAllEqual(a.score_seeds[name], b.score_seeds[name])

  def test_first_run_computes_every_unit(self):
    self.assertLen(self.first.ran, UNITS)
    self.assertEqual((self.first.reused, self.first.failed), ([], {}))
    self.assertEqual(self.single.missing, [])
    self.assertLen(self.single.suite_result.results, len(ATTACKS))

  def test_finished_units_are_skipped(self):
    units = os.path.join(self.dirs["single"], "units")
    times = {n: os.stat(os.path.join(units, n)).st_mtime_ns
             for n in os.listdir(units)}
    again = self.evaluate(self.dirs["single"])
    self.assertEqual(again.ran, [])
    self.assertCountEqual(again.reused, self.first.ran)
    self.assertEqual(times, {n: os.stat(os.path.join(units, n)).st_mtime_ns
                             for n in os.listdir(units)})

  def test_killed_run_resumes_to_the_same_result(self):
    # The kill came after the first unit and before the last.
    self.assertBetween(len(self.killed_files), 1, UNITS - 1)
    self.assertCountEqual(self.resumed.reused, self.killed_files)
    self.assertLen(self.resumed.ran, UNITS - len(self.killed_files))
    self.assert_same_result(runner.merge(self.dirs["killed"]), self.single)

  def test_two_shard_processes_merge_to_the_single_process_result(self):
    self.assertEqual(self.shard_codes, [0, 0], self.shard_logs)
    self.assert_same_result(runner.merge(self.dirs["sharded"]), self.single)

  def test_mirrored_strategy_on_two_logical_cpus_equals_one_device(self):
    self.assertEqual(self.mirrored_code, 0, self.mirrored_log)
    with open(os.path.join(self.folder, "mirrored.json")) as f:
      seen = json.load(f)
    self.assertEqual(seen["ran"], UNITS)
    # Both replicas took units, each with its own copy of the model on its
    # own device.
    self.assertLen(seen["threads"], 2)
    self.assertEqual([d.rsplit("/", 1)[-1] for d in seen["devices"]],
                     ["device:CPU:0", "device:CPU:1"])
    self.assertEqual([[d.rsplit("/", 1)[-1] for d in devices]
                      for devices in seen["weight_devices"]],
                     [["device:CPU:0"], ["device:CPU:1"]])
    self.assert_same_result(runner.merge(self.dirs["mirrored"]), self.single)

  def test_two_worker_cluster_equals_one_process(self):
    # The chief's report is an upper bound (a tiny budget): exit status 4.
    self.assertEqual(self.worker_codes, [4, 0], self.worker_logs)
    self.assertIn("the chief writes the report", self.worker_logs[1])
    folder = self.dirs["multi_worker"]
    self.assertTrue(os.path.exists(os.path.join(folder, "report.json")),
                    self.worker_logs[0])
    self.assert_same_result(runner.merge(folder), self.single)
    # The report's epsilon sweep (4 more epsilons) is kept for a rebuild.
    self.assertLen([n for n in os.listdir(os.path.join(folder, "reruns"))
                    if n.startswith("bpda_identity_eot.")], 4)

  def test_default_strategy_runs_the_given_shard_on_one_device(self):
    strategy = tf.distribute.get_strategy()
    self.assertEqual(distributed.shard_of(strategy, 4, 3), (4, 3))
    self.assertEqual(distributed.local_devices(strategy), [None])
    self.assertEqual(distributed.barrier(strategy), 1)

  def test_missing_units_make_the_merge_refuse_or_incomplete(self):
    folder = os.path.join(self.folder, "incomplete")
    shutil.copytree(self.dirs["single"], folder)
    plan = self.single.plan
    os.remove(os.path.join(folder, "units", plan.key(runner.Unit("square", 1))))
    with self.assertRaisesRegex(ValueError, "1 of 6 units are missing"):
      runner.merge(folder)
    merged = runner.merge(folder, allow_incomplete=True)
    result = merged.suite_result
    self.assertEqual([r.name for r in result.results], ["bpda_identity_eot"])
    self.assertEqual(list(result.failed), ["square"])
    self.assertEqual(result.verdict, suite.INCOMPLETE)
    self.assertTrue(runner.robustbench_entry(merged, "tiny", "x")["unreliable"])
    os.remove(os.path.join(folder, "units", plan.key(runner.Unit(runner.CLEAN,
                                                                 0))))
    with self.assertRaisesRegex(ValueError, "units are missing"):
      runner.merge(folder, allow_incomplete=True)

  def test_shards_partition_the_units(self):
    plan = runner.make_plan(self.target, np.concatenate([self.x] * 3),
                            np.concatenate([self.y] * 3), ATTACKS, BUDGET,
                            draws=DRAWS, unit_size=5)  # 24 images: 5 blocks.
    self.assertEqual(plan.blocks, 5)
    self.assertEqual(plan.block_range(4), (20, 24))
    for n in (1, 2, 3, 7):
      parts = [plan.units(n, i) for i in range(n)]
      self.assertCountEqual(sum(parts, []), plan.units())
      self.assertLen(set(sum(parts, [])), 3 * 5)
    self.assertEqual([u.block for u in plan.units(2, 1)], [1] * 3 + [3] * 3)
    with self.assertRaisesRegex(ValueError, "shard_index=2"):
      plan.units(2, 2)

  def test_key_names_attack_block_digests_and_seed(self):
    plan = self.single.plan
    key = plan.key(runner.Unit("square", 1))
    fields = suite.REGISTRY["square"].fields
    self.assertEqual(
        key, f"square.b00001.budget-"
        f"{runner.budget_digest(BUDGET, DRAWS, UNIT_SIZE, fields)}."
        f"model-{plan.model_digest}.seed0.npz")
    self.assertNotEqual(runner.budget_digest(BUDGET, DRAWS, UNIT_SIZE, fields),
                        runner.budget_digest(BUDGET, DRAWS + 1, UNIT_SIZE,
                                             fields))
    # A field enters the key of the attacks that use it only.
    more = dataclasses.replace(BUDGET, queries=BUDGET.queries + 1)
    self.assertNotEqual(runner.budget_digest(more, DRAWS, UNIT_SIZE, fields),
                        runner.budget_digest(BUDGET, DRAWS, UNIT_SIZE, fields))
    for unused in ((), suite.REGISTRY["bpda_identity_eot"].fields):
      self.assertEqual(runner.budget_digest(more, DRAWS, UNIT_SIZE, unused),
                       runner.budget_digest(BUDGET, DRAWS, UNIT_SIZE, unused))
    self.assertEqual(runner.unit_seed(0, 1), runner.unit_seed(0, 1))
    self.assertLen({runner.unit_seed(s, b) for s in (0, 1) for b in (0, 1)}, 4)

  def test_changed_budget_is_refused(self):
    with self.assertRaisesRegex(ValueError, "another evaluation.*budget"):
      run_eval(self.target, self.x, self.y, ATTACKS, self.dirs["single"],
                 suite.Budget(steps=4, eot_samples=2), draws=DRAWS,
                 unit_size=UNIT_SIZE)
    with self.assertRaisesRegex(ValueError, "another evaluation.*draws"):
      run_eval(self.target, self.x, self.y, ATTACKS, self.dirs["single"],
                 BUDGET, draws=DRAWS + 1, unit_size=UNIT_SIZE)

  def test_a_field_no_recorded_attack_uses_may_change(self):
    folder = os.path.join(self.folder, "gradient_first")
    first = run_eval(self.target, self.x, self.y, ATTACKS[:1], folder,
                       BUDGET, draws=DRAWS, unit_size=UNIT_SIZE)
    more = dataclasses.replace(BUDGET, queries=BUDGET.queries + 2)
    grown = run_eval(self.target, self.x, self.y, ATTACKS, folder, more,
                       draws=DRAWS, unit_size=UNIT_SIZE)
    self.assertCountEqual(grown.reused, first.ran)
    self.assertEqual([k.split(".")[0] for k in grown.ran], ["square"] * 2)
    merged = runner.merge(folder)
    self.assertEqual(merged.plan.budget, more)
    self.assertEqual([r.budget.get("queries") for r in
                      merged.suite_result.results], [None, more.queries])
    self.assertAllEqual(merged.suite_result.results[0].score.correct,
                        self.single.suite_result.results[0].score.correct)
    # Square is recorded now: its queries may no longer change.
    with self.assertRaisesRegex(ValueError, "budget.queries: 12 -> 10"):
      run_eval(self.target, self.x, self.y, ATTACKS, folder, BUDGET,
                 draws=DRAWS, unit_size=UNIT_SIZE)

  def test_a_plan_of_the_earlier_key_scheme_is_refused(self):
    record = self.single.plan.to_dict() | {"budget_digest": "0123"}
    with self.assertRaisesRegex(ValueError, "fresh report_dir.*'0123'"):
      runner.Plan.from_dict(record)

  def test_dropped_attack_is_refused(self):
    with self.assertRaisesRegex(ValueError,
                                "another evaluation.*dropped.*square"):
      run_eval(self.target, self.x, self.y, ATTACKS[:1], self.dirs["single"],
                 BUDGET, draws=DRAWS, unit_size=UNIT_SIZE)

  def test_added_attack_keeps_the_finished_units(self):
    folder = os.path.join(self.folder, "extended")
    shutil.copytree(self.dirs["single"], folder)
    extended = run_eval(self.target, self.x, self.y,
                          ATTACKS + ["pgd_restarts_bpda_identity"], folder,
                          BUDGET, draws=DRAWS, unit_size=UNIT_SIZE)
    self.assertCountEqual(extended.reused, self.first.ran)
    self.assertEqual([k.split(".")[0] for k in extended.ran],
                     ["pgd_restarts_bpda_identity"] * 2)
    merged = runner.merge(folder)
    self.assertEqual([r.name for r in merged.suite_result.results],
                     ATTACKS + ["pgd_restarts_bpda_identity"])
    for old, new in zip(self.single.suite_result.results,
                        merged.suite_result.results):
      self.assertAllEqual(old.score.correct, new.score.correct)
      self.assertEqual(old.x_adv.tobytes(), new.x_adv.tobytes())
    # The grown record now refuses the old, shorter list.
    with self.assertRaisesRegex(ValueError, "dropped.*pgd_restarts"):
      self.evaluate(folder)

  def test_stored_rerun_runs_once_per_budget_and_model(self):
    folder = os.path.join(self.folder, "stored")
    calls, real = [], suite.rerun

    def counted(*args, **kwargs):
      calls.append(kwargs)
      return real(*args, **kwargs)

    args = (self.x, self.y, BUDGET, 0, DRAWS)
    with mock.patch.object(suite, "rerun", counted):
      first = runner.stored_rerun(folder)(self.target, "bpda_identity_eot",
                                          *args, steps=2)
      # A new callable on the same folder (a rebuilt report) reads the file.
      again = runner.stored_rerun(folder)(self.target, "bpda_identity_eot",
                                          *args, steps=2)
      runner.stored_rerun(folder)(self.target, "bpda_identity_eot", *args,
                                  steps=4)
      model = self.load_model()
      kernel = next(w for w in model.weights if w.path.endswith("kernel"))
      kernel.assign(kernel + 1.0)
      runner.stored_rerun(folder)(suite.Target(model), "bpda_identity_eot",
                                  *args, steps=2)
    self.assertEqual(calls, [{"steps": 2}, {"steps": 4}, {"steps": 2}])
    self.assertLen(os.listdir(os.path.join(folder, "reruns")), 3)
    self.assertAllEqual(first.score.correct, again.score.correct)
    self.assertEqual(first.score.seed, again.score.seed)
    self.assertEqual(first.x_adv.tobytes(), again.x_adv.tobytes())
    for field in ("name", "kind", "description", "budget", "elapsed_s",
                  "f_b_passes", "model_passes", "seed"):
      self.assertEqual(getattr(first, field), getattr(again, field))
    self.assertEqual(first.budget["steps"], 2)

  def load_model(self):
    return keras.saving.load_model(os.path.join(self.folder, "model.keras"))

  def test_changed_model_is_refused(self):
    model = self.load_model()
    self.assertEqual(runner.model_digest(model),
                     runner.model_digest(self.model))
    kernel = next(w for w in model.weights if w.path.endswith("kernel"))
    kernel.assign(kernel + 1.0)
    with self.assertRaisesRegex(ValueError, "another evaluation.*model_digest"):
      self.evaluate(self.dirs["single"], model=model)

  def test_export_and_replay_reproduce_a_success(self):
    out = os.path.join(self.folder, "export")
    paths = runner.export(self.single, out, "tiny", "tiny images")
    with np.load(paths["adversarial"]) as data:
      success, attacks = data["success"], list(data["attacks"])
      worst_attack = data["worst_attack"]
    a, example = np.argwhere(success > 0)[0]
    self.assertEqual(attacks, ATTACKS)
    self.assertNotEqual(worst_attack[example], "")
    outcome = runner.replay(self.model, paths["adversarial"], int(example),
                            attacks[a], recraft=True)
    self.assertTrue(outcome["reproduced"])
    self.assertTrue(outcome["recrafted"])
    self.assertEqual(outcome["success"], success[a, example])
    other = self.load_model()
    kernel = next(w for w in other.weights if w.path.endswith("kernel"))
    kernel.assign(kernel + 1.0)
    with self.assertRaisesRegex(ValueError, "not the evaluated one"):
      runner.replay(other, paths["adversarial"], int(example), attacks[a])

  def test_robustbench_entry(self):
    entry = runner.robustbench_entry(self.single, "tiny", "tiny images")
    worst = self.single.suite_result.worst["strict_accuracy"]
    self.assertEqual(entry["robust_acc"], f"{100 * worst:.2f}")
    self.assertEqual((entry["threat_model"], entry["eps"]), ("Linf", "8/255"))
    self.assertEqual(entry["attacks"], ATTACKS)
    self.assertEqual(entry["budget"]["steps"], 3)
    # A steps-3 budget with no convergence check: an upper bound, unreliable.
    self.assertEqual(entry["verdict"], suite.UPPER_BOUND)
    self.assertLen(entry["sanity_flags"], 4)
    self.assertTrue(entry["unreliable"])
    # RobustBench's model_info fields, and why its leaderboard excludes it.
    self.assertEqual(entry["autoattack_acc"], entry["robust_acc"])
    self.assertEqual((entry["reported"], entry["venue"]), (None, None))
    self.assertFalse(entry["leaderboard_eligible"])
    self.assertIn("randomized", entry["not_eligible_because"][0])
    info = runner.model_info(self.target.model)
    self.assertEqual(info["number_forward_passes"],
                     1 + sum(t.steps + 1 for t in
                             adv_layer.find_transforms(self.target.model)))
    self.assertEqual(runner.robustbench_entry(
        self.single, "tiny", "tiny images", info=dict(
            info, reported="80.2"))["reported"], "80.2")

  def test_dry_run_counts_the_passes_of_the_run(self):
    probed = []
    plan = runner.make_plan(self.target, self.x, self.y, ATTACKS, BUDGET,
                            draws=DRAWS, unit_size=UNIT_SIZE)
    estimate = runner.estimate_cost(plan, self.target, self.x, self.y,
                                    shards=(1, 2), progress=probed.append)
    rows = {row["attack"]: row for row in estimate.rows}
    self.assertEqual(list(rows), [runner.CLEAN] + ATTACKS)
    self.assertEqual(probed, list(rows))
    pgd, square = self.single.suite_result.results
    self.assertEqual(rows[pgd.name]["passes"], "exact")
    self.assertEqual(rows[pgd.name]["model_passes"], pgd.model_passes)
    self.assertEqual(rows[pgd.name]["f_b_passes"], pgd.f_b_passes)
    # Square is charged every query of its budget.
    self.assertEqual(rows["square"]["model_passes"], BUDGET.queries * IMAGES)
    self.assertLessEqual(square.model_passes, BUDGET.queries * IMAGES)
    self.assertEqual(rows[runner.CLEAN]["model_passes"], DRAWS * IMAGES)
    self.assertGreater(estimate.total["flops"], 0)
    self.assertAllClose(estimate.wall_s[2] * 2, estimate.wall_s[1])


if __name__ == "__main__":
  tf.test.main()
