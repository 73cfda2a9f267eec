"""gatgan: Generative Adversarial Transformers (GAT), one-step class-conditional GANs built from
plain Vision Transformers and trained in a tokenizer's latent space."""

__version__ = "0.1.0"
