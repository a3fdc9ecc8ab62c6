"""The quality report's metrics against independent computations (torch's kl_div and cross_entropy), and the
report's rows in a real conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smt_convert.runtime.quality import kl_divergence, measure, token_nll


def _logits(rng, n=70, vocab=5000, scale=4.0):
    ref = (rng.normal(size=(n, vocab)) * scale).astype(np.float32)
    ours = (ref + rng.normal(size=ref.shape) * 0.3).astype(np.float32)
    return ours, ref


def test_kld_equals_torch_kl_div():
    ours, ref = _logits(np.random.default_rng(0))
    expected = torch.nn.functional.kl_div(torch.log_softmax(torch.from_numpy(ours).double(), -1),
                                          torch.log_softmax(torch.from_numpy(ref).double(), -1),
                                          reduction="none", log_target=True).sum(-1).numpy()
    got = kl_divergence(ours, ref)
    assert np.allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert np.all(kl_divergence(ref, ref) < 1e-12)


def test_nll_and_perplexity_equal_torch_cross_entropy():
    rng = np.random.default_rng(1)
    ours, ref = _logits(rng)
    n_prompt, continuation = 50, rng.integers(0, 5000, 20).tolist()
    rows = slice(n_prompt - 1, n_prompt - 1 + len(continuation))
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(ours[rows]).double(), torch.tensor(continuation),
                                                 reduction="none").numpy()
    assert np.allclose(token_nll(ours[rows], continuation), expected, rtol=1e-9)
    q = measure(ours, ref, n_prompt, continuation)
    assert q.positions == 70 and q.continuation_tokens == 20
    assert q.ppl == pytest.approx(float(np.exp(expected.mean())), rel=1e-9)
    kld = kl_divergence(ours, ref)
    assert q.kld_mean == pytest.approx(kld.mean()) and q.kld_p99 == pytest.approx(np.percentile(kld, 99))
    assert q.top1 == pytest.approx(np.mean(ours.argmax(-1) == ref.argmax(-1)))


def test_more_noise_more_divergence():
    rng = np.random.default_rng(2)
    ref = (rng.normal(size=(40, 3000)) * 4).astype(np.float32)
    means = [kl_divergence(ref + rng.normal(size=ref.shape).astype(np.float32) * s, ref).mean()
             for s in (0.01, 0.1, 1.0)]
    assert means[0] < means[1] < means[2]
