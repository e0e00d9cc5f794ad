r"""A GPU check in one command: contracts, speed, the reference verdict.

On a machine with an NVIDIA GPU (`make gpu-check` installs
the `[and-cuda]` extra into the README's .venv first, then runs this program)
it runs, each step in a fresh process, and writes one summary:

1. The device: the GPU's name, memory and compute capability (TensorFlow and
   `nvidia-smi`), TensorFlow's CUDA/cuDNN build, TensorFlow and Keras
   versions.
2. The layer's contract tests on the GPU: `pytest tests/layer_test.py
   tests/transform_test.py tests/distribute_test.py` (Keras compiles
   `fit`/`predict` with XLA by default on a GPU, `jit_compile="auto"`: the
   range and NaN checks must still raise; mixed precision, `.keras`
   save/reload and the SavedModel export are in layer_test.py, tf.distribute
   in distribute_test.py, whose workers run on two logical CPUs), with the
   pass/fail counts from pytest's JUnit XML.
3. The transform's speed: `examples/benchmark.py` on seeded random images
   (the speed does not depend on the data), its images/s and its FLOP rate as
   a fraction of the GPU's fp32 matmul rate measured in the same run (TF32 on
   Ampere and later, TensorFlow's default there, for both).
4. AutoAttack's `rand` version at the reference budget (APGD-CE and APGD-DLR
   through BPDA-I, 100 steps, EOT 20, 1 restart, R = 20 scoring draws) on the
   first 500 CIFAR-10 test images of the published
   `zoo:cifar10/defended_resnet18`, through `examples/attack_eval.py`, first
   as a `--dry_run` (its predicted wall time, recorded beside the real one)
   and then for real, writing the report into --out/report. Sanity reruns
   (the epsilon sweep: 4 reruns of the strongest attack) run on the first 100
   images only, the convergence reruns (2x steps, restarts, EOT) and the
   accuracy-vs-EOT curve not at all: the report's budget lines say so.
5. summary.json and summary.md in --out: GPU model, images/s, fraction of
   the matmul rate, test counts, the verdict with its 95% intervals, each
   step's wall time. Logs of every step are in --out/logs/.

Expected time on one H100 (estimated, never measured: docs/GPU.md has the
arithmetic): about 7-9 minutes, 4.5-11 at the extremes. This CPU's dry run
of step 4 (probes of 8 images) predicts 131,173 s for 4.613e15 FLOP, with
this CPU's fp32 matmul at 91.4 GFLOP/s (both measured under the same load).
Assuming the GPU reaches the same fraction of its rated dense rate, the units
take 131,173 x 91.4e9 / 494.7e12 = 24 s at TF32 to 131,173 x 91.4e9 /
66.9e12 = 179 s at plain FP32, +40% for the sanity reruns on 100 images
(34-251 s); process starts, tracing, the 149 contract tests, the benchmark,
the dry run and the report add an estimated 4-6.5 minutes. Uncertain mostly
through the fraction of peak the GPU reaches on 32x32 convolutions; the
dry-run step records the GPU's own prediction beside the measured time. The
summary says whether the run stayed inside --time_budget_s (default 600 s);
the program does not stop early.

Without a GPU the full mode refuses at once (exit status 2) and names
`--reduced`: that mode (`--mode=cpu_smoke`) runs the same steps on the CPU,
GPUs hidden, at toy sizes (a few contract tests, a 4-image benchmark with 2
transform steps, 4 images attacked with 2 steps and EOT 2), in 2-4 minutes
on 2 busy CPU cores; tests/gpu_check_test.py runs it so that this program
cannot rot.
Its figures say nothing about a GPU.

Usage:
  make gpu-check                            # a GPU machine, online
  python examples/gpu_check.py --out=runs/gpu_check   # TF for GPU installed
  python examples/gpu_check.py --reduced --out=/tmp/gpu_check  # any CPU
  # Offline: --data_npz=FILE.npz with arrays x (float32 in [0, 1]) and y,
  # the first 500 CIFAR-10 test images (docs/GPU.md says how to write it).
"""

import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from xml.etree import ElementTree

