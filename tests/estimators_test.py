"""Tests for attacks.estimators (paper Secs. 3.3 and 4.1)."""

import keras
import numpy as np
import tensorflow as tf

from adv_layer import AdversarialTransform
from adv_layer import transform
from attacks import common
from attacks import estimators
from attacks import model_fns
from attacks import pgd as pgd_lib
from tests import attack_properties
from tests import pgd_test

SHAPE = (4, 4, 1)


def small_net(seed, classes=3):
  """A small fixed-weight net with curvature (tanh), logits out."""
  return attack_properties.tiny_model(seed=seed, shape=SHAPE, classes=classes)


def defended(epsilon=0.2, steps=3, seed=0):
  """f_a(g(x)) on 4x4 images; returns (model, layer)."""
  layer = AdversarialTransform(small_net(1), epsilon=epsilon, steps=steps,
                               seed=seed)
  model = keras.Sequential([keras.Input(SHAPE), layer, small_net(2)])
  return model, layer


def weighted_gradient(fn, x, weights):
  """∇_x Σ weights · fn(x)."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    total = tf.reduce_sum(weights * fn(x))
  return tape.gradient(total, x)


class SurrogateTest(tf.test.TestCase):

  def test_projection_forward_is_exact(self):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 1, (64,)), tf.float32)
    v = x + tf.constant(rng.uniform(-0.5, 0.5, (64,)), tf.float32)
    self.assertAllEqual(estimators.surrogate_project(v, x, 0.2, (0.0, 1.0)),
                        transform.project(v, x, 0.2, (0.0, 1.0)))

  def test_projection_derivative_follows_eq_5(self):
    # Centre, candidate: inside; above the ball (z = .2); below it (z = -.2);
    # clipped by the range only (z = .07); by the ball, then the range (z = .25).
    x = tf.constant([0.5, 0.5, 0.5, 0.95, 0.95])
    v = tf.constant([0.55, 0.7, 0.3, 1.02, 1.2])
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([x, v])
      out = estimators.surrogate_project(v, x, 0.1, (0.0, 1.0))
    d_v, d_x = tape.gradient(out, [v, x])
    s = lambda z: 1 / (1 + z)**2
    self.assertAllClose(out, [0.55, 0.6, 0.4, 1.0, 1.0])
    self.assertAllClose(d_v, [1.0, s(0.2), s(0.2), s(0.07), s(0.25)], rtol=1e-6)
    self.assertAllClose(d_x, [0.0, 1 - s(0.2), 1 - s(0.2), 0.0, 0.0], rtol=1e-5)

  def test_sign_surrogates(self):
    z = tf.constant([-2.0, 0.0, 0.5])
    self.assertAllClose(estimators.surrogate_sign("softsign", 0.5)(z),
                        [-0.8, 0.0, 0.5])
    self.assertAllClose(estimators.surrogate_sign("tanh", 2.0)(z), np.tanh([-1, 0, .25]))
    with self.assertRaisesRegex(ValueError, "Received: sign_surrogate='relu'"):
      estimators.surrogate_sign("relu")
    with self.assertRaisesRegex(ValueError, "Received: temperature=0"):
      estimators.surrogate_sign("tanh", 0)


class EstimatorTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.model, self.layer = defended()
    x, self.y = attack_properties.tiny_batch()
    self.x = tf.constant(x)
    self.weights = tf.constant(np.random.default_rng(1).normal(size=x.shape),
                               tf.float32)
    self.noise = transform.uniform_noise(self.x.shape, 0.2, seed=3)

  def test_bpda_forward_is_exact_and_backward_is_the_surrogate_vjp(self):
    for surrogate in estimators.SIGN_SURROGATES:
      bpda = lambda v: estimators.bpda_transform(self.layer, v, self.noise,
                                                 surrogate, temperature=0.1)
      smooth = lambda v: self.layer.transform(
          v, noise=self.noise, sign_fn=estimators.surrogate_sign(surrogate, 0.1),
          project_fn=estimators.surrogate_project)
      self.assertAllEqual(bpda(self.x), self.layer.transform(self.x, noise=self.noise))
      self.assertAllClose(weighted_gradient(bpda, self.x, self.weights),
                          weighted_gradient(smooth, self.x, self.weights))

  def test_bpda_gradients_are_finite_and_nonzero(self):
    for surrogate in estimators.SIGN_SURROGATES:
      model_fn = model_fns.defended_model_fn(self.model, "bpda", seed=0,
                                              sign_surrogate=surrogate,
                                              temperature=0.01)
      _, grad = common.eot_loss_gradient(model_fn, self.x, self.y, common.ce_loss)
      self.assertTrue(np.all(np.isfinite(grad)), msg=surrogate)
      self.assertGreater(np.abs(grad).min(), 0.0, msg=surrogate)

  def test_bpda_backward_differs_from_identity(self):
    # The surrogate carries f_b's second-order terms: not BPDA-I's identity.
    bpda = lambda v: estimators.bpda_transform(self.layer, v, self.noise,
                                               temperature=0.01)
    grad = weighted_gradient(bpda, self.x, self.weights)
    self.assertGreater(np.abs(grad - self.weights).max(), 1e-3)

  def test_identity_and_exact_backward(self):
    for estimator, expected in [("bpda_identity", self.weights),
                                ("exact", tf.zeros_like(self.weights))]:
      hook = estimators.estimator_fn(estimator)
      grad = weighted_gradient(lambda v: hook(self.layer, v), self.x, self.weights)
      self.assertAllEqual(grad, expected)

  def test_unrolled_gradient_structure(self):
    # tf.sign has a zero gradient, so autodiff through the loop sees only the
    # clips: a diagonal Jacobian with entries in {0, 1}.
    hook = estimators.estimator_fn("unrolled")
    # (a) Far from the value range nothing is pinned: the identity.
    _, inner = defended(epsilon=0.05)
    x_mid = 0.4 + 0.2 * self.x
    grad = weighted_gradient(lambda v: hook(inner, v), x_mid, self.weights)
    self.assertAllEqual(grad, self.weights)
    # (b) With Δ = 0.2 some pixels are pinned to 0 or 1: zero there.
    seed_gen = keras.random.SeedGenerator(5)
    hook = estimators.estimator_fn("unrolled", seed=seed_gen)
    x_edge = tf.concat([self.x[:3] * 0.15, 0.85 + self.x[3:] * 0.15], 0)
    grad = weighted_gradient(lambda v: hook(self.layer, v), x_edge, self.weights)
    ratio = (grad / self.weights).numpy()
    self.assertTrue(np.all((ratio == 0) | (ratio == 1)))
    self.assertTrue(np.any(ratio == 0) and np.any(ratio == 1))
    seed_gen.state.assign(keras.random.SeedGenerator(5).state.value)
    g_x = hook(self.layer, x_edge).numpy()
    self.assertTrue(np.all(ratio[(g_x == 0.0) | (g_x == 1.0)] == 0))

  def test_steps_override_gives_cheaper_defense(self):
    hook = estimators.estimator_fn("exact", steps=1, seed=keras.random.SeedGenerator(9))
    noise = transform.uniform_noise(self.x.shape, 0.2, keras.random.SeedGenerator(9))
    self.assertAllEqual(hook(self.layer, self.x),
                        self.layer.transform(self.x, noise=noise, steps=1))
    self.assertNotAllClose(hook(self.layer, self.x),
                           self.layer.transform(self.x, noise=noise))

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "Received: estimator='fd'"):
      model_fns.defended_model_fn(self.model, "fd")
    with self.assertRaisesRegex(ValueError, "Received: steps=0"):
      model_fns.defended_model_fn(self.model, steps=0)
    with self.assertRaisesRegex(ValueError, "no AdversarialTransform"):
      model_fns.defended_model_fn(small_net(0))


def linear_defense(estimator, temperature=1.0):
  """One LL-PGD step (no random start) of a linear f_b on 2 pixels.

  f_b(x) = x W + b with W = [[6, -6, 0], [0, 6, -6]], b = (0, .3, 0); at
  x = (.5, .45) the least-likely class is 2 and the step ε = .1 clips
  nothing, so g(x) = x − ε·sign(∇ℓ(x)) and, with H = W (diag p − p pᵀ) Wᵀ
  the input Hessian of ℓ = CE(f_b(x), 2):
  - straight-through: Jᵀu = u − (ε/T) H u;
  - BPDA along the exact path: Jᵀu = u − ε H (s'(∇ℓ) ⊙ u), s' the
    derivative of softsign(·/T) at the exact gradient.

  Returns:
    `(hook, layer, x, expected)`: expected(u) is the closed-form Jᵀu.
  """
  f_b = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
  weights = np.array([[6.0, -6.0, 0.0], [0.0, 6.0, -6.0]], np.float32)
  bias = np.array([0.0, 0.3, 0.0], np.float32)
  f_b.layers[0].set_weights([weights, bias])
  layer = AdversarialTransform(f_b, epsilon=0.3, steps=1, step_size=0.1,
                               random_start=False)
  x = np.array([[0.5, 0.45]])
  logits = x @ weights + bias
  probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  grad = weights @ (probs - np.eye(3)[2])[0]
  hessian = weights @ (np.diag(probs[0]) - np.outer(probs, probs)) @ weights.T
  slope = (1.0 / temperature if estimator == "straight_through" else
           1.0 / temperature / (1.0 + np.abs(grad) / temperature)**2)
  expected = lambda u: u - 0.1 * (hessian @ (slope * u[0]))[None]
  hook = estimators.estimator_fn(estimator, temperature=temperature)
  return hook, layer, tf.constant(x, tf.float32), expected


def cosine(a, b):
  a, b = np.ravel(a), np.ravel(b)
  return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


class ExactPathEstimatorTest(tf.test.TestCase):

  def test_forward_is_exact_g(self):
    _, layer = defended()
    x, _ = attack_properties.tiny_batch()
    for estimator in ("straight_through", "bpda_exact_path"):
      hook = estimators.estimator_fn(estimator, seed=keras.random.SeedGenerator(4))
      noise = transform.uniform_noise(x.shape, 0.2, keras.random.SeedGenerator(4))
      self.assertAllEqual(hook(layer, tf.constant(x)),
                          layer.transform(tf.constant(x), noise=noise))

  def test_backward_is_the_jacobian_along_the_exact_iterates(self):
    u = np.array([[1.0, 0.0]], np.float32)
    for estimator in ("straight_through", "bpda_exact_path"):
      for temperature in (1.0, 0.5):
        hook, layer, x, expected = linear_defense(estimator, temperature)
        self.assertAllClose(hook(layer, x), [[0.4, 0.35]])
        grad = weighted_gradient(lambda v: hook(layer, v), x, u)
        self.assertAllClose(grad, expected(u), rtol=1e-5, atol=1e-6,
                            msg=(estimator, temperature))

  def test_straight_through_is_not_the_identity(self):
    # BPDA-I's gradient is u itself (cosine 1); 0.99 was measured
    # between BPDA and BPDA-I. Here the closed form gives
    # cos(u, u − εHu) = 0.737 for u = (1, 0), so 0.8 separates them.
    u = np.array([[1.0, 0.0]], np.float32)
    hook, layer, x, expected = linear_defense("straight_through")
    grad = weighted_gradient(lambda v: hook(layer, v), x, u)
    self.assertAllClose(cosine(expected(u), u), 0.7374, atol=1e-4)
    self.assertLess(cosine(grad, u), 0.8)

  def test_exact_path_differs_from_surrogate_path(self):
    _, layer = defended()
    x = tf.constant(attack_properties.tiny_batch()[0])
    weights = tf.constant(np.random.default_rng(2).normal(size=x.shape), tf.float32)
    noise = transform.uniform_noise(x.shape, 0.2, seed=3)
    along_surrogate = weighted_gradient(
        lambda v: estimators.bpda_transform(layer, v, noise, temperature=0.01),
        x, weights)
    # What the "bpda_exact_path" hook runs, with the same start δ.
    along_exact = weighted_gradient(
        lambda v: layer.transform(
            v, noise=noise, project_fn=estimators.surrogate_project,
            sign_fn=estimators.sign_with_derivative(
                estimators.surrogate_sign("softsign", 0.01))), x, weights)
    self.assertGreater(np.abs(along_exact - along_surrogate).max(), 1e-3)


class MemoryEstimateTest(tf.test.TestCase):

  def test_loop_estimators_scale_with_steps(self):
    model, layer = defended(steps=3)
    f_b = common.activation_bytes(layer.f_b)
    held = 2 * common.activation_bytes(model)
    self.assertEqual(model_fns.bytes_per_image(model, "bpda_identity"),
                     held + model_fns.EXACT_FACTOR * f_b)
    for estimator in ("bpda", "unrolled", "straight_through", "bpda_exact_path"):
      self.assertEqual(model_fns.bytes_per_image(model, estimator),
                       held + model_fns.LOOP_FACTOR * 3 * f_b)
    self.assertEqual(model_fns.bytes_per_image(model, "bpda", steps=1),
                     held + model_fns.LOOP_FACTOR * f_b)

  def test_activation_bytes_counts_layer_outputs(self):
    # Flatten 16, Dense 16, Dense 3 floats per image.
    self.assertEqual(common.activation_bytes(small_net(0)), 4 * (16 + 16 + 3))


class UseEstimatorTest(tf.test.TestCase):

  def test_sets_every_nested_layer_and_resets_on_exception(self):
    model, layer = defended()
    second = AdversarialTransform(small_net(3), epsilon=0.1, steps=1, seed=1)
    outer = keras.Sequential([keras.Input(SHAPE), second, model])
    with self.assertRaisesRegex(RuntimeError, "boom"):
      with estimators.use_estimator(outer, "bpda_identity") as found:
        self.assertEqual(found, [second, layer])
        self.assertIsNotNone(layer.gradient_estimator)
        self.assertIsNotNone(second.gradient_estimator)
        raise RuntimeError("boom")
    self.assertIsNone(layer.gradient_estimator)
    self.assertIsNone(second.gradient_estimator)

  def test_model_fn_leaves_the_layer_as_it_was(self):
    model, layer = defended()
    x, _ = attack_properties.tiny_batch()
    model_fns.defended_model_fn(model, "bpda")(x)
    self.assertIsNone(layer.gradient_estimator)
    with tf.GradientTape() as tape:
      x = tf.constant(x)
      tape.watch(x)
      logits = model(x)
    self.assertIsNone(tape.gradient(logits, x))


class EotTest(tf.test.TestCase):

  def test_vectorised_eot_equals_average_of_separate_calls(self):
    model, layer = defended()
    x, y = attack_properties.tiny_batch(batch=2)
    x = tf.constant(x)
    draws, batch = 3, 2
    table = transform.uniform_noise((draws * batch,) + SHAPE, 0.2, seed=11)

    f_a = model.layers[1]

    class FixedNoise:
      """model_fn whose random starts are read, in order, from `table`."""

      def __init__(self):
        self.used = 0

      def __call__(self, images):
        noise = table[self.used:self.used + images.shape[0]]
        self.used += images.shape[0]
        return f_a(estimators.bpda_transform(layer, images, noise, temperature=0.1))

    loss, grad = common.eot_loss_gradient(FixedNoise(), x, y, common.ce_loss,
                                          eot_samples=draws, chunk_size=4)
    separate = FixedNoise()
    results = [common.eot_loss_gradient(separate, x, y, common.ce_loss)
               for _ in range(draws)]
    self.assertAllClose(loss, np.mean([r[0] for r in results], 0), rtol=1e-6)
    self.assertAllClose(grad, np.mean([r[1] for r in results], 0), rtol=1e-6,
                        atol=1e-7)

  def test_tiled_copies_get_their_own_draw(self):
    model, _ = defended()
    x, _ = attack_properties.tiny_batch(batch=2)
    model_fn = model_fns.defended_model_fn(model, "exact", seed=0)
    logits = model_fn(tf.tile(x, [2, 1, 1, 1])).numpy()
    self.assertFalse(np.any(logits[:2] == logits[2:]))

  def test_seeded_pgd_with_eot_repeats(self):
    model, _ = defended()
    x, y = attack_properties.tiny_batch()
    model_fn = model_fns.defended_model_fn(model, "bpda", temperature=0.1)
    run = lambda seed: pgd_lib.pgd(model_fn, x, y, steps=2, eot_samples=3,
                                   chunk_size=8, seed=seed)
    first, second, other = run(4), run(4), run(5)
    self.assertAllEqual(first, second)
    self.assertNotAllClose(first, other)


class CompiledLossGradientTest(tf.test.TestCase):

  def tape_path(self, model_fn, x, y):
    """`common.chunk_loss_gradient` on the tape, as without the method."""
    return common.chunk_loss_gradient(model_fn.__call__, x, y, common.ce_loss)

  def test_same_bits_as_the_tape_for_replayable_estimators(self):
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (6,) + SHAPE),
                    tf.float32)
    y = tf.constant([0, 1, 2, 0, 1, 2], tf.int32)
    for functional in (False, True):
      model, _ = defended()
      if functional:
        inputs = keras.Input(SHAPE)
        model = keras.Model(inputs, model.layers[1](model.layers[0](inputs)))
      for estimator in ("bpda_identity", "exact"):
        model_fn = model_fns.defended_model_fn(model, estimator, seed=3)
        expected = [self.tape_path(model_fn, x, y),
                    self.tape_path(model_fn, x[:4], y[:4])]
        model_fn.reseed(3)
        actual = [model_fn.loss_and_gradient(x, y, common.ce_loss),
                  model_fn.loss_and_gradient(x[:4], y[:4], common.ce_loss)]
        for want, got in zip(expected, actual):
          for a, b in zip(want, got):
            self.assertAllEqual(a, b, msg=(functional, estimator))
        # One trace serves every batch size.
        self.assertLen(model_fn._compiled, 1)
        self.assertIsNone(model.layers[-2].gradient_estimator)

  def test_declines_where_g_cannot_be_replayed(self):
    model, _ = defended()
    x, y = tf.zeros((2,) + SHAPE), tf.zeros([2], tf.int32)
    for estimator in ("bpda", "unrolled", "straight_through", "bpda_exact_path"):
      model_fn = model_fns.defended_model_fn(model, estimator, seed=0)
      self.assertIsNone(model_fn.loss_and_gradient(x, y, common.ce_loss))
    # A transform behind another layer does not read the model's input.
    shifted = keras.Sequential([keras.Input(SHAPE), keras.layers.Identity(),
                                model.layers[0], model.layers[1]])
    model_fn = model_fns.defended_model_fn(shifted, "bpda_identity", seed=0)
    self.assertIsNone(model_fn.loss_and_gradient(x, y, common.ce_loss))

  def test_keeps_a_bounded_number_of_traces(self):
    model, _ = defended(steps=1)
    x, y = tf.zeros((2,) + SHAPE), tf.zeros([2], tf.int32)
    model_fn = model_fns.defended_model_fn(model, "exact", seed=0)
    fresh = [lambda logits, labels: common.ce_loss(logits, labels)
             for _ in range(model_fns._MAX_TRACES + 1)]
    results = [model_fn.loss_and_gradient(x, y, f) for f in fresh]
    self.assertTrue(all(r is not None for r in results[:-1]))
    self.assertIsNone(results[-1])
    # A loss it has traced still runs compiled.
    self.assertIsNotNone(model_fn.loss_and_gradient(x, y, fresh[0]))

  def test_counts_passes_and_leaves_other_functions_optimised(self):
    from attacks import suite  # pylint: disable=g-import-not-at-top
    model, layer = defended(steps=3)
    x, y = tf.zeros((5,) + SHAPE), tf.zeros([5], tf.int32)
    context = model_fns.tf_context.context()
    before = context.function_call_options.config_proto_serialized
    for _ in range(2):  # A new counter each time, as each attack run has.
      with suite.count_passes(model, [layer]) as counters:
        model_fn = model_fns.defended_model_fn(model, "bpda_identity", seed=0)
        self.assertIsNotNone(model_fn.loss_and_gradient(x, y, common.ce_loss))
      self.assertEqual(int(counters["model"].numpy()), 5)
      self.assertEqual(int(counters["f_b"].numpy()), 5 * 4)
    self.assertEqual(context.function_call_options.config_proto_serialized,
                     before)


class BpdaIdentityTest(tf.test.TestCase):

  def test_breaks_a_defense_with_tiny_delta(self):
    f_a, x, y = pgd_test.trained_cifar_model()
    keras.utils.set_random_seed(3)
    f_b = keras.Sequential([keras.Input((32, 32, 3)),
                            keras.layers.Conv2D(4, 3, strides=4, activation="tanh"),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        AdversarialTransform(f_b, epsilon=0.005, steps=2, seed=0), f_a])
    model_fn = model_fns.defended_model_fn(model, "bpda_identity", seed=0)
    clean = pgd_test.accuracy(model_fn, x, y)
    x_adv = pgd_lib.pgd(model_fn, x, y, steps=10, seed=0)
    scorer = model_fns.defended_model_fn(model, "exact", seed=1)
    self.assertGreater(clean, 0.3)
    self.assertLess(pgd_test.accuracy(scorer, x_adv, y), 0.1)


if __name__ == "__main__":
  tf.test.main()
