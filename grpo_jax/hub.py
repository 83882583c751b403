"""Hub names: `model.path`, `model.tokenizer` and `task.data_path` may name a Hugging Face Hub repo.

    owner/name[/path/inside][@revision]      e.g. Qwen/Qwen2.5-1.5B-Instruct
                                                  openai/gsm8k/main   (the "main" config's folder)
                                                  owner/name-GGUF/model-q4_0.gguf
                                                  Qwen/Qwen2.5-0.5B@7ae557604adf67be50417f59c2c2f167def9a775

`resolve(value, kind=..., key=...)` turns such a value into a local path inside huggingface_hub's
cache (`snapshots/<commit>/...`), fetching only the files the run reads (`allow_patterns`): for a
model its config, generation config, tokenizer files and safetensors weights (one file, or the
sharded index with its `model-*-of-*.safetensors`); for a `.gguf` path inside a repo that one file;
for a dataset its parquet / JSON / JSONL files (under `/path/inside` when given). Anything that
exists on disk is a local path and is returned untouched, so local paths work exactly as before;
a value that neither exists nor looks like `owner/name` is returned untouched too (its reader says
it does not exist).

Cache first: a repo already complete in the cache (huggingface_hub checks completeness against the
file listing it stored at download) is used without contacting the Hub, so every consumer of
`model.path` (tokenizer, EOS ids, config, weights) and every process costs no request once it is
there. A branch such as "main" is therefore not refreshed: pin `@<commit>` for reproducible runs,
or re-download (`hf download ...`) to move on. The cache is the one huggingface_hub uses: the
environment's HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub, read at each call
(huggingface_hub itself reads these once, at import). With HF_HUB_OFFLINE=1 (or
TRANSFORMERS_OFFLINE=1) nothing is downloaded; a name the cache lacks is a ConfigError naming the
config key and the cache directory, as is a repo or revision the Hub does not have, or no network.

One downloader per host: the process that finds the repo missing takes a file lock in the cache
(`.locks/<repo folder>/grpo_jax.lock`, via `filelock`, which huggingface_hub uses too) and
downloads; every other process (the other local processes of a multi-host run, or of a sweep) waits
on that lock, then finds the snapshot complete and downloads nothing. This needs no JAX and no
`jax.distributed` barrier, so it works before `jax.distributed.initialize` and in tools that never
call it. Hosts with separate disks each download once; a cache on a shared filesystem that honours
flock (NFSv4, Lustre) is downloaded once for the whole cluster.
"""
from __future__ import annotations

import os
import pathlib
import re
import sys
from typing import Callable, NamedTuple, Sequence

from grpo_jax import ConfigError

KINDS = ("model", "dataset")
# A tokenizer: its files (fast or slow), chat template, and config.json (AutoTokenizer may read the
# model type there). Small files; a repo without one of them simply lacks it.
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja",
                   "chat_template.json")
# A model: the tokenizer's files, generation_config.json (EOS ids) and the weights.
MODEL_FILES = (*TOKENIZER_FILES, "generation_config.json",
               # weights.load_hf reads model.safetensors, or the index and the shards it names (the
               # names transformers writes). Not "*.safetensors": some repos also ship the same
               # weights a second time in another layout (e.g. consolidated.safetensors).
               "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")
# The formats grpo_jax.tasks.records reads (fnmatch's * also matches "/": any folder depth).
DATASET_FILES = ("*.parquet", "*.jsonl", "*.json")
# A last path component with one of these suffixes names a single file in the repo.
_FILE_SUFFIXES = (".gguf", ".safetensors", ".parquet", ".jsonl", ".json")
# Hub repo ids: owner/name, letters, digits, "_", "-", "." (huggingface_hub's own rule, which also
# forbids "--" and ".."); a leading "." or "/" or "~" is a local path.
_SEGMENT = re.compile(r"[A-Za-z0-9_][\w.-]*")
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubName(NamedTuple):
    repo_id: str  # "owner/name"
    revision: str | None  # a branch, tag or commit; None: "main"
    subpath: str  # a file or folder inside the repo ("" = the repo itself)


