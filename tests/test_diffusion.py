"""LLaDA masked diffusion (sdce.diffusion) against direct loops and hand computations."""

import math

import pytest
import torch

from sdce import diffusion as D

V = 6
MASK = V - 1


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def loop_loss(logits, ids, masked, p):
    """sum over masked tokens of -log softmax(logits)[x] / p, looped, in float64."""
    total = 0.0
    b, seq_len = ids.shape
    for i in range(b):
        for j in range(seq_len):
            if masked[i, j]:
                z = logits[i, j].double()
                logp = z[ids[i, j]] - torch.logsumexp(z, 0)
                total += -float(logp) / float(p[i, j])
    return total


def test_pretraining_loss_matches_loop():
    torch.manual_seed(0)
    ids = torch.randint(0, V - 1, (3, 7))
    t = torch.tensor([0.2, 0.5, 0.9])
    noisy, masked, p = D.forward_process(ids, MASK, gen(1), t=t)
    assert masked.any() and not masked.all()
    assert torch.equal(noisy, torch.where(masked, MASK, ids))
    logits = torch.randn(3, 7, V)
    got = D.pretraining_loss(logits, ids, masked, p)
    want = loop_loss(logits, ids, masked, p) / (3 * 7)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # a hand-fixed mask (not from the forward process) as well
    masked2 = torch.zeros(3, 7, dtype=torch.bool)
    masked2[0, 1] = masked2[2, 6] = True
    got2 = D.pretraining_loss(logits, ids, masked2, p)
    assert got2.item() == pytest.approx(loop_loss(logits, ids, masked2, p) / 21, rel=1e-5)


def test_p_exact_when_t_given():
    eps = 1e-3
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    _, _, p = D.forward_process(torch.zeros(4, 5, dtype=torch.long), MASK, gen(), eps=eps, t=t)
    assert p.shape == (4, 5)
    want = ((1 - eps) * t + eps)[:, None].expand(4, 5)
    assert torch.equal(p, want)
    with pytest.raises(ValueError, match="t must have shape"):
        D.forward_process(torch.zeros(4, 5, dtype=torch.long), MASK, gen(), t=torch.zeros(3))


def test_mask_rate_matches_p():
    b, seq_len = 2000, 50
    ids = torch.zeros(b, seq_len, dtype=torch.long)
    for t0 in (0.1, 0.5, 0.9):
        _, masked, p = D.forward_process(ids, MASK, gen(7), t=torch.full((b,), t0))
        n = b * seq_len
        p0 = float(p[0, 0])
        se = math.sqrt(p0 * (1 - p0) / n)
        assert abs(masked.float().mean().item() - p0) < 3 * se
    # t drawn: conditionally on the p's, the number masked has mean sum p, variance sum p (1 - p)
    _, masked, p = D.forward_process(ids, MASK, gen(8))
    p64 = p.double()
    assert p.min() >= 1e-3 and p.max() <= 1
    assert abs(masked.sum().item() - p64.sum().item()) < 3 * math.sqrt((p64 * (1 - p64)).sum().item())
    assert torch.all(p == p[:, :1])  # one t per sequence
    assert p[:, 0].std() > 0.2  # and t varies across sequences (U(0,1): sd 0.289)


def test_forward_process_deterministic_at_seed():
    ids = torch.randint(0, V - 1, (4, 9), generator=gen(3))
    a = D.forward_process(ids, MASK, gen(5))
    b = D.forward_process(ids, MASK, gen(5))
    c = D.forward_process(ids, MASK, gen(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])


def test_random_length():
    ids = torch.arange(40).reshape(2, 20)
    assert D.random_length(ids, gen(), probability=0.0) is ids
    lengths = set()
    for seed in range(200):
        out = D.random_length(ids, gen(seed), probability=1.0)
        n = out.shape[1]
        assert 1 <= n <= 20 and out.shape[0] == 2
        assert torch.equal(out, ids[:, :n])  # a crop of the prefix, for the whole batch
        lengths.add(n)
    assert min(lengths) == 1 and max(lengths) == 20  # uniform on [1, L], both ends reached
    cropped = sum(D.random_length(ids, gen(s)).shape[1] < 20 for s in range(2000))
    assert 5 <= cropped <= 40  # ~1 % of 2000 batches, cropped to < L with prob 19/20


