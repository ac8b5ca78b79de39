"""Peer tools for the side-by-side benches: their venvs, and an interleaved runner that times every tool alike.

LLaMA-Factory and TRL each get their OWN venv under `$EMBER_CACHE/peers` (default ~/.cache/ember/peers), never the
project venv. A venv is built once and reused while its spec (pinned versions) is unchanged; `ember-peer.json` in it
records the spec and the versions it ended up with.

- `llamafactory`: llamafactory==0.9.5 with pip's own resolution of its pins (transformers 5.6.0, peft 0.18.1,
  accelerate 1.11.0, datasets 4.0.0, trl 0.24.0), but torch held at the CPU wheel 2.13.0 (a constraint, so the
  resolver cannot swap in a CUDA build). LLaMA-Factory also requires torchvision and torchaudio, whose PyPI wheels
  are built against other torch builds: torchvision 0.28.0 fails at import (`operator torchvision::nms does not
  exist`), and torchaudio 2.11.1's native libraries do not load into torch 2.13. LLaMA-Factory only needs them for
  images/audio: torchvision is uninstalled (transformers then skips it) and torchaudio's three native libraries are
  deleted, so `import torchaudio` (done by llamafactory.data.mm_plugin) succeeds in its pure-Python mode.
- `trl`: trl==1.16.0 on the same torch, transformers, peft, accelerate, datasets and tokenizers versions as the
  project venv (read from it), so a TRL-vs-Ember difference is the tool's, not the libraries'.

The runner (`run_interleaved`) runs each job in its own subprocess from this one driver, in rounds (A, B, C, A, B,
C, ...), every child with OMP_WAIT_POLICY=PASSIVE, offline, and a fresh, empty HF datasets cache (so no tool reads
another run's Arrow cache); it records wall seconds, the child's own timed section, the child's peak RSS
(ru_maxrss from wait4: the largest single process among the child and its worker processes, not their sum) and the
1-minute load average before and after.

    python bench/peers.py            # build (or check) both venvs and print their versions
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the CPU wheel (a local wheel on the project's machines)
LLAMAFACTORY = "llamafactory==0.9.5"
TRL = "trl==1.16.0"
# TRL's venv mirrors these from the project venv; the keys are the distributions' names.
MIRRORED = ("transformers", "peft", "accelerate", "datasets", "tokenizers")
VERSIONS_SCRIPT = (
    "import importlib.metadata as m, json, sys\n"
    "out = {}\n"
    "for n in sys.argv[1:]:\n"
    "    try: out[n] = m.version(n)\n"
    "    except m.PackageNotFoundError: pass\n"
    "print(json.dumps(out))\n"
)
REPORTED = ("llamafactory", "trl", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers")


def peer_root() -> Path:
    return Path(os.environ.get("EMBER_CACHE", Path.home() / ".cache" / "ember")) / "peers"


def _project_versions() -> dict[str, str]:
    import importlib.metadata as md

    return {name: md.version(name) for name in MIRRORED}


def _spec(tool: str) -> dict:
    if tool == "llamafactory":
        return {"tool": tool, "install": [LLAMAFACTORY], "constraints": [TORCH], "remove": ["torchvision"],
                "strip_native": ["torchaudio/lib"], "check": "import llamafactory.data, llamafactory.train.tuner"}
    if tool == "trl":
        pins = [f"{n}=={v}" for n, v in _project_versions().items()]
        return {"tool": tool, "install": [TRL, *pins], "constraints": [TORCH], "remove": [], "strip_native": [],
                "check": "import trl, peft; from trl import SFTTrainer, SFTConfig"}
    raise ValueError(f"unknown peer tool {tool!r}: llamafactory or trl")


def _pip(python: Path, *args: str, log) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"pip failed ({' '.join(args)}); see {log.name}")


def ensure_venv(tool: str) -> Path:
    """Return the venv's python, building the venv first when it is missing or its spec changed."""
    spec = _spec(tool)
    root = peer_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / tool
    marker = venv / "ember-peer.json"
    with open(root / f".{tool}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benches started at once build it once
        if marker.is_file() and json.loads(marker.read_text())["spec"] == spec and (venv / "bin" / "python").exists():
            return venv / "bin" / "python"
        shutil.rmtree(venv, ignore_errors=True)  # a missing or stale marker: rebuild from scratch
        log_path = root / f"{tool}.install.log"
        print(f"building the {tool} venv in {venv} (a few minutes; log: {log_path}) ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        with open(log_path, "w") as log:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            python = venv / "bin" / "python"
            constraints = venv / "constraints.txt"
            constraints.write_text("\n".join(spec["constraints"]) + "\n")
            _pip(python, TORCH, log=log)
            _pip(python, "-c", str(constraints), *spec["install"], log=log)
            for name in spec["remove"]:
                subprocess.run([str(python), "-m", "pip", "uninstall", "-y", name], stdout=log,
                               stderr=subprocess.STDOUT, check=True)
            site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                       capture_output=True, text=True, check=True).stdout.strip())
            for rel in spec["strip_native"]:
                for lib in (site / rel).glob("*.so"):
                    log.write(f"removing {lib} (built for another torch)\n")
                    lib.unlink()
            check = subprocess.run([str(python), "-c", spec["check"]], stdout=log, stderr=subprocess.STDOUT)
            if check.returncode:
                raise SystemExit(f"the {tool} venv does not import ({spec['check']}); see {log_path}")
        versions = _versions(python)
        marker.write_text(json.dumps({"spec": spec, "versions": versions,  # written last: it marks a complete venv
                                      "built": datetime.datetime.now().isoformat(timespec="seconds"),
                                      "seconds": round(time.perf_counter() - start)}, indent=2))
        print(f"{tool} venv ready in {time.perf_counter() - start:.0f} s: {versions}", file=sys.stderr, flush=True)
        return python


