"""Tests of examples/gpu_check.py: its reduced mode end to end, on the CPU.

Nothing here needs a GPU: the end-to-end runs hide every GPU
(`CUDA_VISIBLE_DEVICES=""`), so the full mode must refuse and the reduced
mode runs every step on the CPU at toy sizes (about a minute).
"""

import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf

from attacks import scoring
from examples import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_REPORT = os.path.join(ROOT, "tests", "golden", "defended",
                             "report.json")
TIMEOUT_S = 600


def check(*flags):
  """Runs examples/gpu_check.py with `flags`, GPUs hidden; the result."""
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
             CUDA_VISIBLE_DEVICES="")
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "examples", "gpu_check.py"), *flags],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
      check=False)


class ModeSettingsTest(tf.test.TestCase):

  def test_gpu_mode_runs_the_reference_budget_on_500_images(self):
    settings = gpu_check.mode_settings(gpu_check.GPU, "/o")
    attack = settings["attack"]
    self.assertEqual(attack[0], os.path.join("examples", "attack_eval.py"))
    for flag in ("--model=zoo:cifar10/defended_resnet18",
                 "--attacks=apgd_ce_bpda_identity,apgd_dlr_bpda_identity",
                 "--budget=reference", "--num_examples=500",
                 "--sanity_images=100", "--noconvergence", "--eot_curve=",
                 "--report_dir=/o/report"):
      self.assertIn(flag, attack)
    # No override of the preset's steps, EOT samples, restarts or draws.
    for field in ("--steps", "--eot_samples", "--restarts", "--draws"):
      self.assertEmpty([a for a in attack if a.startswith(field)])
    self.assertIn("tests/distribute_test.py", settings["tests"])
    self.assertNotIn("-k", settings["tests"])
    self.assertIn("--batch_size=1024", settings["benchmark"])
    self.assertFalse(settings["hide_gpus"])
    # The dry run is the same command, in its own folder, with --dry_run.
    self.assertEqual(settings["dry_run"][:-3],
                     [a for a in attack if not a.startswith("--report_dir")])
    self.assertEqual(settings["dry_run"][-3:],
                     ["--report_dir=/o/dry_run", "--dry_run",
                      "--probe_images=100"])

  def test_smoke_mode_is_tiny_and_hides_gpus(self):
    settings = gpu_check.mode_settings(gpu_check.CPU_SMOKE, "/o",
                                       data_npz="/d.npz", sanity_images=3)
    for flag in ("--budget=smoke", "--num_examples=4", "--steps=2",
                 "--eot_samples=2", "--draws=2", "--sanity_images=3",
                 "--data_npz=/d.npz"):
      self.assertIn(flag, settings["attack"])
    tests = settings["tests"]
    self.assertEqual(tests[tests.index("-k") + 1],
                     " or ".join(gpu_check.SMOKE_TESTS))
    self.assertNotIn("tests/distribute_test.py", tests)
    self.assertIn("--junitxml=/o/tests.xml", tests)
    self.assertIn("--steps=2", settings["benchmark"])
    self.assertIn("--json_out=/o/benchmark.json", settings["benchmark"])
    self.assertTrue(settings["hide_gpus"])

  def test_bad_mode_and_skip_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: mode='tpu'"):
      gpu_check.mode_settings("tpu", "/o")
    with self.assertRaisesRegex(ValueError, r"Received: skip=\['report'\]"):
      gpu_check.run_check(gpu_check.CPU_SMOKE, self.get_temp_dir(),
                          skip=["report"])


