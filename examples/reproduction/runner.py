"""Runs one experiment of the reproduction by name."""

import keras

from examples.reproduction import experiment
from examples.reproduction import fig5
from examples.reproduction import fig6
from examples.reproduction import fig7
from examples.reproduction import presets
from examples.reproduction import table1
from examples.reproduction import table2
from examples.reproduction import table3

RUNNERS = {"table3": table3.run, "table1": table1.run, "fig5": fig5.run,
           "fig6": fig6.run, "fig7": fig7.run, "table2": table2.run}


def run_experiment(name, preset="smoke", out="runs/reproduce", seed=0,
                   num_examples=None, num_examples_eot=None, data_dir=None,
                   overrides=None, verbose=2):
  """Runs one experiment and writes `<out>/<name>/results.json` and plots.

  Args:
    name: one of `presets.EXPERIMENTS`.
    preset: "smoke", "cpu" or "paper".
    out: results folder.
    seed: the run's seed.
    num_examples: test images for clean accuracy (None: the preset's).
    num_examples_eot: test images for EOT-heavy/query attacks (None: preset).
    data_dir: tfds data directory or None.
    overrides: dict of setting replacements.
    verbose: Keras verbosity of training.

  Returns:
    The path of results.json.

  Raises:
    ValueError: for an unknown experiment or bad settings.
  """
  if name not in RUNNERS:
    raise ValueError(f"`experiment` must be one of {presets.EXPERIMENTS}. "
                     f"Received: experiment={name!r}")
  settings = presets.resolve_settings(preset, num_examples, num_examples_eot,
                                      overrides)
  keras.utils.set_random_seed(seed)
  exp = experiment.Experiment(name, preset, out, seed, settings, data_dir,
                              verbose)
  return RUNNERS[name](exp)
