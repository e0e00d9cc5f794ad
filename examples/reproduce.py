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

`--set key=json_value` overrides any entry of `SETTINGS[preset]` (e.g.
`--set fig5_steps=[1,13]`); every setting used is written to results.json.
"""

import os

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import hashlib
import json
import time

from absl import app
from absl import flags
import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

import adv_layer  # Registers AdversarialTransform for load_model.
from adv_layer import data
from adv_layer import models
from adv_layer import training
from attacks import estimators
from attacks import pgd
from attacks import report
from attacks import sanity
from attacks import scoring
from attacks import suite
from attacks import transfer
from examples import benchmark

FLAGS = flags.FLAGS
EXPERIMENTS = ("table3", "table1", "fig5", "fig6", "fig7", "table2")
DATA_NAME = "CIFAR-10 (JPEG copy)"
DATASET = "cifar10"
TRAIN_IMAGES = 50_000  # CIFAR-10's train split, for extrapolated epoch times.

# Settings of each preset. `main_training` / `sweep_training` override
# `adv_layer.training.PRESETS[preset]` for the Table 2-3 models (no defense,
# Madry, ours, the transfer surrogate) and for the sweep models of Table 1 and
# Figs. 5-7 (one per f_b, N or Δ). Attack budgets: L∞ epsilon on [0, 1].
SETTINGS = {
    # Minutes on 2 shared CPU cores: tiny models and image counts, every code
    # path of every experiment.
    "smoke": dict(
        main_training=dict(train_examples=256, test_examples=64, batch_size=64),
        sweep_training=dict(train_examples=256, test_examples=64, batch_size=64),
        fb_snapshots=(1, 2, 5), fb_train_examples=256,
        madry=dict(epsilon=8 / 255, steps=7, step_size=2 / 255),
        num_examples=32, num_examples_eot=8, draws=2, chunk_size=None,
        suite=dict(steps=2, restarts=1, eot_samples=2, queries=20),
        full_sanity=False, timing_examples=64,
        bpda=dict(epsilon=0.031, steps=2, step_size=0.05),
        fig5_steps=(1, 2, 3, 5, 8, 13), deltas=(0.05, 0.1, 0.2, 0.3),
        bpda_i_eot=2, fig7_deltas=(0.1, 0.2), fig7_eot=(1, 4, 16, 64),
        fig7_steps=1, distance_images=4, distance_draws=16,
        table2=dict(steps=2, restarts=1, queries=40)),
    # About an hour per experiment on 2 CPU cores (estimates in the README of
    # the results). f_b: the training preset's (small VGG at width 0.25, PGD-5
    # adversarial training, 2 epochs on the full split, ~13 min). Table 2-3
    # models: 2 epochs on the first 20,000 images (the full split would take
    # Madry PGD-7 ~40 min and ours ~25 min; same data and epochs for all three
    # as the paper requires). Sweep models: 2 epochs on the first 10,000
    # images (~5 min each at N 13; Table 1 and Fig. 5 need five new models
    # each). Attacks: the paper's PGD path length (50 steps x 0.002 = 0.1) in
    # 20 steps (BPDA, second order, costs ~3 transforms per step) or 10
    # (BPDA-I); EOT 4 instead of 500. The adaptive suite (Table 3) gets 5
    # steps and EOT 2: its APGD-DLR-targeted runs 9 targets, through BPDA
    # that alone is ~10 min on 200 images. Queries: 100 for the suite's
    # Square, 300 for Table 2 (~11 min per query attack on 200 images of the
    # defended model, g at ~90 images/s).
    "cpu": dict(
        main_training=dict(train_examples=20_000, test_examples=1000),
        sweep_training=dict(train_examples=10_000, test_examples=1000),
        fb_snapshots=(1, 2, 5), fb_train_examples=None,
        madry=dict(epsilon=8 / 255, steps=7, step_size=2 / 255),
        num_examples=1000, num_examples_eot=200, draws=3, chunk_size=1024,
        suite=dict(steps=5, restarts=1, eot_samples=2, queries=100),
        full_sanity=False, timing_examples=1024,
        bpda=dict(epsilon=0.031, steps=20, step_size=0.005),
        fig5_steps=(1, 2, 3, 5, 8, 13), deltas=(0.05, 0.1, 0.2, 0.3),
        bpda_i_eot=4, fig7_deltas=(0.1, 0.2), fig7_eot=(1, 4, 16, 64),
        fig7_steps=5, distance_images=50, distance_draws=128,
        table2=dict(steps=20, restarts=1, queries=300)),
    # The paper's settings (Secs. 4-5): 80 epochs on the full split for every
    # model, PGD 50 steps of 0.002 at 0.031, EOT 500, 5000 draws for E g(x),
    # the full test split (10,000 images), foolbox-like query budgets.
    "paper": dict(
        main_training=dict(), sweep_training=dict(),
        fb_snapshots=(1, 2, 5, 10, 15, 20), fb_train_examples=None,
        madry=dict(epsilon=8 / 255, steps=7, step_size=2 / 255),
        num_examples=10_000, num_examples_eot=1000, draws=5, chunk_size=2048,
        suite=dict(steps=100, restarts=5, eot_samples=100, queries=5000),
        full_sanity=True, timing_examples=10_000,
        bpda=dict(epsilon=0.031, steps=50, step_size=0.002),
        fig5_steps=(1, 2, 3, 5, 8, 13), deltas=(0.05, 0.1, 0.2, 0.3),
        bpda_i_eot=500, fig7_deltas=(0.1, 0.2), fig7_eot=(1, 4, 16, 64, 500),
        fig7_steps=50, distance_images=100, distance_draws=5000,
        table2=dict(steps=50, restarts=1, queries=5000)),
}

# The paper's numbers (paper.txt: Table 1, Table 2, Table 3) and, for the
# figures (no numbers in the text), the claims their captions make.
PAPER = {
    "table1": {
        "columns": ["untrained", "1 epoch", "2 epochs", "5 epochs", "10 epochs",
                    "15 epochs", "20 epochs", "adv. trained"],
        "clean": [0.818, 0.816, 0.824, 0.830, 0.824, 0.822, 0.827, 0.829],
        "bpda_identity": [0.306, 0.307, 0.400, 0.464, 0.623, 0.631, 0.629, 0.805],
        "linf": [0.005, 0.033, 0.036, 0.067, 0.130, 0.133, 0.136, 0.272],
    },
    "table2": {
        "No defense": {"clean": 0.929, "transfer": 0.013, "hsj": 0.036,
                       "ga": 0.058},
        "Madry et al.": {"clean": 0.817, "transfer": 0.775, "hsj": 0.721,
                         "ga": 0.784},
        "Ours": {"clean": 0.829, "transfer": 0.781, "hsj": 0.820, "ga": 0.819},
    },
    "table3": {
        "No defense": {"clean": 0.929, "robust": 0.0, "attack": "PGD"},
        "Madry et al.": {"clean": 0.817, "robust": 0.427, "attack": "PGD"},
        "Ours (under BPDA)": {"clean": 0.829, "robust": 0.802, "attack": "BPDA"},
        "Ours": {"clean": 0.829, "robust": 0.734, "attack": "Transfer"},
    },
    "fig5": "Robust under BPDA (softsign, tanh) as long as N > 5; BPDA finds "
            "adversarial examples when N is small.",
    "fig6": "BPDA-I and WT accuracy rise with Δ while clean accuracy falls "
            "gradually; Δ = 0.2 is best; BPDA-I and WT are similar.",
    "fig7": "Δ 0.1: more EOT samples attack better until a plateau; Δ 0.2: EOT "
            "stays persistently inefficient.",
}
TABLE_NAMES = ("No defense", "Madry et al.", "Ours")


def define_flags():
  """Defines the flags; called by `__main__` only, so tests import freely."""
  flags.DEFINE_enum("experiment", None, EXPERIMENTS + ("summary",),
                    "What to run, or `summary` to render finished results.")
  flags.DEFINE_enum("preset", "smoke", list(SETTINGS), "Scale of the run.")
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


def parse_overrides(items):
  """`["key=json", ...]` -> dict; a value that is not JSON stays a string.

  Raises:
    ValueError: for an item without "=".
  """
  overrides = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"`set` items must look like key=value. Received: set={item!r}")
    key, text = item.split("=", 1)
    try:
      overrides[key.strip()] = json.loads(text)
    except json.JSONDecodeError:
      overrides[key.strip()] = text
  return overrides


def resolve_settings(preset, num_examples=None, num_examples_eot=None,
                     overrides=None):
  """The preset's settings with the flag values and overrides applied.

  Args:
    preset: a key of `SETTINGS`.
    num_examples: replaces `num_examples` when not None.
    num_examples_eot: replaces `num_examples_eot` when not None.
    overrides: dict of further replacements (keys of the preset).

  Returns:
    A new dict.

  Raises:
    ValueError: for an unknown preset or key, or image counts out of order.
  """
  if preset not in SETTINGS:
    raise ValueError(f"`preset` must be one of {tuple(SETTINGS)}. "
                     f"Received: preset={preset!r}")
  settings = json.loads(json.dumps(SETTINGS[preset]))  # Deep copy, lists.
  for key, value in dict(overrides or {}).items():
    if key not in settings:
      raise ValueError(f"Unknown setting {key!r}; expected one of "
                       f"{sorted(settings)}. Received: {key}={value!r}")
    settings[key] = value
  if num_examples is not None:
    settings["num_examples"] = num_examples
  if num_examples_eot is not None:
    settings["num_examples_eot"] = num_examples_eot
  if not 1 <= settings["num_examples_eot"] <= settings["num_examples"]:
    raise ValueError(
        "`num_examples_eot` must be between 1 and `num_examples`. Received: "
        f"num_examples_eot={settings['num_examples_eot']}, "
        f"num_examples={settings['num_examples']}")
  return settings


def digest(settings):
  """A short hex digest of a JSON-ready settings dict (key order ignored)."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:10]


