"""Folds f_b's batch norm into the convolutions before it (a speed-up of g(x)).

f_b is frozen and always called in inference mode, where a batch norm that
directly follows a convolution (or dense layer) is an affine map per channel:

    BN(z) = γ (z − μ) / √(σ² + ϵ) + β,   z = x * W + b,

so with s = γ / √(σ² + ϵ) the pair equals one layer with kernel W · s (scaled
per output channel) and bias (b − μ) · s + β. `fold_batch_norm` rewrites a
functional f_b that way: the folded model computes the same logits up to float
rounding, with one elementwise pass less per folded batch norm in each of the
14 forward and 13 input-gradient passes of g(x). Its input gradients agree
with f_b's to float rounding, and so does g(x) except where a gradient entry
is so close to 0 that rounding flips its sign; the paths then drift apart
over the steps (tests/folding_test.py bounds how often; at the paper's
f_b shape, 13 steps, about 5% of pixels differ, fewer than when f_b's kernels
are moved by one ulp: examples/fold_benchmark.py measures both).

The folded model is for inference only: it has no batch norm left to train,
and it does not follow later changes of f_b's weights (e.g. weights loaded
after folding); `refresh_folded` copies them over again, and `LiveFold`
folds f_b's current weights at every call instead, so it is never stale.
"""

import keras
import numpy as np
import tensorflow as tf

_FOLDABLE = (keras.layers.Conv2D, keras.layers.Dense)


def _model_nodes(model):
  """Every node of `model`'s graph (calls of its layers inside the model)."""
  by_depth = model._nodes_by_depth  # pylint: disable=protected-access
  return [node for nodes in by_depth.values() for node in nodes]


def _channel_axis(layer, rank):
  """The axis of `layer`'s output (of rank `rank`) that holds its channels."""
  if (isinstance(layer, keras.layers.Conv2D) and
      layer.data_format == "channels_first"):
    return 1
  return rank - 1


def _foldable_pairs(model):
  """Maps the name of each Conv2D/Dense layer whose batch norm can be folded to it.

  A pair qualifies when the batch norm's only input is the output of a
  Conv2D or Dense layer (exact classes, linear activation, no LoRA) called once
  in the model, whose output feeds nothing else and is not a model output,
  and the batch norm normalizes that layer's channel axis and is not forced
  into training mode.

  Args:
    model: a functional `keras.Model`.

  Returns:
    A dict `{conv or dense layer name: BatchNormalization layer}`.
  """
  nodes = _model_nodes(model)
  calls = {}  # Layer id -> number of calls in the model.
  uses = {}  # Tensor id -> number of nodes that read it.
  for node in nodes:
    calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
    for tensor in node.arguments.keras_tensors:
      uses[id(tensor)] = uses.get(id(tensor), 0) + 1
  outputs = {id(tensor) for tensor in model.outputs}
  pairs = {}
  for node in nodes:
    norm = node.operation
    inputs = node.arguments.keras_tensors
    # Exact classes: a subclass may compute something else.
    # pylint: disable=unidiomatic-typecheck
    if (type(norm) is not keras.layers.BatchNormalization or
        len(inputs) != 1 or calls[id(norm)] != 1 or
        node.arguments.kwargs.get("training") is True):
      continue
    tensor = inputs[0]
    layer = tensor._keras_history.operation  # pylint: disable=protected-access
    if (type(layer) not in _FOLDABLE or
        getattr(layer, "lora_enabled", False) or
        layer.activation is not keras.activations.linear or
        calls[id(layer)] != 1 or uses[id(tensor)] != 1 or
        id(tensor) in outputs):
      continue
    rank = len(tensor.shape)
    if [axis % rank for axis in np.atleast_1d(norm.axis)] != [
        _channel_axis(layer, rank)]:
      continue
    pairs[layer.name] = norm
  return pairs


def _folded_weights(layer, norm):
  """`[kernel, bias]` of `layer` with the batch norm `norm` folded in.

  Float64 tensors computed from the layers' current variables, so the only
  rounding is the final cast to the variable dtype (eager or in a graph).
  """
  as64 = lambda variable: tf.cast(tf.convert_to_tensor(variable), tf.float64)
  kernel = as64(layer.kernel)
  bias = (as64(layer.bias) if layer.use_bias
          else tf.zeros(kernel.shape[-1:], tf.float64))
  mean, variance = as64(norm.moving_mean), as64(norm.moving_variance)
  gamma = as64(norm.gamma) if norm.scale else tf.ones_like(mean)
  beta = as64(norm.beta) if norm.center else tf.zeros_like(mean)
  scale = gamma / tf.sqrt(variance + norm.epsilon)
  return [kernel * scale, (bias - mean) * scale + beta]


def _graph(model):
  """`model`'s functional graph, or None for a subclassed or unbuilt model.

  A built Sequential model is viewed as a functional model over its layers.
  """
  if isinstance(model, keras.Sequential):
    if not model.built:
      return None
    return keras.Model(model.inputs, model.outputs, name=model.name)
  return model if hasattr(model, "_nodes_by_depth") else None


