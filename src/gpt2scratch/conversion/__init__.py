"""Weight conversion: OpenAI TF checkpoints, transformers' GPT-2, and PyTorch checkpoints → this package."""
