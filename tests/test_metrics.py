"""MetricsWriter / read_metrics / fetch: rows, NaN, resume truncation, crash tails, TensorBoard,
progress bar on a terminal and plain log lines without one."""
import json
import math
import pathlib
import struct
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import metrics
from grpo_jax.metrics import MetricsWriter, fetch, read_metrics


def _row(step):
    # jnp scalars as the jitted step returns them, plus host-side Python numbers.
    return {"reward_mean": jnp.float32(step / 7), "loss": jnp.asarray(-0.1 * step), "kl": 1e-3 * step,
            "num_correct": jnp.int32(step), "step_seconds": 0.5}


def _read_events(directory):
    """Every Event record of every TensorBoard event file under `directory` (TFRecord framing:
    u64 length, u32 masked crc, payload, u32 masked crc), crc-checked."""
    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto import event_pb2

    def masked(data):
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    events = []
    files = sorted(directory.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {directory}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            header = data[pos:pos + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked(header)
            payload = data[pos + 12:pos + 12 + length]
            assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked(payload)
            events.append(event_pb2.Event.FromString(payload))
            pos += 16 + length
    return events


def test_rows_written_and_read_back(tmp_path):
    with MetricsWriter(tmp_path, progress=False) as w:
        returned = [w.write(s, _row(s)) for s in (1, 2, 3)]
        w.write_text(2, "completion_0", "<answer>4</answer>\nNaN")
    rows = read_metrics(tmp_path)
    assert rows == returned
    assert [r["step"] for r in rows] == [1, 2, 3]
    # float32 device values arrive as the exact Python float of that float32; ints stay ints.
    assert rows[1]["reward_mean"] == float(np.float32(2 / 7)) and type(rows[1]["reward_mean"]) is float
    assert rows[2]["num_correct"] == 3 and type(rows[2]["num_correct"]) is int
    assert rows[0]["kl"] == 1e-3
    # Samples live in the same file as their own record kind, text untouched.
    assert read_metrics(tmp_path, kind="samples") == [
        {"step": 2, "sample": "completion_0", "text": "<answer>4</answer>\nNaN"}]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl", kind="all")] == [1, 2, 3, 2]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["step"] == 1


def test_nan_and_inf_are_strings_in_strict_json(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False, progress=False) as w:
        w.write(1, {"loss": jnp.float32(jnp.nan), "kl": math.inf, "grad_norm": -jnp.inf, "ok": 1.5})
    line = (tmp_path / "metrics.jsonl").read_text()

    def reject(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    raw = json.loads(line, parse_constant=reject)  # strict JSON: no bare NaN / Infinity
    assert raw == {"step": 1, "loss": "NaN", "kl": "Infinity", "grad_norm": "-Infinity", "ok": 1.5}
    (row,) = read_metrics(tmp_path)
    assert math.isnan(row["loss"]) and row["kl"] == math.inf and row["grad_norm"] == -math.inf


def test_resume_truncates_to_checkpoint_and_matches_a_straight_run(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    with MetricsWriter(straight, tensorboard=False, progress=False) as w:
        for s in range(1, 7):
            w.write(s, _row(s))
            if s % 2 == 0:
                w.write_text(s, "sample", f"text {s}")
    # Crashed run: got to step 5 (checkpoint at 3), died mid-line at step 6.
    with MetricsWriter(crashed, tensorboard=False, progress=False) as w:
        for s in range(1, 6):
            w.write(s, _row(s))
            if s % 2 == 0:
                w.write_text(s, "sample", f"text {s}")
    with open(crashed / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "reward_me')
    before = (crashed / "metrics.jsonl").stat().st_ino
    with MetricsWriter(crashed, tensorboard=False, progress=False, resume_step=3) as w:
        assert [r["step"] for r in read_metrics(crashed, kind="all")] == [1, 2, 2, 3]
        for s in range(4, 7):
            w.write(s, _row(s))
            if s % 2 == 0:
                w.write_text(s, "sample", f"text {s}")
    assert (crashed / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    # Rewritten through a new file (os.replace), with no temporary left behind.
    assert (crashed / "metrics.jsonl").stat().st_ino != before
    assert sorted(p.name for p in crashed.iterdir()) == ["metrics.jsonl"]
    # resume_step=0: a run starting over keeps nothing.
    MetricsWriter(crashed, tensorboard=False, progress=False, resume_step=0).close()
    assert read_metrics(crashed, kind="all") == []


def test_truncated_last_line_is_dropped_and_appends_stay_valid(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False, progress=False) as w:
        for s in (1, 2, 3):
            w.write(s, {"loss": float(s)})
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 4, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    # Opening without resume_step repairs the tail before appending (else the next row would be
    # glued onto the partial one).
    with MetricsWriter(tmp_path, tensorboard=False, progress=False) as w:
        w.write(4, {"loss": 4.0})
    assert read_metrics(path) == [{"step": s, "loss": float(s)} for s in (1, 2, 3, 4)]
    assert path.read_text().endswith('{"step": 4, "loss": 4.0}\n')


def test_a_damaged_middle_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo\n{"step": 3, "loss": 3.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2"):
        read_metrics(path)
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2"):
        MetricsWriter(tmp_path, tensorboard=False, progress=False, resume_step=1)
    assert path.read_text().count("\n") == 3  # nothing was dropped


def test_tensorboard_events_hold_the_scalars_and_samples(tmp_path):
    with MetricsWriter(tmp_path, progress=False) as w:
        w.write(1, {"reward_mean": 0.25, "kl": jnp.float32(0.5)})
        w.write(2, {"reward_mean": 0.75, "kl": jnp.float32(0.125)})
        w.write_text(2, "completion", "hello")
    events = _read_events(tmp_path / "tb")
    scalars = {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value if v.HasField("simple_value")}
    assert scalars == {("reward_mean", 1): 0.25, ("kl", 1): 0.5, ("reward_mean", 2): 0.75, ("kl", 2): 0.125}
    texts = [v for e in events for v in e.summary.value if v.tag.startswith("completion")]
    assert texts and b"hello" in texts[0].tensor.string_val[0]
    # A resumed writer tells TensorBoard to discard events after the checkpoint step.
    MetricsWriter(tmp_path, progress=False, resume_step=1).close()
    purges = [e for e in _read_events(tmp_path / "tb") if e.HasField("session_log")]
    assert [(e.session_log.status, e.step) for e in purges] == [(1, 2)]  # 1 == SessionLog.START


def test_fetch_is_one_transfer_of_python_scalars(monkeypatch):
    calls = []
    real = jax.device_get
    monkeypatch.setattr(metrics.jax, "device_get", lambda tree: calls.append(1) or real(tree))
    out = fetch({"loss": jnp.float32(0.5), "n": jnp.int32(3), "flag": jnp.bool_(True),
                 "eval": {"acc": jnp.float32(0.25)}, "host": 2.0})
    assert calls == [1]
    assert out == {"loss": 0.5, "n": 3, "flag": True, "eval": {"acc": 0.25}, "host": 2.0}
    assert [type(out[k]) for k in ("loss", "n", "flag", "host")] == [float, int, bool, float]
    with pytest.raises(ValueError, match=r"\['logits'\].*shape \(2,\)"):
        fetch({"logits": jnp.ones(2)})


def test_progress_bar_shows_reward_and_kl(tmp_path, capsys):
    with MetricsWriter(tmp_path, tensorboard=False, progress=True, progress_total=10) as w:
        w.write(3, {"reward_mean": 0.5, "kl": 0.0123, "loss": 1.0})
    err = capsys.readouterr().err  # the bar is on stderr
    assert "reward_mean=0.5" in err and "kl=0.0123" in err and "3/10" in err


def test_non_primary_process_writes_nothing(tmp_path, capsys):
    for progress in (False, "lines"):
        with MetricsWriter(tmp_path / "w", progress=progress, progress_total=10, is_primary=False) as w:
            assert w.write(1, {"loss": 1.0}) == {"step": 1, "loss": 1.0}
            w.write(2, _grpo_row(2.0))
            w.write_text(1, "s", "t")
    assert not (tmp_path / "w").exists()
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""  # only the primary process prints progress lines


def _grpo_row(step_seconds, **extra):
    return {"reward_mean": jnp.float32(0.6123), "loss": jnp.float32(0.1), "kl": 0.01304,
            "clip_fraction": 0.002, "completion_length": 21.44, "step_seconds": step_seconds, **extra}


def test_plain_lines_without_a_terminal(tmp_path, capsys):
    rows = [
        (0, {"sft_loss": 1.23456, "sft_token_accuracy": 0.5, "sft_num_tokens": 96.0, "sft_step": 5}),
        (0, {"sft_validation_accuracy": 0.75, "sft_step": 10}),
        (0, {"prompts_dropped_train": 0.0, "eval_accuracy": 0.25, "eval_examples": 8}),
        (2, _grpo_row(2.0)),
        (4, _grpo_row(2.0, eval_accuracy=0.7213, eval_examples=8)),
        (6, _grpo_row(50.0)),  # one slow step: the median of (2, 2, 50) s is still 2 s/step
    ]
    with MetricsWriter(tmp_path / "lines", tensorboard=False, progress="lines", progress_total=12) as w:
        for step, row in rows:
            w.write(step, row)
        w.write_text(6, "completion", "a sample prints nothing")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "sft step 5 | loss 1.23 | tok acc 0.5",
        "sft step 10 | val acc 0.75",
        "step 0/12 | acc 0.25",
        # 12 - 2 = 10 steps left at 2 s/step -> 20 s.
        "step 2/12 | reward 0.612 | kl 0.013 | clip 0.002 | len 21.4 | 2 s/step | eta 20s",
        "step 4/12 | reward 0.612 | acc 0.721 | kl 0.013 | clip 0.002 | len 21.4 | 2 s/step | eta 16s",
        "step 6/12 | reward 0.612 | kl 0.013 | clip 0.002 | len 21.4 | 2 s/step | eta 12s",
    ]
    # metrics.jsonl is byte for byte what a writer without any progress output writes.
    with MetricsWriter(tmp_path / "quiet", tensorboard=False, progress=False, progress_total=12) as w:
        for step, row in rows:
            w.write(step, row)
        w.write_text(6, "completion", "a sample prints nothing")
    assert capsys.readouterr().out == ""
    jsonl = [(tmp_path / d / "metrics.jsonl").read_bytes() for d in ("lines", "quiet")]
    assert jsonl[0] == jsonl[1]


def test_plain_line_eta_in_minutes_pass_at_k_and_no_total(tmp_path, capsys):
    with MetricsWriter(tmp_path / "a", tensorboard=False, progress="lines", progress_total=600) as w:
        w.write(1, {"step_seconds": 30.0})  # compiling: 30 s/step, 599 steps left
        # The low median of (30, 0.97) s is 0.97 s/step; 575 steps left x 0.97 s = 557.75 s -> 9m18s.
        w.write(25, {"reward_mean": 0.5, "eval_accuracy": 0.25, "eval_pass@4": 0.5, "eval_maj@4": 0.375,
                     "step_seconds": 0.97})
    with MetricsWriter(tmp_path / "b", tensorboard=False, progress="lines") as w:
        w.write(3, {"reward_mean": 0.5, "step_seconds": 1.5})  # no total: no "/total", no ETA
        w.write(4, {"loss": 1.0})  # nothing the line shows: no line
    assert capsys.readouterr().out.splitlines() == [
        "step 1/600 | 30 s/step | eta 4h59m",
        "step 25/600 | reward 0.5 | acc 0.25 | pass@4 0.5 | maj@4 0.375 | 0.97 s/step | eta 9m18s",
        "step 3 | reward 0.5 | 1.5 s/step",
    ]


def test_compact_numbers_and_durations():
    assert [metrics._num(v) for v in (0.6123, 0.0130, 0.002, 21.44, 1e-5, 1234.4, 7, math.nan, -math.inf)] == [
        "0.612", "0.013", "0.002", "21.4", "1e-05", "1234", "7", "nan", "-inf"]
    assert [metrics._duration(s) for s in (0, 20, 59.6, 574, 3725, 90061)] == [
        "0s", "20s", "1m00s", "9m34s", "1h02m", "1d01h"]


def test_a_terminal_gets_the_bar_and_no_plain_lines(tmp_path, capsys, monkeypatch):
    with MetricsWriter(tmp_path / "forced", tensorboard=False, progress="bar", progress_total=10) as w:
        w.write(3, _grpo_row(2.0))
    err = capsys.readouterr().err
    assert "3/10" in err and "reward_mean=0.612" in err  # the tqdm bar
    assert "step 3/10" not in err and "eta" not in err and "s/step" not in err
    # Default (progress=None): a bar only when stdout and stderr are both terminals; otherwise
    # (`make train > log`) plain lines on stdout.
    for out_tty, err_tty, expect_line in ((True, True, False), (False, True, True), (True, False, True)):
        monkeypatch.setattr(sys.stdout, "isatty", lambda: out_tty)
        monkeypatch.setattr(sys.stderr, "isatty", lambda: err_tty)
        with MetricsWriter(tmp_path / f"auto{out_tty}{err_tty}", tensorboard=False, progress_total=10) as w:
            w.write(3, _grpo_row(2.0))
        captured = capsys.readouterr()
        assert ("step 3/10 | reward 0.612" in captured.out) == expect_line, captured
        assert ("3/10 [" in captured.err) == (not expect_line), captured  # tqdm's "n/total [elapsed<remaining"


def test_progress_must_be_a_known_mode(tmp_path):
    with pytest.raises(ValueError, match="progress must be"):
        MetricsWriter(tmp_path, tensorboard=False, progress="line")


# --------------------------------------------------------------------------------------------
# train.loggers: TensorBoard only when listed, wandb (offline, read back from its .wandb file).


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """wandb in offline mode with every directory it writes under tmp_path: no network, no login."""
    pytest.importorskip("wandb")
    home = tmp_path / "wandb_home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # pytest owns stdout / stderr
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    for var in ("WANDB_DIR", "WANDB_API_KEY", "WANDB_RUN_GROUP", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)  # WANDB_DIR unset: the run's files go under its workdir
    return tmp_path


def _wandb_records(path):
    """Every record of a .wandb file: a 7-byte header (":W&B", magic, version), then LevelDB's log
    framing (32 KiB blocks; each chunk: u32 crc32 of type + data, u16 length, u8 type 1 FULL /
    2 FIRST / 3 MIDDLE / 4 LAST) around wandb's Record protobufs; crc-checked; a record still being
    written at the end is left out."""
    import zlib

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        if kind == 0:  # zero padding to the block's end
            pos += block - pos % block
            continue
        if len(chunk) < length:  # still being written
            break
        assert crc == zlib.crc32(bytes([kind]) + chunk), f"{path}: bad crc at {pos}"
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def _wandb_run(workdir):
    """(run record, {config key: value}, {step: {key: value}}, files dir) of the latest offline run
    in workdir/wandb (wandb's `latest-run` link), whose id must be workdir/wandb_id.txt's. History
    keys of a logged object (a table) are tuples: ("samples/completion", "path")."""
    run_id = (workdir / metrics.WANDB_ID_FILE).read_text().strip()
    path = workdir / "wandb" / "latest-run" / f"run-{run_id}.wandb"
    # `finish` can return before wandb's service process has flushed the file: wait for the run's
    # last record (its exit).
    deadline = time.monotonic() + 30
    while not (records := _wandb_records(path)) or records[-1].WhichOneof("record_type") != "exit":
        assert time.monotonic() < deadline, f"{path}: no exit record after 30 s"
        time.sleep(0.05)
    run, config, history = None, {}, {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            updates = record.run.config.update
        elif kind == "config":
            updates = record.config.update
        elif kind == "history":
            row = {(item.key if item.key else tuple(item.nested_key) if len(item.nested_key) > 1
                    else item.nested_key[0]): json.loads(item.value_json) for item in record.history.item}
            history[row["_step"]] = {k: v for k, v in row.items() if not str(k).startswith("_")}
            continue
        else:
            continue
        config |= {u.key: json.loads(u.value_json) for u in updates if u.key != "_wandb"}
    return run, config, history, path.parent / "files"


def _table_rows(files, history, step, name="samples/completion"):
    return json.loads((files / history[step][(name, "path")]).read_text())


def test_wandb_run_holds_the_config_the_metrics_at_their_steps_and_the_samples(wandb_offline):
    workdir = wandb_offline / "run_a"
    run_config = {"grpo": {"beta": 0.04, "group_size": 4}, "train": {"loggers": "jsonl,wandb"}}
    with MetricsWriter(workdir, loggers="jsonl,wandb", progress=False, run_config=run_config,
                       wandb_group="sweep_x") as w:
        for s in (1, 2, 3):
            w.write(s, _row(s))
            if s >= 2:
                w.write_text(s, "completion", f"1+{s} -> '{s + 1}'")
        w.write(4, {"loss": math.nan, "note": "text"})
    run, config, history, files = _wandb_run(workdir)
    assert run.run_id == (workdir / "wandb_id.txt").read_text().strip() and len(run.run_id) == 8
    assert (run.project, run.display_name, run.run_group) == ("grpo_jax", "run_a", "sweep_x")
    assert config == run_config
    assert sorted(history) == [1, 2, 3, 4]
    for s in (1, 2, 3):
        expect = {k: v for k, v in read_metrics(workdir)[s - 1].items() if k != "step"}
        scalars = {k: v for k, v in history[s].items() if isinstance(k, str)}
        assert scalars == pytest.approx(expect) and history[s]["reward_mean"] == float(np.float32(s / 7))
    assert history[4]["note"] == "text" and math.isnan(history[4]["loss"])
    # One incremental table per sample name: each log holds the rows added since the last one.
    assert _table_rows(files, history, 2) == {"columns": ["step", "text"], "data": [[2, "1+2 -> '3'"]]}
    assert _table_rows(files, history, 3)["data"] == [[3, "1+3 -> '4'"]]
    assert history[2][("samples/completion", "_type")] == "incremental-table-file"
    # jsonl as ever; no TensorBoard when it is not listed.
    assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4]
    assert not (workdir / metrics.TB_DIR).exists()
    # Only process 0 logs: another process's writer starts no wandb run at all.
    with MetricsWriter(wandb_offline / "other", loggers="jsonl,wandb", progress=False, is_primary=False) as w:
        w.write(1, {"loss": 1.0})
        w.write_text(1, "completion", "x")
    assert not (wandb_offline / "other").exists()


def test_wandb_resume_continues_the_run_id_and_a_fresh_start_gets_a_new_one(wandb_offline):
    workdir = wandb_offline / "run_b"
    with MetricsWriter(workdir, loggers=("jsonl", "wandb"), progress=False) as w:  # crashes after step 4
        for s in (1, 2, 3, 4):
            w.write(s, {"loss": float(s)})
            if s % 2 == 0:
                w.write_text(s, "completion", f"text {s}")
    first = (workdir / "wandb_id.txt").read_text().strip()
    with MetricsWriter(workdir, loggers=("jsonl", "wandb"), progress=False, resume_step=2) as w:
        assert w._wandb.id == first
        for s in (3, 4, 5):
            w.write(s, {"loss": 10.0 * s})
            if s == 4:
                w.write_text(4, "completion", "text 4 again")
    run, _, history, files = _wandb_run(workdir)
    assert run.run_id == first and (workdir / "wandb_id.txt").read_text().strip() == first
    assert {s: h["loss"] for s, h in history.items()} == {3: 30.0, 4: 40.0, 5: 50.0}
    # The resumed table starts with the samples metrics.jsonl kept (step 2; step 4 was dropped).
    assert _table_rows(files, history, 4)["data"] == [[2, "text 2"], [4, "text 4 again"]]
    # Starting over (resume_step < 0: every row dropped) is a new wandb run.
    MetricsWriter(workdir, loggers=("jsonl", "wandb"), progress=False, resume_step=-1).close()
    assert (workdir / "wandb_id.txt").read_text().strip() not in ("", first)


def test_wandb_skips_the_steps_a_resumed_run_already_holds(tmp_path):
    logged = []

    class Run:  # a resumed online run at step 5: wandb would drop (and warn about) steps 3 and 4
        step = 5
        log = staticmethod(lambda data, step: logged.append((step, data)))
        finish = staticmethod(lambda: logged.append("finished"))

    w = MetricsWriter(tmp_path, loggers="jsonl", progress=False)
    w._wandb = Run()
    for s in (3, 4, 5, 6):
        w.write(s, {"loss": float(s)})
    w.close()
    assert logged == [(5, {"loss": 5.0}), (6, {"loss": 6.0}), "finished"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [3, 4, 5, 6]  # metrics.jsonl has them all


def test_loggers_pick_the_sinks(tmp_path):
    from grpo_jax import config as cfg_lib

    with metrics.from_config(cfg_lib.validate(cfg_lib.Config()), tmp_path / "default", progress=False) as w:
        assert w.loggers == ("jsonl", "tensorboard")
        w.write(1, {"loss": 1.0})
    assert list((tmp_path / "default" / "tb").glob("events.out.tfevents.*"))
    c = cfg_lib.apply_overrides(cfg_lib.Config(), ["train.loggers= jsonl "])
    with metrics.from_config(cfg_lib.validate(c), tmp_path / "jsonl", progress=False) as w:
        w.write(1, {"loss": 1.0})
    assert sorted(p.name for p in (tmp_path / "jsonl").iterdir()) == ["metrics.jsonl"]
    with pytest.raises(ValueError, match="not both"):
        MetricsWriter(tmp_path, loggers="jsonl", tensorboard=True)
    with pytest.raises(ValueError, match="must include jsonl"):
        MetricsWriter(tmp_path / "none", loggers="tensorboard")
    assert not (tmp_path / "none").exists()
    for value, match in (("tensorboard,wandb", "must include jsonl"), ("jsonl,mlflow", r"unknown logger.*mlflow"),
                         ("jsonl,jsonl", "a logger is named twice")):
        with pytest.raises(cfg_lib.ConfigError, match=rf"`train.loggers` = '{value}' is invalid: {match}"):
            cfg_lib.validate(cfg_lib.apply_overrides(cfg_lib.Config(), [f"train.loggers={value}"]))


def test_a_run_may_resume_with_other_loggers(tmp_path):
    from grpo_jax import build
    from grpo_jax import config as cfg_lib

    def config(*overrides):  # as train.run has it: the schedule's horizon resolved
        return build.schedule_horizon(cfg_lib.apply_overrides(cfg_lib.Config(), overrides), None)

    (tmp_path / "config.json").write_text(json.dumps(cfg_lib.to_dict(config())))
    other = ["train.loggers=jsonl", "train.wandb_project=p", "train.wandb_name=n", "train.wandb_entity=e"]
    build.check_workdir_config(tmp_path, config(*other))  # no error
    with pytest.raises(cfg_lib.ConfigError, match=r"keys grpo.beta\)"):
        build.check_workdir_config(tmp_path, config(*other, "grpo.beta=0.5"))


def test_a_default_run_never_imports_wandb(tmp_path, monkeypatch):
    from grpo_jax import config as cfg_lib

    monkeypatch.delitem(sys.modules, "wandb", raising=False)  # restored afterwards
    with metrics.from_config(cfg_lib.validate(cfg_lib.Config()), tmp_path, progress=False) as w:
        w.write(1, {"loss": 1.0})
        w.write_text(1, "completion", "x")
    assert "wandb" not in sys.modules


def test_wandb_not_installed_is_a_config_error_before_any_work(tmp_path, monkeypatch):
    from grpo_jax import config as cfg_lib

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    workdir = tmp_path / "run"
    quickstart = str(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "quickstart.py")
    with pytest.raises(cfg_lib.ConfigError, match=r"`train.loggers` = 'jsonl,wandb' is invalid: asks for wandb, "
                                                 r"which is not installed: pip install 'wandb>=0.31'"):
        cfg_lib.parse_command_line(["--config", quickstart, "--workdir", str(workdir),
                                    "--config.train.loggers=jsonl,wandb"])
    with pytest.raises(ValueError, match=r"pip install 'wandb>=0.31'"):
        MetricsWriter(workdir, loggers="jsonl,wandb")
    assert not workdir.exists()
    cfg_lib.validate(cfg_lib.Config())  # the default needs no wandb


@pytest.mark.slow
def test_training_with_wandb_logs_the_run(wandb_offline):
    """One tiny GRPO step through `python -m grpo_jax.train`'s main: train.py builds its writer from
    the config (metrics.from_config), so the wandb run gets the whole config and the step's row."""
    from grpo_jax import train

    workdir = wandb_offline / "tiny"
    overrides = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
                 "model.head_dim=16", "model.intermediate_size=64", "sft.steps=0", "train.steps=1",
                 "train.prompts_per_step=4", "grpo.group_size=4", "train.eval_every=0", "train.samples_every=1",
                 "mesh.data=1", "train.loggers=jsonl,wandb", "train.wandb_project=tests"]
    quickstart = str(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "quickstart.py")
    assert train.main(["--config", quickstart, "--workdir", str(workdir)] + [f"--config.{o}" for o in overrides]) == 0
    run, config, history, files = _wandb_run(workdir)
    assert (run.project, run.display_name) == ("tests", "tiny")
    assert config == json.loads((workdir / "config.json").read_text())
    assert config["train"]["loggers"] == "jsonl,wandb" and config["grpo"]["group_size"] == 4
    (row,) = [r for r in read_metrics(workdir) if r["step"] == 1]
    assert {k: history[1][k] for k in ("reward_mean", "loss", "kl", "completion_length")} == pytest.approx(
        {k: row[k] for k in ("reward_mean", "loss", "kl", "completion_length")})
    (sample,) = read_metrics(workdir, kind="samples")
    assert _table_rows(files, history, 1)["data"] == [[1, sample["text"]]]
    assert not (workdir / metrics.TB_DIR).exists()
