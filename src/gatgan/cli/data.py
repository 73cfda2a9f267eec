"""`gatgan prepare`: images (or the embedded Fashion-MNIST) to the tokenizer moments a run trains on."""

from __future__ import annotations

import argparse

from .arguments import int_at_least, new_command, positive_int


def _prepare(args: argparse.Namespace) -> None:
    from ..data.inputs import DEFAULT_VAE, import_repa_layout, prepare_fashion_mnist, prepare_image_folder
    from ..data.prepare import PrepareOptions
    from ..data.repa_layout import is_repa_layout

    options = PrepareOptions(shard_size=args.shard_size, flip=args.flip, store_images=not args.no_images,
                             moments_dtype=args.moments_dtype, latent_norm=args.latent_norm, seed=args.seed,
                             teacher_features=args.teacher_features,
                             batch_size=args.batch_size, workers=args.workers, device=args.device)
    vae = dict(vae=args.vae, vae_subfolder=args.vae_subfolder, vae_config=args.vae_config)
    needs_vae = args.source is not None and (is_repa_layout(args.source) or (args.tokenizer or "sd_vae") == "sd_vae")
    if needs_vae and args.vae is None:  # a hub id would download: only when the user names one
        raise ValueError(f"--vae is required with --source: a local SD-VAE (e.g. `hf download {DEFAULT_VAE} "
                         f"--local-dir /models/sd-vae-ft-mse`, then --vae /models/sd-vae-ft-mse), or the hub id "
                         f"--vae {DEFAULT_VAE} to download it")
    if args.source is None:
        tokenizer = args.tokenizer or "small_vae"
        out = args.out or f"data/fmnist-{'vae' if tokenizer == 'small_vae' else 'pixels'}"
        prepare_fashion_mnist(out, tokenizer=tokenizer, root=args.root, tokenizer_steps=args.tokenizer_steps,
                              teacher=args.teacher or "ssl", teacher_steps=args.teacher_steps, options=options)
    elif args.out is None:
        raise ValueError("--out is required with --source")
    elif args.teacher == "ssl":
        raise ValueError("--teacher ssl trains on the embedded Fashion-MNIST only; for images pass a teacher such "
                         "as dinov2_vitb14:/path/dinov2_vitb14_pretrain.pth (see the README)")
    elif is_repa_layout(args.source):
        import_repa_layout(args.source, args.out, class_names_file=args.class_names, teacher=args.teacher,
                           options=options, **vae)
    else:
        prepare_image_folder(args.source, args.out, resolution=args.resolution, tokenizer=args.tokenizer or "sd_vae",
                             class_names_file=args.class_names, teacher=args.teacher, options=options, **vae)


def register_prepare(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan prepare`, whose options become PrepareOptions and the source-specific arguments."""
    prepare = new_command(
        commands, "prepare", _prepare,
        help="images -> tokenizer moments in shards (the embedded Fashion-MNIST by default)",
        description="Without --source: Fashion-MNIST through the built-in VAE (trained here). With --source: an "
                    "image folder (one sub-folder per class, or a dataset.json), a zip of one, or data in the "
                    "REPA layout (images/ + vae-sd/, imported as it is). Runs under torchrun (each rank takes "
                    "every world_size-th shard; the output must be on a shared file system), and re-running the "
                    "same command resumes an interrupted prepare.",
        example="torchrun --nproc_per_node 8 -m gatgan.cli prepare --source /data/imagenet/train "
               "--out data/imagenet256 --vae /models/sd-vae-ft-mse")
    prepare.add_argument("--source", help="image folder, zip, or REPA-layout directory (default: Fashion-MNIST)")
    prepare.add_argument("--out", help="output directory (default data/fmnist-vae or data/fmnist-pixels)")
    prepare.add_argument("--tokenizer", choices=["small_vae", "sd_vae", "identity"],
                         help="latent space: small_vae (built-in, Fashion-MNIST; default there), sd_vae (default "
                              "for images), or identity (pixels)")
    prepare.add_argument("--vae", help="SD-VAE (required with --source): a diffusers directory, a single weights "
                                       "file, or a hub id such as stabilityai/sd-vae-ft-mse (downloaded)")
    prepare.add_argument("--vae-subfolder", help="sub-folder of --vae holding the VAE (e.g. 'vae' of a pipeline)")
    prepare.add_argument("--vae-config", help="diffusers config (directory or hub id) for a single-file --vae")
    prepare.add_argument("--resolution", type=positive_int, default=256, help="centre-crop size, a power of two")
    prepare.add_argument("--class-names", help="class names: a JSON list or one name per line")
    prepare.add_argument("--flip", action="store_true", help="also store the moments of the mirrored images")
    prepare.add_argument("--no-images", action="store_true",
                         help="do not keep the cropped images (saves disk; the REPA loss needs them)")
    prepare.add_argument("--latent-norm", choices=["auto", "fixed", "per-channel"], default="auto",
                         help="auto: the VAE's published scaling (0.18215 for SD-VAE) if it has one, else "
                              "per-channel statistics measured on the data")
    prepare.add_argument("--moments-dtype", choices=["float32", "float16"], default="float32")
    prepare.add_argument("--shard-size", type=positive_int, default=5000, help="examples per shard")
    prepare.add_argument("--batch-size", type=positive_int, default=64, help="images per tokenizer call")
    prepare.add_argument("--workers", type=int_at_least(-1), default=-1,
                         help="decoding processes per rank (-1: spare cores)")
    prepare.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    prepare.add_argument("--root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX files")
    prepare.add_argument("--tokenizer-steps", type=positive_int, help="training steps of the small VAE")
    prepare.add_argument("--teacher",
                         help="a REPA teacher stored with the data (loss.repa.teacher=data): on Fashion-MNIST 'ssl' "
                              "(default) trains the self-supervised encoder, 'none' skips it; for images a spec "
                              "such as dinov2_vitb14:/path/dinov2_vitb14_pretrain.pth")
    prepare.add_argument("--teacher-features", action="store_true",
                         help="also store the teacher's features of every image and its mirror image "
                              "(loss.repa.precomputed=true then skips the teacher in training)")
    prepare.add_argument("--teacher-steps", type=positive_int, help="training steps of the SSL teacher")
    prepare.add_argument("--seed", type=int, default=0)