def test_sft_never_masks_prompt():
    b, seq_len = 500, 12
    ids = torch.randint(0, V - 1, (b, seq_len), generator=gen(0))
    prompt_lengths = torch.randint(0, seq_len + 1, (b,), generator=gen(1))
    noisy, masked, p = D.sft_forward_process(ids, prompt_lengths, MASK, gen(2))
    pos = torch.arange(seq_len)[None, :]
    prompt = pos < prompt_lengths[:, None]
    assert not masked[prompt].any()
    assert torch.equal(noisy[prompt], ids[prompt])
    assert torch.equal(noisy, torch.where(masked, MASK, ids))
    assert masked[~prompt].float().mean() > 0.3  # the answers are masked (mean p ~ 0.5)
    # the answer masks are the pre-training masks at the same seed
    _, masked_pt, p_pt = D.forward_process(ids, MASK, gen(2))
    assert torch.equal(masked, masked_pt & ~prompt) and torch.equal(p, p_pt)
    with pytest.raises(ValueError, match="prompt_lengths"):
        D.sft_forward_process(ids, torch.full((b,), seq_len + 1), MASK, gen())


def test_sft_loss_hand_computation():
    # V = 3, logits (log 2, 0, 0): P(token 0) = 1/2, P(token 1) = 1/4 -> CE log 2 and log 4
    eos = 2
    ids = torch.tensor([[1, 0, 0, eos], [1, 1, 0, eos]])
    prompt_lengths = torch.tensor([1, 2])  # answer lengths 3 and 2 (the <EOS> counted)
    logits = torch.zeros(2, 4, 3)
    logits[..., 0] = math.log(2)
    masked = torch.tensor([[False, True, False, True], [False, False, True, True]])
    p = torch.tensor([[0.5] * 4, [0.25] * 4])
    # row 0: positions 1 (token 0, CE log 2) and 3 (eos, CE log 4), p 0.5, answer length 3
    # row 1: positions 2 (token 0, log 2) and 3 (eos, log 4), p 0.25, answer length 2
    row0 = (math.log(2) + math.log(4)) / 0.5 / 3
    row1 = (math.log(2) + math.log(4)) / 0.25 / 2
    want = (row0 + row1) / 2
    got = D.sft_loss(logits, ids, masked, p, prompt_lengths)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # not the pre-training normalisation (B L)
    assert D.pretraining_loss(logits, ids, masked, p).item() != pytest.approx(want, rel=1e-3)
    bad = masked.clone()
    bad[0, 0] = True
    with pytest.raises(ValueError, match="prompt"):
        D.sft_loss(logits, ids, bad, p, prompt_lengths)


def uniform_model(ids):
    return torch.zeros(*ids.shape, V, dtype=torch.float64)


def table_model(seed=0):
    """Logits depend on position only: a fixed random table, so CE varies with the masks."""
    table = torch.randn(64, V, generator=gen(seed), dtype=torch.float64)
    return lambda ids: table[: ids.shape[1]].expand(ids.shape[0], -1, -1)


def oracle_model(true_ids, margin=3.0):
    def fn(ids):
        logits = torch.zeros(*ids.shape, V, dtype=torch.float64)
        logits.scatter_(-1, true_ids[..., None], margin)
        return logits

    return fn


