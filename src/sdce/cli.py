"""The `sdce` command line: one subcommand per pipeline stage.

Snakemake rules call these with explicit paths and `--params`, the JSON of the
config slice the stage uses; every slice is validated against the same schema
the Snakefile uses. Each subcommand also works on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sdce import config as cfg
from sdce import predecessor


def _params(args, pointer: str, where: str, base: dict | None = None) -> dict:
    try:
        raw = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as e:
        raise cfg.ConfigError(f"--params is not valid JSON: {e.msg}") from None
    return cfg.validate({**(base or {}), **raw}, pointer, where=where)


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def cmd_corpus(args) -> None:
    from sdce.data.corpus import build_corpus

    spec = _params(args, "properties/corpus", "corpus")
    stats = build_corpus(spec, args.out, args.stats, missing_split_ok=args.missing_split_ok)
    if "missing_split" in stats:
        print(f"corpus: warning: {stats['missing_split']}: no documents (split.validation_missing: split)")
        return
    print(
        f"corpus: {stats['documents']} documents, {stats['words']} words "
        f"from {len(stats['sources'])} source(s)"
    )


def cmd_split(args) -> None:
    from sdce.data.corpus import read_documents, write_documents
    from sdce.data.split import split_documents

    corpus, *evals = args.corpus
    if len(evals) > 1:
        raise ValueError(
            f"--corpus takes the corpus and at most one validation corpus, got {len(args.corpus)} files"
        )
    docs, spec = read_documents(corpus), _params(args, "properties/split", "split")
    validation = read_documents(evals[0]) if evals else None
    if validation == [] and spec["validation_missing"] == "split":
        print(
            f"split: warning: the validation corpus has no documents ({evals[0]}); "
            f"holding out split.validation_fraction={spec['validation_fraction']} of the corpus "
            f"(shuffle {spec['shuffle']}, seed {spec['seed']})"
        )
        validation = None
    train, val = split_documents(docs, spec, fold=args.fold, validation=validation)
    write_documents(args.train, train)
    write_documents(args.validation, val)
    print(f"split: {len(train)} train / {len(val)} validation documents")


def cmd_tokenizer(args) -> None:
    from sdce.data.corpus import read_documents
    from sdce.data.tokenizer import build_tokenizer

    spec = _params(args, "properties/tokenizer", "tokenizer")
    texts = (d["text"] for d in read_documents(args.train)) if spec["kind"] == "bpe" else ()
    tok = build_tokenizer(spec, texts, args.out)
    print(f"tokenizer: {len(tok)} types -> {args.out}")


def cmd_encode(args) -> None:
    from sdce.data.corpus import read_documents
    from sdce.data.shards import encode_documents
    from sdce.data.tokenizer import load_encoder

    tokenizer, docs = load_encoder(args.tokenizer), read_documents(args.input)
    t0 = time.perf_counter()
    meta = encode_documents(tokenizer, docs, args.out, args.tokenizer)
    dt = time.perf_counter() - t0
    print(
        f"encode: {meta['tokens']} tokens ({meta['dtype']}) in {dt:.2f}s "
        f"= {meta['tokens'] / dt:,.0f} tokens/s"
    )


def cmd_bigram(args) -> None:
    from sdce.data.shards import load_shard
    from sdce.teachers import bigram

    data, meta = load_shard(args.shard)
    info = bigram.build(
        data, meta["vocab_size"], _params(args, "properties/bigram", "bigram"), args.out, args.meta
    )
    print(
        f"bigram: {info['distinct_bigrams']} distinct bigrams, top-{info['top_k']} keeps "
        f"{info['mean_listed_mass']:.3f} of the mass on average"
    )


def cmd_teacher(args) -> None:
    from sdce.teachers.lm import describe_teacher

    spec = _params(args, "$defs/teacher", f"teachers.{args.name}")
    d = describe_teacher(spec, args.name, args.model, args.student_tokenizer, args.out)
    a = d["alignment"]
    print(
        f"teacher {args.name}: {d['model']}, {a['intersection']} shared tokens = "
        f"{a['teacher_coverage']:.1%} of the teacher's, {a['student_coverage']:.1%} of the student's"
    )


def cmd_cache_teacher(args) -> None:
    from sdce.data.tokenizer import load
    from sdce.teachers.cache import build_caches
    from sdce.teachers.lm import LMTeacher

    spec = _params(args, "$defs/teacher_cache", "teacher_cache")
    torch_threads(args.threads)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # the job's GPU (profiles/gpu)
    teacher = LMTeacher.from_descriptor(args.teacher, load(args.tokenizer), spec["signals"][0], device)
    for name, info in build_caches(teacher, args.shard, spec, args.out).items():
        print(
            f"cache-teacher {name}: {info['tokens']:,} tokens in {info['seconds']:.1f}s "
            f"= {info['tokens_per_s']:,.0f} tokens/s ({info['signals_per_pass']} signal(s) per pass), "
            f"{info['bytes_per_token']:.1f} bytes/token; aligned {info['aligned_fraction']:.1%}, "
            f"listed mass {info['mean_listed_mass']:.3f}, mapped mass {info['mean_mapped_mass']:.3f}"
        )


def cmd_train_job(args) -> None:
    from sdce.job import Inputs, Job, Placement, launch

    if args.config:  # a study config and one of its runs
        from sdce import plan

        run = plan.resolve_run(cfg.load(args.config), args.name)
        plan.check_run(run, f"runs.{args.name}")
    else:
        run = _params(
            args, "$defs/run", f"runs.{args.name}", base={"model": {}, "training": {}, "guidance": {}}
        )
    job = Job(
        run=run,
        name=args.name,
        seed=args.seed,
        fold=args.fold,
        inputs=Inputs(args.train_shard, args.val_shard, args.tokenizer, args.teacher),
        out=args.out,
        placement=Placement(
            processes=args.processes,
            threads=args.threads,
            backend=args.backend,
            launcher=args.launcher,
            checkpoint_uri=None if args.checkpoint_uri in (None, "", "none") else args.checkpoint_uri,
        ),
        resume=not args.no_resume,
        progress=not args.no_progress,
        stop_after=args.stop_after,
    )
    print(json.dumps(launch(job), sort_keys=True))


def _named_folders(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, folder = item.partition("=")
        if not sep:
            raise ValueError(f"--pairs expects NAME=FOLDER, got '{item}'")
        out[name] = folder
    return out


def cmd_evaluate(args) -> None:
    from sdce.evaluation.run import evaluate_milestones, evaluate_model
    from sdce.io import write_json
    from sdce.losses import CHUNK_TOKENS

    spec = _params(args, "properties/evaluation", "evaluation")
    torch_threads(args.threads)
    folders = _named_folders(args.pairs)
    measure = _measure(args.measure)
    chunk = CHUNK_TOKENS if args.chunk_tokens is None else args.chunk_tokens or None  # 0: all at once
    if args.milestones:
        found = evaluate_milestones(
            args.model, args.val_shard, args.block_size, spec, folders, measure, chunk_tokens=chunk
        )
        result = {"run": args.name, "fold": args.fold, "seed": args.seed, "milestones": found}
        print(f"evaluate: {len(found)} milestone(s) of {args.model}")
    else:
        result = evaluate_model(
            args.model, args.val_shard, args.block_size, spec, folders, measure, chunk_tokens=chunk
        )
        result.update({"run": args.name, "fold": args.fold, "seed": args.seed})
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, sort_keys=True))
    write_json(args.out, result)


def _measure(text: str) -> dict:
    from sdce.evaluation.validation import MEASURES

    try:
        measure = json.loads(text)
    except json.JSONDecodeError as e:
        raise cfg.ConfigError(f"--measure is not valid JSON: {e.msg}") from None
    if not isinstance(measure, dict) or measure.get("name") not in MEASURES:
        raise cfg.ConfigError(f"--measure: 'name' must be one of {', '.join(MEASURES)}, got {text}")
    return measure


def cmd_minimal_pairs(args) -> None:
    from sdce.data.synthetic import generate_minimal_pairs, write_minimal_pairs
    from sdce.io import atomic_dir

    spec = _params(args, "properties/evaluation", "evaluation")
    pairs = generate_minimal_pairs(spec["synthetic_pairs"], spec["synthetic_pairs_seed"])
    with atomic_dir(args.out) as tmp:
        write_minimal_pairs(tmp, pairs)
    print(f"minimal pairs: {sum(map(len, pairs.values()))} pairs in {len(pairs)} paradigms -> {args.out}")


def _sampling_spec(args, prompts: list[str] | None = None) -> dict:
    """The validated `generation` section: the schema's defaults, --params over them, the
    sampling flags (`_sampling_flags`) over both."""
    spec = _params(args, "properties/generation", "generation")
    flags = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
             "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}  # fmt: skip
    diffusion = {"steps": args.steps, "block_length": args.block_length, "remasking": args.remasking}
    spec.update({k: v for k, v in flags.items() if v is not None})
    spec["diffusion"].update({k: v for k, v in diffusion.items() if v is not None})
    if prompts is not None:
        spec["prompts"] = prompts
    return cfg.validate(spec, "properties/generation", where="generation")


def cmd_generate(args) -> None:
    """Sample from a trained model: the schema's `generation` section, --params over its
    defaults, the flags over both."""
    from sdce.generation import generate
    from sdce.io import write_text
    from sdce.model import load_model

    spec = _sampling_spec(args, args.prompt)
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model is not a saved model folder: {args.model}")
    torch_threads(args.threads)
    from transformers import AutoTokenizer

    model = load_model(args.model)
    records = generate(model, AutoTokenizer.from_pretrained(args.model), spec["prompts"], spec)
    text = "".join(json.dumps(r) + "\n" for r in records)
    if args.out:
        write_text(args.out, text)
    for r in records:
        print(
            f"{r['prompt']}{r['completion']}" if not args.out else f"{r['prompt']!r} -> {r['completion']!r}"
        )


def cmd_zero_shot(args) -> None:
    """Score a saved model on a zero-shot suite folder (or one task's folder) under a named
    protocol (sdce.evaluation.protocols), every subtask's score into --out."""
    from sdce.evaluation import protocols
    from sdce.io import write_json
    from sdce.model import load_model, saved_kind

    protocols.get(args.protocol)  # bad input fails before a model loads
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"--model is not a saved model folder (no config.json): {model_dir}")
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise FileNotFoundError(f"--model {model_dir} has no tokenizer (save it beside the model)")
    protocols.select(args.data, args.protocol, saved_kind(model_dir), args.task or None)
    if args.threads:
        torch_threads(args.threads)
    from transformers import AutoTokenizer

    model = load_model(model_dir).eval()
    result = protocols.zero_shot(
        model, AutoTokenizer.from_pretrained(str(model_dir)), args.data, args.protocol,
        tasks=args.task or None, max_items=args.max_items, batch_size=args.batch_size,
    )  # fmt: skip
    write_json(args.out, {"model": str(model_dir), "data": str(args.data), **result})
    for key, score in result["leaderboard"].items():
        print(f"{args.protocol} {key}: " + ("n/a" if score is None else f"{100 * score:.2f}"))
    for task, why in result["skipped"].items():
        print(f"skipped {task}: {why}")


