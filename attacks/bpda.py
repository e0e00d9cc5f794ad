"""BPDA for any Keras layer (Athalye et al., 2018, Sec. 4.1).

Backward Pass Differentiable Approximation: a layer whose input gradient is
None (rounding, a cast to uint8, JPEG), zero (`tf.sign`, a stop-gradient
trick) or not finite keeps its exact forward pass, and its backward pass is
replaced by the identity (BPDA-I: the layer is taken for g(x) ≈ x, which
suits preprocessing defenses) or by the vector-Jacobian product of a smooth,
differentiable surrogate `backward` of the user's choice, applied to the same
input. `AdversarialTransform` has its own estimators
(`attacks.estimators`); this module is for every other layer.

- `BPDA(layer, backward=None)`: the wrapper, a Keras layer, usable in any
  Sequential or functional model and saved with it.
- `bpda(layer, backward=None)`: the same, as a function.
- `wrap_layers(model, names, backward=None)`: a new model computing the same
  function, with the named layers (also inside nested models) wrapped; the
  layers and their weights are shared with `model`, which is left untouched.

Example:
  >>> defended = keras.Sequential([keras.Input((32, 32, 3)), Jpeg(), classifier])
  >>> attacked = wrap_layers(defended, ["jpeg"])
  >>> x_adv = attacks.pgd.pgd(lambda v: attacked(v, training=False), x, y)
"""

import inspect

import keras
import numpy as np
import tensorflow as tf

__all__ = ["BPDA", "accepts", "bpda", "is_graph_model", "layer_paths",
           "surrogate_of", "wrap_layers"]


def accepts(layer, argument):
  """Whether `layer`'s `call` takes `argument`."""
  call = getattr(layer, "call", None)
  if call is None:
    return False
  try:
    return argument in inspect.signature(call).parameters
  except (TypeError, ValueError):
    return False


def _shapes_match(a, b):
  """Whether two static shapes can be equal (None matches any size)."""
  return tf.TensorShape(a).is_compatible_with(tf.TensorShape(b))


