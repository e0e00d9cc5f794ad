"""One experiment's shared state, its attack runs and the text of its plots."""

import os
import time

import numpy as np

from adv_layer import data
from attacks import model_fns
from attacks import pgd
from attacks import report
from attacks import sanity
from attacks import scoring
from attacks import suite
from examples.reproduction import model_store
from examples.reproduction import presets
from examples.reproduction import reference
from examples.reproduction import storage


class Experiment:
  """Shared state of one experiment: settings, models, images, cache, output.

  Args:
    name: one of `presets.EXPERIMENTS`.
    preset: "smoke", "cpu" or "paper".
    out: results folder.
    seed: the run's seed.
    settings: resolved settings (see `presets.resolve_settings`).
    data_dir: tfds data directory or None.
    verbose: Keras verbosity of training.
  """

  def __init__(self, name, preset, out, seed, settings, data_dir=None,
               verbose=2):
    self.name = name
    self.preset = preset
    self.seed = seed
    self.settings = settings
    self.out = out
    self.folder = os.path.join(out, name)
    os.makedirs(self.folder, exist_ok=True)
    self.models = model_store.Models(out, preset, settings, seed, data_dir,
                                     verbose)
    self.x, self.y = data.load_arrays(
        presets.DATASET, f"test[:{settings['num_examples']}]",
        data_dir=data_dir)
    count = settings["num_examples_eot"]
    self.x_eot, self.y_eot = self.x[:count], self.y[:count]
    self.partial_path = os.path.join(self.folder, "partial.json")
    self.partial = storage.read_json(self.partial_path, {})
    self.start = time.perf_counter()
    self.evaluation_seconds = 0.0  # Of the units used, whichever run made them.

  def cached(self, key, spec, fn):
    """Returns the stored result of unit `key` for `spec`, or computes it.

    Args:
      key: readable unit name.
      spec: JSON-ready value of what determines the result besides the
        settings, the seed and the preset (all part of the cache key, so a
        changed setting never reuses a stale figure).
      fn: `() -> JSON-ready value`.

    Returns:
      The value (stored in partial.json at once, so a killed run skips it).
    """
    full = (f"{key}-"
            f"{storage.digest([spec, self.settings, self.seed, self.preset])}")
    if full not in self.partial:
      started = time.perf_counter()
      value = fn()
      self.partial[full] = {"value": value,
                            "seconds": time.perf_counter() - started}
      storage.write_json(self.partial_path, self.partial)
    self.evaluation_seconds += self.partial[full]["seconds"]
    return self.partial[full]["value"]

  def clean(self, model, draws=None):
    """Clean accuracy on the `num_examples` images (R draws)."""
    result = scoring.score(model, self.x, self.y,
                           draws=draws or self.settings["draws"], seed=self.seed)
    return {"mean": result.mean_accuracy, "strict": result.strict_accuracy,
            "images": len(self.x), "draws": result.draws}

  def score_adv(self, model, x_adv, draws=None):
    """Accuracy of `x_adv` (the `num_examples_eot` images) under R draws."""
    result = scoring.score(model, np.asarray(x_adv), self.y_eot,
                           draws=draws or self.settings["draws"], seed=self.seed)
    return {"mean": result.mean_accuracy, "strict": result.strict_accuracy,
            "images": len(self.y_eot), "draws": result.draws}

  def bpda_pgd(self, model, estimator, eot_samples=1, random_start=False,
               steps=None, **estimator_kwargs):
    """PGD through `estimator` with the settings' `bpda` budget (Figs. 5-7)."""
    budget = self.settings["bpda"]
    model_fn = model_fns.defended_model_fn(model, estimator, seed=self.seed,
                                            **estimator_kwargs)
    return pgd.pgd(model_fn, self.x_eot, self.y_eot, epsilon=budget["epsilon"],
                   step_size=budget["step_size"] * budget["steps"] /
                   (steps or budget["steps"]),
                   steps=steps or budget["steps"], random_start=random_start,
                   eot_samples=eot_samples,
                   chunk_size=self.settings["chunk_size"], seed=self.seed)

  def path(self, file_name):
    return os.path.join(self.folder, file_name)

  def write(self, body, plots=()):
    """Writes results.json: the body plus settings, data, seed and machine."""
    result = {
        "experiment": self.name, "preset": self.preset, "seed": self.seed,
        "out": self.out,
        "data": presets.DATA_NAME,
        "images": {"num_examples": self.settings["num_examples"],
                   "num_examples_eot": self.settings["num_examples_eot"],
                   "split": "test (first images, dataset order)"},
        "settings": self.settings,
        "training_presets": {
            kind: self.models.training(kind) for kind in ("main", "sweep")},
        "models": self.models.used,
        "machine": report.machine_info(),
        "elapsed_s": time.perf_counter() - self.start,
        "evaluation_s": self.evaluation_seconds,
        "paper": reference.PAPER.get(self.name),
        "plots": list(plots),
        **body,
    }
    path = self.path("results.json")
    storage.write_json(path, result)
    return path


def caption(exp, attack_text, images):
  """Plot title: attack budget, data, images, seed."""
  return f"{attack_text}; {presets.DATA_NAME}, {images} images, seed {exp.seed}"


def bpda_text(exp, eot=None, steps=None):
  budget = exp.settings["bpda"]
  steps = steps or budget["steps"]
  step = budget["step_size"] * budget["steps"] / steps
  text = (f"PGD eps={budget['epsilon']} {steps} step{'s' if steps > 1 else ''}"
          f" of {step:.4g}")
  return text + (f", EOT {eot}" if eot else "")


def suite_record(suite_result, flags):
  """The JSON record of a suite run, per-example arrays dropped."""
  record = report.report_dict(suite_result, flags)
  per_example = ("robust", "per_example_mean", "per_example_success")
  for row in record["attacks"] + [record[key] for key in (
      "clean", "worst_case", "worst_case_white_box")]:
    for name in per_example:
      row.pop(name, None)
  record.pop("machine", None)
  return record


def run_suite(exp, model, attacks, budget, surrogate=None):
  """Runs the suite on the `num_examples_eot` images with sanity checks."""
  target = suite.Target(model, surrogate=surrogate)
  result = suite.run_suite(target, exp.x_eot, exp.y_eot, attacks, budget,
                           seed=exp.seed, draws=exp.settings["draws"])
  if exp.settings["full_sanity"]:
    flags, _ = sanity.run_checks(target, result, exp.x_eot, exp.y_eot)
  else:  # The checks that need no extra attack runs.
    clean = result.clean.mean_accuracy
    white = {r.name: r.score.mean_accuracy for r in result.results
             if r.kind == suite.WHITE_BOX}
    black = {r.name: r.score.mean_accuracy for r in result.results
             if r.kind != suite.WHITE_BOX}
    flags = [sanity.check_robust_le_clean(
        clean, {r.name: r.score.mean_accuracy for r in result.results}),
             sanity.check_gradient_masking(white, black)]
  return suite_record(result, flags)
