"""Reparameterization attack on the transform (paper Secs. 3.3 and 4.1).

BPDA by reparameterization: train a fully convolutional network h ≈ g on
natural images with the loss E_x ‖h(x) − g̃(x)‖² (a fresh random draw g̃ of the
transform per batch), then attack the smooth model f_a(h(·)) with any white-box
attack and replay the result on the real model f_a(g(·)). The paper reports
that h overfits (low training loss, high test loss) and the attack barely
moves accuracy; `reparameterization_mse` measures both losses.

The substitution goes through `AdversarialTransform.gradient_estimator`, so
whatever the model does before or after the transform is kept;
`substituted_model_fn` is also how `attacks.transfer` gets f_a alone.
"""


import keras
import numpy as np
import tensorflow as tf

from attacks import common
from attacks import estimators
from attacks import square


def substituted_model_fn(model, replacement):
  """A model_fn of `model` with its transforms replaced by `replacement`.

  Args:
    model: a Keras model containing `AdversarialTransform` layers.
    replacement: `(layer, x) -> images`, differentiable.

  Returns:
    images -> float32 logits (inference mode), differentiable.

  Raises:
    ValueError: if `model` holds no `AdversarialTransform`.
  """
  with estimators.substitute_transform(model, replacement):
    pass  # Raises now, not inside an attack, for a model without a transform.

  def model_fn(images):
    with estimators.substitute_transform(model, replacement):
      return tf.cast(model(images, training=False), tf.float32)

  return model_fn


def reparam_model_fn(model, h):
  """The model_fn of f_a(h(x)): every transform of `model` replaced by h.

  Args:
    model: a Keras model containing `AdversarialTransform` layers.
    h: the trained reparameterization (`train_reparameterization`).

  Returns:
    images -> float32 logits, differentiable through h.

  Raises:
    ValueError: if `model` holds no `AdversarialTransform`.

  Example:
    >>> h = train_reparameterization(layer, train_images, seed=0)
    >>> x_adv = attacks.pgd.pgd(reparam_model_fn(model, h), x, y, seed=0)
  """
  return substituted_model_fn(
      model, lambda layer, x: tf.cast(h(x, training=False), tf.float32))


def build_reparameterization(channels, filters=32, depth=4, seed=None):
  """A fully convolutional h: x + a stack of 3×3 convolutions (any image size).

  The last convolution starts at zero, so an untrained h is the identity map
  (the BPDA-I approximation of g) and training can only improve on it.

  Args:
    channels: image channels (input and output).
    filters: width of each hidden convolution.
    depth: number of hidden ReLU convolutions, >= 1.
    seed: integer seed of the initial weights; None draws one.

  Returns:
    A `keras.Model` mapping `(batch, h, w, channels)` images to
    images of the same shape (not clipped, so gradients pass everywhere).
  """
  inputs = keras.Input((None, None, channels))
  hidden = inputs
  for layer_seed in common.seeds(seed, depth):
    hidden = keras.layers.Conv2D(
        filters, 3, padding="same", activation="relu",
        kernel_initializer=keras.initializers.HeNormal(layer_seed))(hidden)
  residual = keras.layers.Conv2D(channels, 3, padding="same",
                                 kernel_initializer="zeros")(hidden)
  return keras.Model(inputs, keras.layers.Add()([inputs, residual]),
                     name="reparameterization")


def reparameterization_mse(transform_layer, h, images, batch_size=128, seed=None):
  """Mean squared error of h(x) against fresh draws g̃(x), over `images`.

  Args:
    transform_layer: the `AdversarialTransform` h imitates.
    h: the reparameterization network.
    images: float images `(n, h, w, c)` in the layer's value range.
    batch_size: images per evaluation batch.
    seed: integer seed of the draws of g; None draws one.

  Returns:
    The MSE as a Python float (per pixel).
  """
  common.check_number("batch_size", batch_size, minimum=1, integer=True)
  generator = keras.random.SeedGenerator(seed)
  images = np.asarray(images, np.float32)
  total = 0.0
  for start in range(0, len(images), batch_size):
    batch = tf.constant(images[start:start + batch_size])
    target = transform_layer.transform(batch, seed=generator)
    error = tf.reduce_sum(tf.square(h(batch, training=False) - target))
    total += float(error)
  return total / images.size


def train_reparameterization(transform_layer, images, filters=32, depth=4,
                             epochs=5, batch_size=64, learning_rate=1e-3,
                             seed=None):
  """Trains h ≈ g by MSE to fresh draws of g (paper Sec. 4.1, Appendix A.2).

  Every batch gets a new random draw g̃(x) from `transform_layer.transform`,
  so h learns E[g(x)]-like targets; Adam, shuffled each epoch, last partial
  batch dropped (one compiled step shape).

  Args:
    transform_layer: the `AdversarialTransform` to imitate (its f_b is used,
      never trained).
    images: float training images `(n, h, w, c)` in the layer's value range,
      n >= batch_size.
    filters: width of h's hidden convolutions.
    depth: number of h's hidden convolutions.
    epochs: passes over `images`.
    batch_size: images per step.
    learning_rate: Adam learning rate.
    seed: integer seed of h's weights, the shuffling and the draws of g;
      None draws one.

  Returns:
    The trained h, a `keras.Model`.

  Raises:
    ValueError: for a bad argument (named in the message).
  """
  for name, value in (("filters", filters), ("depth", depth), ("epochs", epochs),
                      ("batch_size", batch_size)):
    common.check_number(name, value, minimum=1, integer=True)
  common.check_number("learning_rate", learning_rate, minimum=0, strict=True)
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or len(images) < batch_size:
    raise ValueError("`images` must be NHWC images, at least `batch_size` of "
                     f"them. Received: images.shape={images.shape}")
  weight_seed, order_seed, draw_seed = common.seeds(seed, 3)
  h = build_reparameterization(images.shape[-1], filters, depth, weight_seed)
  optimizer = keras.optimizers.Adam(learning_rate)
  optimizer.build(h.trainable_variables)
  step = make_train_step(transform_layer, h, optimizer,
                         keras.random.SeedGenerator(draw_seed))
  rng = square.attack_rng(order_seed)
  for _ in range(epochs):
    order = rng.permutation(len(images))
    for start in range(0, len(images) - batch_size + 1, batch_size):
      step(tf.constant(images[order[start:start + batch_size]]))
  return h


def make_train_step(transform_layer, h, optimizer, generator):
  """One compiled Adam step on ‖h(x) − g̃(x)‖² with a fresh draw g̃."""

  @tf.function
  def step(batch):
    target = transform_layer.transform(batch, seed=generator)
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(h(batch, training=True) - target))
    grads = tape.gradient(loss, h.trainable_variables)
    optimizer.apply_gradients(zip(grads, h.trainable_variables))
    return loss

  return step