from absl import app
from absl import flags

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GPU = "gpu"
CPU_SMOKE = "cpu_smoke"
MODES = (GPU, CPU_SMOKE)
MODEL = "zoo:cifar10/defended_resnet18"
ATTACKS = ("apgd_ce_bpda_identity", "apgd_dlr_bpda_identity")
STEPS = ("device", "tests", "benchmark", "dry_run", "attack")
# Benchmark results copied into the summary (keys of benchmark.py's JSON).
BENCHMARK_KEYS = (
    "batch_size", "steps", "transform_images_per_s", "fraction_of_matmul",
    "matmul_flops_per_s", "transform_flops_per_image", "transform_flops_per_s",
    "layer_eager_images_per_s", "layer_compiled_images_per_s",
    "xla_images_per_s", "folded_images_per_s", "bf16_images_per_s",
    "bf16_pixel_agreement")
# Tests of each contract the reduced mode keeps (seconds, not minutes):
# range and NaN checks (eager, tf.function, predict, fit with jit_compile),
# the XLA refusal, mixed precision, save/reload and non-finite gradients.
SMOKE_TESTS = ("test_values_outside_value_range",
               "test_xla_compiled_function_refuses_the_layer",
               "test_mixed_float16_policy",
               "test_keras_save_and_load_give_identical_outputs",
               "test_non_finite_gradient_entries_do_not_move_their_pixel")
NO_GPU_MESSAGE = (
    "No GPU is visible to TensorFlow (tf.config.list_physical_devices('GPU') "
    "is empty), so the full check would run its reference-budget attack on "
    "the CPU for hours. On a GPU machine install the `[and-cuda]` extra "
    "(`make gpu-check` does); on a CPU run the reduced check: "
    "`python examples/gpu_check.py --reduced`. Received: mode={mode!r}")


def define_flags():
  """Defines the program's flags (called by `__main__` only)."""
  flags.DEFINE_enum("mode", GPU, list(MODES),
                    "gpu: the full check (refused without a GPU); cpu_smoke: "
                    "the same steps on the CPU at toy sizes.")
  flags.DEFINE_bool("reduced", False, "Same as --mode=cpu_smoke.")
  flags.DEFINE_string("out", "runs/gpu_check",
                      "Output folder: summary.json, summary.md, logs/, "
                      "report/ (the attack's), benchmark.json, tests.xml.")
  flags.DEFINE_string("data_npz", None,
                      "An .npz with arrays x (float32 in [0, 1]) and y: the "
                      "attacked images instead of tfds' CIFAR-10 test split "
                      "(offline machines, tests).")
  flags.DEFINE_list("skip", [],
                    "Steps not to run, of: tests, benchmark, dry_run, attack "
                    "(the summary marks them skipped).")
  flags.DEFINE_integer("sanity_images", None,
                       "Images of the attack's sanity reruns (default: the "
                       "mode's, 100 on a GPU).", lower_bound=1)
  flags.DEFINE_float("time_budget_s", 600.0,
                     "The wall time the check should fit in (reported, not "
                     "enforced).")