@pytest.mark.parametrize("method", ["exact_count", "bernoulli"])
def test_elbo_seeded_and_ordered(method):
    ids = torch.randint(0, V - 1, (3, 16), generator=gen(0))
    model = table_model()
    a = D.elbo(model, ids, MASK, n_draws=8, seed=1, method=method)
    b = D.elbo(model, ids, MASK, n_draws=8, seed=1, method=method)
    c = D.elbo(model, ids, MASK, n_draws=8, seed=2, method=method)
    assert a == b
    assert a != c
    good = D.elbo(oracle_model(ids), ids, MASK, n_draws=8, seed=1, method=method)
    uniform = D.elbo(uniform_model, ids, MASK, n_draws=8, seed=1, method=method)
    assert good < uniform


def test_elbo_uniform_is_log_v_and_draws_are_shared():
    ids = torch.randint(0, V - 1, (4, 10), generator=gen(0))
    assert D.elbo(uniform_model, ids, MASK, n_draws=5, seed=3) == pytest.approx(math.log(V), rel=1e-12)
    # bernoulli: log V only in expectation
    est = D.elbo(uniform_model, ids, MASK, n_draws=400, seed=3, method="bernoulli")
    assert est == pytest.approx(math.log(V), rel=0.15)

    seen = [[], []]

    def recorder(k):
        def fn(x):
            seen[k].append(x.clone())
            return uniform_model(x) if k == 0 else oracle_model(ids)(x)

        return fn

    D.elbo(recorder(0), ids, MASK, n_draws=6, seed=4)
    D.elbo(recorder(1), ids, MASK, n_draws=6, seed=4)
    assert len(seen[0]) == 6
    assert all(torch.equal(x, y) for x, y in zip(seen[0], seen[1], strict=True))  # same draws, any model
    counts = torch.stack([(x == MASK).sum(1) for x in seen[0]])  # (draws, B)
    assert counts.min() >= 1 and counts.max() <= 10
    assert len(set(counts[:, 0].tolist())) > 1  # k stratified over the draws


def test_num_transfer_tokens():
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :10] = True
    mask[1, :3] = True
    got = D.get_num_transfer_tokens(mask, 4)
    assert got.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]]


def favour7(ids):
    logits = torch.zeros(*ids.shape, 10)
    logits[..., 7] = 10.0
    return logits


def test_generate_never_commits_mask():
    def favour_mask(ids):
        logits = favour7(ids)
        logits[..., 9] = 20.0  # the mask id 9 is most likely of all: excluded, 7 is next
        return logits

    out = D.generate(favour_mask, torch.tensor([[1]]), 9, gen_length=4, steps=4, block_length=4)
    assert out[0].tolist() == [1, 7, 7, 7, 7]


def test_generate_fills_with_7_and_keeps_prompt():
    prompt = torch.tensor([[1, 2, 3]])
    mask = 9
    for temperature, remasking in ((0.0, "low_confidence"), (0.0, "random"), (0.5, "low_confidence")):
        out = D.generate(
            favour7,
            prompt,
            mask,
            gen_length=8,
            steps=4,
            block_length=4,
            temperature=temperature,
            remasking=remasking,
            generator=gen(0),
        )
        assert out.shape == (1, 11)
        assert torch.equal(out[:, :3], prompt)
        assert out[0, 3:].tolist() == [7] * 8


def test_generate_deterministic_at_seed():
    prompt = torch.tensor([[1, 2]])
    model = table_model(5)
    kw = dict(gen_length=12, steps=6, block_length=4, temperature=1.0)
    a = D.generate(model, prompt, MASK, generator=gen(11), **kw)
    b = D.generate(model, prompt, MASK, generator=gen(11), **kw)
    others = [D.generate(model, prompt, MASK, generator=gen(s), **kw) for s in range(12, 16)]
    assert torch.equal(a, b)
    assert any(not torch.equal(a, o) for o in others)
    assert not (a == MASK).any()


