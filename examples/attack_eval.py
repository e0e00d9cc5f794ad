r"""Worst-case robustness report of a Keras classifier, defended or not.

Runs the attack suite of `attacks.suite` (Xiao & Zheng, CVPR 2020, Sec. 4, plus
adaptive attacks) on the first test images, scores every adversarial image
with fresh draws of the model, runs the sanity checks of `attacks.sanity` and
writes report.json, report.md and PNG plots into --report_dir. For a model
containing `AdversarialTransform` the white-box attacks go through BPDA,
BPDA-I and EOT; for a plain classifier they run on the model directly.

The budget defaults to the reference (`--budget=reference`, see
`attacks.suite.BUDGET_PRESETS`): AutoAttack's `rand` version (100 steps, EOT 20,
1 restart), Square with 5,000 queries, 8 draws per query, R = 20 scoring draws,
the 10,000 test images. `--budget=smoke` is the cheap CI and demo size; any of
--steps, --eot_samples, --restarts, --queries, --query_draws, --draws and
--num_examples overrides its preset. Every report opens with each way its
budget falls below the reference.

An attack that raises makes the verdict INCOMPLETE: the other attacks still
run and the report is written, then the program exits with status 1 unless
--keep_going is given.

At scale (`attacks.runner`): the evaluation is a set of units (attack ×
block of --unit_size images), each seeded by its block and written to
--report_dir/units/ when finished, so rerunning the same command resumes
(a kill loses at most the unit in flight; another model, seed, R or image
set in the same folder is refused, and so is a change of a budget field that
a finished attack used). A rerun may add attacks to --attacks and keeps the
finished units: start with the strongest attacks on every image, add the
rest of a list later, with budget fields only the new attacks use (e.g.
--queries for Square after gradient attacks) set as you need.
--num_shards=N --shard_index=i runs one slice of the blocks and stops; once
all shards are done,
--merge_only builds the one report, identical to a single process's. The
report's extra runs (sanity reruns, the EOT curve) are kept in
--report_dir/reruns/ as well: a killed report build, or the report of an
evaluation grown by more attacks, reuses them.
--dry_run prints the cost (f_b and model passes, FLOPs, time measured on
this machine, wall time spread over the shards and devices) and stops.
Besides report.json/md and plots, the report folder gets robustbench.json and
adversarial.npz (every adversarial image with its seeds), from which
--replay_attack=NAME --replay_example=K reproduces one result exactly.

On a host with 4 GPUs: one process, `--strategy=mirrored` (one model copy
and one thread per GPU, each taking the next unit); or 4 processes,
`CUDA_VISIBLE_DEVICES=$i python examples/attack_eval.py ... --num_shards=4
--shard_index=$i &`, then one `--merge_only`. On a cluster driven by
tf.distribute: the same command on every worker with `TF_CONFIG` and
`--strategy=multi_worker` (each worker one shard on all its devices; the
chief writes the report once every worker has finished). As a Slurm array
job: `#SBATCH --array=0-15` with --num_shards=16
--shard_index=$SLURM_ARRAY_TASK_ID on a shared --report_dir, then
--merge_only in a job with `--dependency=afterok:<array job id>` (a
Kubernetes indexed Job: --shard_index=$JOB_COMPLETION_INDEX). A preempted
task reruns its command and skips its finished units. Train or pass the
surrogates before starting shards (they are saved in --report_dir and reused).

Example (after `python examples/train_cifar10.py --preset=smoke`):

  python examples/attack_eval.py --model=runs/smoke/defended.keras \
      --attacks=adaptive --budget=smoke --num_examples=100 --steps=20

`--model=zoo:NAME` attacks a published model (`adv_layer.zoo.available()`).

Prints the verdict, the budget against the reference, the table (like the
paper's Table 3) with 95% intervals, the sanity flags and the worst-case robust
accuracy.
"""

import dataclasses
import json
import os

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import sys
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf
import tqdm

import adv_layer  # Registers AdversarialTransform for load_model.
from adv_layer import data
from adv_layer import training
from adv_layer import zoo
from attacks import common
from attacks import distributed
from attacks import report
from attacks import runner
from attacks import sanity
from attacks import suite
from attacks import transfer

