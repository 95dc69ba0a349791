"""The SLURM batch script (cait_edu/cluster/train_imagenet.sbatch), run for real on a CPU.

SLURM is not installed here, so two stand-ins go first on the PATH: ``srun`` runs its command once
(one node), ``scontrol`` answers ``show hostnames`` with the node list and records ``requeue``.
Everything else is the script as shipped: bash, torchrun with a c10d rendezvous, 2 processes with
Gloo (``DEVICE=cpu``), the cait_s24_224 preset shrunk by ``--set`` (a 0.3M-parameter CaiT on a
generated ImageFolder at 32 px). The job is stopped the way SLURM stops a job it requeues -- USR1
to the batch script (``--signal=B:USR1@...``), whose handler asks ``scontrol requeue``, then
SIGTERM to the job's processes -- and started again: it must resume from last.pt and end with the
same weights, bit for bit, as a job that was never stopped.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from cait_edu.cluster import SBATCH_SCRIPT, format_command, sbatch_script, set_args, train_command

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import REPO, env, read_metrics, write_image_folder  # noqa: E402

TINY = dict(model="cait_cifar_nano", img_size=32, batch_size=8, epochs=8, warmup_epochs=1, num_workers=0,
            log_every=1)
# 3 classes x 16 images: 24 per rank, 4 per rank per step -> 6 steps per epoch, 48 in all
STEPS = 48

FAKE_SRUN = """#!/bin/bash
# stand-in for srun on one node: drop srun's own options, run the command once
while [[ $# -gt 0 && $1 == --* ]]; do shift; done
exec "$@"
"""
FAKE_SCONTROL = """#!/bin/bash
# stand-in for scontrol: the node list, and a record of requeue requests
case "$1 $2" in
    "show hostnames") echo "$3" | tr ',' '\\n' ;;
    requeue*) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
    *) echo "fake scontrol: unsupported: $*" >&2; exit 1 ;;
esac
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _wait_gone(pids: list[int], timeout: float) -> dict[int, str]:
    """Wait until none of ``pids`` runs; return those still running after ``timeout`` (pid: command)."""
    deadline = time.time() + timeout
    while True:
        alive = {}
        for p in pids:
            try:
                if "zombie" not in Path(f"/proc/{p}/status").read_text():
                    alive[p] = Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:200]
            except OSError:
                pass
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    data = write_image_folder(root / "imagenet", classes=3, per_class=16, size=32)
    return root, bin_dir, data


def _job_env(cluster, out: Path, restart: int = 0) -> dict:
    root, bin_dir, data = cluster
    e = env()
    e.update(PATH=f"{bin_dir}{os.pathsep}{e['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="1",
             SLURM_JOB_NODELIST="localhost", SLURM_RESTART_COUNT=str(restart), GPUS_PER_NODE="2", DEVICE="cpu",
             PRESET="cait_s24_224", DATA=str(data), OUT=str(out), SAVE_EVERY="3", RDZV_PORT=str(_free_port()),
             PYTHON=sys.executable, FAKE_SLURM_LOG=str(root / "slurm.log"))
    return e


def _sbatch(cluster, out: Path, restart: int = 0, **popen) -> subprocess.Popen:
    """Start the batch script as SLURM would (bash, in a session of its own)."""
    log = open(out.parent / f"{out.name}.{restart}.log", "w")
    return subprocess.Popen(["bash", str(SBATCH_SCRIPT), *set_args(TINY)], cwd=REPO, env=_job_env(cluster, out, restart),
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True, **popen)


def _log(out: Path, restart: int) -> str:
    return (out.parent / f"{out.name}.{restart}.log").read_text()