def _versions(python: Path | str) -> dict[str, str]:
    done = subprocess.run([str(python), "-c", VERSIONS_SCRIPT, *REPORTED], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def tool_versions(tool: str) -> dict[str, str]:
    if tool == "ember":
        out = _versions(sys.executable)
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "ember"], capture_output=True,
                               text=True).stdout.strip()
        return {"ember": (sha.stdout.strip() or "?") + ("+dirty" if dirty else ""), **out}
    return json.loads((peer_root() / tool / "ember-peer.json").read_text())["versions"]


def python_for(tool: str) -> str:
    return sys.executable if tool == "ember" else str(ensure_venv(tool))


# ---------------------------------------------------------------------------------------------------- the runner


@dataclass
class Job:
    """One measurement: `label` names the row; `argv` runs a child that prints `RESULT {json}` with `seconds`."""

    label: str
    tool: str  # ember | llamafactory | trl
    argv: list[str]
    group: str = ""  # rows are compared within a group (same data and settings)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    job: Job
    round: int
    wall_s: float
    rss_gb: float
    load_before: float
    load_after: float
    result: dict


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "VIRTUAL_ENV"))}
    env.update({
        "OMP_WAIT_POLICY": "PASSIVE",  # with other busy processes, OpenMP spin-waiting made steps up to ~10x slower
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "EMBER_NO_PROGRESS": "1", "DISABLE_VERSION_CHECK": "1", "LLAMAFACTORY_VERBOSITY": "WARN",
        "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
    })
    env.update(extra or {})
    return env


def run_one(job: Job, round_: int, log_dir: Path) -> Run:
    with tempfile.TemporaryDirectory(prefix="ember-peer-run-") as tmp:
        env = child_env({"HF_DATASETS_CACHE": str(Path(tmp) / "hf-datasets"), "EMBER_PEER_TMP": tmp, **job.env})
        log_path = log_dir / f"{round_:02d}-{job.label.replace(' ', '_').replace('/', '_')}-{job.group}.log"
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen([python_for(job.tool), *job.argv], stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=tmp)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()[0]
    text = log_path.read_text(errors="replace")
    results = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        tail = "\n".join(text.splitlines()[-40:])
        raise SystemExit(f"{job.label} ({job.group}) failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return Run(job, round_, wall, usage.ru_maxrss / 1024 ** 2, load_before, load_after,
               json.loads(results[-1][len("RESULT "):]))


def run_interleaved(jobs: list[Job], repeats: int, log_dir: Path) -> list[Run]:
    """Every job once per round, in the given order, for `repeats` rounds: a change in machine load hits all alike."""
    runs = []
    for round_ in range(1, repeats + 1):
        for job in jobs:
            print(f"[round {round_}/{repeats}] {job.group} {job.label} ...", file=sys.stderr, flush=True)
            run = run_one(job, round_, log_dir)
            print(f"    {run.result['seconds']:.2f} s timed, {run.wall_s:.1f} s wall, {run.rss_gb:.2f} GB peak RSS, "
                  f"load {run.load_before:.1f} -> {run.load_after:.1f}", file=sys.stderr, flush=True)
            runs.append(run)
    return runs


def measure(name: str, jobs: list[Job], repeats: int) -> tuple[list[Run], list[dict]]:
    """Run the jobs interleaved; return every run and one summary row per (group, label) with its peer ratio."""
    warn_if_busy()
    log_dir = Path(tempfile.mkdtemp(prefix=f"ember-{name}-logs-"))
    print(f"{len(jobs)} jobs x {repeats} round(s); child logs in {log_dir}", file=sys.stderr, flush=True)
    runs = run_interleaved(jobs, repeats, log_dir)
    rows = summarise(runs)
    ratio_vs_fastest_peer(rows)
    return runs, rows


def publish(name: str, text: str, start: float, record: bool) -> None:
    """Print the report; with `record`, also write it to bench/results/<name>.txt."""
    text += f"\n# bench wall time {time.perf_counter() - start:.0f} s"
    print(text)
    if record:
        print(f"recorded in {write_result(name, text)}")


# ------------------------------------------------------------------------------------------------ the report


