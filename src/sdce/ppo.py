"""PPO post-training of a trained causal student (`sdce ppo`, the DAG's `ppo` rule).

The algorithm is TRL's maintained `PPOTrainer` (`trl.experimental.ppo`, TRL 1.10 to 1.12;
TRL 1.13 removed it, hence the pin in pyproject). Its four models here:

* policy: the student (`sdce.model.load_model`); a masked-diffusion student is refused, and
  so is a MoE-P one (no value model: see `select_runs`);
* reference: a second, frozen load of the same folder (the KL penalty's anchor);
* value model: the student's weights under transformers' sequence-classification class of
  its architecture (`AutoModelForSequenceClassification`, one label): TRL reads its backbone
  and its `score` head, a fresh scalar head seeded by `ppo.seed`;
* reward: `sdce.rewards.build_reward` (grammar, classifier or judge).

Each PPO step samples `batch_size` responses of at most `response_length` tokens to prompts
(prefixes of training documents or `generation.prompts`), scores them, and runs `ppo_epochs`
optimizer steps. A response ends at the eos token (TRL's stop_token "eos"). The outputs, in
`out_dir` (written together, atomically):

    final/             the trained policy and its tokenizer (save_pretrained)
    ppo_metrics.jsonl  one record per step: reward, kl, response_length, ... (TRL_METRICS)
    samples.jsonl      `sdce.generation.generate` before and after PPO: the same prompts and
                       seed (`generation`), each sample with its reward
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from pathlib import Path

import torch

# TRL's per-step log -> the names of ppo_metrics.jsonl; response_length is measured here
# (TRL does not log it): the response tokens before the eos token, batch mean
TRL_METRICS = {
    "objective/scores": "reward",
    "objective/kl": "kl",
    "objective/entropy": "entropy",
    "objective/non_score_reward": "kl_penalty",
    "objective/rlhf_reward": "total_reward",
    "loss/policy_avg": "policy_loss",
    "loss/value_avg": "value_loss",
    "policy/approxkl_avg": "approx_kl",
    "policy/clipfrac_avg": "clip_fraction",
    "lr": "lr",
    "episode": "episodes",
}


def check_spec(spec: dict) -> None:
    """The checks across keys of the (validated) `ppo` section, in one line each."""
    if spec["batch_size"] % spec["mini_batch_size"]:
        mini, batch = spec["mini_batch_size"], spec["batch_size"]
        raise ValueError(f"ppo.mini_batch_size: {mini} does not divide ppo.batch_size={batch}")
    kind, path = spec["reward"]["kind"], spec["reward"]["path"]
    if kind in ("classifier", "judge") and not path:
        raise ValueError(f"ppo.reward.path: the {kind} reward needs a model folder")
    if kind == "grammar" and path:
        raise ValueError("ppo.reward.path: the grammar reward takes no model (unset the path)")


def check_policy(path: str | Path) -> None:
    from sdce.model import saved_kind

    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"--model is not a saved model folder: {path}")
    if saved_kind(path) != "causal":
        raise ValueError(
            f"{path} is a masked-diffusion (bidirectional) model; PPO post-trains causal students"
        )


def select_runs(spec: dict, runs: dict) -> list[str]:
    """The runs that get a PPO stage: `ppo.runs`, or every causal run whose family has a
    value model (their first fold and seed; `runs` are the study's resolved runs). MoE-P
    has none: TRL's PPO needs an `AutoModelForSequenceClassification` of the policy's
    architecture, and transformers has no such class for model type moep."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    from sdce.model import family_of

    causal = [name for name, run in runs.items() if family_of(run["model"]).kind == "causal"]
    no_value = {
        n for n in causal if runs[n]["model"]["family"] not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    }
    if spec["runs"] is None:
        return [name for name in causal if name not in no_value]
    for name in spec["runs"]:
        if name not in runs:
            raise ValueError(f"ppo.runs: '{name}' is not a run of the study (runs: {', '.join(runs)})")
        if name not in causal:
            raise ValueError(
                f"ppo.runs: '{name}' trains a masked-diffusion model; PPO post-trains causal runs"
            )
        if name in no_value:
            raise ValueError(
                f"ppo.runs: '{name}' trains a {runs[name]['model']['family']} model, which has no "
                "AutoModelForSequenceClassification class for PPO's value model"
            )
    return list(spec["runs"])


def corpus_prompts(texts: list[str], count: int, words: int) -> list[str]:
    """The first `words` words of documents, distinct, in corpus order, at most `count`."""
    out: list[str] = []
    for text in texts:
        prompt = " ".join(text.split()[:words])
        if prompt and prompt not in out:
            out.append(prompt)
        if len(out) == count:
            break
    return out


class _Recorder:
    """TRL's per-step log (a TrainerCallback's on_log) mapped to TRL_METRICS, with the mean
    response length the reward backbone's forward pre-hook saw since the last step."""

    def __init__(self, reward_model, context_length: int):
        from transformers import TrainerCallback

        self.records: list[dict] = []
        self.lengths: list[float] = []
        self.start = time.perf_counter()
        backbone = getattr(reward_model, reward_model.base_model_prefix)
        backbone.register_forward_pre_hook(self._measure, with_kwargs=True)
        self.context_length = context_length
        recorder = self

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                recorder.log(state.global_step, logs or {})

        self.callback = Callback()

    def _measure(self, module, args, kwargs):
        # queries are left-padded to one width, so a response starts at context_length; TRL
        # replaces what follows the eos token with pads, which the mask leaves out
        mask = kwargs["attention_mask"][:, self.context_length :]
        self.lengths.append(mask.sum(1).float().mean().item())

    def log(self, step: int, logs: dict) -> None:
        record = {"step": step, **{name: logs[key] for key, name in TRL_METRICS.items() if key in logs}}
        record["response_length"] = sum(self.lengths) / len(self.lengths) if self.lengths else None
        record["seconds"] = round(time.perf_counter() - self.start, 3)
        self.lengths = []
        self.records.append(record)


def _models(policy_path: str, seed: int):
    """Policy, frozen reference and value model (the policy's weights, a scalar head)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from sdce.model import load_model

    policy = load_model(policy_path)
    reference = load_model(policy_path).eval().requires_grad_(False)
    torch.manual_seed(seed)  # the value model's fresh head
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report names the missing head, which is new on purpose
    try:
        value = AutoModelForSequenceClassification.from_pretrained(policy_path, num_labels=1)
    except ValueError:
        kind = policy.config.model_type
        raise ValueError(
            f"model type {kind} has no sequence-classification class for PPO's value model"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return policy, reference, value


def _dataset(tokenizer, prompts: list[str], positions: int | None, response_length: int):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    # an empty prompt would be the eos token alone, which TRL reads as padding (pad = eos)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts if p]
    ids = [x for x in ids if x]
    if not ids:
        raise ValueError("ppo: no prompts (ppo.prompts gave no non-empty prompt)")
    width = max(map(len, ids))
    if positions and width + response_length > positions:
        raise ValueError(
            f"ppo.response_length: {width} prompt + {response_length} response tokens exceed the "
            f"policy's {positions} positions"
        )
    # every query padded to one width: TRL's responses then start at the same column
    collator = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=width)
    return Dataset.from_dict({"input_ids": ids}), collator, width


def _config(spec: dict, output_dir: str):
    from trl.experimental.ppo import PPOConfig

    return PPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=spec["mini_batch_size"],
        # TRL's rollout batch is per_device x accumulation: one optimizer step per PPO epoch
        gradient_accumulation_steps=spec["batch_size"] // spec["mini_batch_size"],
        num_mini_batches=1,
        total_episodes=spec["steps"] * spec["batch_size"],
        num_ppo_epochs=spec["ppo_epochs"],
        learning_rate=spec["learning_rate"],
        kl_coef=spec["kl_coef"],
        response_length=spec["response_length"],
        temperature=spec["temperature"],
        stop_token="eos",
        seed=spec["seed"],
        local_rollout_forward_batch_size=spec["batch_size"],
        num_sample_generations=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        # small students: full precision everywhere, so CPU and GPU runs read the same
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        per_device_eval_batch_size=1,
    )


def _samples(model, tokenizer, reward_model, generation: dict, stage: str) -> list[dict]:
    from sdce.generation import generate
    from sdce.rewards import score_texts

    records = generate(model, tokenizer, generation["prompts"], generation)
    texts = [r["prompt"] + r["completion"] for r in records]
    # a sample shorter than max_new_tokens stopped at the eos token: its document ended
    ended = [r["completion_tokens"] < generation["max_new_tokens"] for r in records]
    rewards = score_texts(reward_model, tokenizer, texts, ended)
    return [{"stage": stage, **r, "reward": s} for r, s in zip(records, rewards, strict=True)]


def run_ppo(policy_path, out_dir, spec: dict, reward: dict, prompts: list[str], generation: dict) -> dict:
    """PPO of the student at `policy_path` under `spec` (the validated `ppo` section) with
    `reward` ({kind, path}), on `prompts`; samples before and after from `generation` (the
    validated `generation` section). Writes out_dir (see the module docstring); returns a
    summary: steps, seconds, steps_per_second, first and last step's mean reward."""
    spec = {**spec, "reward": reward}
    check_spec(spec)
    check_policy(policy_path)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # jobs have no network to report to
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # its API is pinned in pyproject
    from transformers import AutoTokenizer
    from trl.experimental.ppo import PPOTrainer

    from sdce.io import atomic_dir, write_text
    from sdce.rewards import build_reward

    tokenizer = AutoTokenizer.from_pretrained(str(policy_path))
    tokenizer.padding_side = "left"  # TRL's PPO appends responses to left-padded queries
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    reward_model = build_reward(reward, tokenizer)  # first: a refused reward model costs no loading
    policy, reference, value = _models(str(policy_path), spec["seed"])
    value.config.pad_token_id = tokenizer.pad_token_id
    positions = getattr(policy.config, "n_positions", None) or getattr(
        policy.config, "max_position_embeddings", None
    )
    dataset, collator, width = _dataset(tokenizer, prompts, positions, spec["response_length"])
    before = _samples(policy, tokenizer, reward_model, generation, "before")
    recorder = _Recorder(reward_model, width)
    with atomic_dir(out_dir) as tmp:
        trainer = PPOTrainer(
            args=_config(spec, str(tmp / "trl")),
            processing_class=tokenizer,
            model=policy,
            ref_model=reference,
            reward_model=reward_model,
            train_dataset=dataset,
            value_model=value,
            data_collator=collator,
            eval_dataset=dataset,
            callbacks=[recorder.callback],
        )
        start = time.perf_counter()
        # TRL runs gc.collect() twice per step; with the libraries' objects frozen out of the
        # collector's generations each pass scans only what the step made (~0.4 s -> ms here)
        gc.freeze()
        try:
            trainer.train()
        finally:
            gc.unfreeze()
        seconds = time.perf_counter() - start
        shutil.rmtree(tmp / "trl", ignore_errors=True)
        after = _samples(policy, tokenizer, reward_model, generation, "after")
        policy.save_pretrained(str(tmp / "final"))
        AutoTokenizer.from_pretrained(str(policy_path)).save_pretrained(str(tmp / "final"))  # as it was saved
        write_text(tmp / "ppo_metrics.jsonl", "".join(json.dumps(r) + "\n" for r in recorder.records))
        write_text(tmp / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in before + after))
    rewards = [r["reward"] for r in recorder.records]
    return {
        "steps": len(recorder.records),
        "seconds": round(seconds, 3),
        "steps_per_second": len(recorder.records) / seconds if seconds else None,
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
        "samples_reward_before": sum(r["reward"] for r in before) / max(len(before), 1),
        "samples_reward_after": sum(r["reward"] for r in after) / max(len(after), 1),
    }
