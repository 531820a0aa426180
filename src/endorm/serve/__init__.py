"""The endorm reward server: ``endorm serve`` (needs the ``serve`` extra: fastapi, uvicorn)."""