def _stdin_lines():
    """The user's lines: with a prompt and line editing at a terminal, plain lines from a pipe."""
    if not sys.stdin.isatty():
        yield from sys.stdin
        return
    import readline  # noqa: F401  (input() gets line editing and history)

    while True:
        try:
            yield input("> ")
        except EOFError:
            print()
            return


def cmd_chat(args) -> None:
    """A conversation with a saved model in the terminal: each line a message, each reply
    `sdce generate` on the conversation so far (sdce.serve)."""
    from sdce.model import load_model
    from sdce.serve import chat_loop, is_model_dir

    spec = _sampling_spec(args)
    if not is_model_dir(Path(args.model)):
        raise FileNotFoundError(
            f"--model is not a saved model folder (config.json and tokenizer): {args.model}"
        )
    if args.threads:
        torch_threads(args.threads)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the terminal is the conversation
    model, tokenizer = load_model(args.model).eval(), AutoTokenizer.from_pretrained(args.model)
    if sys.stdin.isatty():
        print(f"sdce chat: {args.model} ({model.config.model_type}); /quit or Ctrl-D ends", file=sys.stderr)

    def say(text: str) -> None:
        print(text, flush=True)

    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    chat_loop(model, tokenizer, spec, _stdin_lines(), say, note)


def cmd_serve(args) -> int:
    """The chat page over a study's trained models (or one model folder)."""
    from sdce.serve import NO_GRADIO, build_app, find_models

    models = find_models(args.results)
    spec = _sampling_spec(args)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(NO_GRADIO, file=sys.stderr)
        return 2
    if args.threads:
        torch_threads(args.threads)
    print(f"sdce serve: {len(models)} model(s) from {args.results}: {', '.join(models)}", flush=True)
    build_app(models, spec).queue().launch(
        server_name=args.host, server_port=args.port, share=args.share == "true", inbrowser=False
    )
    return 0


