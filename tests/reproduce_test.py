"""Tests of examples/reproduction/: settings, distances, a tiny run, summary."""

import json
import os
import shlex

import keras
import numpy as np
import tensorflow as tf

import adv_layer
from examples.reproduction import markdown
from examples.reproduction import presets
from examples.reproduction import runner
from examples.reproduction import storage
from examples.reproduction import summary
from examples.reproduction import table1

# The smallest end-to-end run: Fig. 5 with one N, a few images, one PGD step.
TINY = dict(fig5_steps=[1], fb_train_examples=64,
            sweep_training=dict(train_examples=64, test_examples=8,
                                batch_size=32),
            bpda=dict(epsilon=0.031, steps=1, step_size=0.1))


class SettingsTest(tf.test.TestCase):

  def test_overrides_and_image_counts_apply(self):
    settings = presets.resolve_settings("cpu", num_examples=1200,
                                        overrides={"bpda_i_eot": 8})
    self.assertEqual(settings["num_examples"], 1200)
    self.assertEqual(settings["num_examples_eot"], 200)
    self.assertEqual(settings["bpda_i_eot"], 8)
    self.assertEqual(presets.SETTINGS["cpu"]["bpda_i_eot"], 4)  # Unchanged.

  def test_cpu_preset_meets_the_image_floors(self):
    settings = presets.SETTINGS["cpu"]
    self.assertGreaterEqual(settings["num_examples"], 1000)
    self.assertGreaterEqual(settings["num_examples_eot"], 200)

  def test_bad_settings_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: preset='gpu'"):
      presets.resolve_settings("gpu")
    with self.assertRaisesRegex(ValueError, "Received: nope=1"):
      presets.resolve_settings("smoke", overrides={"nope": 1})
    with self.assertRaisesRegex(ValueError, "num_examples_eot=40"):
      presets.resolve_settings("smoke", num_examples=20, num_examples_eot=40)
    with self.assertRaisesRegex(ValueError, "Received: set='fig5_steps'"):
      presets.parse_overrides(["fig5_steps"])
    with self.assertRaisesRegex(ValueError, "Received: experiment='fig9'"):
      runner.run_experiment("fig9")

  def test_summary_command_is_the_whole_command(self):
    settings = presets.resolve_settings("smoke", num_examples=8,
                                        num_examples_eot=4, overrides=TINY)
    result = {"preset": "smoke", "seed": 0, "out": "runs/r",
              "settings": settings,
              "images": {"num_examples": 8, "num_examples_eot": 4}}
    command = summary.command_line("fig5", result)
    self.assertStartsWith(command, "python -m examples.reproduce "
                          "--experiment=fig5 --preset=smoke --seed=0 "
                          "--num_examples=8 --num_examples_eot=4 ")
    self.assertIn("'--set=fig5_steps=[1]'", command)
    self.assertEndsWith(command, " --out=runs/r")
    # Run as written, the command's flags give the same settings back.
    argv = shlex.split(command)
    sets = [a[len("--set="):] for a in argv if a.startswith("--set=")]
    self.assertEqual(presets.resolve_settings(
        "smoke", 8, 4, presets.parse_overrides(sets)), settings)

  def test_parse_overrides_reads_json_and_keeps_text(self):
    self.assertEqual(
        presets.parse_overrides(["fig5_steps=[1, 13]", "name=abc", "x=0.5"]),
        {"fig5_steps": [1, 13], "name": "abc", "x": 0.5})

  def test_digest_ignores_key_order_and_sees_values(self):
    self.assertEqual(storage.digest({"a": 1, "b": 2}),
                     storage.digest({"b": 2, "a": 1}))
    self.assertNotEqual(storage.digest({"a": 1}), storage.digest({"a": 2}))


def constant_f_b():
  """f_b with zero weights: constant logits, so g is a pure random start."""
  inputs = keras.Input((4, 4, 1))
  flat = keras.layers.Flatten()(inputs)
  logits = keras.layers.Dense(3, kernel_initializer="zeros")(flat)
  return keras.Model(inputs, logits)


