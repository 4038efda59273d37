"""The SLURM profile: checked on a dry run, then used for real on a one-node SLURM on localhost.

The slow test starts slurmctld and slurmd (Debian's slurm 22.05, no slurmdbd, no munge), runs the
smoke DAG through workflow/profiles/slurm so that every non-local job goes through sbatch,
scancels one training job mid-run (the profile's retry resubmits it and it resumes from its
checkpoint), and compares its metrics with a local run of the same DAG. It needs root (the daemons, and the config
must be at /etc/slurm/slurm.conf: the plugin's job step drops SLURM_CONF). docs/cluster.md has
the recipe and the timings.
"""
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from sgmn.config import load_layered, resolve_variant

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
SMOKE = REPO / "workflow" / "config" / "smoke.yaml"
SLURM_CONF = Path("/etc/slurm/slurm.conf")
GPU_RULES = {"pretrain_clip", "text_features", "train", "evaluate"}
# resolve_config, summarize and tables are localrules; the smoke DAG has no evaluate job (a train
# job evaluates its run; rule evaluate only scores Table 2's zero-shot row)
SUBMITTED_RULES = {"synth", "data_stats"} | GPU_RULES - {"evaluate"}
# Plugin flags for a cluster without slurmdbd: sacct has no rows there, so the plugin must poll
# squeue (else it waits forever), and there is no account to validate.
SLURM_FLAGS = ["--slurm-status-command", "squeue", "--slurm-no-account",
               "--slurm-init-seconds-before-status-checks", "1",
               # the plugin deletes a successful job's log; the test reads them
               "--slurm-keep-successful-logs",
               "--default-resources", "slurm_partition=debug",
               # localhost has no GPU and no gres.conf: sbatch would reject --gres=gpu:1. The
               # command line replaces the profile's set-resources, so all three are listed.
               "--set-resources", *(f"{rule}:gres=''" for rule in sorted(GPU_RULES))]


def _env() -> dict[str, str]:
    """This interpreter's bin first on PATH (sbatch --export=ALL hands it to the jobs, which
    call `sgmn`), and nothing from an enclosing SLURM job or a user profile."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k != "SNAKEMAKE_PROFILE"}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def _snakemake_cmd(workdir: Path, *args: str, extra_config: Path | None = None) -> list[str]:
    configs = [str(SMOKE)] + ([str(extra_config)] if extra_config else [])
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
            str(workdir), "--configfile", *configs, *args]


# Both DAGs of the fault test train longer than the smoke config, so that a training job can
# be cancelled between its first checkpoint and its end (about 10 s at 2 cores).
LONGER_TRAINING = {"train": {"steps": 30, "checkpoint_every": 5}}


def _cancel_one_training_mid_run(workdir: Path, env: dict[str, str], stop: threading.Event,
                                 cancelled: list) -> None:
    """scancel the SLURM job of the first training run that has written a checkpoint and not yet
    its final.pt (a node failure, a preemption); record (job id, run dir)."""
    runs = workdir / "results" / "lpr_synth_smoke" / "runs"
    while not stop.is_set():
        for ckpt in sorted(runs.glob("*/seed*/ckpt/latest.pt")):
            run_dir = ckpt.parent.parent
            if (run_dir / "final.pt").exists():
                continue
            # the plugin's --comment: rule_<rule>_wildcards_<wildcard values joined by _>
            comment = (f"rule_train_wildcards_lpr_synth_smoke_{run_dir.parent.name}_"
                       f"{run_dir.name.removeprefix('seed')}")
            queue = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"],
                                   capture_output=True, text=True, timeout=30, env=env)
            for line in queue.stdout.split():
                job_id, _, job_comment = line.partition("|")
                if job_comment == comment:
                    subprocess.run(["scancel", job_id], capture_output=True, timeout=30, env=env)
                    cancelled.append((job_id, run_dir))
                    return
        time.sleep(0.2)


def _planned_resources(output: str) -> dict[str, str]:
    """rule -> its `resources:` line, from a `snakemake -n` plan (same rule, same line)."""
    found, rule = {}, None
    for line in output.splitlines():
        header = re.match(r"^(?:local)?rule (\w+):", line)
        if header:
            rule = header.group(1)
        elif rule and line.strip().startswith("resources:"):
            found[rule] = line.strip()
    return found


def test_slurm_profile_parses_and_asks_a_gpu_only_for_gpu_rules(tmp_path):
    """A mistyped key in the profile fails here (configargparse), without a cluster."""
    plan = subprocess.run(_snakemake_cmd(tmp_path, "-n", "--workflow-profile", str(PROFILE)),
                          capture_output=True, text=True, timeout=120, env=_env())
    assert plan.returncode == 0, plan.stderr[-3000:]
    resources = _planned_resources(plan.stdout)
    assert set(resources) >= SUBMITTED_RULES, resources
    for rule, line in resources.items():
        assert ("gres=gpu:1" in line) == (rule in GPU_RULES), (rule, line)
    profile = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    assert profile["executor"] == "slurm" and set(profile["set-resources"]) == GPU_RULES


# ---------------------------------------------------------------------------------------------
# A one-node SLURM on localhost


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb() -> int:
    """A bit below MemTotal: slurmd marks the node invalid when RealMemory exceeds the machine."""
    kb = int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1))
    return int(kb / 1024 * 0.9)


def _slurm_conf(scratch: Path, cpus: int, mem_mb: int) -> str:
    # Own ports, so that a system slurm (or a stale daemon from a killed run) is not in the way.
    # MinJobAge 3600: finished jobs stay visible to squeue until the test has looked at them.
    return f"""\
