"""Fine-tuning and training: custom loops on datasets, PEFT and Accelerate."""