def mode_settings(mode, out, data_npz=None, sanity_images=None):
  """The command lines of each step in `mode`.

  Args:
    mode: one of `MODES`.
    out: the output folder (the steps write into it).
    data_npz: optional .npz of the attacked images, passed to attack_eval.py.
    sanity_images: images of the sanity reruns (None: the mode's default).

  Returns:
    A dict: `tests`, `benchmark`, `dry_run`, `attack` -> argument lists
    (without the interpreter), and `hide_gpus` (bool).

  Raises:
    ValueError: for an unknown mode.
  """
  if mode not in MODES:
    raise ValueError(f"`mode` must be one of {list(MODES)}. Received: "
                     f"mode={mode!r}")
  smoke = mode == CPU_SMOKE
  tests = ["-m", "pytest", "tests/layer_test.py", "tests/transform_test.py"]
  if smoke:
    tests += ["-k", " or ".join(SMOKE_TESTS)]
  else:
    tests += ["tests/distribute_test.py"]
  tests += ["-q", "-p", "no:cacheprovider",
            f"--junitxml={os.path.join(out, 'tests.xml')}"]
  benchmark = [os.path.join("examples", "benchmark.py"), "--data=random",
               "--attack_images=0", "--train_images=0",
               f"--json_out={os.path.join(out, 'benchmark.json')}"]
  if smoke:
    benchmark += ["--batch_size=4", "--steps=2", "--repeats=1",
                  "--matmul_size=1024", "--bf16_batch_size=0"]
  else:  # A GPU needs a large batch and a large matmul to be busy.
    benchmark += ["--batch_size=1024", "--repeats=3", "--matmul_size=8192",
                  "--bf16_batch_size=256"]
  attack = [os.path.join("examples", "attack_eval.py"), f"--model={MODEL}",
            f"--attacks={','.join(ATTACKS)}", "--noconvergence",
            "--eot_curve=", f"--report_dir={os.path.join(out, 'report')}"]
  if smoke:
    attack += ["--budget=smoke", "--num_examples=4", "--steps=2",
               "--eot_samples=2", "--draws=2", "--unit_size=4",
               "--grid_images=2", "--grid_samples=2",
               f"--sanity_images={sanity_images or 2}"]
  else:  # The reference budget: the preset's 100 steps, EOT 20, R 20.
    attack += ["--budget=reference", "--num_examples=500",
               f"--sanity_images={sanity_images or 100}"]
  if data_npz:
    attack.append(f"--data_npz={data_npz}")
  dry_run = attack[:1] + [a for a in attack[1:]
                          if not a.startswith("--report_dir=")] + [
                              f"--report_dir={os.path.join(out, 'dry_run')}",
                              "--dry_run",
                              f"--probe_images={2 if smoke else 100}"]
  return {"tests": tests, "benchmark": benchmark, "dry_run": dry_run,
          "attack": attack, "hide_gpus": smoke}


def refusal(mode, gpus):
  """The message refusing the full mode without a GPU, or None.

  Args:
    mode: one of `MODES`.
    gpus: the GPUs TensorFlow sees (a list).

  Returns:
    A message naming `--reduced`, or None when the mode may run.
  """
  if mode == GPU and not gpus:
    return NO_GPU_MESSAGE.format(mode=mode)
  return None


def visible_gpus():
  """The GPUs TensorFlow sees; [] at once, without TensorFlow, when none can be.

  Without an NVIDIA driver (no /proc/driver/nvidia, no /dev/nvidia*, no
  `nvidia-smi`) or with `CUDA_VISIBLE_DEVICES` empty or -1 no GPU is
  visible, and the refusal comes before TensorFlow's slow import.

  Returns:
    A list of `tf.config.PhysicalDevice`.
  """
  hidden = os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1")
  driver = (os.path.exists("/proc/driver/nvidia/version") or
            glob.glob("/dev/nvidia[0-9]*") or nvidia_smi_path())
  if hidden or not driver:
    return []
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.config.list_physical_devices("GPU")


def nvidia_smi_path():
  """`nvidia-smi` on PATH or where NVIDIA's container runtime puts it; None."""
  found = shutil.which("nvidia-smi")
  if found:
    return found
  fallback = "/usr/local/nvidia/bin/nvidia-smi"
  return fallback if os.access(fallback, os.X_OK) else None


