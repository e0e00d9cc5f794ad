"""Helpers of the tests that start localhost tf.distribute clusters."""

import socket


def free_port():
  """A localhost TCP port that was free a moment ago."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]