def summarise(runs: list[Run]) -> list[dict]:
    """One row per (group, label): median timed seconds and wall, max peak RSS, every run's seconds and load."""
    rows: dict[tuple[str, str], dict] = {}
    for run in runs:
        key = (run.job.group, run.job.label)
        row = rows.setdefault(key, {"group": run.job.group, "label": run.job.label, "tool": run.job.tool, "runs": []})
        row["runs"].append(run)
    for row in rows.values():
        rs = row["runs"]
        row["seconds"] = statistics.median(r.result["seconds"] for r in rs)
        row["wall_s"] = statistics.median(r.wall_s for r in rs)
        row["rss_gb"] = max(r.rss_gb for r in rs)
        row["result"] = rs[-1].result
    return list(rows.values())


def ratio_vs_fastest_peer(rows: list[dict]) -> None:
    """`vs_peer` = (fastest peer row's seconds) / (this row's seconds), per group: >1 means faster than every peer."""
    for group in {r["group"] for r in rows}:
        members = [r for r in rows if r["group"] == group]
        peers = [r for r in members if r["tool"] != "ember"]
        fastest = min(peers, key=lambda r: r["seconds"]) if peers else None
        for r in members:
            r["fastest_peer"] = fastest["label"] if fastest else None
            r["vs_peer"] = fastest["seconds"] / r["seconds"] if fastest else None


START_LOAD = os.getloadavg()  # the driver imports this module first thing


def machine_lines() -> list[str]:
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        flags = info
    except OSError:
        pass
    simd = "avx512_bf16" if "avx512_bf16" in flags else ("avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags
                                                           else "?")
    return [f"# machine: {cpu}, {os.cpu_count()} CPUs, best SIMD {simd}, Python {platform.python_version()}",
            f"# recorded {datetime.datetime.now().isoformat(timespec='minutes')}, "
            f"load average (1, 5, 15 min) at start {', '.join(f'{x:.2f}' for x in START_LOAD)}"]


def warn_if_busy() -> None:
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} CPUs before the first run: other processes will "
              "slow some runs more than others (every run's load is printed and recorded)", file=sys.stderr, flush=True)


def has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def versions_lines(tools: list[str]) -> list[str]:
    lines = []
    for tool in tools:
        v = tool_versions(tool)
        main = {"ember": f"ember {v.get('ember')}", "llamafactory": f"LLaMA-Factory {v.get('llamafactory')}",
                "trl": f"TRL {v.get('trl')}"}[tool]
        libs = ", ".join(f"{k} {v[k]}" for k in REPORTED[2:] if k in v)
        lines.append(f"#   {main:24s} ({libs})")
    return lines


def runs_section(runs: list[Run]) -> list[str]:
    """Every run, in the order it ran, with the 1-minute load average before and after it."""
    lines = ["", "# every run, in the order it ran (1-minute load average before → after)",
             f"{'round':>5} {'group':22} {'label':26} {'timed s':>8} {'wall s':>7} {'peak RSS':>9} {'load':>11}"]
    for r in runs:
        lines.append(f"{r.round:>5} {r.job.group:22} {r.job.label:26} {r.result['seconds']:>8.2f} {r.wall_s:>7.1f} "
                     f"{r.rss_gb:>7.2f}GB {r.load_before:>5.1f}→{r.load_after:<5.1f}")
    return lines + [f"# load average (1, 5, 15 min) at end {', '.join(f'{x:.2f}' for x in os.getloadavg())}"]


def write_result(name: str, text: str) -> Path:
    path = ROOT / "bench" / "results" / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return path


def child_tmp() -> Path:
    """The per-run scratch folder the runner made (removed after the run)."""
    return Path(os.environ.get("EMBER_PEER_TMP") or tempfile.mkdtemp(prefix="ember-peer-run-"))


def warm_imports() -> None:
    """Import what the tools pull in lazily (tokenizer classes, Arrow), so that no tool's clock includes imports."""
    import datasets  # noqa: F401
    import pyarrow  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoConfig, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast  # noqa: F401


def step_clock():
    """A transformers TrainerCallback that times every optimizer step (the first one carries one-time costs)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.marks:
                self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def summary(self) -> dict:
            steps = [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]
            return {"first_step_s": steps[0] if steps else None,
                    "step_s": statistics.median(steps[1:]) if len(steps) > 1 else None}

    return StepClock()


def child_result(**values) -> None:
    """What a child prints last: the driver reads this line."""
    print("RESULT " + json.dumps(values), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tools", nargs="*", help="llamafactory and/or trl (default: both)")
    args = parser.parse_args()
    args.tools = args.tools or ["llamafactory", "trl"]
    if set(args.tools) - {"llamafactory", "trl"}:
        parser.error(f"unknown tools {sorted(set(args.tools) - {'llamafactory', 'trl'})}: llamafactory or trl")
    for tool in args.tools:
        ensure_venv(tool)
    print("\n".join(versions_lines(["ember", *args.tools])))
    print(f"venvs under {peer_root()}")


if __name__ == "__main__":
    main()