def nvidia_smi():
  """Name, total memory (MiB) and driver of each GPU `nvidia-smi` lists.

  Returns:
    A list of dicts; empty without `nvidia-smi` or when it fails.
  """
  path = nvidia_smi_path()
  if not path:
    return []
  try:
    run = subprocess.run(
        [path, "--query-gpu=name,memory.total,driver_version",
         "--format=csv,noheader,nounits"], capture_output=True, text=True,
        timeout=60, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return []
  gpus = []
  for line in run.stdout.strip().splitlines() if run.returncode == 0 else []:
    name, memory, driver = [part.strip() for part in line.split(",")][:3]
    gpus.append({"name": name, "memory_mib": int(memory) if memory.isdigit()
                 else None, "driver": driver})
  return gpus


def device_info(hide_gpus):
  """This process's view of the machine, without initialising the GPU.

  Args:
    hide_gpus: the reduced mode: report the CPU (GPUs are hidden from the
      steps).

  Returns:
    A dict: `gpus` (TensorFlow's device details, each with `nvidia-smi`'s
    memory when it lists the GPU), `gpu` (the first GPU's name or None),
    `cpu`, versions and TensorFlow's build.
  """
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gpus = [] if hide_gpus else tf.config.list_physical_devices("GPU")
  smi = nvidia_smi() if gpus else []
  details = []
  for i, gpu in enumerate(gpus):
    found = tf.config.experimental.get_device_details(gpu)
    capability = found.get("compute_capability")
    details.append({
        "device": gpu.name,
        "name": found.get("device_name", "unknown"),
        "compute_capability": (".".join(map(str, capability))
                               if capability else None),
        "memory_mib": smi[i]["memory_mib"] if i < len(smi) else None,
        "driver": smi[i]["driver"] if i < len(smi) else None,
    })
  build = tf.sysconfig.get_build_info()
  return {
      "gpus": details,
      "gpu": details[0]["name"] if details else None,
      "cpu": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
      "tensorflow": tf.__version__,
      "keras": keras.__version__,
      "cuda_build": bool(build.get("is_cuda_build", False)),
      "cuda_version": build.get("cuda_version"),
      "cudnn_version": build.get("cudnn_version"),
  }


def step_env(hide_gpus):
  """The environment of a step's process (the repository importable)."""
  # Growth, not TensorFlow's default grab of the whole GPU: tests start
  # processes that need the GPU beside their own (layer_test's SavedModel).
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONUNBUFFERED="1", TF_FORCE_GPU_ALLOW_GROWTH="true")
  if hide_gpus:
    env["CUDA_VISIBLE_DEVICES"] = ""
  return env


def run_step(name, args, out, hide_gpus):
  """Runs `python args` from the repository root, its output into a log.

  Args:
    name: the step's name (the log is out/logs/<name>.log).
    args: the arguments after the interpreter.
    out: the output folder.
    hide_gpus: run with `CUDA_VISIBLE_DEVICES=""`.

  Returns:
    A dict: `command`, `returncode`, `wall_s`, `log`.
  """
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  log_path = os.path.join(out, "logs", f"{name}.log")
  command = [sys.executable] + list(args)
  print(f"[{name}] {' '.join(command)}", flush=True)
  start = time.perf_counter()
  with open(log_path, "w", encoding="utf-8") as log:
    returncode = subprocess.run(command, cwd=ROOT, env=step_env(hide_gpus),
                                stdout=log, stderr=subprocess.STDOUT,
                                check=False).returncode
  wall_s = time.perf_counter() - start
  print(f"[{name}] exit status {returncode} in {wall_s:.1f} s (log: "
        f"{log_path})", flush=True)
  return {"command": " ".join(command[1:]), "returncode": returncode,
          "wall_s": wall_s, "log": log_path}


def pytest_counts(junit_path):
  """Passed, failed, errors and skipped tests of a pytest JUnit XML file.

  Args:
    junit_path: the file `--junitxml` wrote.

  Returns:
    A dict of counts (`total` included) and the names of the failed and
    erroring tests; all zero when the file is missing (pytest did not start).
  """
  counts = {"total": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0,
            "failed_tests": []}
  if not os.path.exists(junit_path):
    return counts
  for suite in ElementTree.parse(junit_path).getroot().iter("testsuite"):
    for case in suite.iter("testcase"):
      name = f"{case.get('classname')}.{case.get('name')}"
      counts["total"] += 1
      if case.find("failure") is not None:
        counts["failed"] += 1
        counts["failed_tests"].append(name)
      elif case.find("error") is not None:
        counts["errors"] += 1
        counts["failed_tests"].append(name)
      elif case.find("skipped") is not None:
        counts["skipped"] += 1
      else:
        counts["passed"] += 1
  return counts


def benchmark_summary(json_path):
  """The transform figures of a benchmark.py --json_out file (`BENCHMARK_KEYS`).

  Returns:
    A dict; empty when the file is missing.
  """
  if not os.path.exists(json_path):
    return {}
  with open(json_path, encoding="utf-8") as f:
    results = json.load(f)["results"]
  return {key: results[key] for key in BENCHMARK_KEYS if key in results}


def dry_run_seconds(log_path):
  """The one-device wall time a `--dry_run` log predicts, or None."""
  if not os.path.exists(log_path):
    return None
  with open(log_path, encoding="utf-8", errors="replace") as f:
    found = re.findall(r"wall time with 1 shard\(s\)/device\(s\): ([0-9.]+) s",
                       f.read())
  return float(found[-1]) if found else None


