"""Every script in bench/ still runs against today's code (issue 23): each bench/*.py as a subprocess at a tiny
size, asserting that it exits 0 and prints the figures it promises (no timing is asserted: the numbers are
measurements of this machine, never test assertions); each bench/*.sh that runs the whole demo or paper grid
only parsed (`bash -n`) and checked to name files, make targets, ablate commands and bench flags that
exist. A script added to bench/ without a case here fails test_every_bench_script_has_a_smoke_check.

About 1 min 45 s on 2 shared cores (pretokenize_throughput's ten spawned processes take a quarter of it):
the runs are marked slow; the inventory and the shell checks (seconds) are not. The SLURM case skips,
printing why, where a local cluster cannot start (the slurm_cluster fixture of tests/conftest.py).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
NUM = r"[\d,.]+"  # a printed number


@dataclass(frozen=True)
class Case:
    script: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # regexes (multi-line mode) the output must match
    needs: str | None = (
        None  # a fixture the case runs on: "train_dir" (its path is appended) or "slurm_cluster"
    )


CASES = [
    Case(
        "loop_overhead.py",
        ("--steps", "2", "--repeats", "1", "--threads", "1"),
        (
            rf"^bare step\s+{NUM} ms",
            rf"^train_loop\s+{NUM} ms",
            rf"^overhead\s+[-+]{NUM} %\s+\(ratio {NUM}\)",
        ),
    ),
    Case(
        "demo_step_profile.py",
        ("--steps", "1"),
        (
            rf"^float32, text vocabulary 1,024, 1 thread\(s\): step {NUM} ms",
            rf"^bf16, text vocabulary 1,024, 1 thread\(s\): step {NUM} ms",
            rf"^\s+blocks\s+{NUM} ms\s+{NUM}%\s+{NUM} GFLOP",
            rf"^\s+output \+ loss\s+{NUM} ms\s+{NUM}%",
            rf"^\s+optimizer\s+{NUM} ms\s+{NUM}%",
        ),
    ),
    Case(
        "launch_time.py",
        ("--repeats", "1"),
        (
            rf"^ablate launch sweeps/paper.yaml --dry-run: {NUM} s \(target < 2 s",
            rf"^ablate launch <1,000-arm grid> --dry-run:\s+{NUM} s \(target < 10 s\)",
            rf"import ablate.launch.launcher' .*: {NUM} s",
            rf"^paper.yaml's \d+ arms composed \+ validated: {NUM} s; every arm by Hydra from scratch: {NUM} s",
        ),
    ),
    Case(
        "plot_time.py",
        ("--runs", "2", "--steps", "10"),
        # R S points build plot runs hist download rest files: 2 runs of 10 steps x 8 metrics + 2 align runs
        (r"^\s+R\s+S\s+points\s+build s", rf"^\s+2\s+10\s+200(\s+{NUM}){{6}}\s+[1-9]\d*$"),
    ),
    Case(
        "pretokenize_throughput.py",
        ("--quick", "--per-shard", "4", "--shards", "1,2"),
        (
            rf"^tiny diffusers VQModel\s+8\s+{NUM}\s+{NUM}\s+\d+%",
            rf"^\s+demo VQ-VAE\s+2\s+8\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}x\s+\d+%",  # the 2-process ratio
            r"^3a\. peak RSS",
            rf"^\s+2\s+8\s+2\s+{NUM}\s+\+{NUM} MiB\s+\+{NUM} MiB\s+{NUM} MiB\s+{NUM}$",
            r"^3b\. peak RSS",
            rf"^\s+2\s+2\s+8\s+{NUM}\s+\+{NUM} MiB\s+{NUM} MiB\s+{NUM}k$",
        ),
    ),
    Case(
        "pretokenize_throughput.py",
        ("--flops",),
        (
            rf"^\s+attention at 32x32\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}M\s+{NUM}M\s+{NUM}$",  # last: / estimate.py
            rf"MOVQGAN_ENCODE_FLOPS = {NUM} GFLOP",
        ),
    ),
    Case(
        "reader_memory.py",
        ("--quick", "--shards", "1"),
        (rf"^\s+1\s+4(\s+\+\d+ MiB \({NUM}k seq/s\)){{3}}$",),
    ),
    Case(
        "sampling_speed.py",
        ("--images", "2", "--codes", "8"),
        (
            rf"^\s+cached:\s+{NUM} s\s+\({NUM} codes/s\)",
            rf"^\s+uncached:\s+{NUM} s\s+\({NUM} codes/s\)",
            rf"^\s+speedup: {NUM}x; same codes: True$",
        ),
    ),
    Case(
        "shard_checks.py",
        ("--quick",),
        (
            rf"^open \(sizes, metadata, constant probes\): {NUM} ms",
            rf"^shuffled read: {NUM} ms/batch with the id check, {NUM} ms without \([-+]{NUM} ms, -?{NUM}%\)",
            rf"^ablate verify: {NUM} s \({NUM} MiB/s\)",
        ),
    ),
    Case(
        "source_memory.py",
        ("--per-shard", "2", "--shards", "1,2"),
        (rf"^\s+1\s+2\s+{NUM}\s+\+{NUM} MiB\s+{NUM} MiB\s+{NUM}$", rf"^\s+2\s+4\s+{NUM}\s+\+{NUM} MiB"),
    ),
    Case(
        "tracker_resume.py",
        ("--steps", "10"),
        (rf"^\s+10\s+80\s+{NUM}s\s+{NUM}s\s+{NUM}s$",),
    ),
    Case(
        "demo_sampling_settings.py",
        ("--n", "4", "--offset", "4", "--settings", "1.0:0", "0.8:8:3"),
        (
            rf"^temperature 1.0\s+top_k 0\s+guidance 1.0\s*: caption match {NUM}, colour match {NUM} \(4 val",
            rf"^temperature 0.8\s+top_k 8\s+guidance 3.0\s*: caption match {NUM}, colour match {NUM}",
        ),
        needs="train_dir",
    ),
    Case(
        "slurm_launch_time.py",
        ("--seeds", "1"),  # 10 arms; hydra-submitit-launcher's 10 trivial jobs too where it is installed
        (
            r"^ablate launch: returned after [\d.]+ s; [1-9]\d* sbatch arrays; [1-9]\d* jobs \(array tasks\)",
            r"^hydra-submitit-launcher: (not installed|10 jobs queued)",
        ),
        needs="slurm_cluster",
    ),
]
COVERED_ELSEWHERE = {"gpu_throughput.py": "test_gpu_throughput_bench.py"}  # its own CPU smoke test
HELPERS = {"rss.py"}  # imported by the memory benchmarks, not run
SHELL = ["demo_time.sh", "paper_time.sh", "gpu_session.sh"]


def _id(case: Case) -> str:
    return case.script.removesuffix(".py") + (
        "-" + case.args[0].lstrip("-") if case.args == ("--flops",) else ""
    )


def test_every_bench_script_has_a_smoke_check() -> None:
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert scripts == {c.script for c in CASES} | COVERED_ELSEWHERE.keys() | HELPERS
    assert all((ROOT / "tests" / test).is_file() for test in COVERED_ELSEWHERE.values())
    assert {p.name for p in BENCH.glob("*.sh")} == set(SHELL)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained text-to-image run (one tiny arm launched in this process: cluster=debug), its directory."""
    results = tmp_path_factory.mktemp("bench-results")
    sweep = results / "benchsmoke.yaml"
    sweep.write_text("name: benchsmoke\narms:\n  - {data.task: t2i, model.init: random}\n")
    overrides = ["cluster=debug", "data.n_train=64", "data.n_val=16", "data.n_heldout=16"]
    overrides += ["tokenizer.vq_steps=5", "tokenizer.vq_hidden=16", "tokenizer.text_vocab_size=300"]
    overrides += ["pretrain.corpus_max_chars=150000", "model.hidden_dim=32", "model.n_layers=1"]
    overrides += ["train.total_tokens=2304", "optim.warmup_tokens=0", "evaluate.n_samples=4"]
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.cli", "--results", str(results), "launch", str(sweep), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (train,) = (results / "cache" / "train").iterdir()
    return train


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=_id(c), marks=[pytest.mark.slurm] if c.needs == "slurm_cluster" else [])
        for c in CASES
    ],
)
def test_bench_script_runs_at_a_tiny_size_and_reports_its_figures(
    case: Case, request: pytest.FixtureRequest
) -> None:
    args = list(case.args)
    if case.needs == "train_dir":
        args.insert(0, str(request.getfixturevalue("train_dir")))
    elif case.needs is not None:
        request.getfixturevalue(case.needs)  # skips, printing why, where it cannot start
    proc = subprocess.run(
        [sys.executable, str(BENCH / case.script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"{case.script} {shlex.join(args)}:\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    missing = [e for e in case.expect if not re.search(e, out, re.MULTILINE)]
    assert not missing, f"{case.script} printed none of {missing}:\n{out[-3000:]}"


# --- shell scripts: parsed and their references checked, never run -------------------------------------------


def _help(argv: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, *argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{shlex.join(argv)} --help: {proc.stderr[-2000:]}"
    return proc.stdout


def _words(tail: str) -> list[str]:
    """The arguments of one command: up to its redirection, pipe, command separator or comment."""
    tail = re.split(r"\s(?:\d?>|\||;|&&|\|\||#)", " " + tail)[0]
    return shlex.split(tail)


def _options_ok(help_text: str, words: list[str], what: str) -> None:
    for w in words:
        if w.startswith("--"):
            assert re.search(rf"(^|[\s\[,]){re.escape(w.split('=')[0])}(?![\w-])", help_text), (
                f"{what}: no {w}"
            )


def _ablate_call(words: list[str]) -> None:
    """`ablate [global options] COMMAND [args]`: the command and each option exist; paths named exist."""
    top = _help(["-m", "ablate.cli"])
    i = 0
    while i < len(words) and words[i].startswith("-"):
        _options_ok(top, [words[i]], "ablate")
        takes_value = "=" not in words[i] and re.search(rf"{re.escape(words[i])} [A-Z_]+", top)
        i += 2 if takes_value else 1
    assert i < len(words), f"ablate {shlex.join(words)}: no command"
    command, rest = words[i], words[i + 1 :]
    assert re.search(rf"\{{[\w,]*\b{command}\b[\w,]*\}}", top), f"ablate has no command {command!r}"
    _options_ok(_help(["-m", "ablate.cli", command]), rest, f"ablate {command}")


def _expand(text: str, word: str) -> list[str]:
    """word with a $var / ${var} in it, once per value the script gives that variable: var="a b", var=a, or
    `for var in WORDS` (each word expanded in turn)."""
    m = re.search(r"\$\{?(\w+)\}?", word)
    if not m:
        return [word]
    var = m.group(1)
    values = [v for a, b in re.findall(rf"\b{var}=(?:\"([^\"]*)\"|(\S+))", text) for v in (a or b).split()]
    for words in re.findall(rf"\bfor {var} in ([^;\n]+)", text):
        values += [x for w in words.split() for x in _expand(text, w)]
    assert values, f"{word}: ${var} is never given a value"
    return [x for v in values for x in _expand(text, word.replace(m.group(0), v, 1))]


@pytest.mark.parametrize("script", SHELL)
def test_shell_bench_parses_and_names_what_exists(script: str) -> None:
    path = BENCH / script
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = path.read_text()
    code = "\n".join(
        line for line in text.replace("\\\n", " ").splitlines() if not line.lstrip().startswith("#")
    )
    # Files of this repository named anywhere (comments too): sweep files and bench scripts.
    for ref in set(re.findall(r"\b(?:sweeps|bench)/[\w${}.-]+\.(?:yaml|py|sh)\b", text)):
        for name in _expand(text, ref):
            assert (ROOT / name).is_file(), f"{script} names {name}, which does not exist"
    # make targets.
    targets = re.findall(r"\bmake\s+([\w-]+)", code)
    if targets:
        if shutil.which("make") is None:
            pytest.skip("make is not installed: cannot read the Makefile's targets")
        rules = subprocess.run(["make", "-pqn"], cwd=ROOT, capture_output=True, text=True).stdout
        for t in targets:
            assert re.search(rf"^{re.escape(t)}:", rules, re.MULTILINE), f"{script}: no make target {t}"
    # ablate commands and their options.
    calls = re.findall(r"(?:\.venv/bin/ablate|\"\$ablate\")[ \t]+(.*)", code)
    if "$ablate" in code:
        assert re.search(r'^ablate="\$root/\.venv/bin/ablate"$', text, re.MULTILINE), (
            f"{script}: which ablate?"
        )
    for call in calls:
        _ablate_call(_words(call))
    # bench scripts it runs, with their options.
    for name, tail in re.findall(r"\bbench/(\w+\.py)[ \t]*(.*)", code):
        _options_ok(_help([str(BENCH / name)]), _words(tail), name)
    assert calls or re.search(r"\bbench/\w+\.py", code), f"{script} runs neither ablate nor a bench script"
