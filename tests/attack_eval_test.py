"""Tests of examples/attack_eval.py: budgets, exit status, and bad input.

The edge cases run the program's `main` on many command lines in
one process (`attack_eval_cases_main.py`): each bad input must stop before
the first unit with one line naming the flag and the value (exit status 3),
and a model whose outputs are not finite must never score a correct
prediction. Two processes on one report folder share its units.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import types

import keras
import numpy as np
import tensorflow as tf

from adv_layer import zoo
from attacks import suite
from examples import attack_eval
from tests import attack_properties
from tests import fault_layers
from tests import golden

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NO_OVERRIDES = dict.fromkeys(attack_eval.OVERRIDES)


class MakeBudgetTest(tf.test.TestCase):

  def test_default_preset_is_the_reference(self):
    budget, draws, images = attack_eval.make_budget("reference", 8 / 255,
                                                    NO_OVERRIDES)
    self.assertEqual(budget, suite.Budget())
    self.assertEqual((draws, images), (20, 10_000))

  def test_makefile_demo_flags_override_the_preset(self):
    # SMOKE_ATTACK_FLAGS of the Makefile's `make demo`.
    overrides = dict(NO_OVERRIDES, num_examples=20, steps=5, eot_samples=2,
                     queries=100, draws=2)
    budget, draws, images = attack_eval.make_budget("reference", 0.1,
                                                    overrides)
    self.assertEqual((budget.epsilon, budget.steps, budget.eot_samples,
                      budget.queries, budget.restarts, budget.query_draws),
                     (0.1, 5, 2, 100, 1, 8))
    self.assertEqual((draws, images), (2, 20))

  def test_smoke_preset(self):
    budget, draws, images = attack_eval.make_budget(
        "smoke", 8 / 255, dict(NO_OVERRIDES, steps=7))
    self.assertEqual((budget.steps, budget.eot_samples, budget.queries),
                     (7, 2, 100))
    self.assertEqual((draws, images), (2, 20))

  def test_bad_values_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: budget='huge'"):
      attack_eval.make_budget("huge", 8 / 255, NO_OVERRIDES)
    with self.assertRaisesRegex(ValueError, "Received: draws=0"):
      attack_eval.make_budget("smoke", 8 / 255, dict(NO_OVERRIDES, draws=0))
    with self.assertRaisesRegex(ValueError, "Received: query_draws=0"):
      attack_eval.make_budget("smoke", 8 / 255,
                              dict(NO_OVERRIDES, query_draws=0))


class ExitStatusTest(tf.test.TestCase):

  def test_a_failed_attack_exits_non_zero_unless_keep_going(self):
    failed = types.SimpleNamespace(failed={"spsa": "ValueError: x"})
    self.assertEqual(attack_eval.exit_status(failed, keep_going=False), 1)
    self.assertEqual(attack_eval.exit_status(failed, keep_going=True), 0)
    complete = types.SimpleNamespace(failed={})
    self.assertEqual(attack_eval.exit_status(complete, keep_going=False), 0)


class LoadModelTest(tf.test.TestCase):

  def test_a_zoo_name_loads_the_published_model(self):
    name = "cifar10/small_vgg_fgsm_rs"
    model = attack_eval.load_model("zoo:" + name)
    self.assertAllEqual(model.weights[0], zoo.load(name).weights[0])

  def test_a_path_loads_the_file(self):
    path = os.path.join(tempfile.mkdtemp(), "m.keras")
    saved = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    saved.save(path)
    self.assertAllEqual(attack_eval.load_model(path).weights[0],
                        saved.weights[0])

  def test_bad_specs_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: model=None"):
      attack_eval.load_model(None)
    with self.assertRaisesRegex(ValueError, "Received: name='cifar10/nope'"):
      attack_eval.load_model("zoo:cifar10/nope")
    with self.assertRaisesRegex(FileNotFoundError,
                                "Received: model='missing.keras'"):
      attack_eval.load_model("missing.keras")
    with self.assertRaisesRegex(FileNotFoundError,
                                "Received: surrogate='s.keras'"):
      attack_eval.load_model("s.keras", "surrogate")


def run_cases(cases):
  """`(status, stdout, stderr)` of `main` on each argument list."""
  folder = tempfile.mkdtemp()
  paths = [os.path.join(folder, name) for name in ("cases.json",
                                                   "results.json")]
  with open(paths[0], "w") as f:
    json.dump(cases, f)
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
             CUDA_VISIBLE_DEVICES="")
  subprocess.run([sys.executable, os.path.join(ROOT, "tests",
                                               "attack_eval_cases_main.py"),
                  *paths], cwd=ROOT, env=env, check=True,
                 capture_output=True)
  with open(paths[1]) as f:
    return json.load(f)


def save(model, folder, name):
  path = os.path.join(folder, f"{name}.keras")
  model.save(path)
  return path


class BadInputTest(tf.test.TestCase):
  """Every refusal, one line, before any unit; NaN outputs never count."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    folder = cls.folder = tempfile.mkdtemp()
    x, _ = attack_properties.tiny_batch(seed=4, batch=8)
    # Half the images above the threshold: their logits become NaN.
    threshold = float(np.median(x.mean(axis=(1, 2, 3))))
    labels = np.array([0, 1, 2, 3] * 2, np.int32)
    np.savez(os.path.join(folder, "data.npz"), x=x, y=labels)
    unlabelled = labels.copy()
    unlabelled[::4] = -1  # The usual "unlabelled" value.
    np.savez(os.path.join(folder, "negative.npz"), x=x, y=unlabelled)
    np.savez(os.path.join(folder, "fractional.npz"), x=x,
             y=labels.astype(np.float32) - 1e-4)
    np.savez(os.path.join(folder, "keys.npz"), images=x, labels=labels)
    nan_pixels = x.copy()
    nan_pixels[1, 0, 0, 0] = np.nan
    np.savez(os.path.join(folder, "nan_pixels.npz"), x=nan_pixels, y=labels)
    classifier = lambda classes=4, shape=(4, 4, 1), **kwargs: keras.Sequential(
        [keras.Input(shape), keras.layers.Flatten(),
         keras.layers.Dense(classes, **kwargs)])
    paths = {
        "nan_all": save(keras.Sequential(
            [keras.Input((4, 4, 1)), fault_layers.NanWhere(0.0)] +
            classifier().layers), folder, "nan_all"),
        "nan_some": save(keras.Sequential(
            [keras.Input((4, 4, 1)), fault_layers.NanWhere(threshold)] +
            classifier().layers), folder, "nan_some"),
        "softmax": save(classifier(activation="softmax"), folder, "softmax"),
        "wide": save(classifier(100, (32, 32, 3)), folder, "wide"),
        "mnist": save(classifier(10, (28, 28, 1)), folder, "mnist"),
        "plain": save(classifier(), folder, "plain"),
    }
    with open(paths["plain"], "rb") as f:
      half = f.read()
    paths["truncated"] = os.path.join(folder, "truncated.keras")
    with open(paths["truncated"], "wb") as f:
      f.write(half[:len(half) // 2])
    open(os.path.join(folder, "a_file"), "w").close()
    small = ["--budget=smoke", "--steps=2", "--eot_samples=2", "--draws=2",
             "--queries=10", "--num_examples=8", "--unit_size=8",
             "--eot_curve=", "--noconvergence", "--sanity_images=4",
             "--grid_images=0"]
    npz = f"--data_npz={folder}/data.npz"
    cifar = ["--num_examples=4", "--dataset=cifar10"]
    cls.cases = {  # In this order: no_import runs before the import.
        "no_import": [f"--model={paths['nan_all']}", npz,
                      f"--report_dir={folder}/r1", *small],
        "nan_all": [f"--model={paths['nan_all']}", npz,
                    "--import=tests.fault_layers", "--attacks=apgd_ce,square",
                    f"--report_dir={folder}/nan_all", *small],
        "nan_some": [f"--model={paths['nan_some']}", npz,
                     "--import=tests.fault_layers", "--attacks=apgd_ce",
                     f"--report_dir={folder}/nan_some", *small],
        "bad_import": [f"--model={paths['plain']}", npz,
                       "--import=no_such_module", f"--report_dir={folder}/r2",
                       *small],
        "epsilon": [f"--model={paths['plain']}", npz, "--epsilon=8",
                    f"--report_dir={folder}/r3", *small],
        "softmax": [f"--model={paths['softmax']}", npz,
                    f"--report_dir={folder}/r4", *small],
        "wide": [f"--model={paths['wide']}", f"--report_dir={folder}/r5",
                 *small, *cifar],
        "mnist": [f"--model={paths['mnist']}", f"--report_dir={folder}/r6",
                  *small, *cifar],
        "truncated": [f"--model={paths['truncated']}", npz,
                      f"--report_dir={folder}/r7", *small],
        "report_dir": [f"--model={folder}/missing.keras", npz,
                       f"--report_dir={folder}/a_file", *small],
        "num_examples": [f"--model={paths['wide']}", "--num_examples=20000",
                         f"--report_dir={folder}/r8", "--budget=smoke"],
        "attack_name": [f"--model={folder}/missing.keras", npz,
                        "--attacks=apgd_nope", f"--report_dir={folder}/r9",
                        *small],
        "family_name": [f"--model={paths['plain']}", npz,
                        "--attacks=apgd_ce", f"--report_dir={folder}/r10",
                        *small],
        "verbose": [f"--model={paths['plain']}", npz, "--epsilon=8",
                    "--verbose_errors", f"--report_dir={folder}/r11", *small],
        "negative_labels": [f"--model={paths['plain']}",
                            f"--data_npz={folder}/negative.npz",
                            "--attacks=square", f"--report_dir={folder}/r12",
                            *small],
        "fractional_labels": [f"--model={paths['plain']}",
                              f"--data_npz={folder}/fractional.npz",
                              f"--report_dir={folder}/r13", *small],
        "npz_keys": [f"--model={paths['plain']}",
                     f"--data_npz={folder}/keys.npz",
                     f"--report_dir={folder}/r14", *small],
        "nan_pixels": [f"--model={paths['plain']}",
                       f"--data_npz={folder}/nan_pixels.npz",
                       f"--report_dir={folder}/r15", *small],
        "no_attacks": [f"--model={paths['plain']}", npz, "--attacks=",
                       f"--report_dir={folder}/r16", *small],
        "npz_too_short": [f"--model={paths['plain']}", npz,
                          f"--report_dir={folder}/r17", *small,
                          "--num_examples=100"],
        "epsilon_zero": [f"--model={paths['plain']}", npz, "--epsilon=0",
                         "--attacks=apgd_ce", f"--report_dir={folder}/r18",
                         *small],
    }
    cls.results = dict(zip(cls.cases, run_cases(list(cls.cases.values()))))

  def assert_refused(self, case, *phrases):
    status, _, err = self.results[case]
    self.assertEqual(status, attack_eval.BAD_INPUT_STATUS, err)
    line = err.strip()
    self.assertNotIn("Traceback", line)
    self.assertEqual(len(line.splitlines()), 1, line)
    for phrase in phrases:
      self.assertIn(phrase, line)
    # Refused before the first unit.
    report_dir = next(a.split("=", 1)[1] for a in self.cases[case]
                      if a.startswith("--report_dir="))
    self.assertFalse(os.path.exists(os.path.join(report_dir, "units")))

  def report(self, case):
    with open(os.path.join(self.folder, case, "report.json")) as f:
      return json.load(f)

  def test_all_nan_outputs_count_nothing_and_are_not_complete(self):
    status, _, err = self.results["nan_all"]
    report = self.report("nan_all")
    self.assertEqual(report["clean"]["strict_accuracy"], 0.0, err)
    self.assertEqual(report["clean"]["nonfinite_outputs"], 2 * 8)
    for row in report["attacks"]:
      self.assertEqual(row["mean_accuracy"], 0.0)
    self.assertEqual(report["worst_case"]["strict_accuracy"], 0.0)
    self.assertNotEqual(report["verdict"], suite.COMPLETE)
    flags = {f["name"]: f["status"] for f in report["flags"]}
    self.assertEqual(flags["nonfinite-outputs"], "FLAG")
    self.assertNotEqual(status, 0)

  def test_nan_on_some_images_counts_only_the_finite_ones(self):
    report = self.report("nan_some")
    with np.load(os.path.join(self.folder, "data.npz")) as data:
      x, y = data["x"], data["y"]
    nan = x.mean(axis=(1, 2, 3)) > float(np.median(x.mean(axis=(1, 2, 3))))
    robust = np.array(report["clean"]["robust"], bool)
    self.assertFalse(np.any(robust[nan]))
    # The finite images score as the model predicts them.
    model = keras.saving.load_model(os.path.join(self.folder, "nan_some.keras"))
    correct = np.argmax(model(x, training=False), axis=-1) == y
    self.assertAllEqual(robust[~nan], correct[~nan])
    self.assertEqual(report["clean"]["nonfinite_outputs"], 2 * int(nan.sum()))
    self.assertEqual(report["verdict"], suite.SUSPECT)

  def test_an_unregistered_class_names_the_import_flag(self):
    self.assert_refused("no_import", "--import", "NanWhere")

  def test_a_module_that_does_not_import_is_named(self):
    self.assert_refused("bad_import", "import", "no_such_module")

  def test_epsilon_in_pixel_units_is_refused(self):
    self.assert_refused("epsilon", "8/255", "--allow_large_epsilon")

  def test_probabilities_are_refused(self):
    self.assert_refused("softmax", "logits")

  def test_output_width_must_match_the_classes(self):
    self.assert_refused("wide", "100", "10")

  def test_input_shape_is_checked_once_naming_both_shapes(self):
    self.assert_refused("mnist", "28, 28, 1", "32, 32, 3")

  def test_a_truncated_file_is_not_a_readable_archive(self):
    self.assert_refused("truncated", "not a readable Keras archive")

  def test_report_dir_is_checked_first(self):
    self.assert_refused("report_dir", "report_dir", "a_file")

  def test_num_examples_beyond_the_split_names_the_flag(self):
    self.assert_refused("num_examples", "num_examples", "20000", "10000")

  def test_an_unknown_attack_is_refused_before_loading(self):
    self.assert_refused("attack_name", "apgd_nope", "apgd_ce")

  def test_the_names_a_report_prints_are_accepted(self):
    status, out, err = self.results["family_name"]
    # A smoke budget is an upper bound: its own state and exit status, in
    # the first and the last line of the verdict printout.
    self.assertEqual(status, 4, err)
    lines = out.strip().splitlines()
    verdict_line = next(i for i, line in enumerate(lines)
                        if line.startswith("Verdict: "))
    self.assertEqual(lines[verdict_line], f"Verdict: {suite.UPPER_BOUND}")
    self.assertTrue(lines[-1].startswith(f"{suite.UPPER_BOUND}: worst-case "
                                         "robust accuracy"), lines[-1])
    self.assertNotIn("Verdict: COMPLETE", out)
    with open(os.path.join(self.folder, "r10", "report.json")) as f:
      self.assertEqual([r["name"] for r in json.load(f)["attacks"]],
                       ["apgd_ce"])

  def test_verbose_errors_keep_the_traceback(self):
    status, _, err = self.results["verbose"]
    self.assertEqual(status, attack_eval.BAD_INPUT_STATUS)
    self.assertIn("Traceback", err)
    self.assertIn("8/255", err.strip().splitlines()[-1])

  def test_negative_labels_are_refused(self):
    self.assert_refused("negative_labels", "y", ">= 0", "2 are negative",
                        "min(y)=-1")

  def test_fractional_labels_are_refused(self):
    self.assert_refused("fractional_labels", "integer labels",
                        "not whole numbers")

  def test_an_npz_without_x_and_y_names_its_arrays(self):
    self.assert_refused("npz_keys", "--data_npz", "'x'", "'y'",
                        "['images', 'labels']")

  def test_non_finite_pixels_are_refused(self):
    self.assert_refused("nan_pixels", "finite", "1 are NaN")

  def test_an_empty_attack_list_is_refused(self):
    self.assert_refused("no_attacks", "attacks", "at least one attack",
                        "Received: attacks=[]")

  def test_num_examples_beyond_the_npz_is_refused(self):
    self.assert_refused("npz_too_short", "--num_examples=100", "(8)")

  def test_epsilon_zero_is_not_complete(self):
    status, _, err = self.results["epsilon_zero"]
    self.assertEqual(status, 4, err)
    with open(os.path.join(self.folder, "r18", "report.json")) as f:
      report = json.load(f)
    self.assertEqual(report["verdict"], suite.UPPER_BOUND)
    self.assertTrue(any(reason.startswith("epsilon 0")
                        for reason in report["upper_bound"]))
    self.assertEqual(report["meta"]["split"], "data.npz[:8]")


class SharedFolderTest(tf.test.TestCase):

  def test_two_processes_on_one_folder_share_the_units(self):
    folder = tempfile.mkdtemp()
    inputs = os.path.relpath(os.path.join(golden.GOLDEN, "inputs"), ROOT)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, os.path.join(ROOT, "examples", "attack_eval.py"),
               f"--model={inputs}/plain.keras",
               f"--data_npz={inputs}/data.npz",
               "--attacks=apgd_ce,pgd_restarts,square", "--steps=20",
               "--queries=50", "--draws=2", "--num_examples=8",
               "--unit_size=2", "--noconvergence", "--eot_curve=",
               "--sanity_images=2", f"--report_dir={folder}"]
    processes = [subprocess.Popen(command, cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
                 for _ in range(2)]
    logs = [p.communicate()[0].decode() for p in processes]
    ran = []
    for process, log in zip(processes, logs):
      self.assertIn(process.returncode, (0, 2, 4), log)  # A report each way.
      line = next(l for l in log.splitlines() if l.startswith("Units: ran"))
      ran.append(int(line.split()[2].rstrip(",")))
    # 4 blocks x (clean + 3 attacks): each computed once between the two.
    self.assertEqual(sum(ran), 16, logs)
    shutil.rmtree(folder)


class UserModulesWinTest(tf.test.TestCase):
  """`--import=defenses` imports the user's `defenses`, not examples/'s."""

  def test_run_as_a_script_the_users_module_is_imported(self):
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "defenses.py"), "w", encoding="utf-8") as f:
      f.write("print('USER DEFENSES ' + __file__)\n")
    # As a user runs it: the module on PYTHONPATH, not in the working
    # directory; the missing model stops the run right after the import.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([folder, ROOT]),
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    process = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "attack_eval.py"),
         "--import=defenses", f"--model={folder}/missing.keras",
         f"--report_dir={folder}/report"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        check=False)
    output = process.stdout + process.stderr
    self.assertIn("USER DEFENSES " + os.path.join(folder, "defenses.py"),
                  output)
    self.assertEqual(process.returncode, 3, output)  # The missing model.
    self.assertIn("missing.keras", output)
    shutil.rmtree(folder)


if __name__ == "__main__":
  tf.test.main()
