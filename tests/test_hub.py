"""Hub names (grpo_jax.hub): model.path / model.tokenizer / task.data_path as "owner/name".

No network anywhere: the caches are built here by hand in huggingface_hub's own layout
(`models--owner--name/{refs/main, blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>}`) and
read by the real `huggingface_hub.snapshot_download` under HF_HUB_OFFLINE=1 (conftest sets it); the
download path runs against a fake `snapshot_download` that copies from a local "remote" folder.
"""
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import ConfigError, hub, model, plan, tasks, weights
from grpo_jax import config as cfg_lib
from grpo_jax import tokenizer as tok_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL = "tiny-org/tiny-qwen"


def put_in_cache(cache: pathlib.Path, repo_id: str, source: pathlib.Path, *, kind: str = "model",
                 revision: str = "main", commit: str = COMMIT) -> pathlib.Path:
    """Every file under `source` into `cache` as huggingface_hub stores a downloaded snapshot:
    content-addressed blobs, the snapshot's files as relative symlinks to them, refs/<revision>."""
    repo = cache / f"{kind}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random Qwen2 written by transformers' save_pretrained, sharded (index + model-*-of-*),
    with the character tokenizer and a generation_config.json naming a second EOS id."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=64)
    m = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    path = tmp_path_factory.mktemp("tiny_qwen")
    m.save_pretrained(path, max_shard_size="40KB")
    tok_lib.char_tokenizer(tok_lib.CHAR_ALPHABET).save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert (path / "model.safetensors.index.json").is_file()  # the sharded layout is what is tested
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache named by the environment, offline (as conftest makes it)."""
    path = tmp_path / "hf_cache"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return path


def _logits(mc, params):
    tokens = jnp.asarray([[5, 17, 99, 3, 64, 1]], jnp.int32)
    return np.asarray(model.apply(mc, params, tokens))


def _equal_trees(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("value, expected", [
    ("Qwen/Qwen2.5-1.5B-Instruct", ("Qwen/Qwen2.5-1.5B-Instruct", None, "")),
    ("openai/gsm8k/main", ("openai/gsm8k", None, "main")),
    ("owner/name-GGUF/sub/model-q4_0.gguf", ("owner/name-GGUF", None, "sub/model-q4_0.gguf")),
    (f"Qwen/Qwen2.5-0.5B@{COMMIT}", ("Qwen/Qwen2.5-0.5B", COMMIT, "")),
    ("a/b/main@refs/pr/3", ("a/b", "refs/pr/3", "main")),
    ("./models/x", None), ("/abs/models/x", None), ("~/models/x", None), ("single", None),
    ("a--b/c", None), ("a/b/../c", None), ("a/b@", None), ("https://hf.co/a/b", None),
])
def test_parse(value, expected):
    assert hub.parse(value) == (None if expected is None else hub.HubName(*expected))


def test_file_patterns():
    model_files = hub.file_patterns(hub.parse(MODEL), "model")
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors",
            "model.safetensors.index.json", "model-*-of-*.safetensors"} <= set(model_files)
    assert "*.safetensors" not in model_files  # a second copy (consolidated.safetensors) stays on the Hub
    assert hub.file_patterns(hub.parse("o/m-GGUF/m-q4_0.gguf"), "model") == ["m-q4_0.gguf"]
    assert hub.file_patterns(hub.parse("openai/gsm8k/main"), "dataset") == [
        "main/*.parquet", "main/*.jsonl", "main/*.json"]
    assert hub.file_patterns(hub.parse(MODEL), "model", ["tokenizer.json"]) == ["tokenizer.json"]


def test_cache_dir_and_offline_follow_the_environment_at_each_call(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.default_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub.default_cache_dir() == tmp_path / "c"
    assert not hub.offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline()


def test_local_paths_are_returned_untouched(tmp_path, monkeypatch, cache):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)  # relative and owner/name-shaped, but on disk
    assert hub.resolve("models/mine") == pathlib.Path("models/mine")
    assert not hub.is_hub_name("models/mine")
    # Not on disk and not Hub-shaped: untouched, so the caller's own "does not exist" error stays.
    assert hub.resolve("/nonexistent/model") == pathlib.Path("/nonexistent/model")
    c = cfg_lib.apply_overrides(cfg_lib.Config(), ["model.path=/nonexistent/model"])
    with pytest.raises(ConfigError, match=r"`model.path`: '/nonexistent/model' does not exist"):
        weights.model_config_from_config(c, None)


# ------------------------------------------------------------------------------------ models
def test_model_by_hub_name_offline_matches_local_directory(tiny_model, cache):
    put_in_cache(cache, MODEL, tiny_model)
    mc_local, local = weights.load_hf(tiny_model)
    mc_hub, from_hub = weights.load_hf(MODEL)  # the real snapshot_download reads the cache (offline)
    assert mc_hub == mc_local and mc_hub.vocab_size == 128 and mc_hub.num_layers == 2
    _equal_trees(from_hub, local)
    np.testing.assert_array_equal(_logits(mc_hub, from_hub), _logits(mc_local, local))

    # The config-driven loaders: tokenizer, EOS ids (generation_config.json's 7), config, weights.
    c = cfg_lib.apply_overrides(cfg_lib.Config(), [f"model.path={MODEL}"])
    tok = tok_lib.from_config(c)
    assert tok("12 + 3")["input_ids"] == tok_lib.load_tokenizer(tiny_model)("12 + 3")["input_ids"]
    assert tok_lib.eos_token_ids(tok, MODEL) == tok_lib.eos_token_ids(tok, tiny_model) == (2, 7)
    assert weights.model_config_from_config(c, tok).hidden_size == 32
    _, params = weights.from_config(c, tok, None)
    _equal_trees(params, local)


def test_command_line_config_with_hub_names_end_to_end(tiny_model, cache, tmp_path):
    """--config.model.path and --config.task.data_path as Hub names: validated, then every consumer
    of the two keys reads the cached snapshots (tokenizer, model config, data); plan needs no weights."""
    put_in_cache(cache, MODEL, tiny_model)
    data = _gsm8k_local(tmp_path / "local_gsm8k")
    put_in_cache(cache, "openai/gsm8k", _gsm8k_hub_layout(data, tmp_path / "hub_gsm8k"), kind="dataset")
    c, _ = cfg_lib.parse_command_line([
        "--config", str(REPO / "experiments/qwen2_5_1_5b_gsm8k.py"), "--workdir", str(tmp_path / "run"),
        f"--config.model.path={MODEL}", "--config.task.data_path=openai/gsm8k", "--config.task.eval_size=0"])
    assert c.model.path == MODEL  # the config keeps the name (config.json of a run stays portable)
    tok = tok_lib.from_config(c)
    assert weights.model_config_from_config(c, tok).hidden_size == 32  # config.json, not the section's 1536
    task = tasks.from_config(c)
    assert [e.answer for e in task.eval_examples] == ["8", "12", "-3"]
    assert plan.without_weights(c) == (c, None)  # in the cache: planned from its config.json
    gone = cfg_lib.apply_overrides(c, ["model.path=tiny-org/not-downloaded"])
    planned, note = plan.without_weights(gone)
    assert planned.model.path == "" and "tiny-org/not-downloaded" in note  # the section's architecture


def test_download_fetches_only_the_needed_files_once(tiny_model, tmp_path, monkeypatch):
    """Online, through a fake Hub: the model's files and nothing else (not a second copy of the
    weights, not the original checkpoint), loadable; a second resolve finds it cached."""
    remote = tmp_path / "remote"
    shutil.copytree(tiny_model, remote)
    (remote / "consolidated.safetensors").write_bytes(b"x" * 1000)
    (remote / "original").mkdir()
    (remote / "original" / "params.pth").write_bytes(b"y")
    (remote / "README.md").write_text("# tiny")
    cache = tmp_path / "cache"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    fake = FakeHub({MODEL: remote})
    path = hub.resolve(MODEL, cache_dir=cache, download=fake)
    fetched = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
    expected = {p.name for p in tiny_model.iterdir()}
    assert fetched == expected and "consolidated.safetensors" not in fetched
    assert fake.downloads == [MODEL]
    _equal_trees(weights.load_hf(path)[1], weights.load_hf(tiny_model)[1])
    assert hub.resolve(MODEL, cache_dir=cache, download=fake) == path
    assert fake.downloads == [MODEL]  # cached: no second download, no request

    with pytest.raises(ConfigError, match=rf"`model.path` = 'tiny-org/other'.*{cache}.*could not be reached"):
        hub.resolve("tiny-org/other", cache_dir=cache, download=fake)  # online, but no Hub to reach
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: the fake is only ever asked for the cache
    fake.repos["tiny-org/other"] = remote
    with pytest.raises(ConfigError, match=rf"`model.path` = 'tiny-org/other'.*{cache}.*HF_HUB_OFFLINE=1"):
        hub.resolve("tiny-org/other", cache_dir=cache, download=fake)
    assert fake.downloads == [MODEL]


class FakeHub:
    """`snapshot_download` over local folders: repo id -> folder of its files. local_files_only (and
    a name not on the "Hub") behave as huggingface_hub's do; downloads are recorded."""

    def __init__(self, repos):
        self.repos, self.downloads = repos, []

    def __call__(self, repo_id, *, repo_type, revision, cache_dir, allow_patterns, local_files_only):
        from huggingface_hub.errors import LocalEntryNotFoundError
        from huggingface_hub.utils import filter_repo_objects

        folder = pathlib.Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
        if local_files_only:
            if not (folder / "refs" / (revision or "main")).is_file():
                raise LocalEntryNotFoundError(f"{repo_id} not in {cache_dir}")
            return str(folder / "snapshots" / (folder / "refs" / (revision or "main")).read_text())
        if repo_id not in self.repos:  # as huggingface_hub words a Hub it cannot reach
            raise LocalEntryNotFoundError(f"An error happened while trying to locate {repo_id} on the Hub")
        self.downloads.append(repo_id)
        source = self.repos[repo_id]
        files = [str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()]
        picked = source.parent / f".picked-{repo_id.replace('/', '--')}"
        for name in filter_repo_objects(files, allow_patterns=allow_patterns):
            (picked / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, picked / name)
        snapshot = put_in_cache(pathlib.Path(cache_dir), repo_id, picked, kind=repo_type)
        shutil.rmtree(picked)
        return str(snapshot)


