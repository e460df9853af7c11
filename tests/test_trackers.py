"""logger=mlflow, logger=wandb and several loggers at once, through the real CLI, read back from real stores:
MLflow's own client on a local SQLite store, and W&B's offline run files through the wandb package's record
definitions. A tracker that fails warns once and training goes on."""
import csv
import json
import struct
import sys

import pytest

from conftest import require, run_cli, write_mnist

mlflow = require("mlflow", "trackers")
wandb = require("wandb", "trackers")
from mlflow.tracking import MlflowClient  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402

TINY = ["epochs=2", "data=mnist", "data.root=data", "batch_size=20", "hidden_size=32", "latent_size=8",
        "log_every=2", "eval.n=50", "device=cpu"]
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture
def cwd(tmp_path):
    write_mnist(tmp_path / "data", n=100)
    return tmp_path


def wandb_records(run_file):
    """The records of an offline run's .wandb file: W&B's log format (a ':W&B' header, then LevelDB-style 32 KiB
    blocks of chunks, each crc32, length, type), each record a wandb_internal_pb2.Record."""
    data, pos, block, chunks = run_file.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in a block for a chunk header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            yield record
            chunks = b""


def csv_rows(run_dir):
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def test_a_stack_logs_every_member_to_mlflow_wandb_and_tensorboard_at_once(cwd):
    """logger=[csv,tensorboard,mlflow,wandb] on a sweep of 2 (one stack): each member is a run of its own in
    every tracker, with what its lone run would log there."""
    store = f"sqlite:///{cwd / 'mlflow.db'}"
    result = run_cli("train", "-m", "seed=0,1", *TINY, "logger=[csv,tensorboard,mlflow,wandb]",
                     f"logger.mlflow.tracking_uri={store}", "hydra.sweep.dir=sweep", cwd=cwd, env=OFFLINE)
    assert result.returncode == 0, result.stderr
    assert "failed and is off" not in result.stderr + result.stdout
    sweep = cwd / "sweep"
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(str(sweep))  # the sweep is the experiment
    runs = {r.data.params["seed"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"0", "1"}
    for seed, run in runs.items():
        run_dir = sweep / seed
        assert run.info.status == "FINISHED" and run.data.tags["override.seed"] == seed
        assert run.data.params["optim.lr"] == "0.0002" and run.data.params["data.name"] == "mnist"
        assert run.data.tags["checkpoint"] == str(run_dir / "checkpoints" / "last.pt")
        history = client.get_metric_history(run.info.run_id, "train/g_loss")
        rows = csv_rows(run_dir)
        assert [(m.step, round(m.value, 4)) for m in history] == [(int(r["step"]), round(float(r["g_loss"]), 4)) for r in rows]
        saved = json.loads((run_dir / "metrics.json").read_text())["metrics"]
        assert run.data.metrics["eval/fd"] == pytest.approx(saved["fd"]["value"])
        assert run.data.tags["protocol/fd"].startswith("gantrain") and saved["fd"]["protocol"]["real"]["data"] in run.data.tags["protocol/fd"]
        files = {f.path for f in client.list_artifacts(run.info.run_id)} | {
            f.path for f in client.list_artifacts(run.info.run_id, "samples")}
        assert {"curves.png", "metrics.json", "samples/epoch_0001.png", "samples/epoch_0002.png"} <= files
        # W&B: an offline run in the job's dir, grouped by the sweep
        run_file, = run_dir.glob("wandb/offline-run-*/run-*.wandb")
        records = list(wandb_records(run_file))
        header = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        config = {i.key: json.loads(i.value_json) for i in header.config.update}
        assert header.run_group == str(sweep) and config["seed"] == int(seed)
        logged = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item} for r in records
                  if r.WhichOneof("record_type") == "history"]
        g_loss = [(int(row["_step"]), round(float(row["train/g_loss"]), 4)) for row in logged if "train/g_loss" in row]
        assert g_loss == [(int(r["step"]), round(float(r["g_loss"]), 4)) for r in rows]
        assert any("eval/fd" in row for row in logged) and any("samples/path" in row for row in logged)
        assert next(r.exit for r in records if r.WhichOneof("record_type") == "exit").exit_code == 0
        summary = {i.key: i.value_json for r in records if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
        assert json.loads(summary["protocol/fd"]) == run.data.tags["protocol/fd"]  # the same card in each tracker
        events, = run_dir.glob("tensorboard/events.out.tfevents.*")  # and TensorBoard's events, the card as text
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        board = EventAccumulator(str(events), size_guidance={"tensors": 0}).Reload()
        assert "protocol/fd/text_summary" in board.Tags()["tensors"]


def test_a_tracker_that_fails_is_one_warning_and_training_goes_on(cwd):
    (cwd / "a_file").write_text("")  # a store that cannot be made: its folder would be a file
    result = run_cli("train", *TINY, "logger=[csv,mlflow]", f"logger.mlflow.tracking_uri=sqlite:///{cwd}/a_file/m.db",
                     "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "logger=mlflow failed" in line]
    assert len(warnings) == 1 and "metrics.csv and metrics.json have every number" in warnings[0]
    assert csv_rows(cwd / "run")[-1]["step"] == "10" and (cwd / "run" / "metrics.json").exists()  # every step logged


def test_a_missing_tracker_package_is_one_line_naming_the_extra(cwd, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    result = run_cli("train", *TINY, "logger=mlflow", "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "logger=mlflow needs the mlflow package: pip install 'gantrain[trackers]'" in result.stderr


def test_an_unknown_logger_is_refused_with_the_valid_names(cwd):
    result = run_cli("train", *TINY, "+logger.nope={}", "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 1 and "unknown logger 'nope': valid names are csv, tensorboard, mlflow, wandb" in result.stderr
    assert not (cwd / "run" / "metrics.csv").exists()
