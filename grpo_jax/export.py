"""A run's checkpoint -> a directory that transformers (and peft) load:

    python -m grpo_jax.export --workdir runs/NAME --out DIR [--step N] [--adapter-only]
                              [--dtype float32|bfloat16] [--force]

What DIR holds:
    full fine-tune   config.json + model.safetensors: the policy, float32 by default (`--dtype bfloat16`
                     on request), as `weights.save_hf` writes it
    LoRA run         (model.lora_rank > 0) the folded policy, base + (alpha / r) A B computed and written
                     in float32 (exact: `weights.save_hf`, `model.fold_lora`); or, with --adapter-only,
                     PEFT's adapter_config.json + adapter_model.safetensors, whose base_model_name_or_path
                     is the run's model.path (`peft.PeftModel.from_pretrained(base, DIR)`)
    always           the run's tokenizer (tokenizer.json, tokenizer_config.json, its chat template) and
                     generation_config.json whose eos_token_id lists every id that ended a completion in
                     the run (`tokenizer.eos_token_ids`: the tokenizer's eos, model.path's
                     generation_config.json ids, the chat template's end of turn), so that
                     `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)`
                     load it (but see below) and `generate` stops where the run's sampler stopped.

The run is read from the workdir alone: its config.json (written by `grpo_jax.train` or a sweep cell),
the checkpoint (latest, or --step N) restored onto abstract targets (`Checkpointer.restore_partial`:
the policy's weights only, no optimizer state nor reference), and for LoRA the base from model.path
(or, with no model.path, the seeded random init the run started from). Everything is placed on one CPU
device: the export needs host memory for the policy (and, with LoRA, the base and the folded copy),
never accelerator memory. Without model.path (the quick start) the tokenizer is the built-in character
tokenizer, written as tokenizer.json (no chat template; that run uses none).

The written tokenizer is checked: `AutoTokenizer.from_pretrained(DIR)` must encode a probe text as the
run's tokenizer does (RESULT auto_tokenizer=same|differs); where it does not, a note names the loader
that does. The known case: a plain tokenizer.json (tokenizer_class TokenizersBackend or
PreTrainedTokenizerFast, as the character tokenizer is saved) in a model_type "qwen2" directory (the
quick-start model is Qwen2-shaped), where transformers 5's AutoTokenizer builds its Qwen2Tokenizer
instead, whose byte-level pre-tokenizer drops the character vocabulary's spaces and newlines;
`PreTrainedTokenizerFast.from_pretrained(DIR)` or `grpo_jax.tokenizer.load_tokenizer(DIR)` load it
as written. A model's own tokenizer class (Qwen2Tokenizer, LlamaTokenizer, ...) is unaffected.

Errors come before any weight is read: a workdir without config.json or without checkpoints, an
unknown --step (the steps it holds are listed), --adapter-only on a full fine-tune (or on a LoRA run
whose base is a random init, which has no directory for PEFT to load), --dtype bfloat16 with
--adapter-only, an --out that exists and is not empty (unless --force). DIR is written as DIR.tmp-PID
and renamed into place once complete. The last line printed is
    RESULT out=DIR step=N kind=full|lora_folded|lora_adapters dtype=... eos_ids=I,J,... tokenizer=char|saved
           auto_tokenizer=same|differs seconds=...
Exit status 0, or 2 on an error.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time
from typing import Sequence

import jax

from grpo_jax import ConfigError
from grpo_jax import build
from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as cfg_lib
from grpo_jax import hub
from grpo_jax import model as model_lib
from grpo_jax import platforms
from grpo_jax import sharding
from grpo_jax import tokenizer as tok_lib
from grpo_jax import weights as weights_lib

DTYPES = ("float32", "bfloat16")


class ExportError(ValueError):
    """The workdir, step or output directory cannot be exported as asked; the message says which."""


def read_run_config(workdir: pathlib.Path) -> cfg_lib.Config:
    """The run's own config (workdir/config.json), as the trainer wrote it."""
    path = workdir / "config.json"
    if not workdir.is_dir():
        raise ExportError(f"--workdir {str(workdir)!r} is not a directory")
    if not path.is_file():
        raise ExportError(f"{path} missing: --workdir must be a run's workdir (grpo_jax.train or a sweep cell "
                          f"writes config.json there)")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ExportError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object of config sections")
    return cfg_lib.from_dict(data)


def checkpoint_step(workdir: pathlib.Path, step: int | None) -> int:
    """The step to export: `step` if the workdir holds it, else the latest; an error listing the steps."""
    directory = workdir / "checkpoints"
    # Checked before opening a Checkpointer, which would create the directory.
    if not directory.is_dir():
        raise ExportError(f"{directory} missing: the run in {str(workdir)!r} has saved no checkpoint yet")
    with ckpt_lib.Checkpointer(directory) as ckpt:
        steps = ckpt.all_steps()
    if not steps:
        raise ExportError(f"{directory} holds no complete checkpoint")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ExportError(f"--step {step}: no checkpoint of that step in {directory} (steps present: "
                          f"{', '.join(map(str, steps))})")
    return step


