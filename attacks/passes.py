"""Counting the passes an attack spends: the model's and f_b's.

`count_passes` adds the batch size of every call of the model under attack
(and of its BPDA-wrapped copies) and every forward pass of each transform's
f_b to counters, for the cost columns of reports and the dry run.
"""

import contextlib

import tensorflow as tf

from adv_layer import transform

__all__ = ["count_passes"]


@contextlib.contextmanager
def _counting_calls(model, counter):
  """Adds the batch size of every call of `model` to `counter`."""
  call = model.call
  own_call = model.__dict__.get("call")

  def counting(inputs, *args, **kwargs):
    counter.assign_add(tf.cast(tf.shape(inputs)[0], tf.int64))
    return call(inputs, *args, **kwargs)

  model.call = counting
  try:
    yield
  finally:
    del model.call
    if own_call is not None:
      model.call = own_call


@contextlib.contextmanager
def count_passes(model, transforms, also=()):
  """Counts forward image passes of `model` and of each transform's f_b.

  The model's `call` is wrapped with a counter that adds the batch size
  (eagerly and inside `tf.function`); f_b's passes are counted by the
  transform itself (`transform.counting_passes`, in the calling thread), so
  eager calls of g stay compiled. The transform runs 1 + N forwards of f_b
  per image per draw (N = 13 in the paper), N of them followed by an
  input-gradient pass. Keras calls a model's `call` through the instance, so
  the counter has to replace that attribute for the duration (there is no
  hook that passes a counter as a value).

  Args:
    model: the Keras model under attack.
    transforms: its `AdversarialTransform` layers.
    also: other models whose passes count as the model's (its BPDA-wrapped
      copies, `Target.models`).

  Yields:
    A dict `{"model": tf.Variable, "f_b": tf.Variable}` of int64 counters.
  """
  counters = {"model": tf.Variable(0, dtype=tf.int64, trainable=False),
              "f_b": tf.Variable(0, dtype=tf.int64, trainable=False)}
  with contextlib.ExitStack() as stack:
    for counted in [model] + [m for m in also if m is not model]:
      stack.enter_context(_counting_calls(counted, counters["model"]))
    for f_b in {id(layer.f_b): layer.f_b for layer in transforms}.values():
      stack.enter_context(transform.counting_passes(f_b, counters["f_b"]))
    yield counters
