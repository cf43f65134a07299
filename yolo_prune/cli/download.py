"""``yolo-prune download NAME``: fetch canonical weights, verified against the manifest."""

from __future__ import annotations

import argparse

from yolo_prune.hub import download, load_manifest


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("download", help="download canonical weights (size + sha256 checked)")
    p.add_argument("names", nargs="*", help="weights names (omit to list them)")
    p.add_argument("--dir", help="destination folder (default: the repository's weights/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manifest = load_manifest()
    if not args.names:
        for entry in manifest.values():
            print(f"{entry.name:<14} {entry.bytes:>13,} bytes  {entry.file}  (cfg: {entry.cfg})")
        return 0
    for name in args.names:
        path = download(name, dest_dir=args.dir, manifest=manifest)
        print(f"{name}: {path} (verified)")
    return 0
