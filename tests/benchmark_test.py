"""Tests of examples/benchmark.py's functions (no assertions on speed)."""

from unittest import mock

import keras
import numpy as np
import tensorflow as tf

import adv_layer
from adv_layer import models
from adv_layer import transform
from examples import benchmark

SHAPE = (4, 4, 1)


def tiny_f_b(seed=0):
  """Conv(2 filters, 3x3, same) -> flatten -> dense(3): FLOPs worked by hand."""
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input(SHAPE),
      keras.layers.Conv2D(2, 3, padding="same", name="conv"),
      keras.layers.ReLU(),
      keras.layers.Flatten(),
      keras.layers.Dense(3, name="logits"),
  ])


def tiny_images(batch=4, seed=0):
  return np.random.default_rng(seed).uniform(
      0.2, 0.8, (batch,) + SHAPE).astype(np.float32)


class FlopCountTest(tf.test.TestCase):

  def test_tiny_model_by_hand(self):
    # conv: 2·H·W·kh·kw·Cin·Cout = 2·4·4·3·3·1·2 = 576; dense: 2·32·3 = 192.
    self.assertEqual(benchmark.layer_flops(tiny_f_b()),
                     [("conv", 576), ("logits", 192)])
    # 14 forward + 13 input-gradient passes, each of 768 FLOPs.
    self.assertEqual(benchmark.transform_flops(tiny_f_b(), steps=13), 27 * 768)

  def test_paper_small_vgg(self):
    # Convs 64-M-128-M-64-64-M-128-128-M on 32x32x3, then 512-512-10:
    # 3,538,944 + 37,748,736 + 9,437,184 + 4,718,592 + 2,359,296 + 4,718,592
    # + 524,288 + 524,288 + 10,240 = 63,580,160 FLOPs per forward pass.
    f_b = models.small_vgg(seed=0)
    self.assertEqual(sum(f for _, f in benchmark.layer_flops(f_b)), 63_580_160)
    self.assertEqual(benchmark.transform_flops(f_b, steps=13), 27 * 63_580_160)


class TransformTimingTest(tf.test.TestCase):

  def test_transform_fn_matches_ll_pgd_and_repeats(self):
    f_b, x = tiny_f_b(), tf.constant(tiny_images())
    g = benchmark.transform_fn(f_b, epsilon=0.2, steps=3, seed=5)
    expected = transform.ll_pgd(f_b, x, epsilon=0.2, steps=3, seed=5)
    self.assertAllClose(g(x), expected, atol=1e-6, rtol=0)
    self.assertAllEqual(g(x), g(x))

  def test_best_seconds_warms_up_and_keeps_the_fastest_call(self):
    # The first (warm-up) call is untimed; the clock then reads two calls
    # of 0.06 s and 0.02 s.
    clock = iter([10.0, 10.06, 20.0, 20.02])
    calls = []
    def work():
      calls.append(1)
      return 0
    with mock.patch.object(benchmark.time, "perf_counter",
                           side_effect=lambda: next(clock)):
      seconds = benchmark.best_seconds(work, repeats=2)
    self.assertLen(calls, 3)
    self.assertAllClose(seconds, 0.02)

  def test_best_seconds_without_warm_up_times_every_call(self):
    calls = []
    seconds = benchmark.best_seconds(lambda: calls.append(1) or 0, repeats=2,
                                     warm_up=False)
    self.assertLen(calls, 2)
    self.assertGreaterEqual(seconds, 0)

  def test_rates_divide_the_work_by_the_best_time(self):
    with mock.patch.object(benchmark, "best_seconds", return_value=0.5):
      self.assertEqual(benchmark.matmul_flop_rate(size=64, repeats=1),
                       2 * 64**3 / 0.5)
      images_per_s, seconds = benchmark.transform_throughput(
          None, tf.constant(tiny_images()), repeats=1)
    self.assertEqual((images_per_s, seconds), (8.0, 0.5))

  def test_run_benchmark_reports_every_figure(self):
    results = benchmark.run_benchmark(
        tiny_f_b(), tf.constant(tiny_images()), epsilon=0.2, steps=2, repeats=1,
        matmul_size=64, jit_compile=False, bf16_batch_size=2, seed=0)
    self.assertEqual(results["batch_size"], 4)
    self.assertEqual(results["bf16_batch_size"], 2)
    self.assertEqual(results["transform_flops_per_image"], 5 * 768)
    self.assertAllClose(results["eager_over_compiled"],
                        results["layer_eager_images_per_s"] /
                        results["layer_compiled_images_per_s"])
    self.assertIsNotNone(results["xla_images_per_s"])
    self.assertAllClose(results["fraction_of_matmul"],
                        results["transform_flops_per_s"] /
                        results["matmul_flops_per_s"])
    self.assertBetween(results["bf16_pixel_agreement"], 0.0, 1.0)
    self.assertBetween(results["bf16_sign_agreement"], 0.0, 1.0)
    self.assertGreater(results["bf16_images_per_s"], 0)


