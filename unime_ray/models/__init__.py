"""Loading multimodal checkpoints, building their inputs, embedding with them."""