def restore_policy(config: cfg_lib.Config, workdir: pathlib.Path, *, step: int, tokenizer, mesh):
    """(ModelConfig, params) of the run's policy at checkpoint `step`, on `mesh`: the trained weights,
    or with LoRA the base (model.path's weights in model.param_dtype, or the run's seeded init) with
    the restored adapters under their projections (`model.merge_lora`). As `build.setup(for_eval=True)`
    restores it, but for any step and without the task and its data, which an export does not need."""
    model_config = weights_lib.model_config_from_config(config, tokenizer)
    lora = model_config.lora_rank > 0
    trained = (build.abstract_adapters(model_config, mesh) if lora
               else weights_lib.abstract_params(model_config, mesh))
    with ckpt_lib.Checkpointer(workdir / "checkpoints") as ckpt:
        trained = ckpt.restore_partial({"train": {"params": trained}}, step=step)["train"]["params"]
    if not lora:
        return model_config, trained
    # The base at its checkpoint precision (not the compute-dtype copy the trainer holds): the fold is
    # then base + delta in f32, the policy without any rounding (weights.save_hf).
    _, base = weights_lib.from_config(config, tokenizer, mesh)
    return model_config, model_lib.merge_lora(base, trained)


def generation_config(config: cfg_lib.Config, tokenizer, eos_ids: tuple[int, ...]) -> dict:
    """generation_config.json: model.path's own (its sampling defaults kept) with eos_token_id set to
    every id that ended a completion in the run, and the tokenizer's bos / pad ids."""
    out = {}
    if config.model.path:
        path = hub.resolve(config.model.path, key="model.path") / "generation_config.json"
        if path.is_file():
            out = json.loads(path.read_text())
    out["eos_token_id"] = list(eos_ids)
    if tokenizer.bos_token_id is not None:
        out["bos_token_id"] = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    out["pad_token_id"] = pad
    return out


def _save_tokenizer(tokenizer, directory: pathlib.Path) -> None:
    tokenizer.save_pretrained(directory)
    path = directory / "tokenizer_config.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    if data.get("tokenizer_class") == "TokenizersBackend":
        # transformers 5's name for "tokenizer.json as it is", unknown to transformers 4; both
        # versions read PreTrainedTokenizerFast so (in 5 it is an alias of TokenizersBackend).
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(data, indent=2) + "\n")


def auto_tokenizer_matches(tokenizer, directory: pathlib.Path) -> tuple[bool, str]:
    """(whether `AutoTokenizer.from_pretrained(directory)` encodes a probe text, every character of the
    built-in alphabet and the format tags included, as `tokenizer` does; what went wrong otherwise)."""
    import transformers

    probe = ("What is 47+39? Answer:\n" + "".join(tok_lib.FORMAT_TAGS) + " " + tok_lib.CHAR_ALPHABET
             + "  two  spaces\n\nand lines")
    try:
        loaded = transformers.AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001 -- reported, not fatal: the files are written as the run's
        return False, f"raises {type(e).__name__}: {e}"
    if loaded(probe)["input_ids"] == tokenizer(probe)["input_ids"]:
        return True, ""
    return False, f"builds a {type(loaded).__name__} that encodes text differently from the run's tokenizer"


def peft_base(model_path: str) -> tuple[str, str | None]:
    """(base_model_name_or_path, revision) for adapter_config.json: a local model.path made absolute
    (the run's may be relative to where it was launched), a Hub name as its repo id and revision."""
    if hub.is_hub_name(model_path):
        name = hub.parse(model_path)
        return (f"{name.repo_id}/{name.subpath}" if name.subpath else name.repo_id), name.revision
    return str(pathlib.Path(model_path).absolute()), None


def check_out(out: pathlib.Path, *, force: bool) -> None:
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        what = "is not empty" if out.is_dir() else "exists and is not a directory"
        raise ExportError(f"--out {str(out)!r} {what}: choose another directory, or pass --force to replace it")