ClusterName=sgmntest
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={scratch}/state
SlurmdSpoolDir={scratch}/spool
SlurmctldPidFile={scratch}/slurmctld.pid
SlurmdPidFile={scratch}/slurmd.pid
SlurmctldLogFile={scratch}/log/slurmctld.log
SlurmdLogFile={scratch}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
MinJobAge=3600
NodeName=localhost CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _tail(path: Path, n: int = 30) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _stop_daemon(pid_file: Path, name: str) -> None:
    """SIGTERM the daemon named in pid_file (if it is still that daemon), SIGKILL after 15 s."""
    try:
        pid = int(pid_file.read_text().split()[0])
        if Path(f"/proc/{pid}/comm").read_text().strip() != name:
            return  # already gone, and the pid reused
        os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _cancel_all_jobs(env: dict[str, str]) -> None:
    """scancel whatever is left (a failed or timed-out run) and wait for it to leave the node."""
    def live_jobs() -> list[str]:
        out = subprocess.run(["squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i"], capture_output=True,
                             text=True, timeout=30, env=env)
        return out.stdout.split() if out.returncode == 0 else []

    jobs = live_jobs()
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30, env=env)
    deadline = time.monotonic() + 30
    while jobs and time.monotonic() < deadline:
        time.sleep(0.5)
        jobs = live_jobs()


def _wait_for_job(job_id: str, env: dict[str, str], timeout: float = 60) -> str:
    """The job's final squeue state (COMPLETED, FAILED, ...), polled every 0.2 s."""
    deadline, state = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"],
                             capture_output=True, text=True, timeout=30, env=env)
        state = out.stdout.strip()
        if state and state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return state
        time.sleep(0.2)
    return f"still {state or 'unknown'} after {timeout} s"


