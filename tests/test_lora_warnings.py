"""Third-party warnings of adapter loading: diffusers' 'No LoRA keys associated to CLIPTextModel' once per process."""

import logging

import torch

from warmfed_flwr.config.schema import LoraConfig
from warmfed_flwr.generative import adapters
from warmfed_flwr.generative.adapters import use_adapter
from warmfed_flwr.generative.lora import adapter_schema
from warmfed_flwr.generative.pipeline import load_pipeline

WARNING = "No LoRA keys associated to CLIPTextModel found"


def test_each_client_adapter_loads_with_the_text_encoder_warning_printed_once(tiny_pipeline_dir, caplog,
                                                                             monkeypatch):
    monkeypatch.setattr(adapters._ONCE, "seen", set())  # earlier tests in this process may have printed it already
    for name in adapters.LOADER_LOGGERS:  # diffusers' loggers do not propagate to the root logger caplog listens on
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])
    pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    schema = adapter_schema(pipe, LoraConfig())
    for client in ("client-a", "client-b", "client-c"):
        state = {key: 0.01 * torch.randn(shape, generator=generator) for key, (shape, _) in schema.items()}
        with use_adapter(pipe, state, client):
            pass
    assert len({id(record) for record in caplog.records if WARNING in record.getMessage()}) == 1