def write_json(path, value):
  """Writes JSON atomically (a kill never leaves half a file)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  temporary = path + ".tmp"
  with open(temporary, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, default=float)
  os.replace(temporary, path)


def read_json(path, default=None):
  """Reads JSON, or returns `default` when the file does not exist."""
  if not os.path.exists(path):
    return default
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class EpochTimer(keras.callbacks.Callback):
  """Records the wall seconds of every epoch that `fit` runs."""

  def __init__(self):
    super().__init__()
    self.seconds = []
    self._start = None

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds.append(time.perf_counter() - self._start)


class SnapshotSaver(keras.callbacks.Callback):
  """Saves `model` as `paths[e]` after epoch e (1-based) of the training."""

  def __init__(self, model, paths):
    super().__init__()
    self.to_save = model
    self.paths = dict(paths)

  def on_epoch_end(self, epoch, logs=None):
    path = self.paths.get(epoch + 1)
    if path is not None:
      training.save_model(self.to_save, path)


class Models:
  """Trains, stores and reloads every model of the reproduction.

  Args:
    out: the results folder (checkpoints go to `<out>/checkpoints`).
    preset: the training preset of `adv_layer.training.PRESETS`.
    settings: the resolved reproduction settings.
    seed: the run's seed.
    data_dir: tfds data directory or None.
    verbose: Keras verbosity of training.
  """

  def __init__(self, out, preset, settings, seed, data_dir=None, verbose=2):
    self.folder = os.path.join(out, "checkpoints")
    self.preset = preset
    self.settings = settings
    self.seed = seed
    self.data_dir = data_dir
    self.verbose = verbose
    self.used = {}  # name -> sidecar, for results.json.
    self.image_shape, self.num_classes = data.dataset_spec(DATASET, data_dir)

  def training(self, kind):
    """The training preset with `main_training` or `sweep_training` applied."""
    return training.get_preset(self.preset, **self.settings[f"{kind}_training"])

  def train_data(self, train_examples, batch_size, seed_offset=0):
    return data.load_tfds(DATASET, data.first_examples("train", train_examples),
                          batch_size, training=True, data_dir=self.data_dir,
                          seed=self.seed + seed_offset)

  def _paths(self, name, spec):
    key = f"{name}-{digest(spec)}"
    return (os.path.join(self.folder, key + ".keras"),
            os.path.join(self.folder, key + "_backup"),
            os.path.join(self.folder, key + ".json"))

  def _get(self, name, spec, train_fn):
    """Loads the model of `spec`, training it with `train_fn` if missing.

    Args:
      name: readable prefix of the file name.
      spec: JSON-ready dict of everything that determines the model.
      train_fn: `(path, backup_dir, timer) -> None`, writes `path`.

    Returns:
      `(model, file name)`: the loaded `keras.Model` and its `.keras` name.
    """
    path, backup, sidecar = self._paths(name, spec)
    if not os.path.exists(path):
      timer = EpochTimer()
      start = time.perf_counter()
      train_fn(path, backup, timer)
      info = read_json(sidecar, {"spec": spec, "path": path, "runs": []})
      info["runs"].append({"seconds": time.perf_counter() - start,
                           "epoch_seconds": timer.seconds,
                           "machine": report.machine_info()})
      write_json(sidecar, info)
    file_name = os.path.basename(path)
    self.used[file_name] = read_json(
        sidecar, {"spec": spec, "path": path, "runs": "trained elsewhere"})
    return keras.saving.load_model(path), file_name

  def _fit_kwargs(self, preset):
    return dict(learning_rate=preset["learning_rate"],
                momentum=preset["momentum"], verbose=self.verbose)

  def fb_untrained(self):
    """f_b with fresh seeded weights (Table 1's first column): `(f_b, name)`."""
    preset = self.training("main")
    spec = {"kind": "f_b untrained", "model": preset["fb_model"],
            "width": preset["fb_width"], "seed": self.seed + 1}

    def train_fn(path, backup, timer):
      del backup, timer
      training.save_model(self.build_fb(preset, self.seed + 1), path)

    return self._get("fb_untrained", spec, train_fn)

  def build_fb(self, preset, seed):
    """A fresh f_b of the training preset."""
    return models.build_model(preset["fb_model"], num_classes=self.num_classes,
                              input_shape=self.image_shape,
                              width=preset["fb_width"], seed=seed)

  def fb_standard(self, epochs):
    """f_b trained `epochs` epochs on clean images, constant lr (Table 1).

    One run to the largest of `settings["fb_snapshots"]` saves every
    snapshot (one backup folder for that run). Returns `(f_b, name)`.
    """
    preset = self.training("main")
    snapshots = sorted(self.settings["fb_snapshots"])
    examples = self.settings["fb_train_examples"]
    base = {"kind": "f_b standard", "model": preset["fb_model"],
            "width": preset["fb_width"], "seed": self.seed,
            "train_examples": examples, "batch_size": preset["batch_size"],
            "learning_rate": preset["learning_rate"],
            "momentum": preset["momentum"], "snapshots": snapshots}
    spec = dict(base, epochs=epochs)

    def train_fn(path, backup, timer):
      del path, backup
      paths = {e: self._paths("fb_standard", dict(base, epochs=e))[0]
               for e in snapshots}
      f_b = self.build_fb(preset, self.seed)
      training.pretrain_fb(
          f_b, self.train_data(examples, preset["batch_size"]), max(snapshots),
          checkpoint_dir=self._paths("fb_standard", base)[1], callbacks=[timer, SnapshotSaver(f_b, paths)],
          **self._fit_kwargs(preset))

    return self._get("fb_standard", spec, train_fn)

  def fb_adversarial(self):
    """The paper's preferred f_b, PGD adversarially trained: `(f_b, name)`."""
    preset = self.training("main")
    keys = ("fb_model", "fb_width", "fb_epochs", "fb_epsilon", "fb_steps",
            "fb_step_size", "fb_lr_drop_epoch", "batch_size", "learning_rate",
            "momentum")
    examples = self.settings["fb_train_examples"]
    spec = {"kind": "f_b adversarial", "seed": self.seed,
            "train_examples": examples, **{k: preset[k] for k in keys}}

    def train_fn(path, backup, timer):
      f_b = self.build_fb(preset, self.seed)
      training.pretrain_fb(
          f_b, self.train_data(examples, preset["batch_size"]),
          preset["fb_epochs"],
          adversarial=True, epsilon=preset["fb_epsilon"],
          steps=preset["fb_steps"], step_size=preset["fb_step_size"],
          seed=self.seed, output=path, lr_drop_epoch=preset["fb_lr_drop_epoch"],
          checkpoint_dir=backup, callbacks=[timer], **self._fit_kwargs(preset))

    return self._get("fb_adversarial", spec, train_fn)

  def _fa_spec(self, preset, seed):
    keys = ("fa_model", "fa_width", "epochs", "lr_drop_epoch", "train_examples",
            "batch_size", "learning_rate", "momentum")
    return {"seed": seed, **{k: preset[k] for k in keys}}

  def build_fa(self, preset, seed):
    """A fresh f_a of the training preset."""
    return models.build_model(preset["fa_model"], num_classes=self.num_classes,
                              input_shape=self.image_shape,
                              width=preset["fa_width"], seed=seed)

  def defended(self, f_b, fb_name, epsilon=0.2, steps=13, kind="main"):
    """f_a(g(x)) trained with g on `f_b` (Sec. 3.2).

    Args:
      f_b: the transform's model.
      fb_name: the file name of f_b (identifies it in the spec).
      epsilon: Δ.
      steps: N (step size Δ/6).
      kind: "main" (Tables 2-3) or "sweep" (Table 1, Figs. 5-7) training.

    Returns:
      The trained defended model.
    """
    preset = self.training(kind)
    spec = {"kind": "defended", "f_b": fb_name, "epsilon": epsilon,
            "steps": steps, "target": preset["target"],
            **self._fa_spec(preset, self.seed)}

    def train_fn(path, backup, timer):
      model = training.defended_model(
          f_b, self.build_fa(preset, self.seed), epsilon=epsilon, steps=steps,
          target=preset["target"], seed=self.seed)
      training.train(
          model, self.train_data(preset["train_examples"], preset["batch_size"]),
          preset["epochs"], lr_drop_epoch=preset["lr_drop_epoch"],
          checkpoint_dir=backup, output=path, callbacks=[timer],
          **self._fit_kwargs(preset))

    return self._get(f"defended_d{epsilon}_n{steps}", spec, train_fn)[0]

  def plain(self, seed_offset=0):
    """f_a trained on clean images (no defense; offset 100: the surrogate)."""
    preset = self.training("main")
    seed = self.seed + seed_offset
    spec = {"kind": "plain", **self._fa_spec(preset, seed)}

    def train_fn(path, backup, timer):
      training.train(
          self.build_fa(preset, seed),
          self.train_data(preset["train_examples"], preset["batch_size"],
                          seed_offset),
          preset["epochs"], lr_drop_epoch=preset["lr_drop_epoch"],
          checkpoint_dir=backup, output=path, callbacks=[timer],
          **self._fit_kwargs(preset))

    return self._get("plain" if not seed_offset else "surrogate", spec,
                     train_fn)[0]

  def madry(self):
    """f_a with Madry et al.'s PGD adversarial training (Table 3 baseline)."""
    preset = self.training("main")
    madry = self.settings["madry"]
    spec = {"kind": "madry", **madry, **self._fa_spec(preset, self.seed)}

    def train_fn(path, backup, timer):
      training.pretrain_fb(
          self.build_fa(preset, self.seed),
          self.train_data(preset["train_examples"], preset["batch_size"]),
          preset["epochs"], adversarial=True, epsilon=madry["epsilon"],
          steps=madry["steps"], step_size=madry["step_size"], seed=self.seed,
          output=path, lr_drop_epoch=preset["lr_drop_epoch"],
          checkpoint_dir=backup, callbacks=[timer], **self._fit_kwargs(preset))

    return self._get("madry", spec, train_fn)[0]


class Experiment:
  """Shared state of one experiment: settings, models, images, cache, output.

  Args:
    name: one of `EXPERIMENTS`.
    preset: "smoke", "cpu" or "paper".
    out: results folder.
    seed: the run's seed.
    settings: resolved settings (see `resolve_settings`).
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
    self.models = Models(out, preset, settings, seed, data_dir, verbose)
    self.x, self.y = data.load_arrays(
        DATASET, f"test[:{settings['num_examples']}]", data_dir=data_dir)
    count = settings["num_examples_eot"]
    self.x_eot, self.y_eot = self.x[:count], self.y[:count]
    self.partial_path = os.path.join(self.folder, "partial.json")
    self.partial = read_json(self.partial_path, {})
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
    full = f"{key}-{digest([spec, self.settings, self.seed, self.preset])}"
    if full not in self.partial:
      started = time.perf_counter()
      value = fn()
      self.partial[full] = {"value": value,
                            "seconds": time.perf_counter() - started}
      write_json(self.partial_path, self.partial)
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
    model_fn = estimators.defended_model_fn(model, estimator, seed=self.seed,
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
        "data": DATA_NAME,
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
        "paper": PAPER.get(self.name),
        "plots": list(plots),
        **body,
    }
    path = self.path("results.json")
    write_json(path, result)
    return path


def set_random_start(model, random_start):
  """Switches the random start of every transform in `model` (Fig. 5: off)."""
  for layer in adv_layer.find_transforms(model):
    layer.random_start = bool(random_start)
  return model


def expected_transform_distance(layer, x, draws, seed, chunk=64):
  """‖x − E g(x)‖∞ and mean |x − E g(x)| per image, E over `draws` draws.

  Also returns the estimation noise of the ∞-norm: E g(x) is a mean of
  `draws` samples, so even g(x) = x + zero-mean noise gives a positive
  distance. Half the distance between the means of the two halves of the
  draws has the same variance as the full mean's error; its ∞-norm is the
  floor below which the figure is noise (the paper's 0.005 for an untrained
  f_b is at its floor with 5000 draws).

  Args:
    layer: an `AdversarialTransform`.
    x: float32 images.
    draws: samples of g per image (even).
    seed: integer seed of the draws.
    chunk: draws per transform call.

  Returns:
    dict of per-image averages: `linf`, `mean_abs`, `linf_noise_floor`.
  """
  generator = keras.random.SeedGenerator(seed)
  x = tf.convert_to_tensor(x, tf.float32)
  half = max(1, draws // 2)
  sums = [np.zeros(x.shape, np.float64), np.zeros(x.shape, np.float64)]
  for part in range(2):
    done = 0
    while done < half:
      count = min(chunk, half - done)
      tiled = tf.tile(x, [count, 1, 1, 1])
      out = np.asarray(layer.transform(tiled, seed=generator))
      sums[part] += out.reshape((count,) + tuple(x.shape)).sum(axis=0)
      done += count
  means = [s / half for s in sums]
  expected = (means[0] + means[1]) / 2
  difference = np.abs(np.asarray(x) - expected).reshape(len(x), -1)
  noise = np.abs(means[0] - means[1]).reshape(len(x), -1) / 2
  return {"linf": float(difference.max(axis=1).mean()),
          "mean_abs": float(difference.mean()),
          "linf_noise_floor": float(noise.max(axis=1).mean()),
          "images": int(len(x)), "draws": 2 * half}


def plot_lines(path, x_values, series, xlabel, title, xscale="linear"):
  """Accuracy curves (percent) against `x_values`, one line per series."""
  figure, axis = plt.subplots(figsize=(5.5, 3.8))
  for label, values in series.items():
    axis.plot(x_values, [100 * v for v in values], "o-", label=label)
  if xscale == "log":
    axis.set_xscale("log", base=2)
  axis.set(xlabel=xlabel, ylabel="accuracy (%)", ylim=(0, 100), title=title)
  axis.title.set_fontsize(8)
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def plot_bars(path, groups, series, title):
  """Grouped bars (percent): one group per `groups` entry, one bar per series."""
  figure, axis = plt.subplots(figsize=(6, 3.8))
  width = 0.8 / max(1, len(series))
  positions = np.arange(len(groups))
  for index, (label, values) in enumerate(series.items()):
    axis.bar(positions + index * width, [100 * v for v in values], width,
             label=label)
  axis.set_xticks(positions + width * (len(series) - 1) / 2)
  axis.set_xticklabels(groups, fontsize=8)
  axis.set(ylabel="accuracy (%)", ylim=(0, 100), title=title)
  axis.title.set_fontsize(8)
  axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def caption(exp, attack_text, images):
  """Plot title: attack budget, data, images, seed."""
  return f"{attack_text}; {DATA_NAME}, {images} images, seed {exp.seed}"


def bpda_text(exp, eot=None, steps=None):
  budget = exp.settings["bpda"]
  steps = steps or budget["steps"]
  step = budget["step_size"] * budget["steps"] / steps
  text = (f"PGD eps={budget['epsilon']} {steps} step{'s' if steps > 1 else ''}"
          f" of {step:.4g}")
  return text + (f", EOT {eot}" if eot else "")


# ---- The experiments -------------------------------------------------------


def main_models(exp):
  """The three models of Tables 2-3: no defense, Madry, ours (Δ 0.2, N 13)."""
  f_b, fb_name = exp.models.fb_adversarial()
  return {"No defense": exp.models.plain(), "Madry et al.": exp.models.madry(),
          "Ours": exp.models.defended(f_b, fb_name, 0.2, 13, "main")}, f_b


def suite_record(suite_result, flags):
  """The JSON record of a suite run, per-example arrays dropped."""
  record = report.report_dict(suite_result, flags)
  for row in record["attacks"]:
    row.pop("robust", None)
    row.pop("per_example_mean", None)
  for key in ("clean", "worst_case", "worst_case_white_box"):
    record[key].pop("robust", None)
    record[key].pop("per_example_mean", None)
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


def epoch_timing(exp, f_b):
  """Seconds per training epoch of the three Table 3 trainings, side by side.

  Times one `fit` epoch over the first `timing_examples` training images
  (after a one-batch warm-up) of fresh, identically initialised f_a, and
  scales to the 50,000 images of a full epoch.
  """
  preset = exp.models.training("main")
  count = exp.settings["timing_examples"]
  x, y = data.load_arrays(DATASET, f"train[:{count}]",
                          data_dir=exp.models.data_dir)
  madry = exp.settings["madry"]

  def fresh():
    return exp.models.build_fa(preset, exp.seed)

  candidates = {
      "No defense": fresh(),
      "Madry et al.": training.AdversarialTrainer(
          fresh(), epsilon=madry["epsilon"], steps=madry["steps"],
          step_size=madry["step_size"], seed=exp.seed),
      "Ours": training.defended_model(f_b, fresh(), epsilon=0.2, steps=13,
                                      target=preset["target"], seed=exp.seed),
  }
  timing = {}
  for name, model in candidates.items():
    training.compile_sgd(model, preset["learning_rate"], preset["momentum"])
    seconds = benchmark.epoch_seconds(model, x, y, preset["batch_size"])
    timing[name] = {"seconds": seconds, "images": int(len(x)),
                    "seconds_per_50k_epoch": seconds * TRAIN_IMAGES / len(x)}
  return timing


def run_table3(exp):
  """Table 3: clean and worst-case robust accuracy, time per epoch."""
  models_, f_b = main_models(exp)
  s = exp.settings
  budget = suite.Budget(chunk_size=s["chunk_size"], **s["suite"])
  rows = {}
  for name, model in models_.items():
    rows[name] = {
        "clean": exp.cached(f"clean-{name}", {}, lambda m=model: exp.clean(m)),
        "suite": exp.cached(f"suite-{name}", s["suite"],
                            lambda m=model: run_suite(exp, m, "adaptive", budget)),
    }
  timing = exp.cached("epoch_timing", {"n": s["timing_examples"]},
                      lambda: epoch_timing(exp, f_b))
  names = list(rows)
  plot = exp.path("table3.png")
  plot_bars(plot, names, {
      "clean": [rows[n]["clean"]["mean"] for n in names],
      "worst case (strict)": [rows[n]["suite"]["worst_case"]["strict_accuracy"]
                              for n in names]},
            caption(exp, f"adaptive suite eps 8/255, steps {s['suite']['steps']}"
                    f", EOT {s['suite']['eot_samples']}", s["num_examples_eot"]))
  return exp.write({"rows": rows, "epoch_timing": timing}, [plot])


def run_table1(exp):
  """Table 1: the choice of f_b."""
  s = exp.settings
  columns = {"untrained": exp.models.fb_untrained}
  for epochs in s["fb_snapshots"]:
    columns[f"{epochs} epoch{'s' if epochs > 1 else ''}"] = (
        lambda e=epochs: exp.models.fb_standard(e))
  columns["adv. trained"] = exp.models.fb_adversarial
  rows = {}
  for label, get_fb in columns.items():
    f_b, fb_name = get_fb()
    model = exp.models.defended(f_b, fb_name, 0.2, 13, "sweep")
    spec = {"f_b": fb_name}
    layer = adv_layer.find_transforms(model)[0]
    rows[label] = {
        "f_b": fb_name,
        "fb_clean": exp.cached(f"fb_clean-{fb_name}", spec,
                               lambda f=f_b: exp.clean(f, draws=1)),
        "clean": exp.cached(f"clean-{fb_name}", spec, lambda m=model: exp.clean(m)),
        "bpda_identity": exp.cached(
            f"bpda_i-{fb_name}", [spec, s["bpda"], s["bpda_i_eot"]],
            lambda m=model: exp.score_adv(m, exp.bpda_pgd(
                m, "bpda_identity", eot_samples=s["bpda_i_eot"]))),
        "distance": exp.cached(
            f"distance-{fb_name}", [spec, s["distance_images"],
                                    s["distance_draws"]],
            lambda l=layer: expected_transform_distance(
                l, exp.x[:s["distance_images"]], s["distance_draws"], exp.seed)),
    }
  labels = list(rows)
  paper = PAPER["table1"]
  paper_bpda = dict(zip(paper["columns"], paper["bpda_identity"]))
  plot = exp.path("table1.png")
  plot_bars(plot, labels, {
      "clean": [rows[k]["clean"]["mean"] for k in labels],
      "BPDA-I": [rows[k]["bpda_identity"]["mean"] for k in labels],
      "BPDA-I (paper)": [paper_bpda.get(k, float("nan")) for k in labels],
      "‖x − E g(x)‖∞ (x100 %)": [rows[k]["distance"]["linf"] for k in labels],
      "mean |x − E g(x)| (x100 %)": [rows[k]["distance"]["mean_abs"]
                                     for k in labels]},
            caption(exp, "BPDA-I " + bpda_text(exp, s["bpda_i_eot"]),
                    s["num_examples_eot"]))
  return exp.write({"rows": rows, "attack": "BPDA-I " + bpda_text(
      exp, s["bpda_i_eot"])}, [plot])


def run_fig5(exp):
  """Fig. 5: BPDA (softsign, tanh) vs N, random start of g off."""
  s = exp.settings
  f_b, fb_name = exp.models.fb_adversarial()
  points = {}
  for steps in s["fig5_steps"]:
    model = set_random_start(
        exp.models.defended(f_b, fb_name, 0.2, steps, "sweep"), False)
    spec = {"N": steps}
    point = {"clean": exp.cached(f"clean-N{steps}", spec,
                                 lambda m=model: exp.clean(m, draws=1))}
    for surrogate in ("softsign", "tanh"):
      point[surrogate] = exp.cached(
          f"bpda_{surrogate}-N{steps}", [spec, s["bpda"]],
          lambda m=model, g=surrogate: exp.score_adv(
              m, exp.bpda_pgd(m, "bpda", sign_surrogate=g), draws=1))
    points[str(steps)] = point
  steps_list = list(s["fig5_steps"])
  plot = exp.path("fig5.png")
  plot_lines(plot, steps_list, {
      "clean": [points[str(n)]["clean"]["mean"] for n in steps_list],
      "BPDA softsign": [points[str(n)]["softsign"]["mean"] for n in steps_list],
      "BPDA tanh": [points[str(n)]["tanh"]["mean"] for n in steps_list]},
             "LL-PGD steps N of g", caption(exp, "BPDA " + bpda_text(exp),
                                             s["num_examples_eot"]))
  return exp.write({"points": points, "attack": "BPDA " + bpda_text(exp),
                    "random_start": False}, [plot])


def delta_models(exp, deltas):
  """Sweep models with an adversarially trained f_b, one per Δ (N 13)."""
  f_b, fb_name = exp.models.fb_adversarial()
  return {delta: exp.models.defended(f_b, fb_name, delta, 13, "sweep")
          for delta in deltas}


def run_fig6(exp):
  """Fig. 6: clean, BPDA-I + EOT and white-box transfer vs Δ."""
  s = exp.settings
  budget = s["bpda"]
  points = {}
  for delta, model in delta_models(exp, s["deltas"]).items():
    spec = {"delta": delta}
    points[str(delta)] = {
        "clean": exp.cached(f"clean-d{delta}", spec, lambda m=model: exp.clean(m)),
        "bpda_identity": exp.cached(
            f"bpda_i-d{delta}", [spec, budget, s["bpda_i_eot"]],
            lambda m=model: exp.score_adv(m, exp.bpda_pgd(
                m, "bpda_identity", eot_samples=s["bpda_i_eot"]))),
        "whitebox_transfer": exp.cached(
            f"wt-d{delta}", [spec, budget],
            lambda m=model: exp.score_adv(m, transfer.transfer(
                transfer.classifier_model_fn(m), exp.x_eot, exp.y_eot,
                epsilon=budget["epsilon"], steps=budget["steps"],
                step_size=budget["step_size"], seed=exp.seed))),
    }
  deltas = list(s["deltas"])
  plot = exp.path("fig6.png")
  plot_lines(plot, deltas, {
      "clean": [points[str(d)]["clean"]["mean"] for d in deltas],
      "BPDA-I + EOT": [points[str(d)]["bpda_identity"]["mean"] for d in deltas],
      "white-box transfer": [points[str(d)]["whitebox_transfer"]["mean"]
                             for d in deltas]},
             "perturbation range Δ of g",
             caption(exp, bpda_text(exp, s["bpda_i_eot"]), s["num_examples_eot"]))
  return exp.write({"points": points, "attack": bpda_text(exp, s["bpda_i_eot"])},
                   [plot])


def run_fig7(exp):
  """Fig. 7: BPDA-I + EOT accuracy vs EOT samples for Δ 0.1 and 0.2."""
  s = exp.settings
  curves = {}
  for delta, model in delta_models(exp, s["fig7_deltas"]).items():
    curves[str(delta)] = {
        str(k): exp.cached(
            f"eot{k}-d{delta}", [{"delta": delta}, s["bpda"], s["fig7_steps"]],
            lambda m=model, k=k: exp.score_adv(m, exp.bpda_pgd(
                m, "bpda_identity", eot_samples=k, steps=s["fig7_steps"])))
        for k in s["fig7_eot"]}
  plot = exp.path("fig7.png")
  eot = list(s["fig7_eot"])
  plot_lines(plot, eot, {f"Δ = {d}": [curves[d][str(k)]["mean"] for k in eot]
                         for d in curves}, "EOT samples",
             caption(exp, "BPDA-I " + bpda_text(exp, steps=s["fig7_steps"]),
                     s["num_examples_eot"]), xscale="log")
  return exp.write({"curves": curves, "attack": "BPDA-I " + bpda_text(
      exp, steps=s["fig7_steps"])}, [plot])


TABLE2_ATTACKS = ("blackbox_transfer", "hop_skip_jump", "gen_attack", "square")


def run_table2(exp):
  """Table 2: black-box attacks on no defense, Madry and ours."""
  s = exp.settings
  models_, _ = main_models(exp)
  surrogate = exp.models.plain(seed_offset=100)
  budget = suite.Budget(chunk_size=s["chunk_size"], **s["table2"])
  rows = {}
  for name, model in models_.items():
    rows[name] = {
        "clean": exp.cached(f"clean-{name}", {}, lambda m=model: exp.clean(m)),
        "suite": exp.cached(
            f"blackbox-{name}", s["table2"],
            lambda m=model: run_suite(exp, m, list(TABLE2_ATTACKS), budget,
                                      surrogate)),
    }
  names = list(rows)
  series = {"clean": [rows[n]["clean"]["mean"] for n in names]}
  for attack in TABLE2_ATTACKS:
    series[attack] = [attack_row(rows[n]["suite"], attack)["mean_accuracy"]
                      for n in names]
  plot = exp.path("table2.png")
  plot_bars(plot, names, series, caption(
      exp, f"eps 8/255, transfer {s['table2']['steps']} steps, "
      f"{s['table2']['queries']} queries", s["num_examples_eot"]))
  return exp.write({"rows": rows}, [plot])


def attack_row(suite_json, name):
  """The row of attack `name` in a suite record."""
  for row in suite_json["attacks"]:
    if row["name"] == name:
      return row
  raise KeyError(f"No attack {name!r} in the suite record. Received: name={name!r}")


RUNNERS = {"table3": run_table3, "table1": run_table1, "fig5": run_fig5,
           "fig6": run_fig6, "fig7": run_fig7, "table2": run_table2}


def run_experiment(name, preset="smoke", out="runs/reproduce", seed=0,
                   num_examples=None, num_examples_eot=None, data_dir=None,
                   overrides=None, verbose=2):
  """Runs one experiment and writes `<out>/<name>/results.json` and plots.

  Args:
    name: one of `EXPERIMENTS`.
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
    raise ValueError(f"`experiment` must be one of {EXPERIMENTS}. "
                     f"Received: experiment={name!r}")
  settings = resolve_settings(preset, num_examples, num_examples_eot, overrides)
  keras.utils.set_random_seed(seed)
  exp = Experiment(name, preset, out, seed, settings, data_dir, verbose)
  return RUNNERS[name](exp)


# ---- The summary -----------------------------------------------------------


def pct(value):
  return "-" if value is None else f"{100 * value:.1f}%"


def header(result):
  """Provenance line of one experiment."""
  s = result["settings"]
  machine = result["machine"]
  main = result["training_presets"]["main"]
  return (f"Data: {result['data']}, test split, first {s['num_examples']} "
          f"images (clean) / first {s['num_examples_eot']} (attacks); preset "
          f"`{result['preset']}`, seed {result['seed']}, scored with "
          f"{s['draws']} draws of g; f_b {main['fb_model']} width "
          f"{main['fb_width']}, f_a {main['fa_model']} width {main['fa_width']}; "
          f"machine: {machine['cpu_count']} CPUs, {machine['platform']}, TF "
          f"{machine['tensorflow']}; {run_time(result)}.")


def run_time(result):
  """Evaluation and training minutes of one experiment, as summary text."""
  training_s = sum(run["seconds"] for model in result["models"].values()
                   if isinstance(model["runs"], list) for run in model["runs"])
  return (f"evaluation {result['evaluation_s'] / 60:.1f} min, training of its "
          f"{len(result['models'])} models {training_s / 60:.1f} min (models "
          "shared with other experiments counted in each)")


def training_line(result, kind):
  t = result["training_presets"][kind]
  examples = t["train_examples"] or "all 50,000"
  drop = ("constant rate" if t["lr_drop_epoch"] is None
          else f"x0.1 after epoch {t['lr_drop_epoch']}")
  return (f"{kind} models: {t['epochs']} epochs on {examples} training images, "
          f"batch {t['batch_size']}, SGD lr {t['learning_rate']} momentum "
          f"{t['momentum']}, {drop}")


def summary_table3(result):
  paper = PAPER["table3"]
  lines = ["| Method | A_std (ours) | A_std (ours, attack images, strict) | "
           "A_rob (ours, strict) | attack (ours) | "
           "A_std (paper) | A_rob (paper) | attack (paper) | s/epoch (ours, "
           "50k images) |", "|---|---|---|---|---|---|---|---|---|"]
  rows = result["rows"]
  timing = result["epoch_timing"]
  for name, row in rows.items():
    worst = row["suite"]["worst_case"]
    entries = [(name, worst, paper[name])]
    if name == "Ours":
      entries.insert(0, ("Ours (under BPDA)", row["suite"]["worst_case_white_box"],
                         paper["Ours (under BPDA)"]))
    for label, w, p in entries:
      lines.append(
          f"| {label} | {pct(row['clean']['mean'])} | "
          f"{pct(row['suite']['clean']['strict_accuracy'])} | "
          f"{pct(w['strict_accuracy'])}"
          f" | {w['strongest']} | {pct(p['clean'])} | {pct(p['robust'])} | "
          f"{p['attack']} | {timing[name]['seconds_per_50k_epoch']:.0f} |")
  budget = result["settings"]["suite"]
  lines += ["", f"Attacks: the `adaptive` suite, eps 8/255, {budget['steps']} "
            f"steps, {budget['restarts']} restart(s), EOT {budget['eot_samples']}"
            f", {budget['queries']} queries (Square). A_std is on the clean-accuracy "
            "images; A_rob and the clean figure beside it are on the (fewer) "
            "attack images, both strict over the draws of g. Epoch times: one epoch "
            f"over {next(iter(timing.values()))['images']} training images, "
            "measured side by side in one run and scaled to 50,000.",
            training_line(result, "main") + "."]
  return lines


def summary_table1(result):
  paper = PAPER["table1"]
  rows = result["rows"]
  labels = list(rows)
  paper_index = {c: i for i, c in enumerate(paper["columns"])}
  lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]

  def row(title, values):
    lines.append(f"| {title} | " + " | ".join(values) + " |")

  def paper_value(key, label, fmt):
    index = paper_index.get(label)
    return "-" if index is None else fmt(paper[key][index])

  row("f_b's own standard acc. (ours)",
      [pct(rows[k]["fb_clean"]["mean"]) for k in labels])
  row("Standard acc. (ours)", [pct(rows[k]["clean"]["mean"]) for k in labels])
  row("Standard acc. (paper)", [paper_value("clean", k, pct) for k in labels])
  row("BPDA-I acc. (ours)", [pct(rows[k]["bpda_identity"]["mean"]) for k in labels])
  row("BPDA-I acc. (paper)", [paper_value("bpda_identity", k, pct) for k in labels])
  row("‖x − E g(x)‖∞ (ours)", [f"{rows[k]['distance']['linf']:.3f}" for k in labels])
  row("noise floor of that (ours)",
      [f"{rows[k]['distance']['linf_noise_floor']:.3f}" for k in labels])
  row("‖x − E g(x)‖∞ (paper)",
      [paper_value("linf", k, lambda v: f"{v:.3f}") for k in labels])
  row("mean \\|x − E g(x)\\| (ours)",
      [f"{rows[k]['distance']['mean_abs']:.4f}" for k in labels])
  distance = next(iter(rows.values()))["distance"]
  lines += ["", f"BPDA-I: {result['attack']}. E g(x) over {distance['draws']} "
            f"draws on {distance['images']} images (paper: 5000 draws).",
            training_line(result, "sweep") + "."]
  return lines


