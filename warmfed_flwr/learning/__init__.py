"""The classifier and how it learns: the model factory (``models``) and plain training, fine-tuning and evaluation
over tensor datasets (``training``)."""
