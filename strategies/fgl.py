"""FGL (arXiv 2306.16064): class prompts only, server synthesis with the unadapted base, one-shot
training; its multi-round form runs FedAvg from there with optional server fine-tuning."""

from __future__ import annotations

from strategies.warmfed import WarmFedStrategy


class FGLStrategy(WarmFedStrategy):
    """WarmFed's round 0 without client adapters, and no synthetic fine-tuning on clients."""