FLAGS = flags.FLAGS
ZOO_PREFIX = "zoo:"
OVERRIDES = ("steps", "restarts", "eot_samples", "queries", "query_draws",
             "chunk_size", "draws", "num_examples")


def define_flags():
  """Defines the program's flags (called before `app.run`)."""
  flags.DEFINE_string("model", None,
                      "The model to attack (logits out): a .keras path, or "
                      "zoo:NAME for a published model (adv_layer.zoo).")
  flags.DEFINE_string("surrogate", None,
                      "Model (.keras path or zoo:NAME) trained independently "
                      "on clean data, the source of black-box transfer "
                      "(default: trained here "
                      "for a defended model, see --train_surrogates).")
  flags.DEFINE_string("adversarial_surrogate", None,
                      "Model (.keras path or zoo:NAME) trained independently "
                      "with PGD, a source of black-box transfer (default: "
                      "trained here for a "
                      "defended model, see --train_surrogates).")
  flags.DEFINE_bool("train_surrogates", True,
                    "For a defended model, train each surrogate a planned "
                    "attack needs and none was given: f_a's architecture "
                    "with fresh weights, on clean data or with PGD "
                    "(attacks.transfer.surrogate_from_defended), saved in "
                    "--report_dir.")
  flags.DEFINE_enum("surrogate_preset", "cpu", list(training.PRESETS),
                    "Training preset of the surrogates (f_a's schedule and "
                    "data; f_b's PGD settings for the adversarial one).")
  flags.DEFINE_list("attacks", ["adaptive"],
                    "Attack names and/or presets: " + ", ".join(suite.PRESETS) +
                    "; attacks: " + ", ".join(suite.REGISTRY))
  flags.DEFINE_string("epsilon", "8/255",
                      "L-inf budget on [0, 1] images, a number or a fraction.")
  flags.DEFINE_enum("budget", "reference", list(suite.BUDGET_PRESETS),
                    "Budget preset; the flags below override its fields.")
  flags.DEFINE_integer("num_examples", None, "Attack the first N test images "
                       "(default: the preset's).")
  flags.DEFINE_integer("eot_samples", None, "Draws of g averaged per gradient "
                       "(default: the preset's).")
  flags.DEFINE_integer("steps", None, "Iterations of gradient attacks "
                       "(default: the preset's).")
  flags.DEFINE_integer("restarts", None, "Random restarts of the attacks that "
                       "take them (default: the preset's).")
  flags.DEFINE_integer("queries", None, "Queries per image of query-based "
                       "attacks (default: the preset's).")
  flags.DEFINE_integer("query_draws", None, "Draws of the model averaged per "
                       "query by query attacks (default: the preset's).")
  flags.DEFINE_integer("chunk_size", None, "Most images per model call inside "
                       "an EOT step (default: chosen from a 2 GiB activation "
                       "budget, attacks.common.DEFAULT_MEMORY_BUDGET).")
  flags.DEFINE_integer("draws", None, "Draws of the model scoring each image "
                       "(default: the preset's).")
  flags.DEFINE_integer("seed", 0, "Seed of the attacks and the scoring draws.")
  flags.DEFINE_string("report_dir", "runs/attack_eval", "Output folder.")
  flags.DEFINE_string("dataset", "cifar10",
                      "tfds image classification dataset.")
  flags.DEFINE_string("split", "test", "tfds split the images come from.")
  flags.DEFINE_string("data_dir", None,
                      "tfds data directory (default: $TFDS_DATA_DIR, else "
                      "~/tensorflow_datasets).")
  flags.DEFINE_string("data_name", None,
                      "Name of the data in the report (default: 'CIFAR-10 "
                      "(JPEG copy)' for cifar10, else --dataset).")
  flags.DEFINE_integer("reparam_images", 2048,
                       "Training images for the reparameterization attack's h.")
  flags.DEFINE_list("eot_curve", ["1", "2", "4", "8"],
                    "EOT samples of the accuracy-vs-EOT plot (the strongest "
                    "EOT attack of the run; defended models only; empty: no "
                    "plot).")
  flags.DEFINE_integer("grid_images", 4, "Rows of the x / g(x) / E[g(x)] grid.")
  flags.DEFINE_integer("grid_samples", 32, "Draws averaged for E[g(x)].")
  flags.DEFINE_bool("convergence", True,
                    "Rerun the strongest white-box attack with 2x steps, 2x "
                    "restarts and (defended models) 2x EOT samples (the "
                    "convergence sanity checks).")
  flags.DEFINE_integer("sanity_images", None,
                       "Run the extra sanity runs (epsilon sweep, 2x reruns, "
                       "accuracy vs EOT samples) on the first N attacked "
                       "images only (all if N is larger; default: all); the "
                       "report says so.", lower_bound=1)
  flags.DEFINE_string("data_npz", None,
                      "An .npz with arrays x (float32 in [0, 1]) and y, used "
                      "instead of tfds (its first --num_examples images).")
  flags.DEFINE_string("model_name", None,
                      "Name of the model in robustbench.json (default: "
                      "--model).")
  flags.DEFINE_integer("unit_size", 100, "Images per unit of the evaluation.")
  flags.DEFINE_integer("num_shards", 1, "N: shards of the evaluation.")
  flags.DEFINE_integer("shard_index", 0, "The shard this process runs.")
  flags.DEFINE_integer("cpu_devices", None,
                       "Split the CPU into this many logical devices before "
                       "TensorFlow starts (so --strategy=mirrored can run on "
                       "a CPU host: tests, scaling measurements).")
  flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES),
                    "tf.distribute strategy: 'mirrored' runs units on every "
                    "local device at once (one model copy and thread each); "
                    "'multi_worker' makes each worker of TF_CONFIG's cluster "
                    "one shard, and the chief writes the report once all "
                    "have finished.")
  flags.DEFINE_bool("merge_only", False,
                    "Build the report from the finished units of all shards.")
  flags.DEFINE_bool("dry_run", False,
                    "Print the estimated cost and stop (probes a few steps).")
  flags.DEFINE_integer("probe_images", None,
                       "Images per --dry_run probe (default: --unit_size). "
                       "Fewer probe faster; the seconds per image are then "
                       "overstated (less batching).", lower_bound=1)
  flags.DEFINE_string("replay_attack", None,
                      "Replay this attack's recorded result on "
                      "--replay_example from adversarial.npz, and stop.")
  flags.DEFINE_integer("replay_example", None, "Image index to replay.")
  flags.DEFINE_bool("recraft", False,
                    "With --replay_attack: also rerun the attack and compare "
                    "its images bit for bit.")
  flags.DEFINE_bool("keep_going", False,
                    "Exit with status 0 even if an attack raised. Either way "
                    "the other attacks run and the report (verdict "
                    "INCOMPLETE) is written; without this flag the exit status "
                    "is then 1.")
  flags.mark_flag_as_required("model")