class BFloat16Test(tf.test.TestCase):

  def test_copy_computes_in_bfloat16_with_the_same_weights(self):
    f_b = tiny_f_b()
    copy = benchmark.bfloat16_copy(f_b)
    self.assertEqual(copy.get_layer("conv").compute_dtype, "bfloat16")
    self.assertEqual(f_b.get_layer("conv").compute_dtype, "float32")
    self.assertFalse(copy.trainable)
    for a, b in zip(f_b.get_weights(), copy.get_weights()):
      self.assertAllEqual(a, b)
    x = tiny_images()
    # bfloat16 keeps 8 significant bits: logits agree to about 1%.
    self.assertAllClose(tf.cast(copy(x), tf.float32), f_b(x), atol=0.05, rtol=0.02)

  def test_a_model_agrees_with_itself_in_sign(self):
    f_b = tiny_f_b()
    self.assertEqual(
        benchmark.first_step_sign_agreement(f_b, f_b, tiny_images()), 1.0)

  def test_pixel_agreement(self):
    self.assertEqual(benchmark.pixel_agreement([1.0, 2.0, 3.0, 4.0],
                                               [1.0, 2.5, 3.0, 4.5]), 0.5)


class TrainingComparisonTest(tf.test.TestCase):

  def test_side_by_side_epochs(self):
    x, y = benchmark.load_images("random", 8, seed=0)
    f_b = models.small_vgg(width=0.0625, seed=0)
    seconds = benchmark.training_comparison(
        f_b, "small_cnn", x, y, epsilon=0.2, steps=1, pgd_epsilon=8 / 255,
        pgd_step_size=2 / 255, pgd_steps=1, batch_size=4, seed=0)
    self.assertEqual(set(seconds), {"defended", "pgd"})
    self.assertGreater(min(seconds.values()), 0)


class AttackRateTest(tf.test.TestCase):

  def test_counts_every_pass_of_the_timed_attack(self):
    x = benchmark.load_images("random", 3, seed=0)[0]
    f_b = models.small_vgg(width=0.0625, seed=0)
    rate = benchmark.attack_rate(f_b, "small_cnn", x, epsilon=0.2, steps=2,
                                 eot_samples=2, repeats=1, seed=0)
    self.assertEqual((rate["images"], rate["eot_samples"]), (3, 2))
    # 2 PGD steps + the final check = 3 EOT gradients of 3 images x 2 draws,
    # each draw of g 1 + 2 passes of f_b.
    self.assertAllClose(rate["f_b_passes_per_s"] * rate["seconds"],
                        3 * 3 * 2 * 3)


class RealEvaluationTest(tf.test.TestCase):

  def defended(self, sequential):
    f_b = models.small_vgg(width=0.0625, seed=0)
    layers = [adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=1, seed=0),
              benchmark.build_f_a("small_cnn", (32, 32, 3), seed=0)]
    if sequential:
      return keras.Sequential([keras.Input((32, 32, 3))] + layers)
    inputs = keras.Input((32, 32, 3))
    return keras.Model(inputs, layers[1](layers[0](inputs)))

  def test_counts_the_attack_beside_g_and_f_a(self):
    x, y = benchmark.load_test_images("random", 3, seed=0)
    for sequential in (True, False):
      real = benchmark.real_evaluation(
          self.defended(sequential), x, y, "apgd_ce_bpda_identity", steps=1,
          eot_samples=2, draws=2, repeats=1, attack_repeats=2, seed=0)
      # APGD: the class probe (1 image), then 1 + 1 EOT gradients of 3
      # images x 2 draws; each draw of g is 1 + 1 passes of f_b.
      self.assertEqual(real["attack_model_passes"], 1 + 2 * 3 * 2)
      self.assertEqual(real["attack_f_b_passes"], 2 * (1 + 2 * 3 * 2))
      self.assertEqual(real["batch"], 6)
      self.assertLen(real["attack_seconds"], 2)
      for crafting, whole in zip(real["attack_seconds"],
                                 real["run_attack_seconds"]):
        self.assertLess(crafting, whole)
      elapsed = min(real["attack_seconds"])
      self.assertAllClose(real["attack_f_b_passes_per_s"] * elapsed, 26)
      self.assertAllClose(real["fraction_of_g"] * real["g_f_b_passes_per_s"],
                          real["attack_f_b_passes_per_s"])
      self.assertAllClose(
          real["floor_seconds"],
          26 / real["g_f_b_passes_per_s"] + 13 / real["f_a_images_per_s"])
      self.assertAllClose(real["fraction_of_floor"],
                          real["floor_seconds"] / elapsed)

  def test_classifier_behind_the_transform_shares_its_weights(self):
    model = self.defended(sequential=False)
    f_a = benchmark.classifier_behind(model, model.layers[1])
    x = tf.constant(tiny_images_rgb())
    self.assertAllEqual(f_a(x), model.layers[2](x))

  def test_refuses_a_model_whose_transform_does_not_read_its_input(self):
    f_b = models.small_vgg(width=0.0625, seed=0)
    model = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Identity(),
        adv_layer.AdversarialTransform(f_b, epsilon=0.2, steps=1, seed=0),
        benchmark.build_f_a("small_cnn", (32, 32, 3), seed=0)])
    x, y = benchmark.load_test_images("random", 2, seed=0)
    with self.assertRaisesRegex(ValueError, "one AdversarialTransform reading"):
      benchmark.real_evaluation(model, x, y, "apgd_ce_bpda_identity", 1, 1, 1,
                                1, 1, 0)

  def test_table_rows(self):
    real = {"g_f_b_passes_per_s": 1232.0, "batch": 256, "transform_steps": 13,
            "f_a_images_per_s": 200.0, "attack": "apgd_ce_bpda_identity",
            "images": 64, "steps": 5, "eot_samples": 4, "draws": 4,
            "attack_f_b_passes": 21518, "attack_model_passes": 1537,
            "attack_seconds": [30.0, 28.0], "run_attack_seconds": [33.0, 31.0],
            "attack_f_b_passes_per_s": 768.5,
            "fraction_of_g": 0.62, "floor_seconds": 25.14,
            "fraction_of_floor": 0.90}
    table = benchmark.format_table(benchmark.real_rows(real))
    self.assertIn("21518 f_b + 1537 model passes in 30.0, 28.0 s (with "
                  "scoring: 33.0, 31.0 s)", table)
    self.assertIn("768 f_b passes/s = 0.62 of g's (target >= 0.6)", table)
    self.assertIn("25.1 s (g + f_a alone): attack at 0.90 of it", table)


