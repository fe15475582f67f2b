"""Fuzzed sweep files through the launch path (`ablate launch FILE --dry-run`, in this process): every file
is accepted or refused with an AblateError; no other exception, no hang (a per-file time limit).

Five classes of files: structured (the sweep keys with random and plausible values), plausible (valid
keys and values, combined at random), mutated (the shipped
sweep files with YAML syntax spliced in), overrides (random command-line overrides on a shipped sweep) and
raw bytes. `pytest -s` prints the table: tried / accepted / rejected cleanly / crashed / hung per class.
"""

from __future__ import annotations

import signal
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ablate.errors import AblateError
from ablate.launch.launcher import launch
from ablate.sweep import TOP_LEVEL_KEYS

pytestmark = pytest.mark.slow  # about 40 s for the four classes together

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
LIMIT_S = 10  # per file; a legal 1,000-arm file takes ~3 s
EXAMPLES = {"structured": 1000, "plausible": 300, "mutated": 1000, "overrides": 500, "bytes": 300}
STATS: dict[str, Counter[str]] = {name: Counter() for name in EXAMPLES}

KEYS = [
    "model.init", "model.name", "model.text_vocab_size", "optim.lr", "train.seed", "train.trainable",
    "train.total_tokens", "data.task", "evaluate.prompts", "cluster.partition", "model", "data", "scale",
    "cluster", "hydra", "+foo", "~model", "model.int", "+cluster.additional_parameters.x", "tokenizer.text_vocab_size",
]  # fmt: skip
WORDS = [
    "pretrained", "random", "t2i", "uncond", "emb_out", "tiny", "paper", "demo", "slurm", "debug", "nan", "inf",
    "null", "true", "1e-4", "-1", "0", "3", "1e400", "???", "${nope}", "${model.init}", "${oc.env:HOME}",
    "${now:}", "${foo:bar}", "${${a}:b}", "glob(*)", "range(0,10,0)", "range(0,5)", "range(0,1000000)",
    "range(1,2,0.5)", "interval(0,1)", "choice(a,b)", "a,b", "[a,b]", "{a:1}", "'x'", "(", "\\n", "../x",
    "a" * 300, "\x00", "é",
]  # fmt: skip
TOP = [*TOP_LEVEL_KEYS, "bogus", 1]  # every key a sweep file may have, and two it may not
SNIPPETS = [
    "&a ", "*a ", "[", "]", "{", "}", ": ", "- ", "\n", "\n  ", "\t", "!!python/object:os.system ", "%YAML 1.1\n",
    "---\n", "...\n", "? ", "|\n", ">\n", "'", '"', "#", "<<: *a\n", "!!binary ", "&r [*r]", "\\", "\x00", "\ufeff",
]  # fmt: skip

scalars = st.one_of(
    st.sampled_from(WORDS),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=12,
)
# Config keys to values that are mostly scalars (the words above), sometimes any YAML value.
mapping = st.dictionaries(
    st.sampled_from(KEYS), st.one_of(st.sampled_from(WORDS), scalars, values), max_size=4
)
# Keys with values they accept, so that a good share of structured files reach composition and the estimate.
VALID = {
    "model.init": st.sampled_from(["pretrained", "random", "pretrained,random", "choice(random)"]),
    "train.seed": st.sampled_from([0, 1, "range(0,3)", "range(0,4,2)", [1, 2]]),
    "optim.lr": st.sampled_from([1e-4, "1e-3", [1e-4, 2e-4], "1e-4,3e-4"]),
    "train.trainable": st.sampled_from(["all", "emb_out", ["all", "emb_out_norm"]]),
    "data.task": st.sampled_from(["t2i", "uncond"]),
}
valid_grid = st.builds(dict, st.fixed_dictionaries({}, optional=VALID))
valid_arms = st.lists(st.fixed_dictionaries({}, optional=VALID), max_size=3)
structured = st.fixed_dictionaries(
    # Mostly a valid name and no unknown key, so that most files get past the first checks.
    {"name": st.sampled_from(["s"] * 12 + ["a-b_1", "../x", "a" * 80, "", "é", "1", "nan"])},
    optional={
        "description": st.one_of(st.text(max_size=20), values),
        "base": st.one_of(st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.sampled_from(WORDS)), max_size=3), values),
        "grid": st.one_of(valid_grid, st.dictionaries(st.sampled_from(KEYS), st.one_of(st.sampled_from(WORDS), st.lists(scalars, max_size=4)), max_size=3), values),
        "arms": st.one_of(valid_arms, st.lists(mapping, max_size=4), values),
        "exclude": st.one_of(st.lists(mapping, max_size=2), values),
        "scale_grid": st.one_of(st.dictionaries(st.sampled_from(["demo", "paper", "x"]), mapping, max_size=2), values),
        "include": st.one_of(st.lists(st.sampled_from(["t2i_init.yaml", "loop.yaml", "/etc/passwd", "x.yaml", "../sweeps/lr.yaml", "self.yaml"]), max_size=2), values),
        "max_arms": st.one_of(st.integers(-2, 2000), values),
    },
).flatmap(lambda d: st.one_of(st.just(d), st.builds(lambda v: {**d, "bogus": v}, values)))  # fmt: skip
plausible = st.fixed_dictionaries(
    {"name": st.just("p")},
    optional={
        "base": st.lists(
            st.sampled_from(["data.task=t2i", "train.total_tokens=50000", "scale=demo"]), max_size=2
        ),
        "grid": valid_grid,
        "arms": valid_arms,
        "exclude": st.lists(st.fixed_dictionaries({}, optional=VALID), max_size=2),
        "include": st.lists(st.sampled_from(["t2i_init.yaml"]), max_size=1),
        "max_arms": st.integers(1, 20),
    },
)
SHIPPED = [p.read_text() for p in sorted(SWEEPS.glob("*.yaml"))]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SHIPPED))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + draw(st.sampled_from(SNIPPETS + WORDS)) + text[at + cut :]
    return text


