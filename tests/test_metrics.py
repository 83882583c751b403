"""MetricsWriter / read_metrics / fetch: rows, NaN, resume truncation, crash tails, TensorBoard,
progress bar on a terminal and plain log lines without one."""
import json
import math
import struct
import sys

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