@keras.saving.register_keras_serializable(package="attacks")
class BPDA(keras.layers.Layer):
  """Keeps a layer's forward pass and replaces its backward pass.

  Forward: the wrapped layer's output, bit for bit (the layer runs as it
  would alone, with its own randomness and its own `training` behaviour:
  `training` is passed on when the layer's `call` takes it). An integer
  output (e.g. a cast to uint8) is cast to the input's float dtype, since no
  gradient can flow through an integer tensor; a float output keeps its
  dtype.

  Backward (the gradient with respect to the input):
  - `backward=None`: the identity, BPDA-I. The upstream gradient is passed
    on, cast to the input's dtype; the output shape must then equal the input
    shape (checked when the layer is first called, also symbolically while a
    functional model is built).
  - `backward` a differentiable callable or Keras layer s: the
    vector-Jacobian product of s at the same input,
    upstream · ∂s(x)/∂x; s(x) must have the wrapped layer's output shape. The
    surrogate runs only in the backward pass; one whose own gradient is None
    gives zeros (which the evaluation's zero-gradient check then sees).

  The wrapped layer's weights are shared, not copied, and receive no
  gradient through the wrapper (its forward runs on `tf.stop_gradient` of the
  input, so no tape records it). A `backward` that is a Keras layer is
  tracked (its weights are the wrapper's too) and saved with the wrapper; a
  plain callable cannot be serialized: `get_config` then raises TypeError
  (wrap it in a registered Keras layer to save the model).

  Args:
    layer: the Keras layer (or model) to wrap.
    backward: None (identity), a Keras layer, or a callable x -> s(x).
    **kwargs: base `keras.layers.Layer` arguments (`name`, ...); the name
      defaults to `"bpda_" + layer.name` and the dtype policy to the wrapped
      layer's.

  Input shape:
    Whatever `layer` takes (one tensor).

  Output shape:
    `layer`'s output shape.

  Raises:
    TypeError: if `layer` is not a Keras layer or `backward` is neither None
      nor callable.

  Example:
    >>> jpeg = keras.layers.Lambda(lambda v: tf.round(v * 255) / 255)
    >>> model = keras.Sequential([keras.Input((4,)), BPDA(jpeg), classifier])
  """

  def __init__(self, layer, backward=None, **kwargs):
    if not isinstance(layer, keras.layers.Layer):
      raise TypeError("`layer` must be a Keras layer. "
                      f"Received: layer={layer!r}")
    if backward is not None and not callable(backward):
      raise TypeError("`backward` must be None (identity), a Keras layer or a "
                      f"callable x -> s(x). Received: backward={backward!r}")
    kwargs.setdefault("name", f"bpda_{layer.name}")
    kwargs.setdefault("dtype", layer.dtype_policy)
    # The wrapped layer casts its own inputs, as it would alone.
    kwargs.setdefault("autocast", False)
    super().__init__(**kwargs)
    self.layer = layer
    self.backward = backward
    self._pass_training = accepts(layer, "training")

  def build(self, input_shape):
    if not self.layer.built:
      self.layer.build(input_shape)
    if isinstance(self.backward, keras.layers.Layer) and not self.backward.built:
      self.backward.build(input_shape)
    self.built = True

  def call(self, inputs, training=None, mask=None):
    """Returns `layer(inputs)` with the backward pass described above.

    `training` is passed on when the wrapped layer's `call` takes it, and
    `mask` (a nested model's node carries one) when it is not None and the
    layer takes it.
    """
    if not tf.is_tensor(inputs) and not isinstance(inputs, np.ndarray):
      raise TypeError(
          f"BPDA wraps layers that take one tensor; layer {self.layer.name!r} "
          f"was given {type(inputs).__name__}. Received: inputs={inputs!r}")
    x = tf.convert_to_tensor(inputs)
    kwargs = {"training": training} if self._pass_training else {}
    if mask is not None and accepts(self.layer, "mask"):
      kwargs["mask"] = mask
    outputs = self.layer(tf.stop_gradient(x), **kwargs)
    if not tf.is_tensor(outputs):
      raise TypeError(
          f"BPDA wraps layers that return one tensor; layer {self.layer.name!r} "
          f"returned {type(outputs).__name__}. Received: outputs={outputs!r}")
    if not outputs.dtype.is_floating:
      outputs = tf.cast(outputs, x.dtype)
    outputs = tf.stop_gradient(outputs)
    if not x.dtype.is_floating:
      return outputs
    if self.backward is None and not _shapes_match(x.shape, outputs.shape):
      raise ValueError(
          f"BPDA with the identity backward needs layer {self.layer.name!r} to "
          "return its input's shape; pass a differentiable `backward` "
          "surrogate that maps the input to the output's shape instead. "
          f"Received: input shape={tuple(x.shape)}, "
          f"output shape={tuple(outputs.shape)}")
    return self._attach(x, outputs)

  def _attach(self, x, outputs):
    """`outputs` as a function of `x` with the replaced backward pass."""
    backward = self.backward
    layer_name = self.layer.name

    @tf.custom_gradient
    def attached(x_in):

      def grad(upstream):
        if backward is None:
          return tf.cast(upstream, x_in.dtype)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
          tape.watch(x_in)
          smooth = tf.convert_to_tensor(backward(x_in))
        if not _shapes_match(smooth.shape, upstream.shape):
          raise ValueError(
              f"The `backward` surrogate of BPDA({layer_name!r}) must return "
              "the wrapped layer's output shape. Received: surrogate shape="
              f"{tuple(smooth.shape)}, output shape={tuple(upstream.shape)}")
        gradient = tape.gradient(smooth, x_in,
                                 output_gradients=tf.cast(upstream, smooth.dtype))
        if gradient is None:
          return tf.zeros_like(x_in)
        return tf.cast(gradient, x_in.dtype)

      return tf.identity(outputs), grad

    return attached(x)

  def get_config(self):
    """The wrapped layer and the surrogate, serialized.

    Raises:
      TypeError: for a `backward` that is a plain callable, not a Keras layer.
    """
    if self.backward is not None and not isinstance(self.backward,
                                                    keras.layers.Layer):
      raise TypeError(
          "BPDA cannot serialize a `backward` surrogate that is a plain "
          "callable; make it a registered Keras layer (or None for the "
          f"identity) to save the model. Received: backward={self.backward!r}")
    config = super().get_config()
    config.update({
        "layer": keras.saving.serialize_keras_object(self.layer),
        "backward": (None if self.backward is None else
                     keras.saving.serialize_keras_object(self.backward)),
    })
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
    if config.get("backward") is not None:
      config["backward"] = keras.saving.deserialize_keras_object(
          config["backward"])
    return cls(**config)


