"""Tests of the `AdversarialTransform` layer contract."""

import os
import subprocess
import sys
import textwrap
import threading
from unittest import mock

from absl.testing import parameterized
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import adv_layer
from adv_layer import transform
from adv_layer.layer import AdversarialTransform

SHAPE = (4, 4, 1)
CLASSES = 3


def tiny_f_b(seed=0, activation=None):
  """A small fixed-weight f_b with batch norm (logits out unless `activation`)."""
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input(SHAPE),
      keras.layers.Conv2D(4, 3, padding="same"),
      keras.layers.BatchNormalization(),
      keras.layers.Activation("tanh"),
      keras.layers.Flatten(),
      keras.layers.Dense(CLASSES, activation=activation),
  ])


def tiny_data(batch=8, seed=0):
  """Images in (0.1, 0.9) and labels."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.1, 0.9, size=(batch,) + SHAPE).astype(np.float32)
  y = (np.arange(batch) % CLASSES).astype(np.int32)
  return x, y


def tiny_f_a():
  return [keras.layers.Flatten(), keras.layers.Dense(CLASSES, name="f_a_dense")]


class Defended(keras.Model):
  """A subclassed f_a(g(x))."""

  def __init__(self, transform_layer, **kwargs):
    super().__init__(**kwargs)
    self.transform_layer = transform_layer
    self.flatten, self.dense = tiny_f_a()

  def call(self, inputs, training=None):
    return self.dense(self.flatten(self.transform_layer(inputs, training=training)))


def defended_model(kind, layer):
  """f_a(g(x)) as a Sequential, functional or subclassed model, compiled."""
  if kind == "sequential":
    model = keras.Sequential([keras.Input(SHAPE), layer] + tiny_f_a())
  elif kind == "functional":
    inputs = keras.Input(SHAPE)
    outputs = layer(inputs)
    for f_a_layer in tiny_f_a():
      outputs = f_a_layer(outputs)
    model = keras.Model(inputs, outputs)
  else:
    model = Defended(layer)
  model.compile(
      optimizer=keras.optimizers.SGD(0.1),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def weights_of(model):
  """Copies of every weight (trainable or not, e.g. batch-norm statistics)."""
  return [w.numpy().copy() for w in model.weights]


class ModelKindsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("sequential", "sequential"), ("functional", "functional"),
      ("subclassed", "subclassed"))
  def test_fit_trains_f_a_only_and_predict_applies_g(self, kind):
    f_b = tiny_f_b()
    layer = AdversarialTransform(f_b, epsilon=0.2, steps=3, random_start=False)
    model = defended_model(kind, layer)
    x, y = tiny_data()
    f_b_before = weights_of(f_b)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    for before, after in zip(f_b_before, weights_of(f_b)):
      self.assertAllEqual(before, after)
    dense = model.get_layer("f_a_dense") if kind != "subclassed" else model.dense
    self.assertNotAllEqual(dense.kernel.numpy(), 0.0)
    expected = dense(keras.layers.Flatten()(transform.ll_pgd(
        f_b, x, epsilon=0.2, steps=3, random_start=False)))
    predicted = model.predict(x, verbose=0)
    self.assertAllClose(predicted, expected, rtol=0, atol=1e-5)
    undefended = dense(keras.layers.Flatten()(x)).numpy()
    self.assertGreater(np.abs(predicted - undefended).max(), 1e-3)


class LayerContractTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.x, self.y = tiny_data()

  def test_runs_in_training_and_inference(self):
    f_b = tiny_f_b()
    layer = AdversarialTransform(f_b, steps=3, random_start=False)
    reference = transform.ll_pgd(f_b, self.x, steps=3, random_start=False)
    self.assertAllEqual(layer(self.x, training=True), reference)
    self.assertAllEqual(layer(self.x, training=False), reference)
    self.assertGreater(np.abs(reference.numpy() - self.x).max(), 0.1)

  def test_predict_draws_a_fresh_random_start_per_call(self):
    model = defended_model("sequential", AdversarialTransform(tiny_f_b(), steps=3, seed=1))
    first, second = (model.predict(self.x, verbose=0) for _ in range(2))
    self.assertGreater(np.abs(first - second).max(), 1e-4)

  def test_output_has_no_gradient_path_to_input(self):
    layer = AdversarialTransform(tiny_f_b(), steps=2, seed=0)
    x = tf.constant(self.x)
    with tf.GradientTape() as tape:
      tape.watch(x)
      total = tf.reduce_sum(layer(x))
    self.assertIsNone(tape.gradient(total, x))

  def test_fit_and_evaluate_with_a_compiled_f_b_loaded_from_disk(self):
    # A pretrained f_b usually comes back compiled, with unbuilt metrics;
    # they must not become metrics of the defended model (fit used to fail
    # with "Cannot get result() since the metric has not yet been built").
    f_b = tiny_f_b()
    f_b.compile(optimizer="sgd", metrics=["accuracy"],
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    path = os.path.join(self.get_temp_dir(), "f_b.keras")
    f_b.save(path)
    loaded = keras.saving.load_model(path)
    self.assertTrue(loaded.compiled)
    model = defended_model("functional", AdversarialTransform(loaded, steps=2, seed=0))
    history = model.fit(self.x, self.y, batch_size=4, epochs=1, verbose=0)
    self.assertEqual(set(history.history), {"loss"})
    self.assertEqual(set(model.evaluate(self.x, self.y, verbose=0, return_dict=True)),
                     {"loss"})

  def test_f_b_stays_frozen_when_outer_model_is_set_trainable(self):
    f_b = tiny_f_b()
    model = defended_model("sequential", AdversarialTransform(f_b, steps=2, seed=0))
    model.trainable = False
    model.trainable = True
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    self.assertFalse(f_b.trainable)
    f_b_ids = {id(w) for w in f_b.weights}
    self.assertFalse(any(id(w) in f_b_ids for w in model.trainable_weights))
    self.assertLen(model.trainable_weights, 2)  # f_a's kernel and bias.
    before = weights_of(f_b)
    model.fit(self.x, self.y, batch_size=4, epochs=1, verbose=0)
    for b, a in zip(before, weights_of(f_b)):
      self.assertAllEqual(b, a)

  def test_config_round_trip(self):
    f_b = tiny_f_b()
    layer = AdversarialTransform(
        f_b, epsilon=0.1, steps=4, step_size=0.03, target="random",
        random_start=False, value_range=(-1.0, 1.0), seed=9, pin_seed=True,
        clip_to_range=False, name="g")
    config = layer.get_config()
    clone = AdversarialTransform.from_config(config)
    self.assertEqual(clone.get_config(), config)
    self.assertEqual(
        (clone.epsilon, clone.steps, clone.step_size, clone.target,
         clone.random_start, clone.value_range, clone.seed, clone.pin_seed,
         clone.clip_to_range, clone.name),
        (0.1, 4, 0.03, "random", False, (-1.0, 1.0), 9, True, False, "g"))
    self.assertFalse(clone.f_b.trainable)
    clone.f_b.set_weights(f_b.get_weights())
    x = self.x * 2 - 1
    self.assertAllEqual(clone(x), layer(x))
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    self.assertEqual(revived.get_config(), config)

  def test_layers_with_equal_seeds_draw_equal_training_sequences(self):
    f_b = tiny_f_b()
    first = AdversarialTransform(f_b, steps=2, seed=4)
    second = AdversarialTransform(f_b, steps=2, seed=4)
    draws = [first(self.x, training=True).numpy() for _ in range(3)]
    self.assertNotAllEqual(draws[0], draws[1])
    for draw in draws:
      self.assertAllEqual(draw, second(self.x, training=True))

  def test_inference_draws_fold_in_os_entropy_unless_pinned(self):
    f_b = tiny_f_b()
    first = AdversarialTransform(f_b, steps=2, seed=4)
    second = AdversarialTransform(f_b, steps=2, seed=4)
    self.assertFalse(first.draws_pinned)
    # Same seed, same generator state, and even the same global seed.
    keras.utils.set_random_seed(0)
    a = first(self.x).numpy()
    keras.utils.set_random_seed(0)
    b = second(self.x, training=False).numpy()
    self.assertGreater(np.abs(a - b).max(), 1e-3)
    pinned = [AdversarialTransform(f_b, steps=2, seed=4, pin_seed=True)
              for _ in range(2)]
    self.assertTrue(pinned[0].draws_pinned)
    self.assertAllEqual(pinned[0](self.x), pinned[1](self.x))
    # pin_draws switches a built layer, also inside a compiled function.
    call = tf.function(lambda x: first(x))
    second.seed_generator.state.assign(first.seed_generator.state)
    first.pin_draws()
    second.pin_draws()
    self.assertAllEqual(call(self.x), second(self.x))
    first.pin_draws(False)
    second.seed_generator.state.assign(first.seed_generator.state)
    self.assertGreater(np.abs(call(self.x).numpy() - second(self.x).numpy()).max(), 1e-3)

  def test_keras_save_and_load_give_identical_outputs(self):
    f_b = tiny_f_b()
    model = defended_model("functional", AdversarialTransform(
        f_b, steps=3, seed=3, pin_seed=True))
    model.fit(self.x, self.y, batch_size=4, epochs=1, verbose=0)
    path = os.path.join(self.get_temp_dir(), "defended.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # Default safe_mode=True.
    layer, = adv_layer.find_transforms(loaded)
    for saved, restored in zip(f_b.weights, layer.f_b.weights):
      self.assertAllEqual(saved, restored)
    self.assertFalse(layer.f_b.trainable)
    # Only the integer seed is saved (Keras convention): the loaded, pinned
    # layer starts its sequence of draws at the seed, as the original did.
    original, = adv_layer.find_transforms(model)
    self.assertTrue(layer.draws_pinned)
    original.seed_generator.state.assign(keras.random.SeedGenerator(3).state)
    for _ in range(2):
      self.assertAllEqual(model.predict(self.x, verbose=0),
                          loaded.predict(self.x, verbose=0))

  def test_loading_does_not_probe_f_b_before_its_weights_load(self):
    # f_b's initializers give outputs in [0, 1] (what the probe refuses); its
    # trained weights give logits far below 0. A load must judge neither:
    # the saved weights are not there yet when the layer is rebuilt.
    f_b = keras.Sequential([
        keras.Input(SHAPE), keras.layers.Flatten(),
        keras.layers.Dense(CLASSES, bias_initializer=keras.initializers.Constant(0.5),
                           kernel_initializer=keras.initializers.RandomUniform(
                               0.0, 0.01, seed=0))])
    self.assertTrue(adv_layer.layer.looks_like_probabilities(
        f_b(adv_layer.layer.probe_images(SHAPE))))
    f_b.layers[-1].kernel.assign(-np.ones((16, CLASSES), np.float32))
    model = keras.Sequential([keras.Input(SHAPE), AdversarialTransform(
        f_b, steps=2, seed=1, pin_seed=True)])
    path = os.path.join(self.get_temp_dir(), "probed_once.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    self.assertAllEqual(model(self.x), loaded(self.x))

  def test_tf_data_map(self):
    f_b = tiny_f_b()
    layer = AdversarialTransform(f_b, steps=3, seed=6, pin_seed=True)
    replay = AdversarialTransform(f_b, steps=3, seed=6, pin_seed=True)
    dataset = tf.data.Dataset.from_tensor_slices(self.x).batch(4).map(layer)
    for epoch in range(2):
      mapped = np.concatenate(list(dataset))
      expected = np.concatenate([replay(self.x[:4]), replay(self.x[4:])])
      # Graph rewrites may round x ± ε in the last bit.
      self.assertAllClose(mapped, expected, rtol=0, atol=1e-6, msg=f"epoch {epoch}")
      self.assertLessEqual(np.abs(mapped - self.x).max(), 0.2 + 1e-6)
    self.assertAllEqual(layer.seed_generator.state, [6, 4])
    fixed = AdversarialTransform(f_b, steps=3, random_start=False)
    mapped = np.concatenate(list(
        tf.data.Dataset.from_tensor_slices(self.x).batch(4).map(fixed)))
    self.assertAllClose(mapped, fixed(self.x), rtol=0, atol=1e-6)

  def test_mixed_float16_policy(self):
    f_b = tiny_f_b()  # float32, built before the policy changes.
    reference = transform.ll_pgd(f_b, self.x, steps=3, random_start=False)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
      layer = AdversarialTransform(f_b, steps=3, random_start=False)
      model = defended_model("sequential", layer)
      outputs = layer(self.x)
      before = weights_of(f_b)
      history = model.fit(self.x, self.y, batch_size=4, epochs=1, verbose=0)
    finally:
      keras.mixed_precision.set_global_policy("float32")
    self.assertEqual(layer.compute_dtype, "float16")
    self.assertEqual(outputs.dtype, tf.float16)
    # The loop ran in float32 on the unrounded images; only the output is cast.
    self.assertAllEqual(outputs, tf.cast(reference, tf.float16))
    self.assertTrue(np.isfinite(history.history["loss"][0]))
    for b, a in zip(before, weights_of(f_b)):
      self.assertAllEqual(b, a)

  def test_f_b_under_a_mixed_policy_runs_at_its_policy_in_the_loop(self):
    f_b = tiny_f_b()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
      f_b_16 = tiny_f_b()
    finally:
      keras.mixed_precision.set_global_policy("float32")
    f_b_16.set_weights(f_b.get_weights())
    self.assertEqual(f_b_16.layers[0].compute_dtype, "float16")
    x, _ = tiny_data(batch=64)
    reference = AdversarialTransform(f_b, steps=13, random_start=False)(x)
    mixed = AdversarialTransform(f_b_16, steps=13, random_start=False)(x)
    self.assertEqual(mixed.dtype, tf.float32)
    self.assertLessEqual(np.abs(mixed.numpy() - x).max(), 0.2 + 1e-6)
    # Measured 99.8% of pixels equal on this case (float16 logits flip a
    # few gradient signs); the README documents the mixed mode.
    self.assertGreaterEqual(np.mean(mixed.numpy() == reference.numpy()), 0.99)

  def test_export_saved_model_reloads_and_runs(self):
    model = defended_model("sequential", AdversarialTransform(
        tiny_f_b(), steps=3, seed=2, pin_seed=True))
    path = os.path.join(self.get_temp_dir(), "exported")
    model.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)  # Keep a reference: it owns the variables.
    signature = reloaded.signatures["serving_default"]
    (input_name, input_spec), = signature.structured_input_signature[1].items()
    self.assertEqual(input_spec.shape.as_list(), [None] + list(SHAPE))
    served = [reloaded.serve(tf.constant(self.x)).numpy() for _ in range(2)]
    # Pinned: the SavedModel carries the seed state and repeats the draws.
    predicted = [model.predict(self.x, verbose=0) for _ in range(2)]
    self.assertEqual(served[0].shape, (8, CLASSES))
    self.assertAllClose(served, predicted, rtol=0, atol=1e-5)
    self.assertGreater(np.abs(served[0] - served[1]).max(), 1e-4)
    by_signature, = signature(**{input_name: tf.constant(self.x)}).values()
    self.assertEqual(by_signature.shape, (8, CLASSES))

  def test_exported_unpinned_model_draws_differ_between_loads(self):
    model = defended_model("sequential", AdversarialTransform(
        tiny_f_b(), steps=3, seed=2))
    path = os.path.join(self.get_temp_dir(), "exported")
    model.export(path, verbose=False)
    first, second = tf.saved_model.load(path), tf.saved_model.load(path)
    # Both start from the same saved generator state; entropy separates them.
    self.assertGreater(np.abs(first.serve(tf.constant(self.x)).numpy() -
                              second.serve(tf.constant(self.x)).numpy()).max(),
                       1e-4)

  def test_parallel_map_and_concurrent_calls_draw_independently(self):
    layer = AdversarialTransform(tiny_f_b(), steps=2, seed=0)
    x = np.repeat(self.x[:1], 16, axis=0)
    mapped = np.stack(list(tf.data.Dataset.from_tensor_slices(x).batch(1).map(
        layer, num_parallel_calls=8)))
    outputs = []
    threads = [threading.Thread(target=lambda: outputs.append(
        layer(x[:1]).numpy())) for _ in range(8)]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    for draws in (mapped, np.stack(outputs)):
      flat = draws.reshape(len(draws), -1)
      # Every pair of draws of the same image differs.
      gaps = np.abs(flat[:, None] - flat[None]).max(-1) + np.eye(len(flat))
      self.assertGreater(gaps.min(), 1e-3)

  def test_pinned_draws_repeat_and_restore_the_layer(self):
    model = defended_model("functional", AdversarialTransform(
        tiny_f_b(), steps=2, seed=1))
    layer, = adv_layer.find_transforms(model)
    state = layer.seed_generator.state.numpy()
    runs = []
    for _ in range(2):
      with adv_layer.pinned_draws(model, 7):
        self.assertTrue(layer.draws_pinned)
        runs.append([model.predict(self.x, verbose=0) for _ in range(2)])
    self.assertAllEqual(runs[0], runs[1])
    self.assertGreater(np.abs(runs[0][0] - runs[0][1]).max(), 1e-4)
    self.assertFalse(layer.draws_pinned)
    self.assertAllEqual(layer.seed_generator.state, state)
    with adv_layer.pinned_draws(model, 8):
      other = model.predict(self.x, verbose=0)
    self.assertGreater(np.abs(other - runs[0][0]).max(), 1e-4)

  def test_files_saved_before_the_pin_still_load(self):
    layer = AdversarialTransform(tiny_f_b(), steps=2, pin_seed=True)
    layer.load_own_variables({})  # What an older .keras file holds.
    self.assertTrue(layer.draws_pinned)
    layer.load_own_variables({"0": np.array(0, np.int32)})
    self.assertFalse(layer.draws_pinned)

  def test_eager_call_runs_compiled_without_retracing(self):
    f_b = tiny_f_b()
    layer = AdversarialTransform(f_b, steps=3, seed=5, pin_seed=True)
    replay = AdversarialTransform(f_b, steps=3, seed=5, pin_seed=True)
    layer(self.x)
    replay(self.x)
    before = transform._compiled_loop.experimental_get_tracing_count()
    for batch in (8, 5, 3, 8):
      eager = layer(self.x[:batch])
      self.assertAllClose(eager, tf.function(replay)(self.x[:batch]),
                          rtol=0, atol=1e-6)
    # The first call's trace has an open batch size: no batch size retraces.
    self.assertEqual(
        transform._compiled_loop.experimental_get_tracing_count() - before, 0)

  def test_unbatched_input_raises(self):
    layer = AdversarialTransform(tiny_f_b(), steps=2)
    with self.assertRaisesRegex(ValueError, r"Received: input_shape=\(4, 4, 1\)"):
      layer(self.x[0])

  def test_compute_output_shape_does_not_trace_the_loop(self):
    layer = AdversarialTransform(tiny_f_b())
    with mock.patch.object(transform, "ll_pgd", wraps=transform.ll_pgd) as loop:
      outputs = layer(keras.Input(SHAPE))
      self.assertEqual(loop.call_count, 0)
    self.assertEqual(tuple(outputs.shape), (None,) + SHAPE)
    self.assertEqual(layer.compute_output_shape((None,) + SHAPE), (None,) + SHAPE)

  def test_find_transforms(self):
    layer = AdversarialTransform(tiny_f_b())
    inner = keras.Sequential([keras.Input(SHAPE), layer])
    outer = keras.Sequential([keras.Input(SHAPE), inner, keras.layers.Flatten()])
    self.assertEqual(adv_layer.find_transforms(outer), [layer])


# Loads each .keras file named on the command line in a fresh process and
# prints a digest of one inference draw of its transform.
DRAW_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import keras, numpy as np
    import adv_layer
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    for path in sys.argv[1:]:
      layer, = adv_layer.find_transforms(keras.models.load_model(path))
      print(hashlib.sha256(layer(x).numpy().tobytes()).hexdigest())
""")