def cmd_report(args) -> None:
    from sdce.report import build_report

    spec = _params(args, "properties/report", "report")
    finals = build_report(
        args.summaries,
        args.evals,
        args.baseline,
        args.out,
        spec["tail_fraction"],
        milestone_files=args.milestones,
        grid=json.loads(args.grid) if args.grid else None,
        benchmarks=args.benchmarks,
        sample_files=args.samples,
        ppo_files=args.ppo,
    )
    print(finals.to_string(index=False))


def cmd_check_config(args) -> None:
    from sdce.plan import plan

    study = cfg.load(args.config)
    runs = plan(study).runs
    print(f"{args.config}: valid ({len(runs)} runs x {len(study['seeds'])} random seeds)")


def cmd_run(args) -> int:
    """Check the study, then run it through Snakemake with this study as the whole config."""
    import subprocess
    from pathlib import Path

    from sdce import dag
    from sdce.plan import plan

    config = Path(args.config)
    if not config.is_file():
        raise FileNotFoundError(f"config file not found: {config}")
    plan(cfg.load(config))  # refused here, in one line, before Snakemake starts
    cmd = dag.command(config, profile=args.profile, cores=args.cores, args=args.snakemake_args)
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=dag.environment())


def cmd_config_docs(args) -> None:
    sys.stdout.write(cfg.describe())


