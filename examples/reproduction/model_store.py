"""Trains each model of the reproduction once, stores it and reloads it."""

import os
import time

import keras

# Registers AdversarialTransform for load_model.
import adv_layer  # pylint: disable=unused-import
from adv_layer import data
from adv_layer import models
from adv_layer import training
from attacks import report
from examples.reproduction import presets
from examples.reproduction import storage


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
    self.image_shape, self.num_classes = data.dataset_spec(presets.DATASET,
                                                           data_dir)

  def training(self, kind):
    """The training preset with `main_training` or `sweep_training` applied."""
    return training.get_preset(self.preset, **self.settings[f"{kind}_training"])

  def train_data(self, train_examples, batch_size, seed_offset=0):
    return data.load_tfds(presets.DATASET,
                          data.first_examples("train", train_examples),
                          batch_size, training=True, data_dir=self.data_dir,
                          seed=self.seed + seed_offset)

  def _paths(self, name, spec):
    key = f"{name}-{storage.digest(spec)}"
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
      info = storage.read_json(sidecar,
                               {"spec": spec, "path": path, "runs": []})
      info["runs"].append({"seconds": time.perf_counter() - start,
                           "epoch_seconds": timer.seconds,
                           "machine": report.machine_info()})
      storage.write_json(sidecar, info)
    file_name = os.path.basename(path)
    self.used[file_name] = storage.read_json(
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
      training.train_classifier(
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
      training.train_classifier(
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
    madry = training.madry_settings(preset)
    spec = {"kind": "madry", **madry, **self._fa_spec(preset, self.seed)}

    def train_fn(path, backup, timer):
      training.train_classifier(
          self.build_fa(preset, self.seed),
          self.train_data(preset["train_examples"], preset["batch_size"]),
          preset["epochs"], adversarial=True, epsilon=madry["epsilon"],
          steps=madry["steps"], step_size=madry["step_size"], seed=self.seed,
          output=path, lr_drop_epoch=preset["lr_drop_epoch"],
          checkpoint_dir=backup, callbacks=[timer], **self._fit_kwargs(preset))

    return self._get("madry", spec, train_fn)[0]


def main_models(exp):
  """The three models of Tables 2-3: no defense, Madry, ours (Δ 0.2, N 13)."""
  f_b, fb_name = exp.models.fb_adversarial()
  return {"No defense": exp.models.plain(), "Madry et al.": exp.models.madry(),
          "Ours": exp.models.defended(f_b, fb_name, 0.2, 13, "main")}, f_b


def delta_models(exp, deltas):
  """Sweep models with an adversarially trained f_b, one per Δ (N 13)."""
  f_b, fb_name = exp.models.fb_adversarial()
  return {delta: exp.models.defended(f_b, fb_name, delta, 13, "sweep")
          for delta in deltas}
