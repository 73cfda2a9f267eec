"""gatgan: Generative Adversarial Transformers (GAT), one-step class-conditional GANs built from
plain Vision Transformers and trained in a tokenizer's latent space."""

__version__ = "0.1.0"

__all__ = ["GAT"]


def __getattr__(name: str) -> object:
    """`from gatgan import GAT`, imported on first use: the command line imports this package too,
    and should not pay for torch before it parses its arguments."""
    if name == "GAT":
        from .pretrained import GAT

        return GAT
    raise AttributeError(f"module 'gatgan' has no attribute {name!r}")