def test_generate_low_confidence_order_and_blocks():
    """Confidence rises with position: each step commits the rightmost masked token of the block."""
    prompt = torch.tensor([[0]])
    calls = []

    def model(ids):
        calls.append(ids.clone())
        logits = torch.zeros(*ids.shape, V)
        logits[..., 1] = torch.arange(ids.shape[1], dtype=torch.float32)  # sharper to the right
        return logits

    out = D.generate(model, prompt, MASK, gen_length=4, steps=4, block_length=2)
    assert out[0].tolist() == [0, 1, 1, 1, 1]
    m = MASK
    assert [c[0].tolist() for c in calls] == [
        [0, m, m, m, m],  # block 1 = positions 1-2; position 2 more confident
        [0, m, 1, m, m],
        [0, 1, 1, m, m],  # block 2: position 4 first, block 1 was filled before
        [0, 1, 1, m, 1],
    ]


def test_generate_bad_arguments():
    prompt = torch.tensor([[1]])
    with pytest.raises(ValueError, match="divisible by block_length"):
        D.generate(favour7, prompt, 9, gen_length=10, steps=10, block_length=4)
    with pytest.raises(ValueError, match="number of blocks"):
        D.generate(favour7, prompt, 9, gen_length=8, steps=3, block_length=4)
    with pytest.raises(ValueError, match="Generator"):
        D.generate(favour7, prompt, 9, gen_length=8, steps=2, block_length=4, temperature=1.0)
    with pytest.raises(ValueError, match="remasking"):
        D.generate(favour7, prompt, 9, gen_length=8, steps=2, block_length=4, remasking="topk")


def test_elbo_over_scored_positions_is_the_conditional_bound():
    """With `scored` (the answer after a clean prompt): only scored positions are ever
    masked, exactly k in 1..n_b per row and draw, p = k / n_b; the sum equals a direct
    recomputation of sum CE / p over the recorded draws divided by the scored count; the
    logits at unscored positions do not matter; uniform logits give exactly log V."""
    ids = torch.randint(0, V - 1, (4, 12), generator=gen(0))
    pos = torch.arange(12)[None, :]
    start = torch.tensor([3, 0, 7, 12])[:, None]  # the last row has nothing to score
    scored = (pos >= start) & (pos < torch.tensor([10, 12, 9, 12])[:, None])
    n = scored.sum(1)
    assert D.elbo(uniform_model, ids, MASK, n_draws=5, seed=3, scored=scored) == pytest.approx(
        math.log(V), rel=1e-12
    )
    weights = torch.randn(V, V, generator=gen(5))
    seen = []

    def model(x):
        seen.append(x.clone())
        return weights[x] * 2.0

    nats, tokens = D.elbo_sums(model, ids, MASK, n_draws=6, seed=4, scored=scored)
    assert tokens == int(n.sum())
    want = 0.0
    for x in seen:
        masked = x == MASK
        assert not (masked & ~scored).any()
        k = masked.sum(1)
        assert torch.all((k >= 1) & (k <= n) | (n == 0))
        p = (k.double() / n.clamp(min=1))[:, None].expand(4, 12)
        want += loop_loss(weights[x] * 2.0, ids, masked, p)
    assert nats == pytest.approx(want / 6, rel=1e-12)
    assert len({int((x[0] == MASK).sum()) for x in seen}) > 1  # k stratified over the draws

    def garbage_outside(x):  # other logits where nothing is scored: the same bound
        z = weights[x] * 2.0
        return torch.where(scored[..., None], z, torch.randn(z.shape, generator=gen(9)) * 50)

    again = D.elbo_sums(garbage_outside, ids, MASK, n_draws=6, seed=4, scored=scored)
    assert again == (pytest.approx(nats, rel=1e-12), tokens)
    bern = D.elbo_sums(model, ids, MASK, n_draws=3, seed=4, scored=scored, method="bernoulli")
    assert bern[1] == tokens and all(not ((x == MASK) & ~scored).any() for x in seen[-3:])
    with pytest.raises(ValueError, match="covers no token"):
        D.elbo(uniform_model, ids, MASK, n_draws=2, seed=0, scored=torch.zeros_like(scored))
