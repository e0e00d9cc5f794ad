"""Tests of the leaderboard: catalog, protocol, table, and examples/leaderboard.py.

The table is tested on the finished golden report (tests/golden/defended)
and on a tiny evaluation run here through a user's own package: a temporary
package with a registered layer and a builder, one catalog entry, the entry
command at the smoke budget with --import, and the regenerated table.
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import tensorflow as tf

from attacks.defenses import catalog
from attacks.defenses import protocol
from attacks.defenses import table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden", "defended")
PROGRAM = os.path.join(ROOT, "examples", "leaderboard.py")
ROW_FIELDS = {
    "name", "title", "paper", "link", "venue", "kind", "dataset", "data",
    "threat_model", "eps", "architecture", "additional_data",
    "number_forward_passes", "randomized", "randomized_as_published",
    "detected", "clean_acc", "clean_acc_ci95", "robust_acc",
    "robust_acc_ci95", "robust_acc_mean", "robust_acc_mean_ci95",
    "num_examples", "seed", "budget", "budget_shortfall", "attacks",
    "attack_acc", "verdict", "masking_signs", "strongest_attack",
    "claimed_robust_acc", "published_adaptive_acc", "reported", "seconds",
    "last_run_seconds", "command", "leaderboard_command", "report_dir",
    "train_command", "footnote",
}


def golden_copy(verdict=None):
  """A temporary copy of the golden report folder (report.json only)."""
  folder = tempfile.mkdtemp()
  with open(os.path.join(GOLDEN, "report.json")) as f:
    report = json.load(f)
  if verdict is not None:
    report["verdict"] = verdict
  with open(os.path.join(folder, "report.json"), "w") as f:
    json.dump(report, f)
  return folder


def program_env(*paths):
  return dict(os.environ, PYTHONPATH=os.pathsep.join((ROOT,) + paths),
              TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


class CatalogTest(tf.test.TestCase):

  def test_every_entry_is_complete_with_sources(self):
    names = [entry.name for entry in catalog.ENTRIES]
    self.assertLen(set(names), len(names))
    self.assertGreaterEqual(len(names), 9)
    kinds = {entry.kind for entry in catalog.ENTRIES}
    for kind in ("randomness inside the network",
                 "non-differentiable preprocessing",
                 "randomized smoothing (trained on noise)"):
      self.assertIn(kind, kinds)
    for entry in catalog.ENTRIES:
      entry.validate()
      for figure in (entry.claimed, entry.published_adaptive):
        self.assertTrue(figure.source)
        if figure.value is not None:  # A figure names where and how.
          self.assertTrue(figure.dataset and figure.threat_model,
                          msg=entry.name)
      if entry.builder:
        self.assertTrue(callable(entry.builder_function()))
      if entry.classifier.endswith(".keras"):
        self.assertIsNotNone(entry.train_command, msg=entry.name)
      else:
        self.assertIn(entry.classifier, ("cifar10/resnet18_undefended",
                                         "cifar10/resnet18_madry",
                                         "cifar10/defended_resnet18"))
      self.assertEqual(catalog.from_dict(entry.as_dict()), entry)
      if entry.command is None:  # No surrogate trained at run time.
        self.assertTrue(entry.surrogate, msg=entry.name)
    # The published attack on SAP (Athalye et al. Table 1) is at 0.031.
    sap = catalog.by_name("sap")
    self.assertEqual((sap.published_adaptive.value,
                      sap.published_adaptive.threat_model), (0.0, "Linf 0.031"))

  def test_bad_entries_raise(self):
    good = catalog.by_name("sap").as_dict()
    with self.assertRaisesRegex(ValueError, "Received: name='Bad name'"):
      catalog.from_dict(dict(good, name="Bad name"))
    with self.assertRaisesRegex(ValueError, "Received: kind='magic'"):
      catalog.from_dict(dict(good, kind="magic"))
    with self.assertRaisesRegex(ValueError, "exactly one of model and"):
      catalog.from_dict(dict(good, model="zoo:x"))
    with self.assertRaisesRegex(ValueError, r"Received: keys=\['colour'\]"):
      catalog.from_dict(dict(good, colour="red"))
    with self.assertRaisesRegex(ValueError, "Received: claimed.value=140"):
      catalog.from_dict(dict(good, claimed={"value": 140, "source": "x"}))
    with self.assertRaisesRegex(ValueError, "Received: entry='nope'"):
      catalog.by_name("nope")


class ProtocolTest(tf.test.TestCase):

  def test_protocol_and_built_command(self):
    p = protocol.PROTOCOL
    self.assertGreaterEqual(p.num_examples, 100)
    self.assertEqual((p.epsilon, p.seed, p.steps, p.eot_samples, p.draws),
                     ("8/255", 0, 100, 20, 20))
    argv = protocol.attack_eval_command(
        catalog.by_name("feature_squeeze"), "runs/lb", python="python",
        root="")
    self.assertEqual(argv[:3], ["python", "examples/attack_eval.py",
                                "--model=runs/lb/models/feature_squeeze.keras"])
    for flag in ("--num_examples=100", "--epsilon=8/255", "--seed=0",
                 "--steps=100", "--eot_samples=20", "--draws=20",
                 "--queries=5000", "--query_draws=8",
                 "--attacks=autoattack_rand,adaptive", "--sanity_images=100",
                 "--convergence", "--import=attacks.defenses",
                 "--surrogate=zoo:cifar10/resnet18_undefended",
                 "--report_dir=runs/lb/feature_squeeze"):
      self.assertIn(flag, argv)
    # A randomized entry's stated CPU budget replaces those fields only.
    sap = protocol.attack_eval_command(catalog.by_name("sap"), "runs/lb",
                                       python="python", root="")
    for flag in ("--num_examples=100", "--epsilon=8/255", "--seed=0",
                 "--steps=20", "--eot_samples=4", "--draws=20",
                 "--queries=1000", "--query_draws=2", "--sanity_images=50",
                 "--attacks=autoattack_rand,adaptive", "--convergence",
                 "--report_dir=runs/lb/sap"):
      self.assertIn(flag, sap)
    self.assertNotIn("--steps=100", sap)

  def test_literal_commands_are_the_background_runs(self):
    line = protocol.shell_line(protocol.attack_eval_command(
        catalog.by_name("madry"), "/work/runs/lb", python="python", root=""))
    self.assertEqual(
        line, "python examples/attack_eval.py "
        "--model=zoo:cifar10/resnet18_madry --attacks=pgd_restarts_bpda_"
        "identity,apgd_ce_bpda_identity,apgd_dlr_t_bpda_identity,"
        "straight_through_eot --num_examples=100 --sanity_images=100 "
        "--seed=0 --eot_curve= --report_dir=/work/runs/lb/madry")

  def test_overrides_replace_and_owned_flags_are_refused(self):
    entry = catalog.by_name("sap")
    small = catalog.Entry(**dict(entry.__dict__, overrides={"steps": 20}))
    self.assertIn("--steps=20", protocol.attack_eval_command(small, "r"))
    owned = catalog.Entry(**dict(entry.__dict__,
                                 overrides={"report_dir": "x"}))
    with self.assertRaisesRegex(ValueError,
                                r"Received: overrides=\['report_dir'\]"):
      protocol.attack_eval_command(owned, "r")


class TableTest(tf.test.TestCase):

  def test_row_of_the_golden_report_has_exact_fields(self):
    folder = golden_copy()
    row = table.row(catalog.by_name("random_resize_pad"),
                    table.load_finished_report(folder), "CMD", "RERUN",
                    folder)
    self.assertEqual(set(row), ROW_FIELDS)
    self.assertEqual((row["clean_acc"], row["robust_acc"],
                      row["robust_acc_mean"]), (25.0, 12.5, 18.75))
    self.assertAllClose(row["robust_acc_ci95"], [0.32, 52.65])
    self.assertEqual(row["strongest_attack"], "apgd_ce_bpda_identity")
    self.assertEqual(row["verdict"], "SUSPECT")
    self.assertEqual(row["num_examples"], 8)
    self.assertEqual(row["eps"], "8/255")
    self.assertEqual(row["budget"], {"steps": 3, "eot_samples": 2,
                                     "draws": 2, "queries": 10,
                                     "restarts": 1, "query_draws": 2})
    self.assertEqual(row["budget_shortfall"][0],
                     {"field": "steps", "used": 3, "reference": 100})
    self.assertTrue(row["randomized"])
    self.assertEqual(row["detected"]["randomized_why"], "detected: two "
                     "inference passes on the same images disagree")
    self.assertIn("EOT (2 draws per gradient)",
                  row["detected"]["applied"][0])
    self.assertEqual(row["published_adaptive_acc"]["value"], 0.0)
    self.assertEqual(row["attack_acc"]["square"], 25.0)
    self.assertEqual((row["command"], row["leaderboard_command"]),
                     ("CMD", "RERUN"))

  def test_applied_names_each_layer_and_its_backward(self):
    checks = {"randomized": False, "bpda_layers": {
        "jpeg": "input gradient None, detected",
        "codes": "input gradient None, detected; backward: SoftThermometer "
                 "(the layer's own)"}}
    self.assertEqual(table.applied(checks, {}), [
        "identity BPDA on jpeg",
        "BPDA on codes, backward: SoftThermometer (the layer's own)"])
    self.assertEqual(table.applied({"randomized": False}, {}),
                     ["plain gradients (deterministic, differentiable)"])

  def test_unfinished_reports_are_refused(self):
    with self.assertRaisesRegex(table.UnfinishedReport, "holds no report"):
      table.load_finished_report(tempfile.mkdtemp())
    with self.assertRaisesRegex(table.UnfinishedReport,
                                "Received: verdict='INCOMPLETE'"):
      table.load_finished_report(golden_copy("INCOMPLETE"))
    # Other verdict states pass through as strings.
    report = table.load_finished_report(golden_copy("UPPER BOUND"))
    self.assertEqual(report["verdict"], "UPPER BOUND")

  def test_markdown_ranks_and_plot(self):
    folder = golden_copy()
    report = table.load_finished_report(folder)
    rows = []
    for name, robust in (("sap", 0.0), ("bit_depth_jpeg", 0.5)):
      changed = copy.deepcopy(report)
      changed["worst_case"]["strict_accuracy"] = robust
      rows.append(table.row(catalog.by_name(name), changed, "CMD", "RERUN",
                            folder))
    text = table.markdown(rows, [], "leaderboard.png", "REGEN")
    self.assertLess(text.index("| 1 | [Bit-depth"), text.index("| 2 | [Stoch"))
    self.assertIn("| 0 (CIFAR-10, Linf 0.031) |", text)
    path = os.path.join(tempfile.mkdtemp(), "plot.png")
    drawn = table.plot_claimed_vs_measured(rows, path, "t")
    self.assertEqual(sorted(drawn), ["bit_depth_jpeg", "sap"])
    self.assertTrue(os.path.getsize(path) > 0)


USER_PACKAGE = '''
"""A user's defense: a 2x2 mean blur."""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="my_pkg")
class Blur(keras.layers.Layer):
  def call(self, x):
    padded = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]], mode="SYMMETRIC")
    return (padded[:, :-1, :-1] + padded[:, 1:, :-1] + padded[:, :-1, 1:]
            + padded[:, 1:, 1:]) / 4