def make_budget(preset_name, epsilon, overrides):
  """The `Budget`, R and image count: a preset, some fields overridden.

  Args:
    preset_name: a key of `suite.BUDGET_PRESETS`.
    epsilon: the L∞ radius.
    overrides: dict of `OVERRIDES` names -> value, None keeping the preset's.

  Returns:
    `(budget, draws, images)`.

  Raises:
    ValueError: for an unknown preset or a bad value, naming it.
  """
  if preset_name not in suite.BUDGET_PRESETS:
    raise ValueError(f"Unknown budget preset; known: "
                     f"{sorted(suite.BUDGET_PRESETS)}. Received: "
                     f"budget={preset_name!r}")
  preset = suite.BUDGET_PRESETS[preset_name]
  given = {k: v for k, v in overrides.items() if v is not None}
  draws = given.pop("draws", preset.draws)
  images = given.pop("num_examples", preset.images)
  common.check_number("draws", draws, minimum=1, integer=True)
  common.check_number("num_examples", images, minimum=1, integer=True)
  budget = dataclasses.replace(preset.budget, epsilon=epsilon, **given)
  return budget.validate(), draws, images


def exit_status(suite_result, keep_going):
  """1 if an attack raised (verdict INCOMPLETE) and not `keep_going`, else 0."""
  if suite_result.failed and not keep_going:
    print(f"Verdict {suite.INCOMPLETE}: attacks raised "
          f"({', '.join(sorted(suite_result.failed))}); exit status 1 "
          "(--keep_going to exit 0).", file=sys.stderr)
    return 1
  return 0


