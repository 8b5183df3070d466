"""Model files: generate from a model, convert a foreign checkpoint, export a checkpoint."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from dnalm.checkpoint import atomic_write_text
from dnalm.cli.base import UserError, arg, command
from dnalm.data.sequences import read_sequences
from dnalm.formats import FORMATS, detect_format, get_format, load
from dnalm.generation import GenerationError, generate
from dnalm.scaling.memory import check_model_memory
from dnalm.tokenizer import decode
from dnalm.train.checkpoint import export_checkpoint


@command(
    "generate",
    "Sample DNA after a prompt with constant-memory recurrent decoding and write FASTA.",
    arg("model", metavar="MODEL", help="preset name, checkpoint directory or run directory (anything dnalm.load accepts)"),
    arg("--prompt", action="append", default=[], metavar="SEQ",
        help="prompt bases (repeatable); '' starts from [BOS] alone"),
    arg("--prompt-file", default=None, metavar="FASTA", help="FASTA or GenBank file whose records are the prompts"),
    arg("--n-tokens", type=int, default=100, help="bases to generate per sample"),
    arg("--num-samples", type=int, default=1, help="continuations per prompt"),
    arg("--temperature", type=float, default=1.0, help="softmax temperature; 0 means greedy"),
    arg("--top-k", type=int, default=None, help="sample among the k most likely bases only"),
    arg("--top-p", type=float, default=None, help="nucleus sampling: the smallest set of bases with this probability"),
    arg("--seed", type=int, default=0, help="random seed: same seed, model and arguments give the same output"),
    arg("--alphabet", default="ACGT", help="letters that may be generated"),
    arg("--include-prompt", action="store_true", help="write prompt + continuation, not the continuation alone"),
    arg("--recompute", action="store_true", help="recompute the whole prefix for every token (slow; for checking)"),
    arg("--device", default="cpu", help="torch device, e.g. cpu or cuda"),
    arg("-o", "--out", default="-", output="file", help="FASTA file to write (atomically); '-' writes to stdout"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def generate_cmd(args: argparse.Namespace) -> int:
    """Sample continuations of each prompt and write them as FASTA records named
    <prompt>_<sample>, with the sampling settings in the description. The prompt is read once (prefill)
    and each new base costs one recurrent step whose memory does not grow with the length (Hyena
    layers keep FIR and modal states; attention layers a KV cache).

    Weights stored in bf16 (Evo 1 / Evo 2 as released) on a CPU without native bf16: converting each block to
    float32 for every new token would cost more than the token itself, so the whole model is converted to
    float32 once when that copy fits in the memory available (and back afterwards), and otherwise generates
    in bf16; the choice is printed. On CPUs with native bf16 (AVX512-BF16/AMX) it generates in bf16."""

    prompts = [(f"prompt{i}", p) for i, p in enumerate(args.prompt)]
    if args.prompt_file:
        prompts += [(r.name, decode(r.ids, r.lower)) for r in read_sequences(args.prompt_file)]
    if not prompts:
        raise UserError("give at least one --prompt SEQ or a --prompt-file FASTA")
    longest = max(len(p) for _, p in prompts) + max(args.n_tokens, 0) + 2
    check_model_memory(args.model, "dnalm generate", longest, len(prompts) * max(args.num_samples, 1))
    torch.manual_seed(args.seed)  # a preset is built with fresh weights: make those reproducible too
    model = load(args.model, device=args.device)
    start = time.perf_counter()
    try:
        seqs = generate(
            model, [p for _, p in prompts], args.n_tokens, args.temperature, args.top_k, args.top_p, args.seed,
            num_samples=args.num_samples, alphabet=args.alphabet, use_cache=not args.recompute,
            progress=not args.quiet,
        )  # fmt: skip
    except GenerationError as e:
        raise UserError(str(e)) from None
    seconds = time.perf_counter() - start
    if isinstance(seqs, str):
        seqs = [seqs]
    lines = []
    for i, (name, prompt) in enumerate(prompts):
        for j in range(args.num_samples):
            seq = seqs[i * args.num_samples + j]
            seq = prompt + seq if args.include_prompt else seq
            lines.append(
                f">{name}_{j} model={args.model} n_tokens={args.n_tokens} temperature={args.temperature} "
                f"top_k={args.top_k} top_p={args.top_p} seed={args.seed} prompt_len={len(prompt)}"
            )
            lines += [seq[k : k + 80] for k in range(0, len(seq), 80)] or [""]
    text = "\n".join(lines) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(args.out, text)
    n = len(seqs) * args.n_tokens
    print(f"generated {len(seqs)} sequence(s), {n:,} bases in {seconds:.1f} s"
          + ("" if args.out == "-" else f" -> {args.out}"), file=sys.stderr)  # fmt: skip
    return 0


@command(
    "convert",
    "Convert a downloaded foreign checkpoint (e.g. a HyenaDNA Hugging Face folder) into a native dnalm checkpoint.",
    arg("src", metavar="SRC", help="checkpoint folder in a registered format, e.g. a HyenaDNA -hf folder "
        "(config.json + pytorch_model.bin or model.safetensors)"),
    arg("--out", required=True, metavar="DST", output="dir",
        help="checkpoint directory to write (config.json + model.safetensors)"),
    arg("--lowercase", choices=["unk", "upper"], default="unk",
        help="lower-case bases: 'unk' maps them to [UNK] as the checkpoint's tokenizer does; 'upper' reads them as bases"),
    arg("--no-sep", action="store_true", help="do not append [SEP] to each sequence (the checkpoint's tokenizer does)"),
    arg("--force", action="store_true", help="replace DST if it exists"),
    arg("--no-verify", action="store_true", help="skip reloading DST and comparing its outputs with the import"),
)
def convert_cmd(args: argparse.Namespace) -> int:
    """Read a checkpoint in a registered foreign format (dnalm/formats/: a HyenaDNA Hugging Face causal LM or
    sequence classifier, ...) without its original code and without executing pickle code, and write it as
    config.json + model.safetensors, atomically. The tokenizer settings travel with it; by default they
    reproduce the checkpoint's token ids exactly."""
    src, dst = Path(args.src), Path(args.out)
    if not src.is_dir():
        raise UserError(f"{src}: no such directory")
    fmt = detect_format(src)
    if fmt is None or fmt.convert is None:
        known = "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values() if f.convert is not None)
        raise UserError(f"{src}: not a checkpoint folder in a format dnalm converts ({known})")
    if dst.exists() and not args.force:
        raise UserError(f"{dst} exists; choose another --out or pass --force to replace it")
    check_model_memory(src, "dnalm convert", 64, 1)
    model, diff = fmt.convert(src, dst, lowercase=args.lowercase, append_sep=not args.no_sep, verify=not args.no_verify)
    c = model.config
    kind = type(model).__name__
    print(f"wrote {dst}: {kind}, {sum(p.numel() for p in model.parameters()):,} parameters, n_layer {c.n_layer}, "
          f"d_model {c.d_model}, max length {c.max_len}; tokenizer {model.tokenizer.to_dict()}")
    if diff is not None:
        print(f"verified: reloaded outputs differ from the import by {diff:.3g} (max abs) on a 64-base probe")
    return 0