def build(classifier, seed=0):
  del seed
  return keras.Sequential([keras.Input(classifier.input_shape[1:]), Blur(),
                           classifier], name="blurred")
'''


class ProgramTest(tf.test.TestCase):

  def test_user_package_entry_runs_and_regenerates(self):
    import keras  # pylint: disable=g-import-not-at-top
    work = tempfile.mkdtemp()
    os.makedirs(os.path.join(work, "my_pkg"))
    open(os.path.join(work, "my_pkg", "__init__.py"), "w").close()
    with open(os.path.join(work, "my_pkg", "defenses.py"), "w") as f:
      f.write(textwrap.dedent(USER_PACKAGE))
    init = keras.initializers.GlorotUniform
    keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Conv2D(
            4, 3, activation="relu", kernel_initializer=init(seed=0)),
        keras.layers.Flatten(),
        keras.layers.Dense(3, kernel_initializer=init(seed=1))]).save(
            os.path.join(work, "tiny.keras"))
    rng = np.random.RandomState(0)
    np.savez(os.path.join(work, "data.npz"),
             x=rng.uniform(size=(8, 8, 8, 3)).astype("float32"),
             y=np.arange(8) % 3)
    entry = dict(
        catalog.by_name("feature_squeeze").as_dict(), name="user_blur",
        title="A user's blur", paper="Me, 2026", link="-", venue="-",
        kind="random preprocessing", randomized=False,
        classifier="tiny.keras", architecture="tiny CNN",
        builder="my_pkg.defenses:build", builder_kwargs={},
        imports=["my_pkg.defenses"], surrogate=None,
        claimed={"value": 50.0, "source": "Me 2026, Table 1",
                 "threat_model": "Linf 8/255", "dataset": "npz"},
        published_adaptive={"value": None, "source": "none"},
        overrides={"data_npz": "data.npz", "num_examples": 8,
                   "sanity_images": 4, "unit_size": 4,
                   "attacks": "apgd_ce,square", "eot_curve": "1,2",
                   "grid_images": 2, "grid_samples": 2,
                   "adversarial_surrogate": None})
    with open(os.path.join(work, "entries.json"), "w") as f:
      json.dump([entry], f)
    run = subprocess.run(
        [sys.executable, PROGRAM, "--entry=user_blur", "--budget=smoke",
         "--report_root=runs", "--catalog=entries.json"], cwd=work,
        env=program_env(work), capture_output=True, text=True, check=False)
    # attack_eval's status: 1 (an attack raised) and 3 (bad input) are
    # failures; the others name a verdict of a finished report.
    self.assertNotIn(run.returncode, (1, 3), msg=run.stderr[-3000:])
    self.assertIn("--import=my_pkg.defenses", run.stdout)
    self.assertTrue(os.path.exists(os.path.join(work, "runs", "user_blur",
                                                "report.json")))
    outputs = ["--output_json=docs/lb.json", "--output_md=docs/LB.md",
               "--plot=docs/lb.png"]
    # The table: this entry only (a catalog entry never run is pending).
    regen = subprocess.run(
        [sys.executable, PROGRAM, "--regenerate", "--report_root=runs",
         "--catalog=entries.json", *outputs], cwd=work,
        env=program_env(work), capture_output=True, text=True, check=False)
    self.assertEqual(regen.returncode, 0, msg=regen.stderr[-3000:])
    with open(os.path.join(work, "docs", "lb.json")) as f:
      rows = json.load(f)
    self.assertEqual([r["name"] for r in rows], ["user_blur"])
    self.assertEqual(set(rows[0]), ROW_FIELDS)
    self.assertEqual(rows[0]["num_examples"], 8)
    self.assertIn("--budget=smoke", rows[0]["leaderboard_command"])
    self.assertIn("--import=my_pkg.defenses", rows[0]["command"])
    with open(os.path.join(work, "docs", "LB.md")) as f:
      text = f.read()
    self.assertIn("A user's blur", text)
    self.assertIn("`sap` (Stochastic", text)  # Pending, with its command.
    self.assertTrue(os.path.exists(os.path.join(work, "docs", "lb.png")))
    # The built model is not reused for changed builder settings.
    with open(os.path.join(work, "entries.json"), "w") as f:
      json.dump([dict(entry, builder_kwargs={"size": 3})], f)
    stale = subprocess.run(
        [sys.executable, PROGRAM, "--entry=user_blur", "--budget=smoke",
         "--report_root=runs", "--catalog=entries.json"], cwd=work,
        env=program_env(work), capture_output=True, text=True, check=False)
    self.assertEqual(stale.returncode, 3, msg=stale.stderr[-3000:])
    self.assertIn("runs/models/user_blur.keras was built with other settings",
                  stale.stderr)
    self.assertIn("Received: builder_kwargs={'size': 3} (built with {})",
                  stale.stderr)
    # An unfinished folder is refused, unless listed as pending.
    shutil.move(os.path.join(work, "runs", "user_blur", "report.json"),
                os.path.join(work, "report.json"))
    refused = subprocess.run(
        [sys.executable, PROGRAM, "--regenerate", "--report_root=runs",
         *outputs], cwd=work, env=program_env(work), capture_output=True,
        text=True, check=False)
    self.assertEqual(refused.returncode, 3)
    self.assertIn("holds no report.json", refused.stderr)

  def test_a_missing_trained_model_names_its_training_command(self):
    run = subprocess.run(
        [sys.executable, PROGRAM, "--entry=thermometer",
         "--report_root=runs/lb"], cwd=tempfile.mkdtemp(),
        env=program_env(), capture_output=True, text=True, check=False)
    self.assertEqual(run.returncode, 3, msg=run.stderr[-3000:])
    self.assertIn("Entry 'thermometer' needs its model 'runs/leaderboard/"
                  "models/thermometer.keras'; train it with: "
                  "python examples/train_thermometer.py", run.stderr)

  def test_full_budget_drops_overrides_and_literal_commands(self):
    for name, model in (("sap", "--model=runs/lb/models/sap.keras"),
                        ("defended", "--model=zoo:cifar10/defended_resnet18")):
      for budget, steps in (("reference", None), ("full", "--steps=100")):
        run = subprocess.run(
            [sys.executable, PROGRAM, f"--entry={name}", f"--budget={budget}",
             "--report_root=runs/lb", "--dry_run"], cwd=tempfile.mkdtemp(),
            env=program_env(), capture_output=True, text=True, check=False)
        self.assertEqual(run.returncode, 0, msg=run.stderr[-3000:])
        argv = run.stdout.strip().splitlines()[-1].split()
        self.assertIn(model, argv)
        if budget == "reference":  # The stated CPU budget.
          self.assertIn("--steps=20", argv)
          self.assertIn("--eot_samples=4", argv)
        else:  # Every field at the reference.
          for flag in (steps, "--eot_samples=20", "--queries=5000",
                       "--query_draws=8", "--draws=20",
                       "--attacks=autoattack_rand,adaptive",
                       f"--report_dir=runs/lb/{name}"):
            self.assertIn(flag, argv)
          self.assertNotIn("--steps=20", argv)


if __name__ == "__main__":
  tf.test.main()