@contextlib.contextmanager
def _exclusive(lock_path: Path, timeout: float = 420):
    """One localhost cluster at a time: /etc/slurm/slurm.conf is shared by every run."""
    with open(lock_path, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another run of this test has held {lock_path} for {timeout} s")
                time.sleep(1)
        yield


@pytest.fixture
def slurm_cluster(tmp_path):
    """slurmctld + `slurmd -N localhost` with a scratch state dir; yields the scratch dir.
    Teardown cancels leftover jobs, stops both daemons by their pid files and restores
    /etc/slurm/slurm.conf, also when pytest gets a SIGTERM (`timeout`, a CI cancel): the daemons
    are detached, so nothing else would stop them."""
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
               if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH: install Debian's slurmctld, slurmd and "
                    "slurm-client (.ci/run does so when it runs as root)")
    if os.geteuid() != 0:
        pytest.skip("the localhost SLURM must run as root (daemons, /etc/slurm/slurm.conf)")
    cpus, mem_mb = os.cpu_count() or 1, _real_memory_mb()
    assert cpus >= 2 and mem_mb >= 6000, (
        f"the node would have {cpus} CPUs and {mem_mb} MB; the smoke DAG's jobs ask for "
        "2 threads and up to 6000 MB (train), so sbatch would refuse them")

    scratch = tmp_path / "cluster"
    for sub in ("state", "spool", "log"):
        (scratch / sub).mkdir(parents=True)
    env = _env()
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(Path(tempfile.gettempdir()) / "sgmn-test-slurm.lock"):
        backup = scratch / "slurm.conf.orig"
        had_conf = SLURM_CONF.exists()
        if had_conf:
            shutil.copy2(SLURM_CONF, backup)
        cleaned = []

        def cleanup():
            if cleaned:
                return
            cleaned.append(True)
            try:
                _cancel_all_jobs(env)
            finally:
                _stop_daemon(scratch / "slurmd.pid", "slurmd")
                _stop_daemon(scratch / "slurmctld.pid", "slurmctld")
                if had_conf:
                    shutil.copy2(backup, SLURM_CONF)
                else:
                    SLURM_CONF.unlink(missing_ok=True)

        def on_sigterm(signum, frame):
            cleanup()
            raise SystemExit(128 + signum)  # subprocess.run kills its child on the way out

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            SLURM_CONF.write_text(_slurm_conf(scratch, cpus, mem_mb))
            # both daemonize: the call returns once the daemon has forked and written its pid file
            for cmd in (["slurmctld"], ["slurmd", "-N", "localhost"]):
                started = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
                assert started.returncode == 0, f"{cmd} failed: {started.stderr}"
            deadline, state = time.monotonic() + 60, ""
            while time.monotonic() < deadline:
                out = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%T"],
                                     capture_output=True, text=True, timeout=30, env=env)
                state = out.stdout.strip() or out.stderr.strip()
                if out.returncode == 0 and state == "idle":
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"the localhost node is not idle after 60 s (sinfo: {state!r})\n"
                            f"slurmctld.log:\n{_tail(scratch / 'log/slurmctld.log')}\n"
                            f"slurmd.log:\n{_tail(scratch / 'log/slurmd.log')}")
            yield scratch
        finally:
            try:
                cleanup()
            finally:
                signal.signal(signal.SIGTERM, previous)


def _metrics(workdir: Path, runs: list[tuple[str, int]]) -> dict:
    root = workdir / "results" / "lpr_synth_smoke" / "runs"
    return {(v, s): json.loads((root / v / f"seed{s}" / "metrics.json").read_text()) for v, s in runs}


