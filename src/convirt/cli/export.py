"""``convirt export``: turn a run's checkpoint or model folder into files other code can use."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a trained model (model folder, or the image encoder as a timm state dict)",
        description="Export a convirt model. --image-encoder writes a plain timm state dict (safetensors) that "
        "timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=PATH), in_chans=1) loads.",
    )
    p.add_argument("model", help="a model folder (convirt.load) or a run folder holding model/")
    p.add_argument("--out", required=True, help="output file (with --image-encoder) or folder")
    p.add_argument("--image-encoder", action="store_true", help="write only the image encoder as a timm state dict")
    p.set_defaults(func=run)


def run(args) -> int:
    import convirt

    source = Path(args.model)
    if (source / "model" / "config.json").exists():
        source = source / "model"
    model = convirt.load(source)
    if args.image_encoder:
        out = Path(args.out)
        if out.suffix != ".safetensors":
            out = out / "image_encoder.safetensors"
        path = model.export_image_encoder(out)
        print(f"wrote {path} (timm model {model.image_cfg.model!r}, in_chans={model.image_encoder.in_chans})")
    else:
        print(f"wrote {model.save(args.out)}")
    return 0