def _stage_adder(sub):
    """`add(name, fn, help)`: a pipeline stage's subcommand, with the --params of its config slice."""

    def add(name, fn, help_):
        sp = sub.add_parser(name, help=f"[stage] {help_}", description=f"Pipeline stage: {help_}.")
        sp.set_defaults(fn=fn)
        sp.add_argument(
            "--params", help="JSON of the config slice this stage uses (schema defaults fill the rest)"
        )
        return sp

    return add


def _sampling_flags(sp) -> None:
    """The `generation` section's flags (generate, chat, serve), read by `_sampling_spec`."""
    sp.add_argument("--max-new-tokens", type=int)
    sp.add_argument("--temperature", type=float, help="0 = greedy")
    sp.add_argument("--top-k", type=int, help="0 = all tokens (causal models)")
    sp.add_argument("--top-p", type=float, help="nucleus mass (causal models)")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--steps", type=int, help="denoising steps (masked diffusion)")
    sp.add_argument("--block-length", type=int, help="semi-autoregressive block (masked diffusion)")
    sp.add_argument("--remasking", choices=["low_confidence", "random"], help="(masked diffusion)")
    sp.add_argument("--params", help="JSON of the generation section (schema defaults fill the rest)")


def _user_commands(sub) -> None:
    """The commands a user runs: a study, its check, the configuration reference."""
    sp = sub.add_parser(
        "run",
        help="run a study: check its config, then the whole DAG through Snakemake",
        description="Run the study CONFIG through Snakemake: CONFIG is the whole study (the default "
        "config/config.yaml is not merged in). Results go under results_dir in the current folder; "
        "a rerun does only what the changes affect. Arguments after -- go to snakemake.",
    )
    sp.set_defaults(fn=cmd_run)
    sp.add_argument("config", help="the study config (YAML)")
    sp.add_argument(
        "--profile", default="local", help="a folder of profiles/: local, gpu or tpu (default local)"
    )
    sp.add_argument("--cores", type=int, help="CPU cores Snakemake may use (default: all)")
    sp.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="-- then arguments for snakemake")

    sp = sub.add_parser(
        "check-config",
        help="check a study config: schema and cross-key checks, without running anything",
        description="Check CONFIG as Snakemake's parse does (the same schema and the same checks): "
        "prints 'valid' with the number of runs, or the first offending key in one line.",
    )
    sp.set_defaults(fn=cmd_check_config)
    sp.add_argument("config")

    sp = sub.add_parser(
        "generate",
        help="sample text from a trained model (causal or masked diffusion)",
        description="Continue each --prompt with a saved model: transformers' generate for a causal "
        "model, LLaDA's sampler for a masked-diffusion model. The same seed gives the same text.",
    )
    sp.set_defaults(fn=cmd_generate)
    sp.add_argument("--model", required=True, help="a saved model folder (its tokenizer beside it)")
    sp.add_argument("--prompt", action="append", help="a prompt (repeatable; default: the config's prompts)")
    _sampling_flags(sp)
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--out", help="write the samples as jsonl here")

    sp = sub.add_parser(
        "zero-shot",
        help="score a saved model on BabyLM zero-shot tasks under a named protocol",
        description="Score --model on --data (a suite folder in the official full_eval or fast_eval "
        "layout, or one task's folder) under --protocol: babylm2025 (the official BabyLM 2025 "
        "pipeline), lm_eval (lm-evaluation-harness's blimp task) or sdce (sdce's own). --out gets "
        "every task's and subtask's score (fractions), keyed as the protocol's tool names them.",
    )
    sp.set_defaults(fn=cmd_zero_shot)
    sp.add_argument("--model", required=True, help="a saved model folder (its tokenizer beside it)")
    sp.add_argument("--data", required=True, help="a suite folder or one task's folder")
    sp.add_argument("--protocol", required=True, help="babylm2025, lm_eval or sdce")
    sp.add_argument("--out", required=True, help="the scores as JSON")
    sp.add_argument("--task", action="append", help="only this task (repeatable; default: all found)")
    sp.add_argument("--max-items", type=int, help="at most N items per task, round-robin over subtasks")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--threads", type=int, help="CPU threads (default: torch's)")

    sp = sub.add_parser(
        "chat",
        help="talk to a trained model in the terminal",
        description="A conversation with a saved model: each line from stdin is a message, each reply "
        "is sdce generate on the conversation so far (docs/chat.md has the prompt format). The most "
        "recent turns that fit the model's positions are kept. Ends at end of input or /quit.",
    )
    sp.set_defaults(fn=cmd_chat)
    sp.add_argument("--model", required=True, help="a saved model folder (its tokenizer beside it)")
    _sampling_flags(sp)
    sp.add_argument("--threads", type=int, help="CPU threads (default: torch's)")

    sp = sub.add_parser(
        "serve",
        help="a web chat page over a study's trained models (Gradio)",
        description="Serve a chat page (Gradio's ChatInterface) with a picker over the trained models "
        "under RESULTS (runs/<run>/<fold>/seed<N>/model), or over one model folder, and the sampling "
        "controls, starting at the flags' values. Models load on first use. Needs the chat extra.",
    )
    sp.set_defaults(fn=cmd_serve)
    sp.add_argument("results", metavar="RESULTS", help="a study's results folder, or a saved model folder")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=7860)
    sp.add_argument("--share", choices=["true", "false"], default="false", help="a public gradio.live link")
    _sampling_flags(sp)
    sp.add_argument("--threads", type=int, help="CPU threads (default: torch's)")

    sp = sub.add_parser("config-docs", help="print the configuration reference (config/README.md)")
    sp.set_defaults(fn=cmd_config_docs)


