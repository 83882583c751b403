"""MetricsWriter / read_metrics / fetch: rows, NaN, resume truncation, crash tails, TensorBoard."""
import json
import math
import struct

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
    err = capsys.readouterr().err
    assert "reward_mean=0.5" in err and "kl=0.0123" in err and "3/10" in err


def test_non_primary_process_writes_nothing(tmp_path):
    with MetricsWriter(tmp_path / "w", progress=False, is_primary=False) as w:
        assert w.write(1, {"loss": 1.0}) == {"step": 1, "loss": 1.0}
        w.write_text(1, "s", "t")
    assert not (tmp_path / "w").exists()