@pytest.mark.slow
def test_smoke_dag_through_sbatch_matches_a_local_run(tmp_path, slurm_cluster):
    env = _env()
    smoke = yaml.safe_load(SMOKE.read_text())
    runs = [(v, s) for v in smoke["variants"] for s in smoke["seeds"]]
    smoke_config = load_layered("smoke")

    # The jobs inherit this environment (sbatch --export=ALL): one tiny job must find the CLI,
    # else every DAG job would fail with "sgmn: command not found".
    probe = subprocess.run(["sbatch", "--parsable", "--export=ALL", "-o",
                            str(slurm_cluster / "probe.out"), "--wrap", "command -v sgmn"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert probe.returncode == 0, f"sbatch failed: {probe.stderr}"
    # (not sbatch --wait: it polls every 10 s)
    state = _wait_for_job(probe.stdout.strip(), env)
    found = (slurm_cluster / "probe.out").read_text().strip()
    assert state == "COMPLETED" and found.endswith("/sgmn"), (
        f"a SLURM job does not find `sgmn` (job {state}, output {found!r}); "
        f"install the package into {sys.prefix}")

    # The local reference runs beside the SLURM run (the jobs are mostly single-threaded, so the
    # two share the cores well; each DAG alone takes about as long as both together).
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    local_dir.mkdir()
    slurm_dir.mkdir()
    longer = tmp_path / "longer_training.yaml"
    longer.write_text(yaml.safe_dump(LONGER_TRAINING))
    ctld_log = slurm_cluster / "log" / "slurmctld.log"
    # a cluster fault: one training job is cancelled mid-run; the profile's retry resubmits it
    stop, cancelled = threading.Event(), []
    watcher = threading.Thread(target=_cancel_one_training_mid_run, args=(slurm_dir, env, stop, cancelled),
                               daemon=True)
    with open(tmp_path / "local.log", "w") as local_log:
        local = subprocess.Popen(_snakemake_cmd(local_dir, "--cores", "2", extra_config=longer),
                                 stdout=local_log, stderr=subprocess.STDOUT, env=env)
        watcher.start()
        try:
            # ~3 min normally; a hang (the plugin polling sacct, which has no rows without
            # slurmdbd) must fail the test well before an outer CI timeout kills it
            run = subprocess.run(
                _snakemake_cmd(slurm_dir, "--workflow-profile", str(PROFILE), *SLURM_FLAGS,
                               extra_config=longer),
                capture_output=True, text=True, timeout=420, env=env)
            local_rc = local.wait(timeout=300)
        except subprocess.TimeoutExpired as err:
            main_log = sorted((slurm_dir / ".snakemake" / "log").glob("*.log"))
            pytest.fail(f"{err}\nSnakemake's log:\n{_tail(main_log[-1]) if main_log else '-'}\n"
                        f"slurmctld.log:\n{_tail(ctld_log)}")
        finally:
            stop.set()
            watcher.join(timeout=30)
            if local.poll() is None:
                local.kill()
                local.wait()
    assert run.returncode == 0, (f"{run.stderr[-4000:]}\nslurmctld.log:\n{_tail(ctld_log)}")
    assert local_rc == 0, _tail(tmp_path / "local.log", 60)
    assert "workflow specific profile" in run.stderr and str(PROFILE) in run.stderr

    # 1. The plugin's per-job logs: one per submitted job, none for the localrules.
    logs_root = slurm_dir / ".snakemake" / "slurm_logs"
    logs: dict[str, list[Path]] = {}
    for path in logs_root.rglob("*.log"):  # rule_<rule>/<wildcards>/<SLURM job id>.log
        logs.setdefault(path.relative_to(logs_root).parts[0].removeprefix("rule_"), []).append(path)
    # data_stats: one per generated LPR-Synth set (the smoke config generates one)
    # one training job was cancelled mid-run and resubmitted: its run has two logs
    assert len(cancelled) == 1, "no training job was caught between its first checkpoint and its end"
    cancelled_id, cancelled_run = cancelled[0]
    # figure_attention loads checkpoints and encodes clips: a cluster job (the other figures are local)
    expected = {"synth": 1, "pretrain_clip": 1, "data_stats": 1, "frame_store": 1, "bench_methods": 1,
                "figure_attention": 1, "train": len(runs) + 1}  # each train job evaluates its run too
    if any(resolve_variant(smoke_config, v)["sgmn"]["te"] for v in smoke["variants"]):
        expected["text_features"] = 1  # one cache for every variant with the text branch
    assert {rule: len(paths) for rule, paths in logs.items()} == expected, logs
    job_ids = {}
    for rule, paths in logs.items():
        for path in paths:
            assert path.stem.isdigit(), path  # named <SLURM job id>.log
            assert f"rule {rule}:" in path.read_text(), f"{path} is not the log of a {rule} job"
            job_ids[path.stem] = rule

    # 2. slurmctld recorded each submission and a zero exit (there is no sacct without slurmdbd).
    ctld = ctld_log.read_text(errors="replace")
    for job_id, rule in job_ids.items():
        assert re.search(rf"_slurm_rpc_submit_batch_job: JobId={job_id}\b", ctld), (rule, job_id)
        if job_id != cancelled_id:
            assert re.search(rf"_job_complete: JobId={job_id} WEXITSTATUS 0\b", ctld), (rule, job_id)

    # 3. squeue still lists them (MinJobAge=3600), named after this run's ID, all COMPLETED.
    run_id = re.search(r"SLURM run ID: (\S+)", run.stderr + run.stdout).group(1)
    queue = subprocess.run(["squeue", "-h", "--states=all", "--name", run_id, "-o", "%i|%T"],
                           capture_output=True, text=True, timeout=30, env=env)
    states = dict(line.split("|") for line in queue.stdout.split())
    assert states == {job_id: "CANCELLED" if job_id == cancelled_id else "COMPLETED" for job_id in job_ids}, \
        (states, job_ids)
    # the resubmitted job resumed from the cancelled one's checkpoint, not from step 0
    train_log = slurm_dir / "logs" / "train" / "lpr_synth_smoke" / cancelled_run.parent.name / f"{cancelled_run.name}.log"
    assert re.search(r"resuming from .*latest\.pt at step [1-9]", train_log.read_text()), _tail(train_log)

    # 4. The same numbers as the local run (the interrupted run included).
    via_slurm, local_metrics = _metrics(slurm_dir, runs), _metrics(local_dir, runs)
    for key in runs:
        for field in ("overall", "subsets", "chance"):
            assert via_slurm[key][field] == local_metrics[key][field], (key, field)
    assert (slurm_dir / "results" / "lpr_synth_smoke" / "summary.csv").exists()
