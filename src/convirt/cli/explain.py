"""``convirt explain``: where in an image does each word of a text point?"""

from __future__ import annotations

import re
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="attention maps of each word (GLoRIA) or similarity Grad-CAM (other models) over an image",
        description="Writes OUT/NN_WORD.png (the image with the word's map overlaid) for each word of --text and each "
        "--phrase, OUT/grid.png with all of them, and OUT/explain.json + explain.md (labels, where each map peaks, the "
        "method used). A GLoRIA model answers with its word-to-region attention in the context of the whole text; "
        "other models with Grad-CAM of the cosine similarity between the image and each word or phrase.")
    p.add_argument("--model", required=True, help="a convirt model or run folder")
    p.add_argument("--image", required=True, type=Path, help="an image file (PNG, JPEG or DICOM)")
    p.add_argument("--text", required=True, help='the text whose words are explained, e.g. "small left pleural effusion"')
    p.add_argument("--phrase", dest="phrases", action="append", default=[], metavar="PHRASE",
                   help="also a map for this phrase (repeatable); GLoRIA: the mean of its words' maps")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=run)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40] or "word"


def run(args) -> int:
    import json

    import numpy as np

    from convirt.atomic import atomic_write_text
    from convirt.cli.corpus import load_text_model
    from convirt.data.images import load_image, to_tensor
    from convirt.evaluation.attention import explain, for_display
    from convirt.evaluation.plots import plot_saliency

    model = load_text_model(args.model)  # a run or model folder, with a text tower
    source = args.model
    image = model.preprocess(to_tensor(load_image(args.image)))[None]
    result = explain(model, image, args.text, args.phrases)
    shown = for_display(result["maps"])
    args.out.mkdir(parents=True, exist_ok=True)
    picture = image[0, 0].numpy()
    files = []
    for i, (label, heat) in enumerate(zip(result["labels"], shown)):
        path = args.out / f"{i:02d}_{_slug(label)}.png"
        plot_saliency([picture], heat[None], path, titles=[label], max_cols=1)
        files.append(path.name)
    plot_saliency([picture] * len(shown), shown, args.out / "grid.png", titles=result["labels"], max_cols=6)
    h, w = shown.shape[-2:]
    peaks = [dict(zip(("row", "col"), (int(v) for v in np.unravel_index(int(m.argmax()), (h, w))))) for m in result["maps"]]
    doc = {"model": str(source), "image": str(args.image), "method": result["method"], "input_size": [h, w],
           "maps": [{"label": lab, "file": f, "peak": p, "max_share": float(m.max())}
                    for lab, f, p, m in zip(result["labels"], files, peaks, result["maps"])]}
    atomic_write_text(args.out / "explain.json", json.dumps(doc, indent=1))
    lines = [f"# Where each word points ({result['method']})", "", f"Image `{args.image.name}`, model `{source}`.", "",
             "| word / phrase | peak (row, col) | file |", "|---|---|---|"]
    lines += [f"| {m['label']} | {m['peak']['row']}, {m['peak']['col']} | [{m['file']}]({m['file']}) |" for m in doc["maps"]]
    atomic_write_text(args.out / "explain.md", "\n".join(lines + ["", "![grid](grid.png)", ""]))
    print(f"wrote {len(files)} maps ({result['method']}) and grid.png to {args.out}")
    return 0
