"""Tests of examples/verdict_table.py: rows, paper figures, budget lines."""

import json
import os
import subprocess
import sys
import tempfile

import tensorflow as tf

from attacks import suite
from examples import verdict_table


def figures(accuracy, low, high, attacks=("apgd_ce", "square")):
  """A worst-case or clean entry with equal mean and strict accuracy."""
  return {"strict_accuracy": accuracy, "strict_accuracy_ci95": [low, high],
          "mean_accuracy": accuracy, "mean_accuracy_ci95": [low, high],
          "strongest": "apgd_ce", "attacks": list(attacks)}


def fake_report(defended, weaker):
  return {
      "verdict": "COMPLETE", "weaker_than_reference": weaker,
      "meta": {"model": "zoo:cifar10/m", "data": "CIFAR-10 (JPEG copy)",
               "split": "test[:500]", "elapsed_s": 1800.0},
      "machine": {"cpu_count": 2, "devices": ["/physical_device:CPU:0"]},
      "seed": 0, "draws": 20, "images": 500, "defended": defended,
      "budget": {"epsilon": 8 / 255, "steps": 20},
      "attacks": [{"name": "apgd_ce", "elapsed_s": 900.0},
                  {"name": "square", "elapsed_s": 1800.0}], "failed": {},
      "clean": figures(0.8, 0.75, 0.85),
      "worst_case": figures(0.1, 0.05, 0.15),
      "worst_case_white_box": figures(0.3, 0.25, 0.35, attacks=["apgd_ce"]),
  }


class VerdictTableTest(tf.test.TestCase):

  def test_rows_paper_figures_and_budget_lines(self):
    weaker = [{"field": "steps", "used": 20, "reference": 100}]
    lines = verdict_table.table_lines([
        ("Madry et al.", fake_report(False, [])),
        ("Ours", fake_report(True, weaker))])
    self.assertEqual(lines[2], (
        "| Madry et al. | COMPLETE | 2 | 500 × 20 | 80.0% [75.0, 85.0] | "
        "80.0% [75.0, 85.0] | **10.0%** [5.0, 15.0] | apgd_ce | 81.7% | "
        "42.7% (PGD) |"))
    self.assertEqual(lines[3], (
        "| Ours | COMPLETE | 2 | 500 × 20 | 80.0% [75.0, 85.0] | "
        "80.0% [75.0, 85.0] | **10.0%** [5.0, 15.0] | apgd_ce | 82.9% | "
        "73.4% (Transfer) |"))
    # The defended row's white-box worst case, beside the paper's BPDA row.
    # Over the white-box attacks only: 1 of the 2.
    self.assertIn("| Ours (white-box attacks only) | COMPLETE | 1 |", lines[4])
    self.assertIn("**30.0%** [25.0, 35.0] | apgd_ce | 82.9% | 80.2% (BPDA) |",
                  lines[4])
    self.assertEqual(lines[5], "")
    self.assertIn("below the reference: none (reference strength);", lines[6])
    self.assertIn("below the reference: steps 20 (ref. 100);", lines[7])
    self.assertIn("test[:500], seed 0; budget eps=8/255, steps=20;", lines[7])
    self.assertIn("attacks: apgd_ce, square; not run of the `adaptive` "
                  "preset: 7 (pgd_restarts, apgd_dlr_t, pgd, blackbox_transfer, "
                  "blackbox_transfer_mi_di, adv_surrogate_transfer, "
                  "adv_surrogate_transfer_mi_di); 2 CPU cores", lines[6])
    # On a defended model only square is an `adaptive` name ("apgd_ce" is a
    # plain classifier's).
    self.assertIn(f"not run of the `adaptive` preset: "
                  f"{len(suite.PRESETS['adaptive']) - 1} (pgd_restarts_bpda_"
                  "identity, apgd_ce_bpda_identity, ", lines[7])
    self.assertTrue(lines[7].endswith(
        "; crafting 0.75 h (summed over units, whichever run made them), "
        "last attack_eval.py run 0.50 h."))

  def test_a_row_unknown_to_the_paper_has_no_paper_figures(self):
    lines = verdict_table.table_lines([("Mine", fake_report(False, []))])
    self.assertTrue(lines[2].endswith("| apgd_ce | - | - |"))

  def test_report_flag_and_folder_errors(self):
    self.assertEqual(verdict_table.parse_report_flag("Ours=runs/a=b"),
                     ("Ours", "runs/a=b"))
    for bad in ("Ours", "=runs/x", "Ours="):
      with self.assertRaisesRegex(ValueError, f"Received: report={bad!r}"):
        verdict_table.parse_report_flag(bad)
    folder = tempfile.mkdtemp()
    with self.assertRaisesRegex(FileNotFoundError, "Received: folder="):
      verdict_table.load_report(folder)
    with open(os.path.join(folder, "report.json"), "w") as file:
      json.dump({"seed": 3}, file)
    self.assertEqual(verdict_table.load_report(folder), {"seed": 3})



class RunByPathTest(tf.test.TestCase):

  def test_run_by_path_names_the_module_form_in_one_line(self):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.run(
        [sys.executable, os.path.join("examples", "verdict_table.py"),
         "--report=Ours=x"], cwd=root, env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(process.returncode, 1, process.stderr)
    self.assertNotIn("Traceback", process.stderr)
    last = process.stderr.strip().splitlines()[-1]
    self.assertStartsWith(last, "verdict_table.py: error: ")
    self.assertIn("python -m examples.verdict_table", last)


if __name__ == "__main__":
  tf.test.main()
