"""pytest configuration: collect only this project's tests.

`tf.test.TestCase` inherits a deprecated `test_session` context manager that
pytest would collect and report as skipped in every class; it is not a test.
"""


def pytest_collection_modifyitems(items):
  items[:] = [item for item in items if item.name != "test_session"]
