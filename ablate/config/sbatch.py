"""What may reach a line of an sbatch script: option names ablate owns (by SLURM's abbreviation rules) and
values that cannot break out of their `#SBATCH --name=value` line."""

from __future__ import annotations

import re
import unicodedata

from ablate import schema as S
from ablate.errors import ConfigError

# sbatch options that ClusterConfig sets itself (or submitit / the launcher does): not allowed in
# additional_parameters, under any name sbatch resolves to them.
SBATCH_OWNED = {
    "partition": "cluster.partition",
    "time": "cluster.timeout_min",
    "nodes": "cluster.nodes",
    "ntasks-per-node": "cluster.tasks_per_node",
    "tasks-per-node": "cluster.tasks_per_node",  # sbatch's alias of --ntasks-per-node
    "cpus-per-task": "cluster.cpus_per_task",
    "gpus-per-node": "cluster.gpus_per_node",
    "mem": "cluster.mem_gb",
    "signal": "cluster.signal_delay_s",
    "account": "cluster.account",
    "qos": "cluster.qos",
    "constraint": "cluster.constraint",
    "array": "cluster.array_parallelism",
    "job-name": None,  # the launcher names jobs, submitit places their logs
    "output": None,
    "error": None,
    "open-mode": None,  # append: a requeued job keeps its earlier attempts' logs
    "dependency": None,  # the launcher orders the stages' arrays
    "kill-on-invalid-dep": None,  # a failed input cancels its dependants instead of leaving them pending
}

# sbatch's long options (slurm-wlm 22.05.8; `sbatch --a=1` ... `--z=1` lists them per letter, which
# tests/test_sbatch_values.py compares with the installed sbatch). getopt_long takes any unambiguous
# prefix of one, so `--part` is `--partition`; an exact name always wins over a longer option.
SBATCH_OPTIONS = frozenset(
    """account acctg-freq array batch begin bb bbf cluster-constraint chdir cluster clusters comment
    container context contiguous constraint core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task
    deadline delay-boot dependency distribution error exclude exclusive export export-file extra-node-info
    get-user-env gid gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags
    help hint hold ignore-pbs input job-name kill-on-invalid-dep licenses mail-type mail-user mcs-label
    mem mem-bind mem-per-cpu mem-per-gpu mincpus network nice no-kill no-requeue nodefile nodelist nodes
    ntasks ntasks-per-core ntasks-per-gpu ntasks-per-node ntasks-per-socket ntasks-per-tres open-mode
    output overcommit oversubscribe parsable partition power prefer priority profile propagate qos quiet
    reboot requeue reservation signal sockets-per-node spread-job switches tasks-per-node test-only
    thread-spec threads-per-core time time-min tmp uid use-min-nodes usage verbose version wait
    wait-all-nodes wckey wrap""".split()
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def sbatch_flag(name: str) -> str:
    """The option name submitit writes for an additional_parameters key ('--x_y' -> 'x-y')."""
    return str(name).lstrip("-").replace("_", "-")


def owned_option(flag: str) -> str | None:
    """The ablate-owned sbatch option that `--flag` would set, or None.

    An exact option name is that option; otherwise getopt_long takes a unique prefix as its option and
    refuses an ambiguous one, so any prefix of an owned option is refused here (ambiguous prefixes too:
    sbatch would fail on them only after the launch created its runs).
    """
    if flag in SBATCH_OWNED:
        return flag
    if flag in SBATCH_OPTIONS:
        return None
    owned = sorted(o for o in SBATCH_OWNED if o.startswith(flag))
    return owned[0] if owned else None


def bad_character(text: str) -> str | None:
    """The first character that must not reach an sbatch line (a description of it), or None.

    Control characters (newline above all) end the `#SBATCH` line and make the rest a shell line of the
    script; sbatch reads a backslash as an escape even inside shlex's single quotes, so it can unbalance
    them. Unicode line and paragraph separators are refused with the control characters.
    """
    for i, ch in enumerate(text):
        if ch == "\\" or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return f"{ch!r} at position {i}"
    return None


def check_text(key: str, value: object, arm: str | None = None, what: str = "") -> None:
    """ConfigError if `value` holds a character that could break its sbatch line."""
    bad = bad_character(str(value))
    if bad:
        raise ConfigError(
            key,
            value,
            "text without control characters (newline, tab, ...) or backslashes",
            arm=arm,
            hint=f"it holds {bad}, which would end or unbalance its #SBATCH line"
            + (f" ({what})" if what else "")
            + "; remove it",
        )


def check_cluster_sbatch(c: S.ClusterConfig, arm: str | None = None) -> None:
    """ConfigError for the first cluster value that must not reach an sbatch script."""
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(c, key)
        if value is not None:
            check_text(f"cluster.{key}", value, arm=arm)
    for name, value in c.additional_parameters.items():
        flag = sbatch_flag(name)
        if not flag:
            raise ConfigError(
                "cluster.additional_parameters", name, "a non-empty sbatch option name", arm=arm
            )
        if not _NAME.fullmatch(flag):
            raise ConfigError(
                "cluster.additional_parameters",
                name,
                "an sbatch option name: letters, digits and '-' (e.g. mail-type)",
                arm=arm,
            )
        owned = owned_option(flag)
        if owned:
            field_ = SBATCH_OWNED[owned]
            raise ConfigError(
                f"cluster.additional_parameters.{name}",
                value,
                f"an sbatch option other than {sorted(SBATCH_OWNED)} (or an abbreviation of one)",
                arm=arm,
                hint=(f"sbatch reads --{flag} as --{owned}; " if flag != owned else "")
                + (f"set {field_} instead" if field_ else "the launcher sets it"),
            )
        check_text(f"cluster.additional_parameters.{name}", value, arm=arm)
