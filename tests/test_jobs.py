"""The job runner (engine.jobs): worker processes, dead-job detection, cancel, resume, conflicts, CLI."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from compile_helpers import conversations, write_jsonl

from engine.cli import main
from engine.errors import JobConflictError, JobError, TrainingError
from engine.generate import GenerateConfig
from engine.jobs import get_job, list_jobs, refresh, start_job, wait_for
from engine.jobs.compile import start_compile
from engine.jobs.generate import start_generation
from engine.train.config import TrainConfig


@pytest.fixture(autouse=True)
def _no_leftover_workers(store):
    """A failing test must not leave a worker running on the shared machine."""
    yield
    for row in store.live_jobs():
        if row.get("pid") and row.get("log"):
            try:
                os.killpg(row["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _conversations(store, dataset: str) -> int:
    return store.dataset_summaries()[[d["name"] for d in store.dataset_summaries()].index(dataset)]["conversations"]


def test_generation_job_runs_in_a_worker_and_reports(store):
    job = start_generation("travel", GenerateConfig(n=12, dataset="t12"), store=store)
    assert job.status == "queued" and job.flow == "travel" and job.output == "dataset:t12"
    job = wait_for(job.id, timeout_s=60, store=store)
    assert job.status == "done", job.message
    assert job.progress == 1.0 and job.pid and job.pid != os.getpid() and job.duration_s is not None
    assert job.message.startswith("12/12 conversations in 't12'")
    assert job.events["progress"]["done"] == 12 and job.events["estimate"]["conversations"] == 12
    assert job.result["dataset"] == "t12" and job.result["new"] == 12
    assert _conversations(store, "t12") == 12
    # generate_dataset's own job row was adopted: one job, not two
    assert [j.id for j in list_jobs(store)] == [job.id]
    assert "done: 12/12" in open(job.log).read()


def test_kill_9_worker_shows_failed_with_reason_in_cli(store, capsys):
    job = start_generation("zoom", GenerateConfig(n=5000, dataset="big", concurrency=1), store=store)
    job = wait_for(job.id, lambda j: j.status == "running" and j.progress > 0, timeout_s=60, store=store)
    assert job.status == "running"
    os.kill(job.pid, signal.SIGKILL)
    time.sleep(0.3)  # the runner's reaper thread collects the zombie
    assert main(["jobs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["id"] == job.id and rows[0]["status"] == "failed"
    assert rows[0]["message"].startswith(f"the worker process (pid {job.pid}) is gone: killed or crashed")
    assert {"id", "kind", "flow", "status", "progress", "message"} <= set(rows[0])
    assert "started, pid" in rows[0]["result"]["log_tail"]
    assert main(["jobs"]) == 0
    assert "failed" in capsys.readouterr().out
    assert main(["jobs", "show", str(job.id)]) == 0
    shown = capsys.readouterr().out
    assert "is gone" in shown and "log (last lines):" in shown


def test_stale_heartbeat_is_dead_even_when_the_pid_exists(store):
    jid = store.insert_runner_job({"kind": "generate", "flow": "travel", "entry": "x:y", "log": "/nonexistent"})
    # a pid that exists (ours) but a heartbeat from long ago: the machine restarted and the pid was reused
    store.update_job(jid, status="running", pid=os.getpid(), heartbeat=time.time() - 3600)
    assert refresh(store) == [jid]
    job = get_job(jid, store)
    assert job.status == "failed" and job.message.startswith("no heartbeat from the worker")


def test_cancel_then_resume_continues_the_dataset(store, capsys):
    job = start_generation("zoom", GenerateConfig(n=4000, dataset="zc", concurrency=1), store=store)
    wait_for(job.id, lambda j: j.progress > 0.002, timeout_s=60, store=store)
    assert main(["jobs", "cancel", str(job.id)]) == 0
    assert f"job {job.id} cancelled" in capsys.readouterr().out
    job = get_job(job.id, store)
    assert job.status == "cancelled" and job.resumable
    have = _conversations(store, "zc")
    assert 0 < have < 4000
    with pytest.raises(JobError, match="only a queued or running job can be cancelled"):
        from engine.jobs import cancel_job
        cancel_job(job.id, store)
    assert main(["jobs", "resume", str(job.id)]) == 0
    job = wait_for(job.id, lambda j: j.status == "running" and j.progress * 4000 > have + 5, timeout_s=60, store=store)
    assert job.status == "running" and job.progress * 4000 > have + 5  # kept what it had, adds to it
    assert main(["jobs", "cancel", str(job.id)]) == 0
    assert get_job(job.id, store).status == "cancelled"


def test_two_jobs_writing_one_output_are_refused(store, tmp_path):
    job = start_generation("zoom", GenerateConfig(n=4000, dataset="same", concurrency=1), store=store)
    with pytest.raises(JobConflictError) as e:
        start_generation("zoom", GenerateConfig(n=10, dataset="same"), store=store)
    assert str(e.value) == (f"job {job.id} (generate, queued) already writes dataset:same; wait for it, "
                            f"or cancel it with `subterra jobs cancel {job.id}`, or pick another output") \
        or "running" in str(e.value)
    from engine.jobs import cancel_job
    cancel_job(job.id, store)
    # once it is no longer live, the output is free again
    other = start_generation("zoom", GenerateConfig(n=2, dataset="same"), store=store)
    assert wait_for(other.id, timeout_s=60, store=store).status == "done"


def test_secrets_go_only_to_the_worker_environment(store):
    secret = "sk-test-very-secret-123"
    job = start_job("generate", {"generate": GenerateConfig(n=1, dataset="s").model_dump(mode="json"),
                                 "api_key": secret}, env={"ANTHROPIC_API_KEY": secret}, flow="travel",
                    flow_version=store.flow_version("travel"), name="s", store=store)
    job = wait_for(job.id, timeout_s=60, store=store)
    assert job.status == "done"
    assert secret not in json.dumps(list(store.db.query("select * from jobs")))
    assert secret not in open(job.log).read()


def test_unknown_kind_and_missing_job(store):
    with pytest.raises(JobError, match="unknown job kind 'nope'"):
        start_job("nope", {}, store=store)
    assert main(["jobs", "show", "999"]) == 1


def test_failing_compile_job_is_marked_failed_with_the_error(store, tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "m"), base=str(tmp_path / "no-such-base"), data=[str(tmp_path / "none.jsonl")])
    job = wait_for(start_compile(cfg, store=store).id, timeout_s=120, store=store)
    assert job.status == "failed" and job.message and "Traceback" not in job.message


def test_cli_compile_that_raises_marks_its_job_failed(store, tmp_path, tiny_model_dir):
    """`compile_model` outside the runner: an exception in the loop must not leave the job running."""
    from engine.train import loop

    data = write_jsonl(tmp_path / "d.jsonl", conversations(8))
    cfg = TrainConfig(out=str(tmp_path / "m"), base=str(tiny_model_dir), data=[str(data)], max_steps=2,
                      batch_size=2, grad_accum=1, add_to_registry=False)
    loop.STOP.set()  # the loop stops after its first step, raising
    try:
        with pytest.raises(TrainingError, match="stopped at step 1/2 on request"):
            loop.compile_model(cfg)
    finally:
        loop.STOP.clear()
    row = store.list_jobs("compile")[0]
    assert row["status"] == "cancelled" and "stopped at step 1/2" in row["message"]


@pytest.mark.slow
def test_compile_job_cancel_checkpoints_and_resume_finishes(store, tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", conversations(40))
    # enough steps that the cancel lands mid-run even when the tiny model's steps outrun the test's polling
    cfg = TrainConfig(out=str(tmp_path / "m"), base=str(tiny_model_dir), data=[str(data)], max_steps=120,
                      batch_size=1, grad_accum=1, lr=1e-3, name="tinyjob", flow="travel", patience=0, save_every=1000)
    job = start_compile(cfg, store=store)
    with pytest.raises(JobConflictError, match="already writes model:"):
        start_compile(cfg, store=store)
    job = wait_for(job.id, lambda j: (j.events or {}).get("last", {}).get("step", 0) >= 2, timeout_s=120, store=store)
    from engine.jobs import cancel_job
    job = cancel_job(job.id, store, wait_s=30)
    assert job.status == "cancelled", job.message
    step = json.loads((tmp_path / "m" / ".train" / "last" / "trainer_state.json").read_text())["step"]
    assert 2 <= step < 120
    job = get_job(job.id, store)
    from engine.jobs import resume_job
    resume_job(job.id, store=store)
    job = wait_for(job.id, timeout_s=300, store=store)
    assert job.status == "done", job.message
    prov = json.loads((tmp_path / "m" / "subterra.json").read_text())
    assert prov["steps"] == 120 and prov["resumed_at_steps"] == [step]
    assert job.result["model"] == "tinyjob"


def test_kill_9_of_a_terminal_generation_is_found_dead(store, capsys):
    """`subterra generate` in a terminal (no runner, no heartbeat) killed with -9: found by its pid."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "engine", "generate", "zoom", "-n", "5000", "--concurrency", "1",
                             "--dataset", "term", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not [r for r in store.list_jobs("generate") if r["status"] == "running" and r["progress"] > 0]:
            assert time.monotonic() < deadline, "the terminal generation never reported progress"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    assert main(["jobs", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["status"] == "failed" and row["pid"] == proc.pid
    assert row["message"].startswith(f"the worker process (pid {proc.pid}) is gone")
