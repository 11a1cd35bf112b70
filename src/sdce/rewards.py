"""Rewards of PPO post-training (`sdce.ppo`), as models in the interface TRL's PPO calls.

TRL's `PPOTrainer` takes the reward only as a model, and scores a batch of rollouts with
`trl.experimental.utils.get_reward(model, query_responses, pad_token_id, context_length)`:
it runs the backbone `getattr(model, model.base_model_prefix)` on the token ids (pad
positions masked out) with `output_hidden_states=True`, applies `model.score` to the last
hidden state, and reads the result at each row's last non-pad token. Three kinds
(`ppo.reward.kind`):

* `classifier`: a saved `AutoModelForSequenceClassification` with one label whose head is
  `score` (GPT-2, Llama, Mixtral, ... classifiers), used by TRL as it is. TRL feeds it the
  policy's token ids, so it must share the policy's vocabulary.
* `judge`: a causal LM asked `JUDGE_PROMPT` about the text (prompt and response); the reward
  is the log-probability of the answer " Yes", renormalised over " Yes" and " No"
  (log P(Yes | Yes or No), at most 0; each answer's tokens summed where the tokenizer splits
  it). The judge may have its own tokenizer.
* `grammar`: `sdce.data.synthetic.grammaticality` of the text, the fraction of the embedded
  grammar's agreement checks it passes (in [0, 1]); meaningful for the synthetic corpus.

The judge and the grammar score text, not token ids: `TextReward` wraps such a scorer in
exactly the interface above (a backbone returning one hidden state, the score broadcast over
the positions, and an identity `score` head)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

REWARD_KINDS = ("grammar", "classifier", "judge")
JUDGE_PROMPT = "Is the following text grammatical English? Answer Yes or No.\nText: {text}\nAnswer:"


Scorer = Callable[[list[str], list[bool]], Sequence[float]]  # (texts, ended) -> rewards


class _TextBackbone(nn.Module):
    def __init__(self, score_texts: Scorer, tokenizer):
        super().__init__()
        self.score_texts = score_texts
        self.tokenizer = tokenizer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_) -> SimpleNamespace:
        texts = [
            self.tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
            for ids, mask in zip(input_ids, attention_mask, strict=True)
        ]
        # responses are right-padded after their eos token (pad = eos): a row whose last
        # position is padding ended at eos rather than at the length limit
        ended = (attention_mask[:, -1] == 0).tolist()
        scores = self.score_texts(texts, ended)
        scores = torch.tensor(list(scores), dtype=torch.float32, device=input_ids.device)
        # (B, T, 1): get_reward reads position sequence_length of each row; every position holds its score
        return SimpleNamespace(hidden_states=(scores[:, None, None].expand(-1, input_ids.shape[1], 1),))


class TextReward(nn.Module):
    """A text scorer ((texts, ended) -> floats; `ended`: the text stopped at the eos token)
    as a reward model for TRL's PPO, which cannot take a callable: `backbone` decodes the
    policy's tokens and scores the texts, `score` is the identity."""

    base_model_prefix = "backbone"

    def __init__(self, score_texts: Scorer, tokenizer):
        super().__init__()
        self.backbone = _TextBackbone(score_texts, tokenizer)
        self.score = nn.Identity()


def grammar_scores(texts: list[str], ended: list[bool]) -> list[float]:
    """A text that stopped at the eos token ended its document: its last sentence must be complete."""
    from sdce.data.synthetic import grammaticality

    return [grammaticality(t, e) for t, e in zip(texts, ended, strict=True)]