def bpda(layer, backward=None):
  """Wraps `layer` with BPDA: exact forward, identity or surrogate backward.

  Args:
    layer: a Keras layer.
    backward: None (identity backward), or a differentiable Keras layer or
      callable whose VJP replaces the layer's (see `BPDA`).

  Returns:
    A `BPDA` layer sharing `layer` and its weights.
  """
  return BPDA(layer, backward=backward)


def is_graph_model(layer):
  """Whether `layer` is a Sequential or functional model (a graph of layers)."""
  return isinstance(layer, keras.Sequential) or (
      isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"))


def layer_paths(model, prefix=""):
  """`(path, layer)` for every layer in `model`, nested models included.

  A layer's path is its name, prefixed by the names of the Sequential or
  functional models around it: `"outer/inner"`. Input layers are left out;
  a nested model is listed, then its layers.

  Args:
    model: a Keras model.
    prefix: the path of `model` itself (empty at the top).

  Returns:
    A list of `(path, layer)` pairs, depth first.
  """
  found = []
  for layer in getattr(model, "layers", []):
    if isinstance(layer, keras.layers.InputLayer):
      continue
    path = f"{prefix}{layer.name}"
    found.append((path, layer))
    if is_graph_model(layer):
      found.extend(layer_paths(layer, prefix=f"{path}/"))
  return found


def surrogate_of(layer):
  """The BPDA backward pass `layer` declares, or None (identity).

  A layer whose forward pass is not differentiable may name the smooth
  function an attack differentiates instead, by a method `bpda_backward()`
  returning it (a Keras layer or a callable x -> s(x) with the layer's
  output shape), as `attacks.defenses.ThermometerEncoding` does.

  Args:
    layer: a Keras layer.

  Returns:
    `layer.bpda_backward()`, or None when the layer has no such method.
  """
  declared = getattr(layer, "bpda_backward", None)
  return declared() if callable(declared) else None


def wrap_layers(model, names, backward=None):
  """A new model computing `model`'s function, the named layers under BPDA.

  Layers (and so weights) are shared with `model`, not copied; `model` is
  left untouched. Nested Sequential and functional models that hold a named
  layer are rebuilt around the same layers; the others are reused as they
  are.

  Args:
    model: a Sequential or functional Keras model.
    names: layer names or paths (`"outer/inner"` for a layer inside the
      nested model `outer`, see `layer_paths`). A bare name matches that
      layer at any depth.
    backward: the surrogate given to every `BPDA`; None: each layer's own
      (`surrogate_of`), else the identity.

  Returns:
    A new `keras.Model`.

  Raises:
    TypeError: for a model that is neither Sequential nor functional.
    ValueError: for an empty `names` or a name that matches no layer (the
      message lists the known paths).
  """
  if not is_graph_model(model):
    raise TypeError("`model` must be a Sequential or functional Keras model. "
                    f"Received: model={model!r}")
  if isinstance(names, str):
    names = [names]
  names = list(names)
  if not names:
    raise ValueError(f"`names` must name at least one layer. Received: names={names!r}")
  paths = layer_paths(model)
  known = [path for path, _ in paths]
  targets = set()
  for name in names:
    matched = [id(layer) for path, layer in paths
               if name == path or name == layer.name]
    if not matched:
      raise ValueError(f"No layer named {name!r} in model {model.name!r}; "
                       f"known layers: {known}. Received: names={names!r}")
    targets.update(matched)
  return _rebuild(model, targets, backward, {})


def _contains(model, targets):
  return any(id(layer) in targets for _, layer in layer_paths(model))


def _rebuild(model, targets, backward, cache):
  """Clones `model`'s graph, wrapping target layers and sharing the others."""

  def clone(layer):
    if id(layer) in cache:
      return cache[id(layer)]
    if id(layer) in targets:
      new = BPDA(layer, backward=(surrogate_of(layer) if backward is None
                                  else backward))
    elif is_graph_model(layer) and _contains(layer, targets):
      new = _rebuild(layer, targets, backward, cache)
    else:
      new = layer
    cache[id(layer)] = new
    return new

  return keras.models.clone_model(model, clone_function=clone)
