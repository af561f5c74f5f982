#!/usr/bin/env python
"""Convert a DETR or INTR checkpoint into a Hub-ready INTR folder.

    python convert_detr_checkpoint.py --checkpoint detr-r50-e632da11.pth --output_dir intr-r50-cub \
        --labels CUB_200_2011/classes.txt

The command line over `modeling_intr.convert.convert_checkpoint`; `--help` lists every option. Every expected
failure (an unreadable, unsafe or unknown checkpoint, a value it does not record, labels that do not fit, an output
path that cannot be a folder, a failed upload) prints one `error: ...` line and exits with status 1.
"""

import argparse
import logging
import sys

from modeling_intr.convert import LAYOUTS, PushToHubError, convert_checkpoint
from modeling_intr.image_folders import LabelNames, labels_from_image_folder, read_labels_file

ARCHITECTURE_OVERRIDES = ("dilation", "num_attention_heads", "dropout", "attention_dropout")  # IntrConfig arguments


def build_parser() -> argparse.ArgumentParser:
    layouts = "\n".join(f"  {name}: {description}" for name, description in LAYOUTS.items())
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Checkpoint layouts (detected from the keys, not the file name):\n{layouts}",
    )
    parser.add_argument("--checkpoint", required=True, help="The source: a .pth / .bin / .safetensors file, or a "
                        "Hugging Face DETR folder (model.safetensors or pytorch_model.bin, with its config.json).")
    parser.add_argument("--output_dir", required=True, help="The INTR folder to write (written to a hidden sibling "
                        "first and renamed into place when complete).")
    labels = parser.add_argument_group(
        "classes", "At most one. A DETR checkpoint needs one; an INTR checkpoint defaults to its own query count."
    ).add_mutually_exclusive_group()
    labels.add_argument("--num_labels", type=int, help="Number of classes, named LABEL_0, LABEL_1, ...")
    labels.add_argument("--labels", metavar="FILE", help="Class names, index 0 first: one name per line (a CUB-style "
                        "classes.txt '1 001.Black_footed_Albatross' numbered 1..N on every line has its numbering "
                        "stripped; partial numbering is an error), a .json list or {\"0\": name, ...} object (or a "
                        "config with id2label), or a .csv / .tsv with a header: id and name columns, or one name "
                        "column. The summary says how the file was read.")
    labels.add_argument("--labels_from_dir", metavar="TRAIN_DIR", help="Class names = the sorted class folder names "
                        "of an image folder TRAIN_DIR/<class>/<image> (the order of run_finetune.py and imagefolder).")
    parser.add_argument("--noise_frac", type=float, default=0.1, help="Classes beyond the checkpoint's queries start "
                        "from repeated queries plus noise_frac * N(0, 1) noise (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the query noise and the new presence head "
                        "(default: %(default)s).")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output_dir.")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="Then upload the folder to this Hub repo (token from "
                        "`hf auth login` or HF_TOKEN).")
    parser.add_argument("--private", action="store_true", help="Create the --push_to_hub repo as private.")
    architecture = parser.add_argument_group(
        "architecture", "What the weights cannot show. Default: the checkpoint's args / config.json; else, for a DETR "
        "release architecture (ResNet-50/101, d_model 256, 6 + 6 layers), 8 heads and no dilation; else required. "
        "The summary says where every value came from."
    )
    architecture.add_argument("--dilation", action=argparse.BooleanOptionalAction, default=None,
                              help="DC5 backbone (stride of the last stage replaced by dilation), e.g. for "
                                   "detr-r50-dc5-f0fb7ef5.pth without args.")
    architecture.add_argument("--num_attention_heads", type=int, help="Attention heads (every DETR / INTR release: "
                              "8); required when the checkpoint records none and is not a release architecture.")
    architecture.add_argument("--dropout", type=float, help="Dropout for fine-tuning (reference: 0.1).")
    architecture.add_argument("--attention_dropout", type=float, help="Attention dropout (reference: = --dropout).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the converter; returns the exit status (0, or 1 after a one-line error on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        parser.error("--private needs --push_to_hub")
    log = logging.getLogger("modeling_intr.convert")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    overrides = {name: getattr(args, name) for name in ARCHITECTURE_OVERRIDES if getattr(args, name) is not None}
    try:
        if args.labels:
            id2label = read_labels_file(args.labels)
        elif args.labels_from_dir:
            id2label = LabelNames(tuple(labels_from_image_folder(args.labels_from_dir)), args.labels_from_dir,
                                  "sorted class folder names, as run_finetune.py and imagefolder")
        else:
            id2label = None
        convert_checkpoint(
            args.checkpoint, args.output_dir, id2label=id2label, num_labels=args.num_labels,
            noise_frac=args.noise_frac, seed=args.seed, overwrite=args.overwrite, push_to_hub=args.push_to_hub,
            private=args.private, **overrides,
        )
    except (ValueError, PushToHubError, OSError) as error:  # CheckpointError, LabelsError, OutputDirError: ValueError
        print("error: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return 1
    finally:
        log.removeHandler(handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