class RefusalTest(tf.test.TestCase):

  def test_full_mode_needs_a_gpu_and_names_the_reduced_mode(self):
    message = gpu_check.refusal(gpu_check.GPU, [])
    self.assertIn("--reduced", message)
    self.assertTrue(message.endswith("Received: mode='gpu'"))
    self.assertIsNone(gpu_check.refusal(gpu_check.GPU, ["GPU:0"]))
    self.assertIsNone(gpu_check.refusal(gpu_check.CPU_SMOKE, []))

  def test_without_pytest_one_line_names_the_install(self):
    real = gpu_check.importlib.util.find_spec
    no_pytest = lambda name, *a: None if name == "pytest" else real(name, *a)
    with mock.patch.object(gpu_check.importlib.util, "find_spec", no_pytest):
      message = gpu_check.missing_pytest([])
      self.assertIn("pip install pytest", message)
      self.assertNotIn("\n", message)
      self.assertIsNone(gpu_check.missing_pytest(["tests"]))
    self.assertIsNone(gpu_check.missing_pytest([]))  # This venv has pytest.

  def test_hidden_gpus_are_none_without_asking_tensorflow(self):
    for hidden in ("", "-1"):
      with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": hidden}), \
          mock.patch.object(tf.config, "list_physical_devices") as listed:
        self.assertEqual(gpu_check.visible_gpus(), [])
      listed.assert_not_called()


class ParsingTest(tf.test.TestCase):

  def test_pytest_counts_from_junit_xml(self):
    path = os.path.join(self.get_temp_dir(), "tests.xml")
    with open(path, "w") as f:
      f.write('<testsuites><testsuite name="pytest">'
              '<testcase classname="a.T" name="test_ok"/>'
              '<testcase classname="a.T" name="test_bad"><failure/></testcase>'
              '<testcase classname="b.U" name="test_err"><error/></testcase>'
              '<testcase classname="b.U" name="test_skip"><skipped/></testcase>'
              '<testcase classname="b.U" name="test_ok2"/>'
              '</testsuite></testsuites>')
    self.assertEqual(gpu_check.pytest_counts(path), {
        "total": 5, "passed": 2, "failed": 1, "errors": 1, "skipped": 1,
        "failed_tests": ["a.T.test_bad", "b.U.test_err"]})
    self.assertEqual(gpu_check.pytest_counts(path + ".missing")["total"], 0)

  def test_benchmark_summary_keeps_the_transform_keys(self):
    path = os.path.join(self.get_temp_dir(), "benchmark.json")
    with open(path, "w") as f:
      json.dump({"machine": {}, "settings": {}, "results": {
          "transform_images_per_s": 12.5, "fraction_of_matmul": 0.25,
          "batch_size": 4, "attack": {"images": 2}}}, f)
    self.assertEqual(gpu_check.benchmark_summary(path), {
        "transform_images_per_s": 12.5, "fraction_of_matmul": 0.25,
        "batch_size": 4})
    self.assertEqual(gpu_check.benchmark_summary(path + ".missing"), {})

  def test_dry_run_seconds_reads_the_one_device_line(self):
    path = os.path.join(self.get_temp_dir(), "dry_run.log")
    with open(path, "w") as f:
      f.write("TOTAL ...\nwall time with 1 shard(s)/device(s): 321.5 s\n"
              "wall time with 4 shard(s)/device(s): 80.4 s\n")
    self.assertEqual(gpu_check.dry_run_seconds(path), 321.5)
    self.assertIsNone(gpu_check.dry_run_seconds(path + ".missing"))

  def test_attack_summary_of_the_golden_report(self):
    summary = gpu_check.attack_summary(GOLDEN_REPORT)
    self.assertEqual(summary["verdict"], "SUSPECT")  # monotone-in-epsilon
    self.assertEqual((summary["images"], summary["draws"]), (8, 2))
    self.assertEqual(summary["worst_case"]["strict_accuracy"], 0.125)
    self.assertLen(summary["worst_case"]["strict_accuracy_ci95"], 2)
    self.assertEqual(summary["strongest"], "apgd_ce_bpda_identity")
    self.assertEqual(summary["clean"]["mean_accuracy"], 0.25)
    self.assertEqual(summary["flags"], {"monotone-in-epsilon": "FLAG"})
    self.assertIn("steps", [w["field"] for w in
                            summary["weaker_than_reference"]])
    self.assertLen(summary["attacks"], 5)
    self.assertEqual(gpu_check.attack_summary(GOLDEN_REPORT + ".missing"), {})


