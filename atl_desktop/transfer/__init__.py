"""Transfer learning: freezing, layer-wise rates, methods and the fine-tuning loop."""