@command(
    "export",
    "Make config.json + model.safetensors from a (sharded) training checkpoint or a run directory, "
    "or write a model in a foreign format (--format).",
    arg("src", metavar="CHECKPOINT_OR_RUN", help="checkpoint directory (sharded or not) or run directory (newest checkpoint)"),
    arg("--out", required=True, metavar="DIR", output="dir", help="model directory to write (atomically)"),
    arg("--format", dest="fmt", default="dnalm",
        help="dnalm (config.json + model.safetensors) or a registered format that can be written, e.g. hyenadna-hf"),
    arg("--merge-lora", action="store_true",
        help="SRC is a LoRA adapter directory (dnalm finetune --mode lora, or RUN/adapter of dnalm train with "
        "train.lora): fold the adapters into the base weights and write a standalone model or classifier"),
    arg("--base", default=None, metavar="MODEL",
        help="with --merge-lora: the base model, when it is no longer where adapter.json says"),
    arg("--force", action="store_true", help="replace DIR if it exists"),
)
def export_cmd(args: argparse.Namespace) -> int:
    """With --merge-lora, SRC is a LoRA adapter: the adapters are folded into the base model's weights
    (W + alpha/r B A, computed in float32) and the result, a classifier or a language model that no longer
    needs the adapter or its base, is written and checked against the adapter model on a probe batch.
    Otherwise it runs in one process: the shards written by any number of ranks (torch.distributed.checkpoint) are
    read whole and saved as a single model.safetensors that dnalm.load, eval, score and the other
    commands open. With --format, the model is written in that layout instead (e.g. a HyenaDNA model as a
    Hugging Face -hf folder)."""
    if Path(args.out).exists() and not args.force:
        raise UserError(f"{args.out} exists; choose another --out or pass --force to replace it")
    if args.merge_lora:
        if args.fmt != "dnalm":
            raise UserError("--merge-lora writes a dnalm model; export the merged model with --format afterwards")
        print(merge_lora_command(args.src, args.out, base=args.base))
        return 0
    if args.base is not None:
        raise UserError("--base goes with --merge-lora")
    if args.fmt == "dnalm":
        src, out = export_checkpoint(args.src, args.out)
        print(f"exported {src} -> {out}/model.safetensors")
        return 0
    fmt = get_format(args.fmt)
    check_model_memory(args.src, "dnalm export", 1, 1, logits=False)
    if fmt.export is None:
        writable = ", ".join(["dnalm"] + [f.name for f in FORMATS.values() if f.export is not None])
        raise UserError(f"--format {args.fmt}: dnalm reads this format but does not write it (writable: {writable})")
    out = fmt.export(load(args.src), args.out)
    print(f"exported {args.src} -> {out} ({fmt.name})")
    return 0


