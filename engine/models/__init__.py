"""SAM-family model definitions (ViT and TinyViT encoders, prompt encoder, mask decoder) and registry."""
