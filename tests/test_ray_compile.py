"""`subterra compile --target ray`: a real one-node Ray cluster on 127.0.0.1, two CPU workers (gloo).

The cluster is started by the `ray_cluster` fixture with its own temp dir and ports, and only that
cluster is stopped afterwards (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from compile_helpers import conversations, write_jsonl

from engine.cli import main
from engine.errors import TrainingError
from engine.train.config import TrainConfig

pytest.importorskip("ray.job_submission", reason="Ray is not installed: pip install 'subterra[ray]'")

ROOT = Path(__file__).resolve().parent.parent
JOB_TIMEOUT_S = 600


# ------------------------------------------------------------------------------------------------
# fixtures


def _free_ports(n: int, span: int = 0) -> list[int]:
    """`n` free ports, then a free run of `span` more (Ray's worker port range)."""
    for base in range(20000 + (os.getpid() % 200) * 150, 60000, 173):
        ports = list(range(base, base + n + span))
        if all(_port_free(p) for p in ports):
            return ports
    raise RuntimeError("no free ports for the test Ray cluster")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster (2 CPUs, 200 MB object store) of our own; yields its dashboard address."""
    ports = _free_ports(9, span=60)
    (gcs, dash, client, nm, om, agent, agent_grpc, renv, metrics), workers = ports[:9], ports[9:]
    temp = tempfile.mkdtemp(prefix="rst-", dir="/tmp")  # short: Ray's socket paths must fit in 107 characters
    # on a machine shared with other work, Ray's node-wide memory monitor would kill our workers for the
    # memory others use (the kernel's OOM killer still guards the machine); one compile job at a time for
    # DeepSpeed's JIT-built CPU comm op
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_memory_monitor_refresh_ms": "0", "MAX_JOBS": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2",
           "--object-store-memory", str(200 * 10**6), "--temp-dir", temp, "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--node-manager-port", str(nm), "--object-manager-port", str(om),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(renv), "--metrics-export-port", str(metrics),
           "--min-worker-port", str(workers[0]), "--max-worker-port", str(workers[-1]), "--disable-usage-stats"]
    log = open(Path(temp) / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_dashboard(address, proc, temp)
        yield address
    finally:
        _stop_cluster(proc, temp)
        log.close()


def _wait_for_dashboard(address: str, proc: subprocess.Popen, temp: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {(Path(temp) / 'ray-start.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"the test Ray cluster did not come up in {timeout_s}s")


def _stop_cluster(proc: subprocess.Popen, temp: str) -> None:
    """SIGTERM to our `ray start --block` (it stops its own processes), then kill whatever of ours is left:
    processes in its session, or whose command line names our temp dir. Nobody else's Ray is touched."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    for pid in _our_pids(proc.pid, temp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)
    # its logs and runtime envs can take minutes to delete on a busy disk: not the test's time
    subprocess.Popen(["rm", "-rf", temp], start_new_session=True)


def _our_pids(session: int, temp: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            sid = os.getsid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
        if sid == session or temp in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "travel.jsonl", conversations(24))


def _cfg(tmp_path: Path, data: Path, model_dir: Path, name: str, **kw) -> TrainConfig:
    from engine.store import data_dir

    base = dict(out=str(data_dir() / "models" / name), base=str(model_dir), data=[str(data)], flow="travel",
                flow_version=1, name=name, lr=2e-3, batch_size=2, grad_accum=2, patience=None, seed=5)
    return TrainConfig(**{**base, **kw})


def _job(job_id: int) -> dict:
    from engine.store import Store

    row = Store(seed=False).get_job(job_id)
    return {**row, **{k: json.loads(row[k]) if row.get(k) else None for k in ("config", "events", "result")}}


def _wait(job_id: int, until, what: str, timeout_s: float = JOB_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = _job(job_id)
        if until(job):
            return job
        if job["status"] not in ("queued", "running") and not until(job):
            raise AssertionError(f"job {job_id} ended {job['status']} ({job['message']}) before {what}:\n"
                                 + _log(job)[-4000:])
        time.sleep(1)
    raise AssertionError(f"job {job_id} not {what} after {timeout_s}s: {job['status']} {job['message']}\n"
                         + _log(job)[-4000:])


def _log(job: dict) -> str:
    return Path(job["log"]).read_text(errors="replace") if job.get("log") and Path(job["log"]).is_file() else ""


def _ray_status(address: str, sid: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(address).get_job_status(sid).value)


def _training(job: dict) -> bool:
    return bool((job["events"] or {}).get("last"))


# ------------------------------------------------------------------------------------------------
# fast: checks that need no cluster


def test_without_ray_the_target_says_how_to_install_it(monkeypatch, tmp_path, data, tiny_model_dir):
    from engine.train.ray_target import RayTarget, submit_ray_compile

    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    with pytest.raises(TrainingError) as e:
        submit_ray_compile(_cfg(tmp_path, data, tiny_model_dir, "x"), RayTarget(address="http://127.0.0.1:1"))
    assert str(e.value) == "--target ray needs Ray (Jobs and Train): pip install 'subterra[ray]'"


def test_the_runtime_env_carries_the_projects_training_pins_and_refuses_an_oversized_base(
        monkeypatch, tmp_path, data, tiny_model_dir):
    from engine.train import ray_target
    from engine.train.ray_target import RayTarget, plan_base, training_requirements

    reqs = training_requirements()
    assert "torch==2.13.0" in reqs and any(r.startswith("deepspeed") for r in reqs)
    assert not any(r.startswith(("nicegui", "anthropic")) for r in reqs)  # the studio and LLM SDKs stay home
    cfg = _cfg(tmp_path, data, tiny_model_dir, "x")
    target = RayTarget(address="http://10.0.0.1:8265", storage=str(tmp_path / "store"))
    assert plan_base(cfg, target).kind == "shipped"
    assert plan_base(cfg.model_copy(update={"base": "HuggingFaceTB/SmolLM2-135M-Instruct"}), target).kind == "hub"
    monkeypatch.setattr(ray_target, "_runtime_env_limit", lambda: 1024)
    with pytest.raises(TrainingError) as e:
        plan_base(cfg, target)
    assert str(e.value).startswith(f"the base model {tiny_model_dir} is 0.0 GiB, more than the 0 MiB a Ray runtime "
                                   f"environment can carry; copy it to the storage ({tmp_path / 'store'}/base/")
    with pytest.raises(TrainingError, match="is not on this machine: pass --storage"):
        ray_target.default_storage("http://10.0.0.1:8265")


# ------------------------------------------------------------------------------------------------
# slow: against the real cluster


@pytest.mark.slow
def test_two_cpu_workers_compile_comes_back_into_the_registry(ray_cluster, tmp_path, data, tiny_model_dir, store,
                                                              capsys, artifacts_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.store import data_dir

    t0 = time.monotonic()
    args = ["compile", "travel", "--data", str(data), "--base", str(tiny_model_dir), "--max-steps", "4",
            "--eval-every", "2", "--lr", "2e-3", "--batch-size", "2", "--grad-accum", "2", "--name", "travel-ray",
            "--target", "ray", "--ray-address", ray_cluster, "--workers", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("job ")
    assert f"on the Ray cluster at {ray_cluster} (2 worker(s), Ray job subterra-travel-ray-" in out
    assert time.monotonic() - t0 < 60  # returns at once; the job follows the Ray job
    job_id = int(out.split()[1].rstrip(":"))
    sid = _job(job_id)["config"]["options"]["submission_id"]
    job = _wait(job_id, lambda j: j["status"] == "done", "done")
    wall = time.monotonic() - t0
    # live status, progress and log as for a local compile
    events = job["events"]
    assert events["last"]["step"] == 4 and events["last"]["tokens_per_s"] > 0
    assert [e["step"] for e in events["losses"]] == [1, 2, 3, 4]
    evals = [e["step"] for e in events["evals"]]  # every 2 steps and at each epoch's end (3 steps here)
    assert evals == [2, 3, 4] and events["ray"]["submission_id"] == sid
    assert job["result"]["submission_id"] == sid and job["result"]["ray_status"] == "SUCCEEDED"
    log = _log(job)
    assert log.count("eval at step 2: loss") == 1 and "submitted Ray job " + sid in log
    # the model: where a local compile leaves it, with provenance, in the registry, loadable
    model_dir = data_dir() / "models" / "travel-ray"
    prov = json.loads((model_dir / "subterra.json").read_text())
    assert prov["world_size"] == 2 and prov["steps"] == 4 and prov["flow"] == "travel"
    assert prov["config"]["out"] == str(model_dir) and prov["base"] == str(tiny_model_dir)
    assert prov["cluster"]["submission_id"] == sid and prov["cluster"]["workers"] == 2 and prov["git_revision"]
    assert not (model_dir / ".train").exists()
    rows = {m["name"]: m for m in store.model_rows()}
    assert rows["travel-ray"]["path"] == str(model_dir.resolve())
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] > ids.shape[1]
    assert _ray_status(ray_cluster, sid) == "SUCCEEDED"
    (artifacts_dir / "ray_compile_wall.json").write_text(json.dumps(
        {"workers": 2, "steps": 4, "wall_s": round(wall, 1), "train_wall_s": prov["wall_time_s"]}, indent=2))


@pytest.mark.slow
def test_a_cancelled_job_ends_cancelled_and_stops_the_ray_job(ray_cluster, tmp_path, data, tiny_model_dir, store):
    from engine.train.ray_target import RayTarget, cancel, submit_ray_compile

    cfg = _cfg(tmp_path, data, tiny_model_dir, "travel-cancel", max_steps=500, save_every=1000)
    # the cluster's own environment has the requirements (the first test had Ray install them)
    job_id = submit_ray_compile(cfg, RayTarget(address=ray_cluster, workers=2, install_requirements=False))
    sid = _job(job_id)["config"]["options"]["submission_id"]
    _wait(job_id, lambda j: (j["events"] or {}).get("ray", {}).get("status") == "RUNNING", "running on Ray")
    try:
        from engine.jobs import cancel_job  # what `subterra jobs cancel` does: the follower stops the Ray job
    except ImportError:
        cancel_job = None
    cancel_job(job_id, wait_s=30) if cancel_job else cancel(job_id)
    job = _wait(job_id, lambda j: j["status"] != "running", "ended", timeout_s=60)
    assert job["status"] == "cancelled" and job["message"].startswith(f"cancelled: Ray job {sid} stopped")
    assert _ray_status(ray_cluster, sid) == "STOPPED"
    assert not (Path(cfg.out) / "config.json").exists() and not store.model_rows("travel-cancel")


@pytest.mark.slow
def test_a_killed_client_is_replaced_by_one_that_reattaches_and_sees_the_job_finish(
        ray_cluster, tmp_path, data, tiny_model_dir, store):
    from engine.train.ray_target import RayTarget, submit_ray_compile

    cfg = _cfg(tmp_path, data, tiny_model_dir, "travel-reattach", max_steps=24, eval_every=12)
    job_id = submit_ray_compile(cfg, RayTarget(address=ray_cluster, workers=2, install_requirements=False))
    sid = _job(job_id)["config"]["options"]["submission_id"]
    job = _wait(job_id, _training, "training")
    os.killpg(job["pid"], signal.SIGKILL)  # the client (the job's follower process) dies mid-run
    time.sleep(3)
    assert _ray_status(ray_cluster, sid) == "RUNNING"  # the cluster carries on without it
    seen = job["events"]["last"]["step"]
    # a new client process takes over by the submission id stored in the job
    new = subprocess.run([sys.executable, "-m", "engine.train.ray_target", "attach", str(job_id)], cwd=ROOT,
                         capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert new.returncode == 0, new.stderr[-3000:] + new.stdout[-3000:]
    assert new.stdout.strip().splitlines()[-1].startswith("done: model 'travel-reattach' written to ")
    job = _job(job_id)
    assert job["status"] == "done" and job["result"]["submission_id"] == sid
    assert job["events"]["last"]["step"] == 24 and seen < 24
    assert [e["step"] for e in job["events"]["losses"]] == list(range(1, 25))  # nothing lost, nothing twice
    assert _log(job).count("eval at step 12: loss") == 1 and f"attached to Ray job {sid} (RUNNING)" in _log(job)
    prov = json.loads((Path(cfg.out) / "subterra.json").read_text())
    assert prov["steps"] == 24 and prov["cluster"]["submission_id"] == sid
    assert store.model_rows("travel-reattach")


@pytest.mark.slow
def test_an_unreachable_address_and_an_unreadable_storage_each_give_one_clear_error(
        ray_cluster, tmp_path, data, tiny_model_dir, store, capsys):
    port = _free_ports(1)[0]
    args = ["compile", "travel", "--data", str(data), "--base", str(tiny_model_dir), "--max-steps", "2",
            "--target", "ray", "--name", "nowhere"]
    assert main(args + ["--ray-address", f"http://127.0.0.1:{port}"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: cannot reach a Ray cluster at http://127.0.0.1:{port} (Connection refused); start one with "
        "`ray start --head --dashboard-host 0.0.0.0` (dashboard on port 8265), or pass the dashboard's "
        "http://HOST:8265 with --ray-address or RAY_ADDRESS")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    storage = blocker / "storage"
    assert main(args + ["--ray-address", ray_cluster, "--storage", str(storage)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot use the storage {storage} (") and err.endswith(
        "; pass --storage with a folder this machine and every Ray node can write (a shared mount), or an "
        "object-store URI pyarrow can open (s3://BUCKET/PATH with credentials in the environment, gs://...)")
    assert len(err.splitlines()) == 1 and not store.list_jobs()