class DistanceTest(tf.test.TestCase):

  def test_without_random_start_g_is_deterministic(self):
    # Zero gradient: sign(0) = 0, so g(x) = x exactly and every figure is 0.
    layer = adv_layer.AdversarialTransform(constant_f_b(), epsilon=0.2, steps=2,
                                           random_start=False)
    x = np.full((3, 4, 4, 1), 0.5, np.float32)
    result = table1.expected_transform_distance(layer, x, draws=8, seed=0)
    self.assertEqual(result["linf"], 0.0)
    self.assertEqual(result["mean_abs"], 0.0)
    self.assertEqual(result["linf_noise_floor"], 0.0)
    self.assertEqual(result["draws"], 8)

  def test_random_start_alone_is_noise_at_its_floor(self):
    # g(x) = x + U[-0.2, 0.2]: E g(x) = x, so the measured distance is pure
    # estimation noise, of the size of its noise floor and far below 0.2.
    layer = adv_layer.AdversarialTransform(constant_f_b(), epsilon=0.2, steps=2)
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    result = table1.expected_transform_distance(layer, x, draws=400, seed=0,
                                                chunk=100)
    self.assertLess(result["linf"], 0.05)
    self.assertGreater(result["linf"], 0.0)
    self.assertLess(result["linf"], 3 * result["linf_noise_floor"])
    self.assertEqual(
        result, table1.expected_transform_distance(layer, x, 400, 0, 100))


class EndToEndTest(tf.test.TestCase):

  def test_fig5_then_summary(self):
    out = self.get_temp_dir()
    path = runner.run_experiment("fig5", "smoke", out, seed=0, num_examples=8,
                                 num_examples_eot=4, overrides=TINY,
                                 verbose=0)
    with open(path) as f:
      result = json.load(f)
    self.assertEqual(result["data"], "CIFAR-10 (JPEG copy)")
    self.assertEqual(result["images"]["num_examples"], 8)
    self.assertEqual(result["settings"]["fig5_steps"], [1])
    point = result["points"]["1"]
    self.assertEqual(point["clean"]["images"], 8)
    for surrogate in ("softsign", "tanh"):
      self.assertEqual(point[surrogate]["images"], 4)
      self.assertBetween(point[surrogate]["mean"], 0.0, 1.0)
    for plot in result["plots"]:
      with open(plot, "rb") as f:
        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
    # Two stored models (f_b, the defended model) with their sidecars.
    self.assertLen(result["models"], 2)
    self.assertGreater(result["evaluation_s"], 0.0)
    stored = os.listdir(os.path.join(out, "checkpoints"))
    self.assertLen([n for n in stored if n.endswith(".keras")], 2)
    # A rerun reuses the models and the cached evaluation: same numbers.
    again = runner.run_experiment("fig5", "smoke", out, seed=0,
                                  num_examples=8, num_examples_eot=4,
                                  overrides=TINY, verbose=0)
    with open(again) as f:
      self.assertEqual(json.load(f)["points"], result["points"])

    summary_path = summary.write_summary(out, os.path.join(out, "RESULTS.md"))
    with open(summary_path) as f:
      text = f.read()
    self.assertIn("## Figure 5", text)
    self.assertIn("| 1 | " + markdown.pct(point["clean"]["mean"]), text)
    self.assertIn("![fig5](fig5/fig5.png)", text)
    self.assertIn("CIFAR-10 (JPEG copy)", text)
    self.assertIn("training of its 2 models", text)
    self.assertIn(f"`{summary.command_line('fig5', result)}`", text)
    self.assertIn("--preset=smoke --seed=0 --num_examples=8 "
                  "--num_examples_eot=4 ", text)
    self.assertIn(f" --out={out}`", text)
    self.assertIn("## Table 3: comparison on CIFAR-10\n\nNot run yet.", text)

  def test_table1_reruns_from_scratch_to_the_same_numbers(self):
    # Table 1 trains f_b with plain `fit` (a compiled f_b) and snapshots it;
    # two runs in fresh folders must agree exactly: every seed is fixed.
    tiny = dict(TINY, fb_snapshots=[1], bpda_i_eot=1, distance_images=2,
                distance_draws=4)
    rows = []
    for run in ("first", "second"):
      out = os.path.join(self.get_temp_dir(), run)
      path = runner.run_experiment("table1", "smoke", out, seed=0,
                                   num_examples=8, num_examples_eot=4,
                                   overrides=tiny, verbose=0)
      with open(path) as f:
        rows.append(json.load(f)["rows"])
    self.assertEqual(list(rows[0]), ["untrained", "1 epoch", "adv. trained"])
    for row in rows[0].values():
      self.assertEqual(row["clean"]["images"], 8)
      self.assertEqual(row["fb_clean"]["draws"], 1)
      self.assertEqual(row["bpda_identity"]["images"], 4)
      self.assertBetween(row["distance"]["linf"], 0.0, 0.2 + 1e-6)
    self.assertEqual(rows[0], rows[1])


if __name__ == "__main__":
  tf.test.main()
