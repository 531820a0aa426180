"""Serve the endogenous reward over HTTP (OpenRLHF /get_reward, /score, /health) with dynamic batching.

Binds 127.0.0.1 by default. To expose it, pass --host 0.0.0.0 and set an API key (--api-key or the
ENDORM_API_KEY environment variable, which keeps the key out of the process list).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields

from endorm.reward_model import RewardConfig
from endorm.serve.app import ServeSettings

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Config(ServeSettings, RewardConfig):
    model: str | None = field(
        default=None,
        metadata={"help": "registry name (endorm models), .gguf file, local HF dir or hub id; default SmolLM2-135M-Instruct"},
    )
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 | auto"})
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu, cuda, cuda:1"})
    host: str = field(default="127.0.0.1", metadata={"help": "interface to bind (default loopback only)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port)"})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level"})
    graceful_timeout_s: float = field(
        default=30.0,
        metadata={"help": "on SIGTERM/Ctrl-C, wait at most this long for in-flight requests, then close them"},
    )
    keep_alive_s: float = field(
        default=75.0,
        metadata={"help": "close an idle keep-alive connection after this long; keep it above your clients' idle "
                          "expiry (httpx: 5 s) so no client sends on a connection the server is closing"},
    )


def build(cfg: Config):
    """(app, settings) for a config: loads the model."""
    from endorm.reward_model import EndogenousRewardModel
    from endorm.serve.app import create_app

    reward = {f.name: getattr(cfg, f.name) for f in fields(RewardConfig)}
    settings = ServeSettings(**{f.name: getattr(cfg, f.name) for f in fields(ServeSettings)})
    if settings.api_key is None:
        settings.api_key = os.environ.get("ENDORM_API_KEY") or None
    rm = EndogenousRewardModel.from_pretrained(cfg.model, dtype=cfg.dtype, device=cfg.device, **reward)
    return create_app(rm, settings, model_name=cfg.model or "default"), settings


def run(cfg: Config) -> int:
    import uvicorn

    if cfg.graceful_timeout_s <= 0:
        raise ValueError("--graceful-timeout-s must be positive")
    if cfg.keep_alive_s <= 0:
        raise ValueError("--keep-alive-s must be positive")
    ServeSettings(**{f.name: getattr(cfg, f.name) for f in fields(ServeSettings)}).check()  # before the model loads
    app, settings = build(cfg)
    if cfg.host not in LOOPBACK and not settings.api_key:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model",
                    cfg.host)
    # uvicorn's graceful shutdown: stop accepting, let in-flight requests finish (the batcher keeps running),
    # cancel what is left after graceful_timeout_s (its clients see the connection close), then the
    # lifespan closes the batcher, which fails anything still pending with 503. Nothing waits forever.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, workers=1,
                timeout_graceful_shutdown=cfg.graceful_timeout_s,
                # uvicorn's default (5 s) equals httpx's idle expiry: a client reusing a connection at the moment
                # the server closes it gets a ReadError (1 request in 1,793 of the 10-minute soak)
                timeout_keep_alive=cfg.keep_alive_s)
    return 0