# ------------------------------------------------------------------------------------ datasets
_GSM8K = {
    "train": [("Tom has 3 apples and buys 4. How many?", "3+4=<<3+4=7>>7\n#### 7"),
              ("A box holds 1,200 pens; 200 are sold. How many are left?", "1200-200=1000\n#### 1,000"),
              ("Sam reads 5 pages a day for 6 days. Pages?", "5*6=30\n#### 30")],
    "test": [("Ann has 5 cats and gets 3 more. How many?", "5+3=8\n#### 8"),
             ("What is 4 times 3?", "#### 12"),
             ("It is 2 degrees and falls 5. Temperature?", "2-5=-3\n#### -3")],
}


def _gsm8k_local(path: pathlib.Path) -> pathlib.Path:
    """The release's layout (../shared/data/gsm8k): train.jsonl, test.jsonl."""
    path.mkdir(parents=True)
    for split, rows in _GSM8K.items():
        (path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    return path


def _gsm8k_hub_layout(local: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
    """openai/gsm8k's layout: main/{split}-00000-of-00001.parquet (+ socratic/, README.md)."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    for config in ("main", "socratic"):
        (path / config).mkdir(parents=True)
        for split, rows in _GSM8K.items():
            answers = [a if config == "main" else "Why? " + a for _, a in rows]
            table = pa.table({"question": [q for q, _ in rows], "answer": answers})
            pq.write_table(table, path / config / f"{split}-00000-of-00001.parquet")
    (path / "README.md").write_text("---\nconfigs: [main, socratic]\n---\n")
    return path


def test_gsm8k_by_hub_name_gives_the_local_examples(tmp_path, cache):
    local = _gsm8k_local(tmp_path / "gsm8k")
    put_in_cache(cache, "openai/gsm8k", _gsm8k_hub_layout(local, tmp_path / "hub"), kind="dataset")

    def task(data_path, name="gsm8k"):
        c = cfg_lib.apply_overrides(cfg_lib.Config(), [f"task.name={name}", f"task.data_path={data_path}",
                                                       "task.eval_size=0"])
        return tasks.from_config(cfg_lib.validate(c))

    from_local, from_hub = task(local), task("openai/gsm8k")
    assert from_hub.eval_examples == from_local.eval_examples  # prompt, answer, reasoning and ids
    assert from_hub.train_records == from_local.train_records
    assert [e.answer for e in from_hub.train_records] == ["7", "1000", "30"]
    assert from_hub.eval_examples[0].meta["id"] == "gsm8k/test/0"
    # The generic reader names the config's folder; the socratic one is another folder.
    records_local, records_hub = task(local, "records"), task("openai/gsm8k/main", "records")
    assert [(e.prompt, e.answer) for e in records_hub.eval_examples] == \
        [(e.prompt, e.answer) for e in records_local.eval_examples]
    socratic = task("openai/gsm8k/socratic", "records")
    assert socratic.eval_examples[0].meta["reasoning"].startswith("Why?")


def test_missing_names_are_config_errors_naming_key_and_cache(tmp_path, cache):
    with pytest.raises(ConfigError) as error:
        hub.resolve("nobody/nothing", key="model.path")
    assert "`model.path`" in str(error.value) and str(cache) in str(error.value)
    assert "HF_HUB_OFFLINE" in str(error.value)
    c = cfg_lib.apply_overrides(cfg_lib.Config(), ["task.name=gsm8k", "task.data_path=nobody/data"])
    with pytest.raises(ConfigError, match=rf"`task.data_path` = 'nobody/data'.*dataset repo.*{cache}"):
        tasks.from_config(cfg_lib.validate(c))
    c = cfg_lib.apply_overrides(cfg_lib.Config(), ["model.path=nobody/model"])
    with pytest.raises(ConfigError, match=rf"`model.path` = 'nobody/model'.*{cache}"):
        tok_lib.from_config(c)
    # In the cache, but the folder named inside the repo is not.
    put_in_cache(cache, "openai/gsm8k", _gsm8k_hub_layout(_gsm8k_local(tmp_path / "l"), tmp_path / "h"),
                 kind="dataset")
    with pytest.raises(ConfigError, match=r"`task.data_path` = 'openai/gsm8k/nope'.*has no 'nope'"):
        hub.resolve("openai/gsm8k/nope", kind="dataset", key="task.data_path")


# ------------------------------------------------------------------------------------ one downloader
_WORKER = textwrap.dedent("""
    import pathlib, sys, time
    from grpo_jax import hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache, log, me, others = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
    snapshot = cache / "models--o--m" / "snapshots" / "c0"

    def download(repo_id, *, repo_type, revision, cache_dir, allow_patterns, local_files_only):
        if local_files_only:
            if not (snapshot / "config.json").is_file():
                raise LocalEntryNotFoundError("not cached")
            return str(snapshot)
        with open(log, "a") as f:
            f.write(f"download by {me}\\n")
        # A long download: hold on until every other process is blocked waiting for it (its
        # stderr says so), at most 30 s.
        deadline = time.time() + 30
        while time.time() < deadline and not all(
                "waiting for another process" in pathlib.Path(o).read_text() for o in others):
            time.sleep(0.05)
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / "config.json").write_text("{}")
        return str(snapshot)

    print(hub.resolve("o/m", cache_dir=cache, download=download))
""")


def test_one_process_per_host_downloads_the_others_wait(tmp_path):
    """Three processes ask for the same uncached name at once: exactly one downloads, the other two
    wait on the cache's file lock and then read its snapshot (no JAX involved)."""
    cache, log = tmp_path / "cache", tmp_path / "log"
    errs = [tmp_path / f"stderr{i}" for i in range(3)]
    for e in errs:
        e.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = str(REPO)
    procs = []
    for i in range(3):
        with open(errs[i], "w") as stderr:  # the child holds its own copy of the descriptor
            procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, str(cache), str(log), str(i),
                                           *(str(e) for j, e in enumerate(errs) if j != i)],
                                          stdout=subprocess.PIPE, stderr=stderr, env=env, text=True))
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e.read_text() for e in errs]
    downloads = log.read_text().splitlines()
    assert len(downloads) == 1, downloads
    assert outs == [str(cache / "models--o--m" / "snapshots" / "c0")] * 3
    downloader = int(downloads[0].split()[-1])
    for i, e in enumerate(errs):
        assert ("waiting for another process to download o/m" in e.read_text()) == (i != downloader)
