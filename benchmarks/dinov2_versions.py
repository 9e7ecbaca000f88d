"""DINOv2 features under different transformers versions: run `encode` once per installed version, then `compare`.

    python benchmarks/dinov2_versions.py write-model DIR            # DINOv2-base shape, 518 px table, random weights
    python benchmarks/dinov2_versions.py encode DIR OUT.pt           # imagpose.image_encoder on one 224 px input
    python benchmarks/dinov2_versions.py compare A.pt B.pt           # mean relative and max absolute difference

The model has DINOv2-base's shapes (768 wide, 12 layers, 37x37 position table for 518 px) and random weights with
a smooth position table (like a trained one: neighbouring positions similar), saved as a transformers folder.
`encode` needs only torch, transformers, safetensors and this repository, so it runs in a throwaway venv with
another transformers (README, "DINOv2 across transformers versions").
"""
import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

BASE = {"model_type": "dinov2", "architectures": ["Dinov2Model"], "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "mlp_ratio": 4, "image_size": 518, "patch_size": 14, "layerscale_value": 1.0,
        "layer_norm_eps": 1e-6, "qkv_bias": True, "use_swiglu_ffn": False}


def write_model(folder: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config.from_dict(BASE))
    side = BASE["image_size"] // BASE["patch_size"]
    coarse = torch.randn(1, BASE["hidden_size"], 5, 5)  # a smooth field: coarse noise upsampled to the 37x37 grid
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=True)
    with torch.no_grad():
        table = model.embeddings.position_embeddings
        table[0, 1:] = smooth.permute(0, 2, 3, 1).reshape(side * side, -1)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)  # file key names, whatever the version
    (folder / "config.json").write_text(json.dumps(BASE, indent=2))


def encode(folder: Path, out: Path) -> None:
    import transformers

    from imagpose.image_encoder import encode as encode_images, load_dinov2

    torch.manual_seed(1)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 9), size=(300, 240), mode="bilinear").clamp(0, 1)
    encoder = load_dinov2(folder)
    tokens = encode_images(encoder, image).float()
    torch.save({"tokens": tokens, "transformers": transformers.__version__}, out)
    print(f"transformers {transformers.__version__}: tokens {tuple(tokens.shape)} -> {out}")


def compare(a: Path, b: Path) -> None:
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    x, y = first["tokens"], second["tokens"]
    relative = ((x - y).norm(dim=-1) / y.norm(dim=-1)).mean().item()
    print(f"transformers {first['transformers']} vs {second['transformers']}: mean relative difference "
          f"{relative:.3e} (per token), max absolute {(x - y).abs().max().item():.3e}, identical {torch.equal(x, y)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("write-model").add_argument("folder", type=Path)
    run = sub.add_parser("encode")
    run.add_argument("folder", type=Path)
    run.add_argument("out", type=Path)
    both = sub.add_parser("compare")
    both.add_argument("a", type=Path)
    both.add_argument("b", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "write-model":
        write_model(args.folder)
    elif args.command == "encode":
        encode(args.folder, args.out)
    else:
        compare(args.a, args.b)


if __name__ == "__main__":
    main()