def load_model(spec, flag="model"):
  """A model flag's model: a `.keras` path, or `zoo:NAME` from `adv_layer.zoo`.

  Args:
    spec: the flag's value.
    flag: the flag's name, for the error messages.

  Raises:
    ValueError: for an empty value, or an unknown zoo name.
    FileNotFoundError: for a missing file.
  """
  if not spec:
    raise ValueError(f"--{flag} is required: a .keras path or zoo:NAME (one "
                     f"of {zoo.available()}). Received: {flag}={spec!r}")
  if spec.startswith(ZOO_PREFIX):
    return zoo.load(spec[len(ZOO_PREFIX):])
  if not os.path.exists(spec):
    raise FileNotFoundError(
        f"No model file at {spec!r}. Received: {flag}={spec!r}")
  return keras.saving.load_model(spec)


def load_images(split, count):
  """The first `count` images of `split` (or of --data_npz), float32 [0, 1]."""
  if FLAGS.data_npz and split == FLAGS.split:
    with np.load(FLAGS.data_npz) as arrays:
      return arrays["x"][:count], arrays["y"][:count]
  return data.load_arrays(FLAGS.dataset, f"{split}[:{count}]",
                          data_dir=FLAGS.data_dir)


def surrogates(model, names):
  """The surrogates of black-box transfer: given, trained here, or None.

  Args:
    model: the model under attack.
    names: the resolved attack names.

  Returns:
    `(surrogate, adversarial_surrogate, paths)`: the two models (None where
    no planned attack needs one, or none was given and none can be trained)
    and where each came from.
  """
  needed = {suite.REGISTRY[name].needs_surrogate for name in names}
  found, paths = {}, {}
  for field, adversarial in (("surrogate", False),
                             ("adversarial_surrogate", True)):
    path = getattr(FLAGS, field)
    saved = os.path.join(FLAGS.report_dir, f"{field}.keras")
    if path is None and field in needed and os.path.exists(saved):
      path = saved  # Trained by an earlier run or shard: reuse it.
    if path is None and (field in needed and FLAGS.train_surrogates and
                         adv_layer.find_transforms(model)):
      settings = transfer.surrogate_settings(FLAGS.surrogate_preset,
                                             adversarial=adversarial)
      count = settings.pop("train_examples")
      split = f"train[:{count}]" if count else "train"
      images, labels = data.load_arrays(FLAGS.dataset, split,
                                        data_dir=FLAGS.data_dir)
      print(f"Training the {field.replace('_', ' ')} ({FLAGS.surrogate_preset} "
            f"preset, {len(labels)} images) ...")
      trained = transfer.surrogate_from_defended(model, images, labels,
                                                 seed=FLAGS.seed, **settings)
      path = saved
      training.save_model(trained, path)
    paths[field] = path
    found[field] = load_model(path, field) if path else None
  return found["surrogate"], found["adversarial_surrogate"], paths


def data_name():
  if FLAGS.data_name:
    return FLAGS.data_name
  if FLAGS.data_npz:
    return os.path.basename(FLAGS.data_npz)
  return "CIFAR-10 (JPEG copy)" if FLAGS.dataset == "cifar10" else FLAGS.dataset