def _data_stages(sub, add) -> None:
    """Corpus to token shards and bigram statistics."""
    sp = add("corpus", cmd_corpus, "load the corpus from its source")
    sp.add_argument("--out", required=True)
    sp.add_argument("--stats", required=True)
    sp.add_argument(
        "--missing-split-ok",
        action="store_true",
        help="a Hugging Face dataset without the split gives an empty corpus (split.validation_missing)",
    )

    sp = add("split", cmd_split, "seeded train/validation split")
    sp.add_argument(
        "--corpus",
        required=True,
        nargs="+",
        metavar="FILE",
        help="the corpus, then the documents of split.validation_corpus when one is set",
    )
    sp.add_argument("--fold", type=int, help="with split.folds: the held-out fold (0-based)")
    sp.add_argument("--train", required=True)
    sp.add_argument("--validation", required=True)

    sp = add("tokenizer", cmd_tokenizer, "train a byte-level BPE or load a tokenizer")
    sp.add_argument("--train", required=True, help="training documents (jsonl)")
    sp.add_argument("--out", required=True)

    sp = add("encode", cmd_encode, "encode documents to a token shard")
    sp.add_argument("--tokenizer", required=True)
    sp.add_argument("--input", required=True)
    sp.add_argument("--out", required=True)

    sp = add("bigram", cmd_bigram, "bigram statistics of the training shard")
    sp.add_argument("--shard", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--meta", required=True)


def _training_stages(sub, add) -> None:
    """Training: a study's run (the rules) and the predecessor scripts' front door."""
    sp = sub.add_parser(
        "train",
        help="train one model from a predecessor-style config and flags (docs/predecessor-configs.md)",
        description="Train one model from the predecessor trainer's YAML (sections model, surrogate, "
        "data, training, evaluation); flags override the file. Data, tokenizer and shards are "
        "prepared under output_dir and reused by the next run with the same inputs.",
    )
    sp.set_defaults(fn=predecessor.cmd_train)
    predecessor.add_arguments(sp)

    sp = add("train-job", cmd_train_job, "train one run of a study with one seed (the train rule's job)")
    sp.add_argument("--config", help="a study config whose run --name to train (instead of --params)")
    sp.add_argument("--name", required=True, help="run name")
    sp.add_argument("--seed", type=int, required=True)
    sp.add_argument("--fold", default="main", help="the data partition: main or fold<i> (report label)")
    sp.add_argument("--train-shard", required=True)
    sp.add_argument("--val-shard", required=True)
    sp.add_argument("--tokenizer", required=True)
    sp.add_argument(
        "--teacher", help="teacher artifact: bigram table, LM teacher cache folder or teacher.json (online)"
    )
    sp.add_argument("--out", required=True)
    sp.add_argument("--threads", type=int, default=1, help="CPU threads (the rule's threads)")
    sp.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--stop-after", type=int, help="stop after this step's checkpoint (simulates preemption)")
    sp.add_argument(
        "--processes", type=int, default=1, help="training processes here (DDP/FSDP); 0 = one per GPU"
    )
    sp.add_argument(
        "--backend",
        choices=["auto", "accelerate", "xla"],
        default="auto",
        help="accelerate (CPU/CUDA) or xla (TPU); auto = xla where PJRT_DEVICE is set",
    )
    sp.add_argument(
        "--checkpoint-uri", help="gs:// prefix for checkpoints, metrics and outputs ('none': local only)"
    )
    sp.add_argument(
        "--launcher",
        choices=["local", "tpu-pod"],
        default="local",
        help="local: train here; tpu-pod: submit to a TPU VM pod and wait (see sdce.tpu_pod)",
    )


def _teacher_stages(sub, add) -> None:
    """LM teachers: descriptor and cache."""
    sp = add(
        "teacher", cmd_teacher, "check an LM teacher against the student tokenizer, write its descriptor"
    )
    sp.add_argument("--name", required=True, help="teacher name (a key of teachers)")
    sp.add_argument("--model", required=True, help="the teacher model: a folder or a name")
    sp.add_argument("--student-tokenizer", required=True)
    sp.add_argument("--out", required=True, help="descriptor (teacher.json)")

    sp = add(
        "cache-teacher", cmd_cache_teacher, "run an LM teacher once over the training shard, store top-k"
    )
    sp.add_argument("--teacher", required=True, help="descriptor written by sdce teacher")
    sp.add_argument("--shard", required=True, help="training shard (student tokens)")
    sp.add_argument("--tokenizer", required=True, help="student tokenizer")
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--out", required=True, help="cache folder (one subfolder per signal)")


def _evaluation_stages(sub, add) -> None:
    """Evaluation and the report."""
    sp = add("evaluate", cmd_evaluate, "validation loss and perplexity of a model")
    sp.add_argument("--model", required=True)
    sp.add_argument("--val-shard", required=True)
    sp.add_argument("--block-size", type=int, required=True)
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--pairs", nargs="*", help="minimal-pair folders as NAME=FOLDER")
    sp.add_argument(
        "--measure",
        default='{"name": "next_token"}',
        help="JSON: the validation measure of the run's objective and its options "
        "(next_token; elbo with n_draws for masked diffusion; answer_elbo for its SFT)",
    )
    sp.add_argument(
        "--chunk-tokens",
        type=int,
        metavar="N",
        help="the validation loss over N tokens at a time (the run's training.loss_chunk_tokens; "
        "0 = all at once; default: the losses' default chunk)",
    )
    sp.add_argument(
        "--milestones", action="store_true", help="--model is a run folder: evaluate its milestones"
    )
    sp.add_argument("--name", required=True)
    sp.add_argument("--fold", default="main", help="the data partition (report label)")
    sp.add_argument("--seed", type=int, required=True)
    sp.add_argument("--out", required=True)

    sp = add("minimal-pairs", cmd_minimal_pairs, "minimal pairs generated from the embedded grammar")
    sp.add_argument("--out", required=True)

    sp = add("report", cmd_report, "tables and plots of a study")
    sp.add_argument("--summaries", nargs="+", required=True, help="runs' summary.json (metrics.jsonl beside)")
    sp.add_argument("--evals", nargs="+", required=True, help="evaluation JSON files")
    sp.add_argument("--milestones", nargs="*", default=[], help="milestone evaluation JSON files")
    sp.add_argument("--baseline", required=True)
    sp.add_argument("--grid", help="JSON {run: {base, axes}} of the study's grid expansion")
    sp.add_argument("--benchmarks", help="folder of Snakemake's benchmark files (<rule>/<job>.tsv)")
    sp.add_argument(
        "--samples", nargs="*", default=[], help="sdce generate outputs (<run>/<fold>/seedN.samples.jsonl)"
    )
    sp.add_argument("--ppo", nargs="*", default=[], help="sdce ppo outputs (<run>/ppo_metrics.jsonl)")
    sp.add_argument("--out", required=True)


def cmd_ppo(args) -> None:
    """PPO post-training of a saved causal student (sdce.ppo): the `ppo` section from
    --params, --reward/--reward-model over its reward; samples from --generation."""
    from sdce.ppo import check_policy, corpus_prompts, run_ppo

    check_policy(args.model)
    spec = _params(args, "properties/ppo", "ppo")
    spec["reward"].update({k: v for k, v in {"kind": args.reward, "path": args.reward_model}.items() if v})
    spec = cfg.validate(spec, "properties/ppo", where="ppo")
    try:
        generation = cfg.validate(json.loads(args.generation or "{}"), "properties/generation", "generation")
    except json.JSONDecodeError as e:
        raise cfg.ConfigError(f"--generation is not valid JSON: {e.msg}") from None
    prompts = spec["prompts"]
    if prompts["source"] == "generation":
        texts = generation["prompts"]
    elif not args.documents:
        raise ValueError("ppo.prompts.source is corpus: give --documents (the training documents, jsonl)")
    else:
        from sdce.data.corpus import read_documents

        docs = [d["text"] for d in read_documents(args.documents)]
        texts = corpus_prompts(docs, prompts["count"], prompts["words"])
    torch_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a job log, not a terminal
    summary = run_ppo(args.model, args.out, spec, spec["reward"], texts, generation)
    print(json.dumps(summary))


def _ppo_stage(sub, add) -> None:
    """Post-training: PPO on a trained student."""
    sp = add("ppo", cmd_ppo, "PPO post-training of a trained causal student (TRL's PPOTrainer)")
    sp.add_argument("--model", required=True, help="the trained student's model folder")
    sp.add_argument("--out", required=True, help="output folder: final/, ppo_metrics.jsonl, samples.jsonl")
    sp.add_argument("--reward", choices=["grammar", "classifier", "judge"], help="over ppo.reward.kind")
    sp.add_argument("--reward-model", help="the classifier's or judge's model folder (ppo.reward.path)")
    sp.add_argument("--documents", help="training documents (jsonl) for ppo.prompts.source corpus")
    sp.add_argument("--generation", help="JSON of the generation section (the before/after samples)")
    sp.add_argument("--threads", type=int, default=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sdce",
        description="Teacher-guided language-model pre-training: run a study, check its config, "
        "or train one model from a predecessor-style config.",
        epilog="Start with `sdce run config/config.yaml` (the default study) or `sdce check-config "
        "my_study.yaml`. The other commands are the pipeline's stages: the workflow's rules call them "
        "with the config slice they use (--params), and each also works on its own.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _user_commands(sub)
    add = _stage_adder(sub)
    for group in (_data_stages, _training_stages, _teacher_stages, _evaluation_stages, _ppo_stage):
        group(sub, add)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"sdce {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