def _fold_plan(folded, model):
  """`(layer of folded, layer of model, its folded batch norm or None)` triples.

  Raises:
    ValueError: as `refresh_folded`.
  """
  graph = _graph(model)
  if graph is None:
    raise ValueError("`model` must be a functional or built Sequential "
                     f"keras.Model. Received: model={model!r}")
  pairs = _foldable_pairs(graph)
  originals = {layer.name: layer for layer in graph.layers}
  plan = []
  for layer in folded.layers:
    if isinstance(layer, keras.layers.InputLayer):
      continue  # Renamed by cloning; no weights.
    if layer.name not in originals:
      raise ValueError(
          f"`folded` has a layer {layer.name!r} that `model` lacks: it is not "
          f"the fold of `model`. Received: folded={folded.name!r}, "
          f"model={model.name!r}")
    plan.append((layer, originals[layer.name], pairs.get(layer.name)))
  return plan


def _fold_values(plan):
  """`(variable of folded, its value)` for every weight of a `_fold_plan`.

  The values are tensors read from the original model's variables now (or,
  in a graph, when the graph runs).
  """
  values = []
  for layer, original, norm in plan:
    weights = (original.weights if norm is None
               else _folded_weights(original, norm))
    values += [(variable, tf.cast(tf.convert_to_tensor(value), variable.dtype))
               for variable, value in zip(layer.weights, weights)]
  return values


def refresh_folded(folded, model):
  """Copies `model`'s current weights into `folded`, folding batch norm again.

  Call it when `model`'s weights changed after `fold_batch_norm(model)` (for
  example weights loaded from a file): `folded` keeps its variables, so
  functions traced with it do not retrace. `LiveFold` needs no refresh.

  Args:
    folded: the result of `fold_batch_norm(model)` (a new model, not `model`).
    model: the original model.

  Raises:
    ValueError: if `model` is neither functional nor a built Sequential
      model, or `folded` is not its fold (a layer of `folded` missing from
      `model`).
  """
  for variable, value in _fold_values(_fold_plan(folded, model)):
    variable.assign(value)


class LiveFold:
  """Calls the fold of a model with weights folded from its current variables.

  `fold_batch_norm` copies the weights once; this computes the folded kernels
  and biases from `model`'s variables on every call (a few elementwise ops
  per weight, negligible beside a batch) and runs the folded graph on them
  through a `keras.StatelessScope`. So it is never stale (weights loaded or
  changed after folding are used at once), works eagerly and inside
  `tf.function` (the variables are read when the graph runs), and holds no
  state of its own to save: a wrapper such as `AdversarialTransform` can keep
  one beside f_b and hand it to `adv_layer.ll_pgd` as f_b. Inference only.

  Args:
    model: a `keras.Model` returning logits (f_b). A model that
      `fold_batch_norm` returns unchanged is called as it is.

  Example:
    >>> g_x = ll_pgd(LiveFold(f_b), images, epsilon=0.2, steps=13, seed=0)
  """

  def __init__(self, model):
    self.model = model
    self.folded = fold_batch_norm(model)
    self._plan = (None if self.folded is model
                  else _fold_plan(self.folded, model))

  def __call__(self, x, training=False):
    """`model(x, training=False)` computed by the folded graph.

    Raises:
      ValueError: if `training` is true (the fold has no batch norm to train).
    """
    if training:
      raise ValueError("A folded model runs in inference mode only. "
                       f"Received: training={training!r}")
    if self._plan is None:
      return self.model(x, training=False)
    with keras.StatelessScope(state_mapping=_fold_values(self._plan)):
      return self.folded(x, training=False)


def fold_batch_norm(model):
  """Returns a copy of `model` with batch norm folded into the layers before it.

  Every `BatchNormalization` that directly follows a `Conv2D` or `Dense`
  layer (see `_foldable_pairs` for the exact rule) disappears; that layer
  gets kernel W·s and bias (b − μ)·s + β with s = γ/√(σ² + ϵ) (moving
  statistics). Every other layer is copied with its weights, so the copy
  shares no variables with `model`. The copy computes `model`'s outputs in
  inference mode up to float rounding, is frozen (`trainable=False`), and
  keeps every layer name of `model`.

  Fallback: a model that is not functional (a subclassed model, an unbuilt
  Sequential model) or has no foldable pair is returned itself, unchanged;
  test `fold_batch_norm(m) is m` to tell. A built Sequential model is folded
  through its functional graph.

  Args:
    model: a `keras.Model` (f_b).

  Returns:
    A new functional `keras.Model`, or `model` itself (see Fallback).

  Raises:
    ValueError: if `model` is not a `keras.Model`.

  Example:
    >>> f_b_folded = fold_batch_norm(models.small_vgg(seed=0))
    >>> any(isinstance(l, keras.layers.BatchNormalization)
    ...     for l in f_b_folded.layers)
    False
  """
  if not isinstance(model, keras.Model):
    raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
  graph = _graph(model)
  if graph is None:
    return model
  pairs = _foldable_pairs(graph)
  if not pairs:
    return model
  folded_norms = {id(norm) for norm in pairs.values()}
  skipped = set()  # ids of the clones of folded batch norms.

  def clone_layer(layer):
    config = layer.get_config()
    if layer.name in pairs:
      config.update(use_bias=True, bias_initializer="zeros",
                    bias_regularizer=None, bias_constraint=None)
    clone = layer.__class__.from_config(config)
    if id(layer) in folded_norms:
      skipped.add(id(clone))
    return clone

  def call_layer(layer, *args, **kwargs):
    if id(layer) in skipped:
      return args[0]
    return layer(*args, **kwargs)

  folded = keras.models.clone_model(graph, clone_function=clone_layer,
                                    call_function=call_layer)
  refresh_folded(folded, graph)
  folded.trainable = False
  return folded