def split_cpu(count):
  """Splits the CPU into `count` logical devices (before any TF op).

  Raises:
    ValueError: for a count below 1.
  """
  if count < 1:
    raise ValueError(f"`cpu_devices` must be at least 1. Received: "
                     f"cpu_devices={count}")
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def run_units(strategy, target, x, y, names, budget, draws):
  """Runs this shard's unfinished units on the devices of `strategy`.

  `attacks.distributed.run`: one device and `attacks.runner.run` under the
  default strategy; under a multi-worker one it waits for every worker.

  Returns:
    The failed units' keys and errors (a rerun retries them).
  """
  num_shards, shard_index = distributed.shard_of(
      strategy, FLAGS.num_shards, FLAGS.shard_index)
  plan = runner.make_plan(target, x, y, names, budget, FLAGS.seed, draws,
                          FLAGS.unit_size)
  units = plan.units(num_shards, shard_index)
  start = time.perf_counter()
  with tqdm.tqdm(total=len(units), desc=f"shard {shard_index}/"
                 f"{num_shards} units") as bar:

    def progress(unit, key, status):
      del key
      bar.set_postfix(attack=unit.attack, block=unit.block, status=status)
      bar.update(1)

    summary = distributed.run(
        strategy, target, x, y, names, FLAGS.report_dir, budget,
        seed=FLAGS.seed, draws=draws, unit_size=FLAGS.unit_size,
        num_shards=FLAGS.num_shards, shard_index=FLAGS.shard_index,
        keep_going=True, progress=progress)
  print(f"Units: ran {len(summary.ran)}, reused {len(summary.reused)}, "
        f"failed {len(summary.failed)} in {time.perf_counter() - start:.1f} s")
  for key, error in summary.failed.items():
    print(f"FAILED {key}: {error}")
  return summary.failed


def eot_curve(target, suite_result, x, y, rerun):
  """Accuracy of the strongest EOT attack against EOT samples (paper Fig. 7).

  `rerun` runs the attack with a changed budget (`suite.rerun`'s signature).

  Returns:
    `(attack name, dict EOT samples -> mean accuracy)`, or `(None, None)` on
    a deterministic model, without an EOT attack or with an empty
    --eot_curve.
  """
  samples = [int(k) for k in FLAGS.eot_curve]
  reference = sanity.reference_attack(suite_result, field="eot_samples")
  if not target.defended or not samples or reference is None:
    return None, None
  curve = {}
  for k in tqdm.tqdm(samples, desc=f"{reference.name}: accuracy vs EOT"):
    result = rerun(target, reference.name, x, y, suite_result.budget,
                   suite_result.seed, suite_result.draws, eot_samples=k)
    curve[k] = result.score.mean_accuracy
  return reference.name, curve


def transform_grid(target, suite_result, x):
  """Columns x / g(x) / E[g(x)] / x_adv (strongest attack) of the first images."""
  rows = min(FLAGS.grid_images, len(x))
  if rows < 1:
    return None
  columns = {"x": x[:rows]}
  if target.defended:
    g_x, mean_g_x = report.transform_views(target.transforms[0], x[:rows],
                                           FLAGS.grid_samples)
    columns["g(x)"] = g_x
    columns[f"E[g(x)] ({FLAGS.grid_samples} draws)"] = mean_g_x
  strongest = suite_result.worst["strongest"]
  for result in suite_result.results:
    if result.name == strongest:
      columns[f"x_adv ({strongest})"] = result.x_adv[:rows]
  return columns


