"""Keras layers that break a model on purpose, for the evaluation's edge tests.

Registered under the package "fault_layers", so a saved model that uses them
loads after `--import=tests.fault_layers`.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="fault_layers")
class NanWhere(keras.layers.Layer):
  """Turns the images whose mean pixel exceeds `threshold` into NaN.

  Put in front of a classifier, it makes that classifier's logits NaN for
  those images (all of them for `threshold` 0, since pixels are positive).

  Args:
    threshold: the mean pixel above which an image becomes NaN.
    **kwargs: base layer arguments.
  """

  def __init__(self, threshold=0.0, **kwargs):
    super().__init__(**kwargs)
    self.threshold = threshold

  def call(self, inputs):
    mean = tf.reduce_mean(inputs, axis=[1, 2, 3], keepdims=True)
    return tf.where(mean > self.threshold, tf.constant(float("nan")), inputs)

  def get_config(self):
    return super().get_config() | {"threshold": self.threshold}