def tiny_images_rgb(batch=2, seed=0):
  return np.random.default_rng(seed).uniform(
      0, 1, (batch, 32, 32, 3)).astype(np.float32)


class RealModelFlagTest(tf.test.TestCase):

  def test_zoo_name_bare_name_and_path_load_the_same_model(self):
    name = "cifar10/small_vgg_fgsm_rs"
    with mock.patch.object(benchmark.preflight, "load_model",
                           side_effect=lambda spec, flag: (spec, flag)):
      self.assertEqual(benchmark.load_real_model("zoo:" + name),
                       ("zoo:" + name, "real_model"))
      # The flag's older form, a bare published name, still works.
      self.assertEqual(benchmark.load_real_model(name),
                       ("zoo:" + name, "real_model"))
      self.assertEqual(benchmark.load_real_model("runs/m.keras"),
                       ("runs/m.keras", "real_model"))
    with self.assertRaisesRegex(FileNotFoundError, "real_model"):
      benchmark.load_real_model("no/such/model.keras")


class ReportTest(tf.test.TestCase):

  def test_random_images_repeat_under_a_seed(self):
    x, y = benchmark.load_images("random", 3, seed=7)
    self.assertEqual(x.shape, (3, 32, 32, 3))
    self.assertEqual(x.dtype, np.float32)
    self.assertAllInRange(x, 0.0, 1.0)
    self.assertAllInRange(y, 0, 9)
    self.assertAllEqual(x, benchmark.load_images("random", 3, seed=7)[0])

  def test_table_names_machine_and_target(self):
    results = {
        "matmul_flops_per_s": 100e9, "transform_flops_per_image": 1.7e9,
        "transform_images_per_s": 20.0, "transform_seconds_per_batch": 12.8,
        "transform_flops_per_s": 34e9, "fraction_of_matmul": 0.34,
        "folded_images_per_s": 22.0, "folded_fraction_of_matmul": 0.374,
        "layer_eager_images_per_s": 19.0, "layer_compiled_images_per_s": 20.0,
        "eager_over_compiled": 0.95, "xla_images_per_s": 25.0,
        "epoch_seconds": {"defended": 10.0, "pgd": 4.0}, "steps": 13,
        "attack": {"f_b_passes_per_s": 224.0, "images": 128,
                   "eot_samples": 2, "seconds": 3.0},
    }
    info = benchmark.machine_info()
    self.assertEqual(set(info), {"cpu", "cores", "tensorflow", "keras", "oneDNN"})
    table = benchmark.format_table(
        benchmark.results_rows(info, {"data": "random"}, results))
    self.assertIn(tf.__version__, table)
    self.assertIn("= 34.0% of matmul (target >= 80%)", table)
    self.assertIn("(14 fwd + 13 input-grad passes", table)
    results["steps"] = 5  # --steps=5: the counts follow.
    self.assertIn("(6 fwd + 5 input-grad passes", benchmark.format_table(
        benchmark.results_rows(info, {"data": "random"}, results)))
    self.assertIn("eager / compiled = 0.95, target >= 0.9", table)
    self.assertIn("22.0 images/s = 37.4% of matmul (1.10x unfolded", table)
    self.assertIn("25.0 images/s (the layer opts out of XLA", table)
    self.assertIn("defended / PGD = 2.50", table)
    # 20 images/s x 14 passes = 280 f_b passes/s; 224 / 280 = 0.8.
    self.assertIn("224 f_b passes/s on 128 images x EOT 2; transform 280 f_b "
                  "passes/s: ratio 0.80 (target >= 0.8)", table)


if __name__ == "__main__":
  tf.test.main()
