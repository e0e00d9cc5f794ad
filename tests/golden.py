r"""A fixed small evaluation whose outputs are kept as a golden copy.

Two tiny models (a defended one, f_a(g(x)) with dense f_b and f_a, and a
plain one) on 8 images of 4x4x1 pixels, evaluated by
`examples/attack_eval.py` with a few attacks of each kind, small budgets and
the sanity reruns. `tests/golden/` holds the models, the images and what the
evaluation wrote: the unit files, report.json, robustbench.json and
adversarial.npz. `golden_test.py` reruns the same commands and compares
every file (`canonical`), timings and the machine's description excepted, so
a change of the code that changes any figure, seed, key or record shows.

Regenerate only when a change of the outputs is intended (and say so in the
commit):

  python -m tests.golden --out=tests/golden --root=.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden")
# Fields that measure time or name the machine: never compared.
VOLATILE = frozenset({"elapsed_s", "f_b_passes_per_s", "machine"})
OUTPUTS = ("report.json", "robustbench.json", "adversarial.npz")
COMMON_FLAGS = ("--steps=3", "--eot_samples=2", "--queries=10",
                "--query_draws=2", "--draws=2", "--num_examples=8",
                "--unit_size=4", "--seed=0", "--sanity_images=4",
                "--eot_curve=1,2", "--grid_images=2", "--grid_samples=2",
                "--nokeep_going")
EVALUATIONS = {
    "defended": ("pgd_restarts_bpda_identity,apgd_ce_bpda_identity,"
                 "apgd_dlr_t_bpda_identity,whitebox_transfer,square"),
    "plain": "pgd_restarts_bpda_identity,apgd_ce_bpda_identity,square",
}


def make_inputs(folder):
  """Writes the two models and the images into `folder` (once, then kept)."""
  import keras  # pylint: disable=g-import-not-at-top
  import adv_layer  # pylint: disable=g-import-not-at-top
  from tests import attack_properties  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  f_b = attack_properties.tiny_model(seed=1)
  f_a = attack_properties.tiny_model(seed=2, classes=4)
  defended = keras.Sequential([
      keras.Input((4, 4, 1)),
      adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=2, seed=0), f_a],
                              name="golden_defended")
  defended.save(os.path.join(folder, "defended.keras"))
  plain = attack_properties.tiny_model(seed=3, classes=4)
  plain.save(os.path.join(folder, "plain.keras"))
  x, _ = attack_properties.tiny_batch(seed=4, batch=8)
  y = np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32)
  np.savez(os.path.join(folder, "data.npz"), x=x, y=y)


def run(name, inputs, report_dir, root=ROOT):
  """Runs evaluation `name` with `root`'s attack_eval.py; returns its output."""
  env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2",
             CUDA_VISIBLE_DEVICES="")
  inputs = os.path.relpath(inputs, root)  # The report records the paths.
  command = [sys.executable, os.path.join(root, "examples", "attack_eval.py"),
             f"--model={inputs}/{name}.keras", f"--data_npz={inputs}/data.npz",
             f"--attacks={EVALUATIONS[name]}", f"--report_dir={report_dir}",
             "--model_name=golden", *COMMON_FLAGS]
  done = subprocess.run(command, cwd=root, env=env, capture_output=True,
                        text=True, check=False)
  if done.returncode not in (0, 2, 4):  # SUSPECT, UPPER BOUND: a report.
    raise RuntimeError(f"{name}: exit {done.returncode}\n{done.stdout}\n"
                       f"{done.stderr}")
  return done.stdout


def _strip(value):
  """`value` without the `VOLATILE` keys, at any depth."""
  if isinstance(value, dict):
    return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
  if isinstance(value, list):
    return [_strip(v) for v in value]
  return value


def _npz(path):
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files}
  for key in ("meta", "plan"):
    if key in arrays:
      arrays[key] = _strip(json.loads(str(arrays[key])))
  return arrays


def canonical(report_dir):
  """Every compared output of an evaluation folder, timings stripped.

  Returns:
    dict relative path -> a JSON value (JSON files, plan.json) or a dict of
    arrays (npz files; their `meta`/`plan` entries parsed and stripped).
  """
  files = {}
  units = os.path.join(report_dir, "units")
  for name in sorted(os.listdir(units)):
    path = os.path.join(units, name)
    if name.endswith(".npz"):
      files[f"units/{name}"] = _npz(path)
    elif name.endswith(".json"):
      with open(path) as f:
        files[f"units/{name}"] = json.load(f)
  for name in OUTPUTS:
    path = os.path.join(report_dir, name)
    if name.endswith(".npz"):
      files[name] = _npz(path)
    else:
      with open(path) as f:
        files[name] = _strip(json.load(f))
  return files


def main(argv):
  out = argv[1].split("=", 1)[1] if len(argv) > 1 else GOLDEN
  root = argv[2].split("=", 1)[1] if len(argv) > 2 else ROOT
  inputs = os.path.join(root, "tests", "golden", "inputs")
  if not os.path.exists(os.path.join(inputs, "data.npz")):
    make_inputs(inputs)
  for name in EVALUATIONS:
    report_dir = os.path.join(out, name)
    print(run(name, inputs, report_dir, root=root)[-600:])
    for extra in ("reruns", "report.md", "accuracy_vs_epsilon.png",
                  "accuracy_vs_eot.png", "transform_grid.png"):
      path = os.path.join(report_dir, extra)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)


if __name__ == "__main__":
  main(sys.argv)
