r"""Reproduces the paper's Tables 1-3 and Figures 5-7 (Xiao & Zheng, CVPR 2020).

One command per experiment (paper Secs. 3.4, 4 and 5); each trains what it
needs through `adv_layer.training`, evaluates with `attacks`, and writes
`<out>/<experiment>/results.json` and PNG plots. `summary` renders every
finished experiment into one Markdown page, our numbers beside the paper's.

  table3  no defense, Madry PGD-7 adversarial training, ours (Δ 0.2, N 13,
          adversarially trained f_b): clean accuracy, worst case under the
          `adaptive` suite and the attack achieving it, time per training epoch.
  table1  f_b untrained / trained 1, 2, 5 epochs / adversarially trained:
          clean and BPDA-I accuracy, ‖x − E g(x)‖∞ and mean |x − E g(x)|.
  fig5    BPDA (softsign, tanh) accuracy vs N, random start of g off.
  fig6    clean, BPDA-I + EOT and white-box-transfer accuracy vs Δ.
  fig7    BPDA-I + EOT accuracy vs EOT samples, Δ 0.1 and 0.2.
  table2  black-box transfer, HopSkipJump, GenAttack, Square on the three
          models of Table 3.

Models are trained once and shared: each is stored as
`<out>/checkpoints/<name>-<digest of its settings>.keras` with a JSON sidecar
(settings, seconds per epoch), so every experiment needing the same model
(e.g. the defended Δ 0.2 model of table3, table2) loads it. Training backs up
every epoch and each finished evaluation unit is cached in
`<out>/<experiment>/partial.json`: rerunning a killed command continues.

Examples (from the repository root; `-m` puts it on the import path):

  python -m examples.reproduce --experiment=table3 --preset=cpu --out=runs/repro
  python -m examples.reproduce --experiment=summary --out=runs/repro \
      --summary_path=runs/repro/SUMMARY.md

`--set key=json_value` overrides any entry of `presets.SETTINGS[preset]` (e.g.
`--set fig5_steps=[1,13]`); every setting used is written to results.json.

The code is the package `examples/reproduction/`: one short module per table
or figure (`table1.py` ... `fig7.py`) and the pieces they share (see its
`__init__.py`); this file only defines the flags and calls it.
"""

import os
import sys

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app
from absl import flags

try:
  from examples.reproduction import presets
  from examples.reproduction import runner
  from examples.reproduction import summary
except ModuleNotFoundError as error:  # Run by path: `examples` not importable.
  if error.name != "examples":
    raise
  sys.exit(f"reproduce.py: error: {error}: it imports the `examples` package; "
           "run it from the repository root as a module: "
           "python -m examples.reproduce ...")

FLAGS = flags.FLAGS


def define_flags():
  """Defines the flags; called by `__main__` only, so tests import freely."""
  flags.DEFINE_enum("experiment", None, presets.EXPERIMENTS + ("summary",),
                    "What to run, or `summary` to render finished results.")
  flags.DEFINE_enum("preset", "smoke", list(presets.SETTINGS),
                    "Scale of the run.")
  flags.DEFINE_string("out", "runs/reproduce", "Results and checkpoints folder.")
  flags.DEFINE_integer("seed", 0, "Seed of models, data order, g and attacks.")
  flags.DEFINE_integer("num_examples", None,
                       "Test images for clean accuracy and cheap attacks.")
  flags.DEFINE_integer("num_examples_eot", None,
                       "Test images for EOT-heavy and query attacks.")
  flags.DEFINE_string("data_dir", None,
                      "tfds data directory (default: $TFDS_DATA_DIR).")
  flags.DEFINE_multi_string("set", [], "key=json_value overriding a setting.")
  flags.DEFINE_string("summary_path", None,
                      "Markdown output of `summary` (default: <out>/RESULTS.md).")
  flags.DEFINE_integer("verbose", 2, "Keras verbosity of training.")
  flags.mark_flag_as_required("experiment")


def main(argv):
  del argv
  if FLAGS.experiment == "summary":
    print(f"Wrote {summary.write_summary(FLAGS.out, FLAGS.summary_path)}")
    return
  path = runner.run_experiment(
      FLAGS.experiment, FLAGS.preset, FLAGS.out, FLAGS.seed, FLAGS.num_examples,
      FLAGS.num_examples_eot, FLAGS.data_dir, presets.parse_overrides(FLAGS.set),
      FLAGS.verbose)
  print(f"Wrote {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
