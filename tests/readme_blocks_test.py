r"""Every Python block of README.md and examples/README.md runs as written.

Each ```python block is written to a file and run in its own process, in a
fresh temporary folder (the blocks write `defended.keras` and `report/`),
with `ADV_LAYER_DOC_SCALE=test` in the environment: the blocks read that
variable and shrink their sizes (images, epochs, training images, the
attack list of the longest one) to seconds each, and nothing else changes.
So a block that loses an import, a variable or an argument fails here.
What each block costs at its real sizes is written beside it in the README.

The blocks load CIFAR-10 through tfds: offline, export `TFDS_DATA_DIR` (as
`make` and `.ci/run` do).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", os.path.join("examples", "README.md"))
# The environment variable the blocks read, and its value for a tiny run.
SCALE_VARIABLE, SCALE_TEST = "ADV_LAYER_DOC_SCALE", "test"
TIMEOUT_S = 600


def python_blocks(text):
  """The ```python blocks of a Markdown text, in order."""
  return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text,
                    re.MULTILINE | re.DOTALL)


def all_blocks():
  """`(doc path, index, code)` for every Python block of `DOCS`."""
  found = []
  for path in DOCS:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
      found += [(path, i, code) for i, code in enumerate(python_blocks(f.read()))]
  return found


def start_block(code, folder):
  """Starts one block as a script in `folder`; returns the `Popen`."""
  script = os.path.join(folder, "block.py")
  with open(script, "w", encoding="utf-8") as f:
    f.write(code)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
             **{SCALE_VARIABLE: SCALE_TEST})
  env["PYTHONPATH"] = os.pathsep.join(
      [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return subprocess.Popen([sys.executable, script], cwd=folder, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


class ReadmeBlocksTest(tf.test.TestCase):

  def test_the_readme_has_its_three_blocks(self):
    readme = [b for b in all_blocks() if b[0] == "README.md"]
    self.assertLen(readme, 3)
    for _, _, code in readme:
      # Each block is whole and reads the tiny sizes from the variable.
      self.assertIn(f'os.environ.get("{SCALE_VARIABLE}")', code)
      self.assertIn("print(", code)

  def test_blocks_state_epsilon_and_norm_where_they_attack(self):
    for path, index, code in all_blocks():
      if "attacks.evaluate(" in code:
        self.assertIn("epsilon=8 / 255", code, f"{path} block {index}")
        self.assertIn("L∞", code, f"{path} block {index}")

  def test_every_block_runs(self):
    blocks = all_blocks()
    self.assertNotEmpty(blocks)
    # All at once: most of each run is TensorFlow's start and tracing.
    folders = [tempfile.mkdtemp() for _ in blocks]
    processes = [start_block(code, folder)
                 for (_, _, code), folder in zip(blocks, folders)]
    try:
      outputs = [p.communicate(timeout=TIMEOUT_S) for p in processes]
    finally:
      for process in processes:
        if process.poll() is None:
          process.kill()
          process.communicate()
    for (path, index, _), process, (stdout, stderr), folder in zip(
        blocks, processes, outputs, folders):
      shutil.rmtree(folder, ignore_errors=True)
      with self.subTest(doc=path, block=index):
        self.assertEqual(process.returncode, 0, f"{path} block {index}:\n"
                         f"{stdout[-2000:]}\n{stderr[-3000:]}")
        # The last line printed is a one-line result, not an array dump.
        last = stdout.strip().splitlines()[-1]
        self.assertLess(len(last), 200, last)
        self.assertNotIn("array(", last)


if __name__ == "__main__":
  tf.test.main()
