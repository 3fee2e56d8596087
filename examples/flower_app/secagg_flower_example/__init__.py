"""A Flower App whose only job is to aggregate small LoRA-shaped updates with SecAgg+."""
