"""Tests of attacks.store: a unit file is trusted only whole and its own.

One tiny evaluation (8 images in two blocks, one attack) is run once; each
test copies its folder and damages it: a truncated, empty or bit-flipped
unit file, a valid unit file under another unit's name, a damaged
plan.json. A run recomputes the bad unit with a warning naming the file and
ends with the figures of the untouched evaluation; a merge alone refuses it.
"""

import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from attacks import evaluation
from attacks import merge
from attacks import plan as plan_lib
from attacks import store
from attacks import suite
from tests import attack_properties

BUDGET = suite.Budget(epsilon=0.1, steps=3, queries=10)
ATTACKS = ["pgd"]


def evaluate(report_dir, model, x, y):
  return evaluation.evaluate(model, x, y, attacks=ATTACKS, budget=BUDGET,
                             report_dir=report_dir, draws=1, unit_size=4,
                             eot_curve=(), grid_images=0, convergence=False,
                             sanity_images=4, num_classes=3)


class UnitFilesTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = attack_properties.tiny_model(seed=3)
    cls.x, cls.y = attack_properties.tiny_batch(seed=4, batch=8)
    cls.original = tempfile.mkdtemp()
    cls.result = evaluate(cls.original, cls.model, cls.x, cls.y)
    cls.plan = store.read_plan(cls.original)

  def copy(self):
    folder = os.path.join(tempfile.mkdtemp(), "eval")
    shutil.copytree(self.original, folder)
    return folder

  def unit_path(self, folder, attack, block):
    return os.path.join(folder, store.UNITS_DIR,
                        self.plan.key(plan_lib.Unit(attack, block)))

  def assert_recomputed(self, folder, path, phrase, block=1):
    with self.assertLogs("absl", "WARNING") as logs:
      result = evaluate(folder, self.model, self.x, self.y)
    self.assertTrue(any(path in line and phrase in line and "recomputing" in
                        line for line in logs.output), logs.output)
    self.assertAllEqual(result.worst["robust"], self.result.worst["robust"])
    self.assertEqual(result.rows, self.result.rows)
    start, stop = self.plan.block_range(block)
    store.read_unit(path, os.path.basename(path), "pgd", block,
                    range(start, stop), self.y[start:stop])  # Its own again.

  def test_unit_files_carry_their_key(self):
    path = self.unit_path(self.original, "pgd", 0)
    _, meta = store.load_unit(path)
    self.assertEqual(meta["key"], os.path.basename(path))
    self.assertEqual((meta["attack"], meta["block"]), ("pgd", 0))

  def test_damaged_files_are_recomputed_with_a_warning(self):
    for damage in ("truncated", "empty", "bit-flipped"):
      folder = self.copy()
      path = self.unit_path(folder, "pgd", 1)
      with open(path, "rb") as f:
        data = bytearray(f.read())
      if damage == "truncated":
        data = data[:len(data) // 2]
      elif damage == "empty":
        data = bytearray()
      else:  # A byte inside the x_adv array: only the zip CRC-32 sees it.
        with np.load(path) as arrays:
          offset = data.find(arrays["x_adv"].tobytes()[:16])
        self.assertGreater(offset, 0)
        data[offset + 3] ^= 0x10
      with open(path, "wb") as f:
        f.write(bytes(data))
      with self.assertRaisesRegex(ValueError, f"{path} is damaged"):
        merge.merge(folder)
      self.assert_recomputed(folder, path, "is damaged")

  def test_a_valid_file_under_another_units_name_is_recomputed(self):
    folder = self.copy()
    # Block 0's result filed as block 1's: loads fine, wrong content.
    shutil.copy(self.unit_path(folder, "pgd", 0),
                self.unit_path(folder, "pgd", 1))
    path = self.unit_path(folder, "pgd", 1)
    with self.assertRaisesRegex(ValueError, "is not unit 'pgd' on block 1"):
      merge.merge(folder)
    self.assert_recomputed(folder, path, "was written as")

  def test_another_attacks_file_is_recomputed(self):
    folder = self.copy()
    path = self.unit_path(folder, "pgd", 0)
    arrays, meta = store.load_unit(path)
    # A legacy file (no key) of the clean unit, under the attack's name.
    clean, clean_meta = store.load_unit(self.unit_path(folder, "clean", 0))
    del clean_meta["key"]
    store.write_npz(path, clean | {"x_adv": arrays["x_adv"]}, clean_meta)
    self.assert_recomputed(folder, path, "holds 'clean' on block 0", block=0)

  def test_labels_other_than_the_images_are_detected(self):
    folder = self.copy()
    path = self.unit_path(folder, "pgd", 0)
    arrays, meta = store.load_unit(path)
    arrays["y"] = (arrays["y"] + 1) % 3
    store.write_npz(path, arrays, meta)
    with self.assertRaisesRegex(ValueError, "labels are not the images"):
      merge.merge(folder)
    self.assert_recomputed(folder, path, "labels are not the images", block=0)

  def test_a_damaged_plan_is_refused_naming_the_file(self):
    folder = self.copy()
    plan_file = os.path.join(folder, store.UNITS_DIR, store.PLAN_FILE)
    with open(plan_file) as f:
      text = f.read()
    with open(plan_file, "w") as f:
      f.write(text[:len(text) // 2])
    for call in (lambda: merge.merge(folder),
                 lambda: evaluate(folder, self.model, self.x, self.y)):
      with self.assertRaisesRegex(ValueError,
                                  f"{plan_file} is damaged.*delete it"):
        call()
    # Deleted, the same evaluation finds every unit its own again.
    os.remove(plan_file)
    result = evaluate(folder, self.model, self.x, self.y)
    self.assertAllEqual(result.worst["robust"], self.result.worst["robust"])
    with open(plan_file) as f:
      self.assertEqual(json.load(f)["images"], 8)


if __name__ == "__main__":
  tf.test.main()