def _move_into_place(tmp: pathlib.Path, out: pathlib.Path) -> None:
    """Renames the complete `tmp` to `out`; an existing `out` (--force) is moved aside first and
    removed only once `out` is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old) if old.is_dir() else old.unlink()


def export(workdir, out, *, step: int | None = None, adapter_only: bool = False, dtype: str = "float32",
           force: bool = False) -> dict:
    """Writes the run in `workdir` (its checkpoint `step`, default the latest) to `out` (module
    docstring); returns what was written: {out, step, kind, dtype, eos_ids, tokenizer ("char" or
    "saved"), auto_tokenizer_same, auto_tokenizer_problem, base_model (the adapters' base, or "")}."""
    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    # Every check before any model work, cheapest first.
    config = read_run_config(workdir)
    step = checkpoint_step(workdir, step)
    lora = config.model.lora_rank > 0
    if adapter_only and not lora:
        raise ExportError(f"--adapter-only: the run in {str(workdir)!r} is a full fine-tune (model.lora_rank = 0), "
                          "it has no adapters; drop --adapter-only to export the model")
    if adapter_only and not config.model.path:
        raise ExportError(f"--adapter-only: the run in {str(workdir)!r} has no model.path (its base is a seeded "
                          "random init), so there is no base model for PEFT to load the adapters onto; drop "
                          "--adapter-only to export the folded policy")
    if adapter_only and dtype != "float32":
        raise ExportError("--dtype bfloat16 with --adapter-only: adapters are written in float32 (they are small; "
                          "a bf16 copy would round the update)")
    check_out(out, force=force)

    tokenizer = tok_lib.from_config(config)
    char = not (config.model.tokenizer or config.model.path)  # the built-in character tokenizer
    eos_ids = tok_lib.eos_token_ids(tokenizer, config.model.path or None)  # as build.setup: the run's stops
    cpu = jax.devices("cpu")[:1]  # host memory, not the accelerator's: the weights go to disk next
    mesh = sharding.make_mesh(data=1, fsdp=1, devices=cpu)
    with jax.default_device(cpu[0]):
        model_config, params = restore_policy(config, workdir, step=step, tokenizer=tokenizer, mesh=mesh)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier export killed with this pid
        try:
            base_model, revision = peft_base(config.model.path) if adapter_only else ("", None)
            weights_lib.save_hf(tmp, model_config, params, adapter_only=adapter_only, base_model=base_model,
                                dtype=None if adapter_only else dtype)
            del params
            if revision:  # PEFT fetches the base at this revision
                adapter_config = json.loads((tmp / "adapter_config.json").read_text())
                (tmp / "adapter_config.json").write_text(json.dumps({**adapter_config, "revision": revision},
                                                                    indent=2) + "\n")
            _save_tokenizer(tokenizer, tmp)
            auto_same, auto_problem = auto_tokenizer_matches(tokenizer, tmp)
            (tmp / "generation_config.json").write_text(
                json.dumps(generation_config(config, tokenizer, eos_ids), indent=2) + "\n")
            _move_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    kind = "full" if not lora else "lora_adapters" if adapter_only else "lora_folded"
    return {"out": str(out), "step": step, "kind": kind, "dtype": "float32" if adapter_only else dtype,
            "eos_ids": eos_ids, "tokenizer": "char" if char else "saved", "auto_tokenizer_same": auto_same,
            "auto_tokenizer_problem": auto_problem, "base_model": base_model}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpo_jax.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the run's workdir (config.json + checkpoints/)")
    parser.add_argument("--out", required=True, help="the directory to write (must not exist, or be empty)")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint step (default: the latest)")
    parser.add_argument("--adapter-only", action="store_true",
                        help="LoRA runs: write PEFT adapters for model.path instead of the folded model")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="the dtype of the written weights (default float32: exact)")
    parser.add_argument("--force", action="store_true", help="replace an --out that exists and is not empty")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # --help: 0; a usage error: 2 (argparse printed why)
        return int(exit_.code or 0)
    platforms.skip_absent_tpu()  # no libtpu (and its stderr noise) on a machine without a TPU
    t0 = time.perf_counter()
    try:
        done = export(args.workdir, args.out, step=args.step, adapter_only=args.adapter_only, dtype=args.dtype,
                      force=args.force)
    except (ExportError, ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if done["kind"] == "lora_adapters" and str(done["base_model"]).endswith(".gguf"):
        print(f"note: the base is a GGUF file: load it with transformers.AutoModelForCausalLM.from_pretrained("
              f"its folder, gguf_file=its name), then peft.PeftModel.from_pretrained(base, {done['out']!r})",
              file=sys.stderr)
    if done["tokenizer"] == "char":
        print(f"note: the run has no model.path: {done['out']} holds the built-in character tokenizer as "
              "tokenizer.json (it has no chat template; the run used none)", file=sys.stderr)
    if not done["auto_tokenizer_same"]:
        print(f"note: transformers.AutoTokenizer.from_pretrained({done['out']!r}) {done['auto_tokenizer_problem']}; "
              f"load it with transformers.PreTrainedTokenizerFast.from_pretrained({done['out']!r}) or "
              f"grpo_jax.tokenizer.load_tokenizer({done['out']!r}), which read tokenizer.json as written",
              file=sys.stderr)
    print(f"RESULT out={done['out']} step={done['step']} kind={done['kind']} dtype={done['dtype']} "
          f"eos_ids={','.join(map(str, done['eos_ids']))} tokenizer={done['tokenizer']} "
          f"auto_tokenizer={'same' if done['auto_tokenizer_same'] else 'differs'} "
          f"seconds={time.perf_counter() - t0:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
