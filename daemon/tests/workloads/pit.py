#!/usr/bin/python3
"""NBD write loads with known contents, for the point-in-time tests.

  pit.py rounds --uri-a URI --uri-b URI --size BYTES --rounds N
                --round-bytes BYTES --drgw BIN --socket SOCK --group G
                [--start-round K]
      Round i writes --round-bytes of pseudo-random data to disk A and then
      to disk B (1 MiB writes at pseudo-random 4 KiB-aligned offsets), waits
      for every write to be acknowledged, then takes bookmark "round-i"
      through `drgw bookmark`. Keeps both images in memory and prints, per
      round, a JSON line {"bookmark", "sequence", "sha256_a", "sha256_b"}:
      what the disks hold at that bookmark.

  pit.py alternate --uri-a URI --uri-b URI --blocks N --pause-ms MS
      Writes block k of A (4 KiB at k*4096, holding k+1 as a u64), then block
      k of B the same way, for k in 0..N, each write acknowledged before the
      next is issued. At any crash-consistent cut, B's count of written
      blocks is A's or one less.
"""

import argparse
import hashlib
import json
import random
import subprocess
import sys
import time

import nbd

CHUNK = 1 << 20


def connect(uri):
    handle = nbd.NBD()
    handle.connect_uri(uri)
    return handle


def rounds(args):
    a, b = connect(args.uri_a), connect(args.uri_b)
    images = [bytearray(args.size), bytearray(args.size)]
    if args.start_round:
        # A later run: the disks hold the earlier rounds already.
        for handle, image in ((a, images[0]), (b, images[1])):
            for offset in range(0, args.size, CHUNK):
                image[offset:offset + CHUNK] = handle.pread(min(CHUNK, args.size - offset), offset)
    rng = random.Random(args.seed + args.start_round)
    for round_number in range(args.start_round, args.start_round + args.rounds):
        for handle, image in ((a, images[0]), (b, images[1])):
            written = 0
            while written < args.round_bytes:
                offset = rng.randrange(0, (args.size - CHUNK) // 4096) * 4096
                data = rng.randbytes(CHUNK)
                handle.pwrite(data, offset)
                image[offset:offset + CHUNK] = data
                written += CHUNK
        name = f"round-{round_number}"
        taken = subprocess.run(
            [args.drgw, "--socket", args.socket, "bookmark", args.group,
             "--name", name, "--json"],
            check=True, capture_output=True, text=True)
        sequence = json.loads(taken.stdout)["sequence"]
        print(json.dumps({
            "bookmark": name,
            "sequence": sequence,
            "sha256_a": hashlib.sha256(images[0]).hexdigest(),
            "sha256_b": hashlib.sha256(images[1]).hexdigest(),
        }), flush=True)
    a.shutdown()
    b.shutdown()


def alternate(args):
    a, b = connect(args.uri_a), connect(args.uri_b)
    for k in range(args.blocks):
        block = (k + 1).to_bytes(8, "little") + bytes(4088)
        a.pwrite(block, k * 4096)
        b.pwrite(block, k * 4096)
        if args.pause_ms:
            time.sleep(args.pause_ms / 1000)
    a.shutdown()
    b.shutdown()
    print(json.dumps({"blocks": args.blocks}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rounds")
    r.add_argument("--uri-a", required=True)
    r.add_argument("--uri-b", required=True)
    r.add_argument("--size", type=int, required=True)
    r.add_argument("--rounds", type=int, required=True)
    r.add_argument("--round-bytes", type=int, required=True)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--start-round", type=int, default=0,
                   help="number the rounds from here; > 0 reads the disks first")
    r.add_argument("--drgw", required=True)
    r.add_argument("--socket", required=True)
    r.add_argument("--group", required=True)
    alt = sub.add_parser("alternate")
    alt.add_argument("--uri-a", required=True)
    alt.add_argument("--uri-b", required=True)
    alt.add_argument("--blocks", type=int, required=True)
    alt.add_argument("--pause-ms", type=int, default=0)
    args = parser.parse_args()
    {"rounds": rounds, "alternate": alternate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