class SavedRandomnessTest(tf.test.TestCase):
  """Saved models draw from OS entropy in every process unless pinned."""

  def test_saved_models_draw_differently_in_two_processes(self):
    from adv_layer import training  # The path train_cifar10.py saves through.
    paths = []
    for name, pin_seed, seed in (("default", False, 0), ("none", False, None),
                                 ("pinned", True, 0)):
      f_a = keras.Sequential([keras.Input(SHAPE)] + tiny_f_a())
      model = training.defended_model(tiny_f_b(), f_a, steps=2, seed=seed)
      layer, = adv_layer.find_transforms(model)
      if pin_seed:
        layer.pin_draws()
        layer.pin_seed = True
      paths.append(os.path.join(self.get_temp_dir(), f"{name}.keras"))
      model.save(paths[-1])
    runs = []
    for _ in range(2):
      run = subprocess.run([sys.executable, "-c", DRAW_SCRIPT] + paths,
                           capture_output=True, text=True, timeout=300)
      self.assertEqual(run.returncode, 0, msg=run.stderr[-3000:])
      runs.append(run.stdout.split())
    (default_1, none_1, pinned_1), (default_2, none_2, pinned_2) = runs
    self.assertNotEqual(default_1, default_2)
    self.assertNotEqual(none_1, none_2)
    self.assertEqual(pinned_1, pinned_2)