def parse(value: str) -> HubName | None:
    """`owner/name[/path/inside][@revision]` -> HubName, or None when `value` cannot be a Hub name
    (absolute, ./ ../ ~ paths, URLs, fewer than two components, characters a repo id cannot have).
    Does not look at the disk: see `is_hub_name`."""
    value = str(value)
    if not value or value[0] in "/.~" or "\\" in value or "://" in value:
        return None
    spec, at, revision = value.partition("@")
    if at and not revision:
        return None
    owner, _, rest = spec.rstrip("/").partition("/")
    name, _, subpath = rest.partition("/")
    if not (_SEGMENT.fullmatch(owner) and _SEGMENT.fullmatch(name)):
        return None
    if any(bad in part for part in (owner, name) for bad in ("--", "..")) or name.endswith("."):
        return None
    if subpath and any(part in ("", ".", "..") for part in subpath.split("/")):
        return None
    return HubName(f"{owner}/{name}", revision or None, subpath)


def is_hub_name(value: str | os.PathLike) -> bool:
    """Whether `value` will be resolved on the Hub: it looks like owner/name and is not on disk."""
    return bool(value) and not os.path.exists(value) and parse(str(value)) is not None


def default_cache_dir() -> pathlib.Path:
    """huggingface_hub's cache directory as the environment says now: HF_HUB_CACHE, else
    HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
    ~/.cache/huggingface/hub."""
    env = os.environ
    path = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not path:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        path = os.path.join(home, "hub")
    return pathlib.Path(os.path.expandvars(os.path.expanduser(path)))


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value, now."""
    return any((os.environ.get(var) or "").upper() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def file_patterns(name: HubName, kind: str, patterns: Sequence[str] | None = None) -> list[str]:
    """The repo files to fetch: `patterns` (default: MODEL_FILES / DATASET_FILES by kind), under
    `name.subpath` when that is a folder; exactly `name.subpath` when it names a file."""
    if name.subpath.endswith(_FILE_SUFFIXES):
        return [name.subpath]
    if patterns is None:
        patterns = MODEL_FILES if kind == "model" else DATASET_FILES
    prefix = f"{name.subpath}/" if name.subpath else ""
    return [prefix + p for p in patterns]


def _lock_file(cache: pathlib.Path, repo_id: str, kind: str) -> pathlib.Path:
    folder = f"{kind}s--{repo_id.replace('/', '--')}"  # huggingface_hub's repo folder name
    return cache / ".locks" / folder / "grpo_jax.lock"


def snapshot(name: HubName, *, kind: str, patterns: Sequence[str], cache: pathlib.Path, offline: bool,
             download: Callable | None = None) -> pathlib.Path:
    """The snapshot folder of `name` in `cache` holding `patterns`, downloaded by one process per host.

    `download` is huggingface_hub.snapshot_download (tests pass a fake with its signature). First the
    cache alone is asked (no lock, no network); when that fails and we are online, the process takes
    the repo's file lock, asks the cache again (another process may have finished while it waited)
    and only then downloads. huggingface_hub's LocalEntryNotFoundError (not cached / incomplete /
    no network) and HTTP errors propagate: `resolve` words them.
    """
    from huggingface_hub.errors import LocalEntryNotFoundError

    if download is None:
        from huggingface_hub import snapshot_download as download

    def fetch(local_only: bool) -> pathlib.Path:
        return pathlib.Path(download(name.repo_id, repo_type=kind, revision=name.revision, cache_dir=str(cache),
                                     allow_patterns=list(patterns), local_files_only=local_only))

    try:
        return fetch(True)
    except LocalEntryNotFoundError:
        if offline:
            raise
    import filelock

    lock_file = _lock_file(cache, name.repo_id, kind)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        print(f"grpo_jax.hub: waiting for another process to download {name.repo_id} into {cache} "
              f"(lock {lock_file})", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        try:
            return fetch(True)
        except LocalEntryNotFoundError:
            return fetch(False)
    finally:
        lock.release()


def _who(key: str) -> str:
    # A config key ("model.path") is named as one; a function argument ("load_hf(path)") as itself.
    return f"config key `{key}`" if re.fullmatch(r"\w+(\.\w+)+", key) else key


def resolve(value: str | os.PathLike, *, kind: str = "model", key: str = "model.path",
            allow_patterns: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
            download: Callable | None = None) -> pathlib.Path:
    """A local path for `value`: the path itself when it exists on disk (or is not Hub-like), else
    the file or folder inside the Hub repo's cached snapshot, downloaded first if needed and allowed
    (module docstring). `kind` is the repo type ("model" or "dataset"); `key` is the config key (or
    argument) the value came from, named by every error; `allow_patterns` (relative to the subpath)
    replaces the kind's default file list; `cache_dir` the environment's cache; `download` is for
    tests. ConfigError, naming `key` and the cache directory, when the name cannot be had."""
    if kind not in KINDS:
        raise ValueError(f"hub.resolve: kind must be one of {KINDS}, got {kind!r}")
    if not is_hub_name(value):
        return pathlib.Path(value)
    from huggingface_hub import errors

    name = parse(str(value))
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    is_offline = offline()
    patterns = file_patterns(name, kind, allow_patterns)
    what = (f"{_who(key)} = {str(value)!r}: no such local path, and Hub {kind} repo {name.repo_id!r}"
            f"{f' (revision {name.revision!r})' if name.revision else ''}")
    try:
        folder = snapshot(name, kind=kind, patterns=patterns, cache=cache, offline=is_offline, download=download)
    except errors.LocalEntryNotFoundError as error:
        if is_offline:
            raise ConfigError(
                f"{what} is not (completely) in the Hugging Face cache {cache}, and HF_HUB_OFFLINE=1 forbids "
                f"downloading it: fetch it once with network access into that cache (e.g. `hf download "
                f"{name.repo_id}{' --repo-type dataset' if kind == 'dataset' else ''}`), or point HF_HUB_CACHE "
                f"/ HF_HOME at the cache that holds it ({_first_line(error)})") from None
        raise ConfigError(f"{what} is not in the Hugging Face cache {cache}, and the Hub could not be "
                          f"reached to download it: {_first_line(error)}") from None
    except errors.RevisionNotFoundError:
        raise ConfigError(f"{what} has no revision {name.revision!r} on the Hub (cache {cache})") from None
    except errors.RepositoryNotFoundError as error:  # GatedRepoError included
        raise ConfigError(f"{what} does not exist on the Hub, or needs a login / access approval "
                          f"(cache {cache}): {_first_line(error)}") from None
    except (errors.HfHubHTTPError, errors.HFValidationError) as error:
        raise ConfigError(f"{what} could not be downloaded into {cache}: {_first_line(error)}") from None
    target = folder / name.subpath if name.subpath else folder
    if not target.exists():
        raise ConfigError(f"{what}: the snapshot {folder} has no {name.subpath!r} (fetched files "
                          f"matching {patterns})")
    return target


def in_cache(value: str | os.PathLike, *, kind: str = "model", allow_patterns: Sequence[str] | None = None,
             cache_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The local path a Hub name resolves to when the cache already holds it completely, else None
    (also for values that are not Hub names). Never downloads: for tools that can do without the
    files (`grpo_jax.plan` plans the model section's architecture instead)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not is_hub_name(value):
        return None
    name = parse(str(value))
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder = snapshot(name, kind=kind, patterns=file_patterns(name, kind, allow_patterns),
                          cache=cache, offline=True)
    except LocalEntryNotFoundError:
        return None
    target = folder / name.subpath if name.subpath else folder
    return target if target.exists() else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