class EndToEndTest(tf.test.TestCase):
  """The program itself, in a fresh process, GPUs hidden."""

  def test_full_mode_refuses_without_a_gpu(self):
    out = os.path.join(self.get_temp_dir(), "full")
    run = check(f"--out={out}")
    self.assertEqual(run.returncode, 2, msg=run.stderr[-3000:])
    self.assertIn("`python examples/gpu_check.py --reduced`", run.stderr)
    self.assertFalse(os.path.exists(os.path.join(out, "summary.json")))

  def test_reduced_mode_runs_every_step_on_the_cpu(self):
    folder = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    data = os.path.join(folder, "data.npz")
    np.savez(data, x=rng.uniform(0, 1, (4, 32, 32, 3)).astype(np.float32),
             y=np.arange(4, dtype=np.int64))
    out = os.path.join(folder, "check")
    run = check("--reduced", f"--out={out}", f"--data_npz={data}")
    self.assertEqual(run.returncode, 0, msg=run.stdout[-3000:] +
                     run.stderr[-3000:])
    with open(os.path.join(out, "summary.json")) as f:
      summary = json.load(f)
    self.assertEqual(set(summary), {
        "mode", "device", "tests", "benchmark", "dry_run_predicted_s",
        "attack", "steps", "ok", "wall_s", "time_budget_s", "within_budget"})
    self.assertEqual(summary["mode"], gpu_check.CPU_SMOKE)
    self.assertTrue(summary["ok"])
    self.assertIsNone(summary["device"]["gpu"])
    self.assertEqual(summary["device"]["tensorflow"], tf.__version__)
    for name in gpu_check.STEPS[1:]:
      # The attack's budget is far below the reference: UPPER BOUND, exit 4.
      self.assertEqual(summary["steps"][name]["returncode"],
                       4 if name == "attack" else 0, msg=name)
      self.assertGreater(summary["wall_s"][name], 0.0)
    # 3 range cases + XLA refusal + mixed precision + save/reload + NaN grads.
    tests = summary["tests"]
    self.assertEqual((tests["total"], tests["passed"], tests["failed"],
                      tests["errors"]), (7, 7, 0, 0))
    bench = summary["benchmark"]
    self.assertEqual((bench["batch_size"], bench["steps"]), (4, 2))
    self.assertGreater(bench["transform_images_per_s"], 0.0)
    # Paper f_b: 63,580,160 FLOPs per pass, (2N + 1) = 5 passes at N = 2.
    self.assertEqual(bench["transform_flops_per_image"], 5 * 63_580_160)
    # The FLOP rate is the measured images/s times the worked FLOPs (no
    # bound on either: timings on shared cores are noisy).
    self.assertAllClose(bench["transform_flops_per_s"],
                        bench["transform_images_per_s"] * 5 * 63_580_160,
                        rtol=1e-12, atol=0)
    self.assertGreater(summary["dry_run_predicted_s"], 0.0)
    attack = summary["attack"]
    self.assertEqual(set(attack["attacks"]), set(gpu_check.ATTACKS))
    self.assertEqual((attack["images"], attack["draws"]), (4, 2))
    self.assertEqual((attack["budget"]["steps"],
                      attack["budget"]["eot_samples"]), (2, 2))
    self.assertEqual(attack["failed"], {})
    # --noconvergence: the 2x reruns are not run, and the report says so.
    self.assertEqual(attack["flags"]["converged-in-steps"], "not run")
    self.assertIn(attack["verdict"], ("UPPER BOUND", "SUSPECT"))
    robust = round(attack["worst_case"]["strict_accuracy"] * 4)
    self.assertAllClose(attack["worst_case"]["strict_accuracy_ci95"],
                        scoring.clopper_pearson(robust, 4), rtol=1e-12, atol=0)
    self.assertEqual([d for d in attack["devices"] if "GPU" in d], [])
    self.assertEqual(
        [w["field"] for w in attack["weaker_than_reference"]],
        ["steps", "eot_samples", "images", "draws"])
    self.assertTrue(os.path.exists(os.path.join(out, "report", "report.md")))
    with open(os.path.join(out, "summary.md")) as f:
      markdown = f.read()
    self.assertIn("# GPU check (cpu_smoke)", markdown)
    self.assertIn("Contract tests: 7 passed, 0 failed", markdown)


if __name__ == "__main__":
  tf.test.main()