def attack_summary(report_path):
  """The verdict of an attack_eval.py report.json, with its intervals.

  Returns:
    A dict: verdict, images, draws, budget, the shortfalls against the
    reference, clean and worst-case accuracies with 95% intervals, each
    attack's, the strongest attack, the raised sanity flags and the devices
    the run saw; empty when the report is missing.
  """
  if not os.path.exists(report_path):
    return {}
  with open(report_path, encoding="utf-8") as f:
    report = json.load(f)

  def accuracy(entry):
    return {key: entry[key] for key in
            ("mean_accuracy", "mean_accuracy_ci95", "strict_accuracy",
             "strict_accuracy_ci95") if key in entry}

  worst = report["worst_case"]
  return {
      "verdict": report["verdict"],
      "images": report["images"],
      "draws": report["draws"],
      "budget": report["budget"],
      "weaker_than_reference": report["weaker_than_reference"],
      "clean": accuracy(report["clean"]),
      "worst_case": accuracy(worst),
      "strongest": worst.get("strongest"),
      "attacks": {a["name"]: accuracy(a) for a in report["attacks"]},
      "failed": report["failed"],
      "flags": {f["name"]: f["status"] for f in report["flags"]
                if f["status"] != "ok"},
      "devices": report["machine"].get("devices"),
  }


def percent(entry, key):
  """`entry[key]` and its `entry[key + "_ci95"]`: `12.3% [10.1, 14.8]`."""
  low, high = entry[key + "_ci95"]
  return f"{100 * entry[key]:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def summary_markdown(summary):
  """The summary as a short markdown page."""
  device = summary["device"]
  lines = [f"# GPU check ({summary['mode']})", "",
           f"- Device: {device['gpu'] or 'no GPU (CPU: ' + device['cpu'] + ')'}"
           + "".join(f", {g['memory_mib']} MiB" for g in device["gpus"][:1]
                     if g["memory_mib"]),
           f"- TensorFlow {device['tensorflow']}, Keras {device['keras']}, "
           f"CUDA build {device['cuda_version'] or 'none'}",
           f"- Total wall time {summary['wall_s']['total']:.1f} s "
           f"(budget {summary['time_budget_s']:.0f} s: "
           f"{'inside' if summary['within_budget'] else 'OVER'}); "
           f"all steps ok: {summary['ok']}"]
  tests = summary["tests"]
  if tests:
    lines.append(f"- Contract tests: {tests['passed']} passed, "
                 f"{tests['failed']} failed, {tests['errors']} errors, "
                 f"{tests['skipped']} skipped of {tests['total']}"
                 + (f" (failed: {', '.join(tests['failed_tests'])})"
                    if tests["failed_tests"] else ""))
  bench = summary["benchmark"]
  if bench.get("transform_images_per_s"):
    lines.append(f"- Transform (batch {bench['batch_size']}, N "
                 f"{bench['steps']}): {bench['transform_images_per_s']:.1f} "
                 f"images/s = {100 * bench['fraction_of_matmul']:.1f}% of the "
                 f"matmul rate ({bench['matmul_flops_per_s'] / 1e12:.2f} "
                 "TFLOP/s)")
  attack = summary["attack"]
  if attack.get("verdict"):
    worst = attack["worst_case"]
    lines += [
        f"- Verdict {attack['verdict']}: worst-case robust accuracy "
        f"{percent(worst, 'strict_accuracy')} (strict over {attack['draws']} "
        f"draws, {attack['images']} images; mean "
        f"{percent(worst, 'mean_accuracy')}), clean "
        f"{percent(attack['clean'], 'mean_accuracy')}, strongest "
        f"{attack['strongest']}",
        "- Below the reference: " + (", ".join(
            f"{w['field']} {w['used']} (reference {w['reference']})"
            for w in attack["weaker_than_reference"]) or "nothing"),
        "- Sanity flags not ok: " + (", ".join(
            f"{name} ({status})" for name, status in attack["flags"].items())
                                     or "none"),
    ]
    lines += [f"  - {name}: {percent(a, 'strict_accuracy')} strict"
              for name, a in attack["attacks"].items()]
  if summary.get("dry_run_predicted_s") is not None:
    lines.append(f"- Attack wall time predicted by its dry run: "
                 f"{summary['dry_run_predicted_s']:.1f} s")
  lines += ["", "| step | exit status | wall s |", "|---|---|---|"]
  for name, step in summary["steps"].items():
    lines.append(f"| {name} | {step.get('returncode', 'skipped')} | "
                 f"{step.get('wall_s', 0.0):.1f} |")
  return "\n".join(lines) + "\n"