def main(argv):
  del argv
  start = time.perf_counter()
  if FLAGS.cpu_devices:
    split_cpu(FLAGS.cpu_devices)
  strategy = training.make_strategy(FLAGS.strategy)  # First: cluster setup.
  budget, draws, num_examples = make_budget(
      FLAGS.budget, common.parse_epsilon(FLAGS.epsilon),
      {name: getattr(FLAGS, name) for name in OVERRIDES})
  model = load_model(FLAGS.model)
  x, y = load_images(FLAGS.split, num_examples)
  names = suite.resolve_attacks(FLAGS.attacks)
  surrogate, adversarial_surrogate, surrogate_paths = surrogates(model, names)
  train_images = None
  if "reparam" in names and adv_layer.find_transforms(model):
    train_images, _ = load_images("train", FLAGS.reparam_images)
  target = suite.Target(model, surrogate=surrogate, train_images=train_images,
                        adversarial_surrogate=adversarial_surrogate)

  if FLAGS.replay_attack:
    outcome = runner.replay(model, os.path.join(FLAGS.report_dir,
                                                runner.EXAMPLES_FILE),
                            FLAGS.replay_example, FLAGS.replay_attack,
                            recraft=FLAGS.recraft)
    print(json.dumps(outcome, indent=1))
    return 0
  if FLAGS.dry_run:
    with tqdm.tqdm(total=len(names) + 1, desc="dry run probes") as bar:

      def probed(name):
        bar.set_postfix(probed=name, refresh=False)
        bar.update()

      estimate = runner.estimate_cost(
          target, x, y, names, budget, seed=FLAGS.seed, draws=draws,
          unit_size=FLAGS.unit_size, probe_images=FLAGS.probe_images,
          shards=sorted({1, len(distributed.local_devices(strategy)) *
                         distributed.shard_of(strategy, FLAGS.num_shards,
                                              FLAGS.shard_index)[0]}),
          progress=probed)
    print(estimate.table())
    print(f"(probes: {estimate.probe_images} images, "
          f"{estimate.probe_s:.1f} s)")
    return 0
  if not FLAGS.merge_only:
    failed = run_units(strategy, target, x, y, names, budget, draws)
    if FLAGS.strategy == "multi_worker" and not training.is_chief(strategy):
      print("Worker done (every worker is); the chief writes the report.")
      return 1 if failed and not FLAGS.keep_going else 0
    if FLAGS.num_shards > 1:
      print(f"Shard {FLAGS.shard_index} of {FLAGS.num_shards} done; when every "
            "shard is, rerun with --merge_only for the report.")
      return 1 if failed and not FLAGS.keep_going else 0
  merged = runner.merge(FLAGS.report_dir, allow_incomplete=True)
  suite_result, x, y = merged.suite_result, merged.x, merged.y
  print("Sanity checks (extra attack runs) ...")
  sanity_images = (None if FLAGS.sanity_images is None else
                   min(FLAGS.sanity_images, len(x)))
  rerun = runner.stored_rerun(FLAGS.report_dir)
  checks, extras = sanity.run_checks(target, suite_result, x, y,
                                     convergence=FLAGS.convergence,
                                     images=sanity_images, rerun=rerun)
  subset = suite_result if sanity_images is None else sanity.first_images(
      suite_result, sanity_images)
  eot_attack, curve = eot_curve(target, subset, x[:subset.clean.images],
                                y[:subset.clean.images], rerun)
  if curve:
    extras["eot_attack"] = eot_attack
  meta = {
      "data": data_name(), "dataset": FLAGS.dataset,
      "split": f"{FLAGS.split}[:{num_examples}]", "model": FLAGS.model,
      "surrogate": surrogate_paths["surrogate"],
      "adversarial_surrogate": surrogate_paths["adversarial_surrogate"],
      "surrogate_preset": FLAGS.surrogate_preset,
      "attacks_requested": FLAGS.attacks,
      "budget_preset": FLAGS.budget,
      "elapsed_s": time.perf_counter() - start,
  }
  paths = report.write_report(FLAGS.report_dir, suite_result, checks, extras,
                              meta, grid=transform_grid(target, suite_result, x),
                              eot_curve=curve)
  paths |= runner.export(merged, FLAGS.report_dir,
                         FLAGS.model_name or FLAGS.model, data_name(), checks)
  print(report.print_summary(paths["json"]))
  worst = suite_result.worst
  low, high = worst["strict_accuracy_ci95"]
  print(f"\nWorst-case robust accuracy: {100 * worst['strict_accuracy']:.1f}% "
        f"[95% CI {100 * low:.1f}, {100 * high:.1f}] (strict over {draws} "
        f"draws, {len(x)} images of {data_name()}, eps="
        f"{budget.epsilon * 255:.4g}/255), strongest attack: "
        f"{worst['strongest']}"
        f"{'' if suite_result.weaker_than_reference else ', reference budget'}"
        f"; verdict {suite_result.verdict}")
  print(f"Report: {os.path.abspath(paths['md'])} "
        f"({time.perf_counter() - start:.1f} s)")
  return exit_status(suite_result, FLAGS.keep_going)


if __name__ == "__main__":
  define_flags()
  app.run(main)