def merge_lora_command(src: str | Path, out: str | Path, base: str | None = None) -> str:
    """``dnalm export --merge-lora``: adapter directory -> merged classifier or language model; the merged
    model's outputs are compared with the adapter model's on real bases (max abs difference reported)."""
    from dnalm.checkpoint import is_adapter_dir, read_adapter, save_pretrained
    from dnalm.eval.embed import batch_ids
    from dnalm.eval.finetune import load_classifier, save_classifier
    from dnalm.formats import load_adapter_model
    from dnalm.models.lora import merge_lora
    from dnalm.data.sequences import read_sequences
    from dnalm.data.store import default_genome

    if not is_adapter_dir(src):
        raise UserError(f"{src}: not a LoRA adapter directory (adapter.json + adapter.safetensors)")
    meta, _ = read_adapter(src)
    genome = next(iter(read_sequences(default_genome()[0]))).ids  # real bases: E. coli K-12 MG1655
    windows = [genome[1000:1064], genome[5000:5048]]
    if meta.get("kind") == "classifier":
        clf, classes = load_classifier(src, base=base)
        x, mask = batch_ids(clf.lm, windows)
        with torch.no_grad():
            before = clf(x, mask)
            merge_lora(clf.lm)
            diff = float((clf(x, mask) - before).abs().max())
        save_classifier(clf, out, classes, info={**meta.get("info", {}), "merged_from": str(src)})
        what = f"classifier ({len(classes)} classes)"
    else:
        model = load_adapter_model(src, base=base, merge=False)
        x, _ = batch_ids(model, windows)
        with torch.no_grad():
            before = model(x).logits
            merge_lora(model)
            diff = float((model(x).logits - before).abs().max())
        save_pretrained(model, out, {"merged_from": str(src)})
        what = "language model"
    return (f"merged {len(meta['adapted'])} adapted layers (rank {meta['lora']['rank']}) into the base "
            f"{base or meta['base_model']} -> {out} ({what}); outputs differ from the adapter model's by "
            f"{diff:.3g} (max abs) on a probe batch")