def test_script_is_package_data_and_printed():
    assert SBATCH_SCRIPT.is_file() and SBATCH_SCRIPT.parent == REPO / "cait_edu" / "cluster"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"cait_edu.cluster" = ["*.sbatch"]' in pyproject, "the script must ship in the wheel"
    r = subprocess.run([sys.executable, "-m", "cait_edu.cluster"], cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == str(SBATCH_SCRIPT) and not r.stderr
    r = subprocess.run([sys.executable, "-m", "cait_edu.cluster", "--show"], cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=60)
    assert r.stdout == sbatch_script()


def test_wheel_ships_the_script(tmp_path):
    """``pip install`` must install the script beside the module that prints its path."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "cait_edu", src / "cait_edu", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert "cait_edu/cluster/train_imagenet.sbatch" in zipfile.ZipFile(wheel).namelist()


def test_script_text():
    text = sbatch_script()
    assert text.startswith("#!/bin/bash\n")
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    for needed in ("--requeue", "--signal=B:USR1@", "--ntasks-per-node=1", "--open-mode=append"):
        assert any(needed in d for d in directives), needed
    for needed in ("--rdzv-backend=c10d", "scontrol show hostnames", "trap requeue USR1", "scontrol requeue",
                   "--resume", "last.pt"):
        assert needed in text, needed
    assert subprocess.run(["bash", "-n", str(SBATCH_SCRIPT)]).returncode == 0  # it parses


def test_script_needs_data(cluster, tmp_path):
    e = _job_env(cluster, tmp_path / "run")
    del e["DATA"]
    r = subprocess.run(["bash", str(SBATCH_SCRIPT)], env=e, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "set DATA" in r.stderr


def test_train_command_shapes():
    one = train_command("cait_s24_224", data="/d", out="/o", sets={"batch_size": 256, "lr": 2.5e-4})
    assert one == ["python", "-m", "cait_edu.train", "--preset", "cait_s24_224", "--data", "/d", "--out", "/o",
                   "--set", "batch_size=256", "--set", "lr=0.00025"]
    node = train_command("cait_s24_224", data="/d", out="/o", nproc_per_node=8)
    assert node[:4] == ["torchrun", "--standalone", "--nproc-per-node=8", "-m"]
    multi = train_command("cait_s24_224", data="/d", out="/o", nnodes=2, nproc_per_node=8,
                          rdzv_endpoint="node1:29500", rdzv_id="job7", resume=True)
    assert multi[:7] == ["torchrun", "--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d",
                         "--rdzv-endpoint=node1:29500", "--rdzv-id=job7", "-m"]
    assert multi[-1] == "--resume"
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        train_command("cait_s24_224", out="/o", nnodes=2, nproc_per_node=8)
    text = format_command(multi, width=60)
    assert all(len(line) <= 60 for line in text.splitlines())
    assert text.replace(" \\\n    ", " ") == " ".join(multi)  # only line breaks were added


def test_requeued_job_resumes_exactly(cluster, tmp_path):
    """Reference job (never stopped), then a job stopped after a mid-epoch checkpoint and started again."""
    ref = tmp_path / "ref"
    proc = _sbatch(cluster, ref)
    assert proc.wait(timeout=240) == 0, _log(ref, 0)[-3000:]
    assert "new run in" in _log(ref, 0)

    out = tmp_path / "job"
    proc = _sbatch(cluster, out)
    slurm_log = cluster[0] / "slurm.log"
    slurm_log.unlink(missing_ok=True)
    deadline = time.time() + 180
    while True:  # wait for a checkpoint (every 3 steps) and a step past it
        if proc.poll() is not None:
            pytest.fail(f"the job ended (rc {proc.returncode}) before it could be stopped:\n{_log(out, 0)[-3000:]}")
        steps = [r["step"] for r in read_metrics(out, strict=False) if r.get("kind") == "train"]
        if (out / "last.pt").is_file() and steps and steps[-1] >= 4:
            break
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.01)
    tree = _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGUSR1)  # SLURM, 300 s before the time limit
    while "requeue 4242" not in (slurm_log.read_text() if slurm_log.exists() else ""):
        assert time.time() < deadline, "the USR1 handler did not call scontrol requeue"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)  # SLURM requeues the job: every process of it gets SIGTERM
    proc.wait(timeout=60)
    alive = _wait_gone(tree, timeout=60)
    for p, cmd in alive.items():
        os.kill(p, signal.SIGKILL)
    assert not alive, f"torchrun should take its worker processes down with it: {alive}"
    assert "signal received: requeueing job 4242" in _log(out, 0)

    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert 3 <= saved["step"] < STEPS and saved["step"] % 3 == 0  # stopped mid-run, at a checkpoint

    proc = _sbatch(cluster, out, restart=1)  # the requeued job starts again
    assert proc.wait(timeout=240) == 0, _log(out, 1)[-3000:]
    log = _log(out, 1)
    assert "start 2" in log and f"resuming {out}/last.pt" in log
    assert f"(resuming at step {saved['step']})" in log

    a = torch.load(ref / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == STEPS and b["world_size"] == 2
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "resume is not exact"
    la = [(r["step"], r["loss"]) for r in read_metrics(ref) if r["kind"] == "train"]
    lb = [(r["step"], r["loss"]) for r in read_metrics(out) if r["kind"] == "train"]
    assert la == lb and len(la) == STEPS