class Judge(nn.Module):
    """A causal LM judging texts: log P(" Yes" | JUDGE_PROMPT, " Yes" or " No"). A module, so
    that moving the reward model to the trainer's device moves the judge with it."""

    def __init__(self, path: str, prompt: str = JUDGE_PROMPT):
        from transformers import AutoTokenizer

        from sdce.model import load_model, saved_kind

        super().__init__()
        _check_folder(path, "judge")
        if saved_kind(path) != "causal":
            raise ValueError(f"ppo.reward.path: judge {path} is not a causal LM (a masked-diffusion model)")
        self.model = load_model(path).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.prompt = prompt
        self.answers = [self.tokenizer(w, add_special_tokens=False)["input_ids"] for w in (" Yes", " No")]
        if not all(self.answers) or self.answers[0] == self.answers[1]:
            raise ValueError(f"ppo.reward.path: judge {path}'s tokenizer does not tell ' Yes' from ' No'")
        self.positions = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None
        )

    def _logp(self, question: list[int], answer: list[int]) -> torch.Tensor:
        """log P(answer | question), summed over the answer's tokens (a word may take several)."""
        ids = question + answer
        ids = ids[-self.positions :] if self.positions else ids  # the question's end is what it answers
        device = next(self.model.parameters()).device
        logp = self.model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].log_softmax(-1)
        targets = torch.tensor(ids[1:], device=device)
        return logp[-len(answer) :].gather(-1, targets[-len(answer) :, None]).sum()

    @torch.no_grad()
    def forward(self, texts: list[str], ended: list[bool] | None = None) -> list[float]:
        out = []
        for text in texts:
            question = self.tokenizer(self.prompt.format(text=text), add_special_tokens=False)["input_ids"]
            pair = torch.stack([self._logp(question, answer) for answer in self.answers])
            out.append((pair[0] - pair.logsumexp(0)).item())
        return out


def _check_folder(path: str | None, what: str) -> None:
    if not path:
        raise ValueError(f"ppo.reward.path: the {what} reward needs a model folder")
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"ppo.reward.path: {path} is not a saved model folder (no config.json)")


def load_classifier(path: str, tokenizer):
    """A saved sequence classifier as TRL's PPO reads it (one label, a `score` head, the
    policy's vocabulary); anything else is refused in one line naming what it is."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    _check_folder(path, "classifier")
    config = AutoConfig.from_pretrained(path)
    archs = list(config.architectures or [config.model_type])
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(
            f"ppo.reward.path: {path} is not a sequence classifier (architecture {', '.join(archs)}); "
            "the classifier reward needs an AutoModelForSequenceClassification model"
        )
    if config.num_labels != 1:
        raise ValueError(f"ppo.reward.path: classifier {path} has {config.num_labels} labels; a reward has 1")
    model = AutoModelForSequenceClassification.from_pretrained(path).eval().requires_grad_(False)
    if not isinstance(getattr(model, "score", None), nn.Module):
        raise ValueError(f"ppo.reward.path: {archs[0]} has no `score` head, which TRL's PPO reads")
    has_tokenizer = any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    if has_tokenizer and AutoTokenizer.from_pretrained(path).get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"ppo.reward.path: classifier {path} has another vocabulary than the policy's tokenizer "
            "(TRL's PPO scores the policy's token ids)"
        )
    return model


def build_reward(spec: dict, tokenizer) -> nn.Module:
    """The reward model of `ppo.reward` ({kind, path}) for a policy with `tokenizer`."""
    kind = spec["kind"]
    if kind == "grammar":
        return TextReward(grammar_scores, tokenizer)
    if kind == "judge":
        return TextReward(Judge(spec["path"]), tokenizer)
    if kind == "classifier":
        return load_classifier(spec["path"], tokenizer)
    raise ValueError(f"ppo.reward.kind: unknown kind '{kind}' (known: {', '.join(REWARD_KINDS)})")


@torch.no_grad()
def score_texts(reward_model: nn.Module, tokenizer, texts: list[str], ended: list[bool]) -> list[float]:
    """Each text's reward through the same calls as TRL's get_reward (backbone, `score`, the
    last real token), for samples outside PPO's rollouts; an ended text is followed by the
    eos token as padding, as in a rollout."""
    backbone = getattr(reward_model, reward_model.base_model_prefix)
    device = next(iter(reward_model.parameters()), torch.empty(0)).device
    out = []
    for text, end in zip(texts, ended, strict=True):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        mask = [1] * len(ids) + [0] * int(end or not ids)
        ids = torch.tensor([ids + [tokenizer.eos_token_id] * (len(mask) - len(ids))], device=device)
        mask = torch.tensor([mask], device=device)
        hidden = backbone(input_ids=ids, attention_mask=mask, return_dict=True, output_hidden_states=True)
        last = max(int(mask.sum()) - 1, 0)
        out.append(reward_model.score(hidden.hidden_states[-1])[0, last, 0].item())
    return out
