"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI) against stored expected values.

The values were computed with endorm 0.1.0, torch 2.13.0 (CPU) and transformers 5.23 in float32; a
tolerance of 1e-2 absorbs CPU-kernel differences while catching any change to the method.
"""

import pytest

P = "What is the capital of France?"
TOL = 1e-2


def paper(rm):
    """The paper's formula as written (sum, gamma = 1): the values below were stored for it."""
    return rm.with_config(aggregation="sum", gamma=1.0, contrast="none")


def test_expected_scores(default_rm):
    default_rm = paper(default_rm)
    pairs = [
        (P, "The capital of France is Paris.", 24.3712),
        (P, "The capital of France is Berlin.", 14.7506),
        ("What is 12 + 30?", "12 + 30 = 42.", 27.1291),
        ("What is 12 + 30?", "12 + 30 = 52.", 20.2810),
    ]
    got = default_rm.score([p for p, _, _ in pairs], [r for _, r, _ in pairs])
    assert got == pytest.approx([s for _, _, s in pairs], abs=TOL)
    assert got[0] > got[1] and got[2] > got[3]  # the right answers win


def test_expected_token_rewards(default_rm):
    default_rm = paper(default_rm)
    tr = default_rm.token_rewards(P, "Paris.")
    assert tr.tokens == ["Paris", ".", "<|im_end|>"]
    assert tr.token_ids == [38634, 30, 2]
    assert tr.logprobs == pytest.approx([-4.1037, -6.6655, -4.6008], abs=TOL)
    assert tr.values == pytest.approx([27.2081, 25.2246, 15.7050], abs=TOL)
    assert tr.rewards == pytest.approx([-2.1202, 2.8542, 11.1042], abs=TOL)
    assert tr.total == pytest.approx(11.8381, abs=TOL)


def test_system_prompt_and_aggregations(default_rm):
    default_rm = paper(default_rm)
    pirate = "You are a pirate. Always answer like a pirate."
    assert default_rm.score([P], ["The capital of France is Paris."], systems=[pirate])[0] == pytest.approx(19.8051, abs=TOL)
    both = [P, P], ["The capital of France is Paris.", "The capital of France is Berlin."]
    assert default_rm.with_config(aggregation="mean").score(*both) == pytest.approx([3.0464, 1.8438], abs=TOL)
    assert default_rm.with_config(aggregation="logprob", gamma=0.93).score(*both) == pytest.approx(
        [-2.5045, -9.1863], abs=TOL
    )


def test_default_model_is_cached_verified(default_rm):
    """The verified GGUF and its dequantised safetensors copy are in the cache, so later loads skip
    dequantisation (load times are in benchmarks/, not asserted here)."""
    from endorm.models import DEFAULT_MODEL, get_spec
    from endorm.models.download import dequantised_dir, gguf_path, sha256_file

    spec = get_spec(DEFAULT_MODEL)
    assert (dequantised_dir(spec) / "model.safetensors").is_file()
    assert sha256_file(gguf_path(spec)) == spec.sha256


def test_expected_default_form(default_rm):
    """endorm's default form (discounted, gamma = 0.93, chosen by docs/RESULTS.md's pre-registered rule)."""
    c = default_rm.config
    assert (c.aggregation, c.gamma, c.contrast) == ("discounted", 0.93, "none")
    got = default_rm.score([P, P, "What is 12 + 30?", "What is 12 + 30?"],
                           ["The capital of France is Paris.", "The capital of France is Berlin.",
                            "12 + 30 = 42.", "12 + 30 = 52."])
    assert got == pytest.approx([16.8275, 10.2072, 14.0771, 10.4144], abs=TOL)
    tr = default_rm.token_rewards(P, "Paris.")
    assert tr.rewards == pytest.approx([-2.1202, 2.8542, 11.1042], abs=TOL)  # the token rewards do not change
    assert tr.total == pytest.approx(10.1382, abs=TOL)  # -2.1202 + 0.93 * 2.8542 + 0.93**2 * 11.1042
