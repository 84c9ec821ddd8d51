"""``warmfed-plan``: what a run will send, synthesize and hold in memory, and the refusals it will meet, before anything
heavy runs: the generator's architecture on the 'meta' device (``generator``), the data's counts (``data_facts``), the
figures (``estimate``) and the command (``cli``)."""