def summary_points(result, x_label, keys):
  points = result.get("points") or {}
  lines = [f"| {x_label} | " + " | ".join(label for label, _ in keys) + " |",
           "|---" * (len(keys) + 1) + "|"]
  for x_value, point in points.items():
    lines.append(f"| {x_value} | " + " | ".join(
        pct(point[key]["mean"]) for _, key in keys) + " |")
  return lines


def summary_fig7(result):
  curves = result["curves"]
  eot = list(next(iter(curves.values())))
  lines = ["| Δ | " + " | ".join(f"EOT {k}" for k in eot) + " |",
           "|---" * (len(eot) + 1) + "|"]
  for delta, curve in curves.items():
    lines.append(f"| {delta} | " + " | ".join(pct(curve[k]["mean"]) for k in eot)
                 + " |")
  return lines


def summary_table2(result):
  paper = PAPER["table2"]
  lines = ["| Model | Clean | Transfer | HSJ | GA | Square | Clean (paper) | "
           "Transfer (paper) | HSJ (paper) | GA (paper) |",
           "|---" * 10 + "|"]
  for name, row in result["rows"].items():
    ours = [pct(attack_row(row["suite"], a)["mean_accuracy"])
            for a in TABLE2_ATTACKS]
    p = paper[name]
    lines.append(f"| {name} | {pct(row['clean']['mean'])} | " + " | ".join(ours)
                 + f" | {pct(p['clean'])} | {pct(p['transfer'])} | "
                 f"{pct(p['hsj'])} | {pct(p['ga'])} |")
  budget = result["settings"]["table2"]
  lines += ["", f"eps 8/255; transfer: PGD {budget['steps']} steps on an "
            f"independently trained f_a (another seed); query attacks: "
            f"{budget['queries']} queries per image (paper: foolbox defaults).",
            training_line(result, "main") + "."]
  return lines