def functional_head(head):
  """A functional f_b whose logits go through `head` (an op, not a layer)."""
  inputs = keras.Input(SHAPE)
  logits = keras.layers.Dense(CLASSES)(keras.layers.Flatten()(inputs))
  return keras.Model(inputs, head(logits), name="probs")


class SoftmaxSubclass(keras.Model):
  """A subclassed f_b returning softmax probabilities (no input shape)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.flatten = keras.layers.Flatten()
    self.dense = keras.layers.Dense(CLASSES)

  def call(self, inputs, training=None):
    return keras.ops.softmax(self.dense(self.flatten(inputs)))

  @classmethod
  def built_one(cls):
    model = cls(name="probs")
    model(np.zeros((1,) + SHAPE, np.float32))
    return model


class LooksLikeProbabilitiesTest(tf.test.TestCase):
  """The output probe: probabilities lie in [0, 1], logits anywhere."""

  def test_softmax_and_sigmoid_rows(self):
    softmax = tf.nn.softmax(tf.constant([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]]))
    self.assertTrue(adv_layer.layer.looks_like_probabilities(softmax))
    self.assertEqual(adv_layer.layer.probability_kind(softmax), "softmax")
    sigmoid = [[0.1, 0.9, 0.7], [0.2, 0.2, 0.4]]
    self.assertTrue(adv_layer.layer.looks_like_probabilities(sigmoid))
    self.assertEqual(adv_layer.layer.probability_kind(sigmoid), "sigmoid")
    self.assertEqual(adv_layer.layer.probability_kind([[0.3], [0.8]]), "sigmoid")
    # Float16 rounding of a softmax strays a little from summing to 1.
    self.assertEqual(adv_layer.layer.probability_kind(
        [[0.999, 0.0], [0.3, 0.7]]), "softmax")
    self.assertEqual(adv_layer.layer.probability_kind(
        [[0.99, 0.0], [0.3, 0.7]]), "sigmoid")

  def test_logits_and_degenerate_outputs_are_not_probabilities(self):
    for outputs in ([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]],  # Logits.
                    [[0.5, 1.2], [0.1, 0.2]],            # One entry above 1.
                    [[0.5, -0.1], [0.1, 0.2]],           # One below 0.
                    np.zeros((4, 3)),                    # Zero-initialised f_b.
                    np.full((4, 3), 1 / 3),              # Constant.
                    [[1e-5, 0.0], [0.0, 2e-5]],          # Spread < 1e-4.
                    [[0.3, -1e-5], [0.5, 0.5]],          # Barely negative.
                    [[0.2, np.nan], [0.5, 0.5]],         # Not finite.
                    np.zeros((0, 3)), 0.5):              # Empty; a scalar.
      self.assertFalse(adv_layer.layer.looks_like_probabilities(outputs),
                       msg=str(outputs))

  def test_probe_images_span_the_range_and_repeat(self):
    images = adv_layer.layer.probe_images((2, 2, 1), (-1.0, 1.0))
    self.assertEqual((images.shape, images.dtype), ((8, 2, 2, 1), np.float32))
    self.assertAllEqual(images[0], np.full((2, 2, 1), -1.0))
    self.assertAllEqual(images[1], np.full((2, 2, 1), 1.0))
    self.assertAllInRange(images, -1.0, 1.0)
    self.assertAllEqual(images, adv_layer.layer.probe_images((2, 2, 1), (-1.0, 1.0)))


class CallCounter(keras.layers.Layer):
  """The identity, counting the batches it passes when they run.

  The count is a variable, so a call inside a compiled function counts when
  the function runs (not when it is traced) and a branch of `tf.cond` that is
  not taken does not count.
  """

  def build(self, input_shape):
    self.calls = self.add_weight(shape=(), initializer="zeros",
                                 trainable=False, name="calls")

  def call(self, inputs):
    self.calls.assign_add(1.0)
    return inputs


class EmptyBatchTest(tf.test.TestCase):
  """A batch of 0 images gives an empty batch, without calling f_b."""

  def test_empty_batch_in_every_mode(self):
    counter = CallCounter()
    f_b = keras.Sequential([keras.Input((32, 32, 3)), counter,
                            adv_layer.models.small_vgg(width=0.125, seed=0)])
    empty = np.zeros((0, 32, 32, 3), np.float32)
    layer = AdversarialTransform(f_b, steps=1, seed=0)
    half = AdversarialTransform(f_b, steps=1, seed=0, dtype="mixed_float16")
    any_batch = tf.function(
        layer, input_signature=[tf.TensorSpec((None, 32, 32, 3), tf.float32)])
    layer(np.zeros((1, 32, 32, 3), np.float32))  # Built (and probed) first.
    half(np.zeros((1, 32, 32, 3), np.float32))
    counter.calls.assign(0.0)
    for run in (layer, tf.function(layer), any_batch):
      out = run(empty)
      self.assertEqual((tuple(out.shape), out.dtype), ((0, 32, 32, 3), tf.float32))
    self.assertEqual(half(empty).dtype, tf.float16)
    self.assertEqual(float(counter.calls), 0.0)  # f_b never ran.
    # The function traced for any batch size still transforms real batches,
    # through f_b (the counter counts it).
    x = np.full((2, 32, 32, 3), 0.5, np.float32)
    self.assertGreater(float(tf.reduce_max(tf.abs(any_batch(x) - x))), 0.0)
    self.assertGreater(float(counter.calls), 0.0)

  def test_empty_batch_in_a_model(self):
    f_b = adv_layer.models.small_vgg(width=0.125, seed=0)
    inputs = keras.Input((32, 32, 3))
    transformed = AdversarialTransform(f_b, steps=1, seed=0)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(
        keras.layers.Flatten()(transformed)))
    empty = np.zeros((0, 32, 32, 3), np.float32)
    self.assertEqual(model(empty).shape, (0, 10))
    self.assertEqual(model.predict_on_batch(empty).shape, (0, 10))
    # model.predict(0 images) fails inside Keras' own loop for any model
    # (Keras 3.15: UnboundLocalError 'batch_outputs'), before any layer runs.


class BadInputTest(tf.test.TestCase, parameterized.TestCase):
  """Bad input raises a clear error naming the argument and its value."""

  @parameterized.named_parameters(("uint8", np.uint8), ("int32", np.int32))
  def test_integer_images(self, dtype):
    layer = AdversarialTransform(tiny_f_b())
    with self.assertRaisesRegex(TypeError, f"Received: inputs.dtype={dtype.__name__}"):
      layer(np.zeros((2,) + SHAPE, dtype))

  @parameterized.named_parameters(
      ("above_range", 1.5), ("nan", np.nan), ("inf", np.inf))
  def test_values_outside_value_range(self, value):
    layer = AdversarialTransform(tiny_f_b(), steps=1)
    x = tiny_data()[0]
    x[1, 0, 0, 0] = value
    message = r"inputs must be finite and lie in value_range=\(0\.0, 1\.0\)"
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
      layer(x)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
      tf.function(layer)(x)
    model = defended_model("sequential", layer)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
      model.predict(x, verbose=0)
    # jit_compile=True: Keras compiles this model without XLA (the layer opts
    # out), so the check still runs instead of being dropped.
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    self.assertFalse(model.jit_compile)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
      model.predict(x, verbose=0)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
      model.fit(x, tiny_data()[1], verbose=0)

  def test_xla_compiled_function_refuses_the_layer(self):
    layer = AdversarialTransform(tiny_f_b(), steps=1)
    with self.assertRaisesRegex(ValueError, "Received: jit_compile=True"):
      tf.function(layer, jit_compile=True)(tiny_data()[0])

  @parameterized.named_parameters(
      ("spatial", (2, 5, 5, 1), r"Received: input_shape=\(2, 5, 5, 1\)"),
      ("rank", (2, 4, 4), r"Received: input_shape=\(2, 4, 4\)"),
  )
  def test_shape_mismatch_with_f_b(self, shape, message):
    layer = AdversarialTransform(tiny_f_b())
    with self.assertRaisesRegex(ValueError, message):
      layer(np.zeros(shape, np.float32))

  def test_shape_mismatch_in_functional_model(self):
    with self.assertRaisesRegex(ValueError, r"Received: input_shape=\(None, 8, 8, 1\)"):
      AdversarialTransform(tiny_f_b())(keras.Input((8, 8, 1)))

  @parameterized.named_parameters(
      ("zero_epsilon", dict(epsilon=0.0), r"Received: epsilon=0\.0"),
      ("negative_epsilon", dict(epsilon=-0.2), r"Received: epsilon=-0\.2"),
      ("zero_steps", dict(steps=0), "Received: steps=0"),
      ("negative_steps", dict(steps=-3), "Received: steps=-3"),
      ("zero_step_size", dict(step_size=0.0), r"Received: step_size=0\.0"),
      ("negative_step_size", dict(step_size=-0.1), r"Received: step_size=-0\.1"),
      ("unknown_target", dict(target="least"), "Received: target='least'"),
  )
  def test_bad_hyperparameters(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      AdversarialTransform(tiny_f_b(), **kwargs)

  @parameterized.named_parameters(
      ("dense_softmax", lambda: tiny_f_b(activation="softmax")),
      ("softmax_layer", lambda: keras.Sequential(
          [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3),
           keras.layers.Softmax()], name="probs")),
      ("activation_layer", lambda: keras.Sequential(
          [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3),
           keras.layers.Activation("softmax")], name="probs")),
  )
  def test_f_b_ending_in_softmax(self, make_f_b):
    f_b = make_f_b()
    with self.assertRaisesRegex(ValueError, f"must return logits.*Received: f_b='{f_b.name}'"):
      AdversarialTransform(f_b)

  @parameterized.named_parameters(
      ("nested_softmax_model", lambda: keras.Sequential(
          [keras.Input(SHAPE), keras.layers.Flatten(),
           keras.Sequential([keras.layers.Dense(3), keras.layers.Softmax()])],
          name="probs")),
      ("ops_softmax", lambda: functional_head(keras.ops.softmax)),
      ("lambda_softmax", lambda: keras.Sequential(
          [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3),
           keras.layers.Lambda(keras.ops.softmax)], name="probs")),
      ("sigmoid_dense", lambda: tiny_f_b(activation="sigmoid")),
      ("sigmoid_activation", lambda: keras.Sequential(
          [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3),
           keras.layers.Activation("sigmoid")], name="probs")),
      ("subclassed_softmax", lambda: SoftmaxSubclass.built_one()),
  )
  def test_f_b_returning_probabilities_found_by_the_output_probe(self, make_f_b):
    f_b = make_f_b()
    # The last-layer check alone lets each of these through.
    self.assertFalse(adv_layer.layer.ends_in_softmax(f_b))
    with self.assertRaisesRegex(
        ValueError, f"must return logits.*look like probabilities.*drop the "
        f"final activation.*Received: f_b='{f_b.name}'"):
      # A subclassed f_b has no input shape: the probe runs at build time.
      AdversarialTransform(f_b)(tiny_data()[0])

  def test_probe_accepts_logits_models_and_constant_outputs(self):
    zero_f_b = keras.Sequential([
        keras.Input(SHAPE), keras.layers.Flatten(),
        keras.layers.Dense(3, kernel_initializer="zeros")])  # All 0: constant.
    large_f_b = keras.Sequential([
        keras.Input(SHAPE), keras.layers.Flatten(),
        keras.layers.Dense(3, kernel_initializer="ones")])  # Up to 16: not in [0, 1].
    for f_b in (tiny_f_b(), tiny_f_b(seed=5), zero_f_b, large_f_b):
      layer = AdversarialTransform(f_b, steps=1, seed=0)
      self.assertEqual(layer(tiny_data()[0]).shape, (8,) + SHAPE)

  def test_f_b_not_a_model(self):
    with self.assertRaisesRegex(ValueError, "Received: f_b=<Dense"):
      AdversarialTransform(keras.layers.Dense(3))

  def test_non_tensorflow_backend(self):
    # No second Keras backend is installable offline here (Keras' NumPy
    # backend imports JAX), so the backend name is patched where Keras reads it.
    with mock.patch.object(keras.backend, "backend", return_value="jax"):
      with self.assertRaisesRegex(RuntimeError, "Received: keras.backend.backend\\(\\)='jax'"):
        AdversarialTransform(tiny_f_b())


class IndependentImplementationTest(tf.test.TestCase):
  """g(x) agrees with cleverhans' targeted PGD on real CIFAR-10 images."""

  def test_agrees_with_cleverhans_pgd(self):
    images = tfds.as_numpy(tfds.load(
        "cifar10", split="test[:8]", as_supervised=True, batch_size=-1,
        data_dir=os.environ.get("TFDS_DATA_DIR")))[0]
    x = images.astype(np.float32) / 255.0
    keras.utils.set_random_seed(0)
    f_b = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    layer = AdversarialTransform(f_b, epsilon=0.2, steps=13, random_start=False)
    ours = layer(x).numpy()
    model_fn = lambda z: f_b(z, training=False)
    least_likely = tf.argmin(model_fn(x), axis=-1)
    reference = projected_gradient_descent(
        model_fn, x, eps=0.2, eps_iter=0.2 / 6, nb_iter=13, norm=np.inf,
        clip_min=0.0, clip_max=1.0, y=least_likely, targeted=True,
        rand_init=False).numpy()
    # Measured 3.0e-8 (float32 rounding of the two projection formulas).
    self.assertLess(np.abs(ours - reference).max(), 1e-5)
    # Not a vacuous agreement: the transform moved most pixels a lot.
    self.assertGreater(np.mean(np.abs(ours - x)), 0.1)


if __name__ == "__main__":
  tf.test.main()