def run_check(mode, out, data_npz=None, skip=(), sanity_images=None,
              time_budget_s=600.0):
  """Runs every step of `mode` and writes summary.json and summary.md.

  Args:
    mode: one of `MODES` (`refusal` is checked by the caller).
    out: the output folder.
    data_npz: optional .npz of the attacked images.
    skip: names of steps not to run (of `STEPS` but `device`).
    sanity_images: images of the sanity reruns (None: the mode's).
    time_budget_s: the wall time the check should fit in.

  Returns:
    The summary dict.

  Raises:
    ValueError: for an unknown step in `skip`.
  """
  unknown = sorted(set(skip) - set(STEPS[1:]))
  if unknown:
    raise ValueError(f"`skip` takes steps of {list(STEPS[1:])}. Received: "
                     f"skip={unknown!r}")
  start = time.perf_counter()
  out = os.path.abspath(out)  # The steps run from the repository root.
  os.makedirs(out, exist_ok=True)
  settings = mode_settings(mode, out, data_npz and os.path.abspath(data_npz),
                           sanity_images)
  hide = settings["hide_gpus"]
  device = device_info(hide)
  print("Device: " + json.dumps(device), flush=True)
  steps = {}
  for name in STEPS[1:]:
    steps[name] = ({"skipped": True} if name in skip else
                   run_step(name, settings[name], out, hide))
  tests = pytest_counts(os.path.join(out, "tests.xml"))
  summary = {
      "mode": mode,
      "device": device,
      "tests": tests if "tests" not in skip else {},
      "benchmark": benchmark_summary(os.path.join(out, "benchmark.json")),
      "dry_run_predicted_s": dry_run_seconds(
          os.path.join(out, "logs", "dry_run.log")),
      "attack": attack_summary(os.path.join(out, "report", "report.json")),
      "steps": steps,
  }
  # attack_eval.py exits 2 for a SUSPECT verdict: its report is written.
  ran = {name: s for name, s in steps.items() if not s.get("skipped")}
  summary["ok"] = (all(s["returncode"] in ((0, 2, 4) if name == "attack" else (0,))
                       for name, s in ran.items()) and
                   ("tests" in skip or (tests["total"] > 0 and
                                        tests["passed"] == tests["total"])))
  total = time.perf_counter() - start
  summary["wall_s"] = {"total": total,
                       **{name: s.get("wall_s") for name, s in steps.items()}}
  summary["time_budget_s"] = time_budget_s
  summary["within_budget"] = total <= time_budget_s
  with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
    f.write(summary_markdown(summary))
  return summary


def missing_pytest(skip):
  """The one-line refusal when the tests step needs pytest and lacks it."""
  if "tests" in skip or importlib.util.find_spec("pytest") is not None:
    return None
  return ("gpu_check.py: error: the contract-test step runs pytest, which "
          "the [cpu] and [and-cuda] extras do not install: run "
          "`.venv/bin/pip install pytest` (or install the [test] extra), or "
          "pass --skip=tests.")


def main(argv):
  del argv
  mode = CPU_SMOKE if FLAGS.reduced else FLAGS.mode
  message = refusal(mode, visible_gpus()) or missing_pytest(FLAGS.skip)
  if message:
    print(message, file=sys.stderr)
    return 2
  summary = run_check(mode, FLAGS.out, FLAGS.data_npz, FLAGS.skip,
                      FLAGS.sanity_images, FLAGS.time_budget_s)
  print(summary_markdown(summary))
  print(f"Summary: {os.path.abspath(os.path.join(FLAGS.out, 'summary.json'))}")
  return 0 if summary["ok"] else 1


if __name__ == "__main__":
  define_flags()
  app.run(main)