SECTIONS = {
    "table3": ("Table 3: comparison on CIFAR-10", summary_table3),
    "table1": ("Table 1: choosing f_b", summary_table1),
    "fig5": ("Figure 5: BPDA vs LL-PGD steps N (random start of g off)",
             lambda r: summary_points(r, "N", [("clean", "clean"),
                                               ("BPDA softsign", "softsign"),
                                               ("BPDA tanh", "tanh")])
             + ["", f"Attack: {r['attack']}.", training_line(r, "sweep") + "."]),
    "fig6": ("Figure 6: accuracy vs Δ",
             lambda r: summary_points(r, "Δ", [
                 ("clean", "clean"), ("BPDA-I + EOT", "bpda_identity"),
                 ("white-box transfer", "whitebox_transfer")])
             + ["", f"Attack: {r['attack']}.", training_line(r, "sweep") + "."]),
    "fig7": ("Figure 7: accuracy vs EOT samples",
             lambda r: summary_fig7(r) + ["", f"Attack: {r['attack']}.",
                                          training_line(r, "sweep") + "."]),
    "table2": ("Table 2: black-box attacks", summary_table2),
}


def summary_markdown(out, relative_to):
  """Markdown of every finished experiment under `out`.

  Args:
    out: results folder.
    relative_to: folder the Markdown file lives in (for plot links).

  Returns:
    The Markdown text.
  """
  lines = ["# Reproduction results", "",
           "Generated by `python -m examples.reproduce --experiment=summary`. "
           "Accuracies are means over (image, draw) pairs unless marked strict "
           "(correct in every draw); every attack is L∞.", ""]
  for name in EXPERIMENTS:
    result = read_json(os.path.join(out, name, "results.json"))
    title, render = SECTIONS[name]
    lines += [f"## {title}", ""]
    if result is None:
      lines += ["Not run yet.", ""]
      continue
    if isinstance(PAPER[name], str):
      lines += [f"Paper: {PAPER[name]}", ""]
    lines += [header(result), ""] + render(result) + [""]
    for plot in result["plots"]:  # Found beside results.json, wherever moved.
      local = os.path.join(out, name, os.path.basename(plot))
      lines.append(f"![{name}]({os.path.relpath(local, relative_to)})")
    lines += ["", f"Command: `python -m examples.reproduce --experiment={name} "
              f"--preset={result['preset']} --seed={result['seed']} "
              f"--out={result['out']}`", ""]
  return "\n".join(lines)


def write_summary(out, path=None):
  """Writes the summary Markdown (default `<out>/RESULTS.md`); returns its path."""
  path = path or os.path.join(out, "RESULTS.md")
  text = summary_markdown(out, os.path.dirname(os.path.abspath(path)))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


def main(argv):
  del argv
  if FLAGS.experiment == "summary":
    print(f"Wrote {write_summary(FLAGS.out, FLAGS.summary_path)}")
    return
  path = run_experiment(
      FLAGS.experiment, FLAGS.preset, FLAGS.out, FLAGS.seed, FLAGS.num_examples,
      FLAGS.num_examples_eot, FLAGS.data_dir, parse_overrides(FLAGS.set),
      FLAGS.verbose)
  print(f"Wrote {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