class Hung(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hung


def run_one(kind: str, folder: Path, content: str | bytes | dict, cli: list[str] | None = None) -> None:
    """Launch one file as a dry run; count its outcome; fail on anything but success or an AblateError."""
    import yaml

    path = folder / "self.yaml"
    if isinstance(content, dict):
        content = yaml.safe_dump(content, allow_unicode=True)
    if isinstance(content, str):
        content = content.encode("utf-8", "surrogatepass")
    path.write_bytes(content)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_S)
    try:
        launch(path, list(cli or []), folder / "results", dry_run=True, echo=lambda s: None)
        STATS[kind]["accepted"] += 1
    except AblateError as e:
        STATS[kind]["rejected"] += 1
        assert "Traceback" not in str(e)
    except Hung:
        STATS[kind]["hung"] += 1
        raise AssertionError(f"{kind}: no answer within {LIMIT_S} s for {content[:300]!r}") from None
    except Exception as e:
        STATS[kind]["crashed"] += 1
        raise AssertionError(f"{kind}: {type(e).__name__}: {e} for {content[:300]!r} {cli}") from e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        STATS[kind]["tried"] += 1


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "t2i_init.yaml").write_text((SWEEPS / "t2i_init.yaml").read_text())
        (root / "loop.yaml").symlink_to(root / "loop.yaml")
        yield root


def fuzz(kind: str):
    return settings(
        max_examples=EXAMPLES[kind],
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )


def test_structured_sweep_files(folder):
    @fuzz("structured")
    @given(structured)
    def check(data):
        run_one("structured", folder, data)

    check()


def test_plausible_sweep_files(folder):
    @fuzz("plausible")
    @given(plausible)
    def check(data):
        run_one("plausible", folder, data)

    check()


def test_mutated_shipped_sweep_files(folder):
    @fuzz("mutated")
    @given(mutated())
    def check(text):
        run_one("mutated", folder, text)

    check()


def test_random_command_line_overrides(folder):
    override = st.one_of(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.sampled_from(WORDS)),
        st.text(max_size=20),
    )

    @fuzz("overrides")
    @given(st.lists(override, max_size=3))
    def check(cli):
        run_one("overrides", folder, (SWEEPS / "t2i_init.yaml").read_text(), cli)

    check()


def test_random_bytes(folder):
    @fuzz("bytes")
    @given(st.binary(max_size=400))
    def check(raw):
        run_one("bytes", folder, b"name: x\n" + raw)

    check()


def test_table():
    """Prints the outcome table (run with -s); every fuzzed file was answered: none crashed or hung."""
    print("\nclass        tried  accepted  rejected cleanly  crashed  hung")
    for kind, c in STATS.items():
        print(
            f"{kind:<11} {c['tried']:>6} {c['accepted']:>9} {c['rejected']:>17} {c['crashed']:>8} {c['hung']:>5}"
        )
    assert all(c["crashed"] == c["hung"] == 0 for c in STATS.values())
