#!/usr/bin/python3
"""Verifiable NBD write load for the hardware tests, and its checks.

  workload.py run --uri nbd://127.0.0.1:PORT/DISK --log FILE --size BYTES ...
      Writes BLOCK-byte blocks at random BLOCK-aligned offsets, up to DEPTH
      in flight (never two to one offset at once, so the last write to an
      offset is well defined). Each block's content is derived from
      (offset, counter): a 32-byte header naming both, then SHAKE-128 of it.
      Log lines: "I OFFSET COUNTER" before a write is issued, "A OFFSET
      COUNTER" once the server acknowledged it (flushed and fsynced before
      more acknowledgements are taken in). Runs for --seconds, until
      SIGTERM/SIGINT (drains what is in flight, then exits), or until the
      connection drops (exits 0 with the log intact: only acknowledged writes
      are logged with A). Prints a JSON summary on stdout. Exit 0 on stop or
      connection loss, 3 if the server answered a write with an error.

  workload.py verify --primary FILE --log LOG... [--strict]
                     [--replay IMAGE --map DIRTYMAP]
      Checks every offset the logs acknowledged (see check_image). With
      --replay and --map (the gateway's staged records replayed, and the
      tap's dirty map as it was left): every acknowledged write is in the
      replay or its grain is dirty, and every clean grain of the replay
      equals the primary's. Prints JSON figures; exit 1 on any violation.

  workload.py dirty MAPFILE
      Parses a tap dirty map (docs/formats/dirty-map.md) and prints JSON:
      grain_bytes, disk_bytes, dirty_grains, dirty_bytes, torn_pages.

Needs python3-libnbd for `run` only (Debian: python3-libnbd).
"""

import argparse
import errno
import hashlib
import json
import os
import random
import signal
import struct
import sys
import time

MAGIC = b"DRGWWL01"
HEADER = struct.Struct("<8sQQQ")


def block_content(offset, counter, block):
    header = HEADER.pack(MAGIC, offset, counter, block)
    return header + hashlib.shake_128(header).digest(block - HEADER.size)


def block_counter(data, offset):
    """The counter a block holds: 0 for zeroes, None if it is neither zero
    nor a valid workload block for this offset."""
    if data.count(0) == len(data):
        return 0
    magic, written_offset, counter, block = HEADER.unpack_from(data)
    if magic != MAGIC or written_offset != offset or block != len(data) or counter == 0:
        return None
    if data != block_content(offset, counter, block):
        return None
    return counter


# --- run -------------------------------------------------------------------

def run(args):
    import nbd

    stop = {"requested": False}

    def on_signal(_number, _frame):
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    blocks = args.size // args.block
    chooser = random.Random(args.seed)
    log = open(args.log, "a")
    # A tap just restarted may reset a connection made in the instant its
    # listener came up; try again for a few seconds before giving up.
    for attempt in range(50):
        handle = nbd.NBD()
        try:
            handle.connect_uri(args.uri)
            break
        except nbd.Error as error:
            if attempt == 49 or error.errno not in (errno.ECONNRESET, errno.ECONNREFUSED):
                raise
            time.sleep(0.1)
    if handle.get_size() < args.size:
        sys.exit(f"export is {handle.get_size()} bytes, less than --size {args.size}")
    in_flight = {}  # cookie -> (offset, counter, buffer)
    busy = set()
    counter = args.counter_start
    issued = acknowledged = 0
    started = time.monotonic()
    deadline = started + args.seconds if args.seconds else None
    end = "stopped"
    write_error = None

    def issue():
        nonlocal counter, issued
        while True:
            offset = chooser.randrange(blocks) * args.block
            if offset not in busy:
                break
        buffer = nbd.Buffer.from_bytearray(block_content(offset, counter, args.block))
        log.write(f"I {offset} {counter}\n")
        log.flush()
        cookie = handle.aio_pwrite(buffer, offset)
        in_flight[cookie] = (offset, counter, buffer)
        busy.add(offset)
        counter += 1
        issued += 1

    def collect():
        """Retires completed writes; logs the acknowledged ones durably."""
        nonlocal acknowledged, write_error
        done = []
        for cookie, (offset, number, _buffer) in list(in_flight.items()):
            try:
                completed = handle.aio_command_completed(cookie)
            except nbd.Error as error:
                if handle.aio_is_dead() or handle.aio_is_closed():
                    raise
                write_error = f"write of offset {offset} (counter {number}) failed: {error}"
                del in_flight[cookie]
                busy.discard(offset)
                continue
            if completed:
                done.append((offset, number))
                del in_flight[cookie]
                busy.discard(offset)
        if done:
            for offset, number in done:
                log.write(f"A {offset} {number}\n")
            log.flush()
            os.fsync(log.fileno())
            acknowledged += len(done)

    try:
        while True:
            finishing = stop["requested"] or (deadline is not None and time.monotonic() >= deadline)
            if write_error:
                end = "write error"
                finishing = True
            if finishing and not in_flight:
                break
            while not finishing and len(in_flight) < args.depth:
                issue()
            handle.poll(1000)
            collect()
    except nbd.Error as error:
        end = f"connection lost: {error}"
        # Replies read before the loss still count; the rest stay unacknowledged.
        done = []
        for cookie, (offset, number, _buffer) in list(in_flight.items()):
            try:
                if handle.aio_command_completed(cookie):
                    done.append((offset, number))
                    del in_flight[cookie]
            except nbd.Error:
                pass
        if done:
            for offset, number in done:
                log.write(f"A {offset} {number}\n")
            log.flush()
            os.fsync(log.fileno())
            acknowledged += len(done)
    log.close()
    try:
        if end == "stopped":
            handle.shutdown()
    except nbd.Error:
        pass
    summary = {
        "end": end,
        "issued": issued,
        "acknowledged": acknowledged,
        "unacknowledged": len(in_flight),
        "counter_next": counter,
        "seconds": round(time.monotonic() - started, 3),
        "write_error": write_error,
    }
    print(json.dumps(summary), flush=True)
    return 3 if write_error else 0


# --- logs and images -------------------------------------------------------

class History:
    """What the logs say about each offset: the last acknowledged counter
    and every counter issued (acknowledged or not)."""

    def __init__(self, paths):
        self.last_acked = {}
        self.issued = {}
        self.acknowledged = 0
        for path in paths:
            with open(path) as log:
                for line in log:
                    parts = line.split()
                    if len(parts) != 3:
                        continue  # a line torn by a crash of the workload itself
                    kind, offset, counter = parts[0], int(parts[1]), int(parts[2])
                    if kind == "I":
                        self.issued.setdefault(offset, set()).add(counter)
                    elif kind == "A":
                        self.acknowledged += 1
                        if counter > self.last_acked.get(offset, 0):
                            self.last_acked[offset] = counter

    def allowed(self, offset, strict):
        """Counters the block at `offset` may hold (0: zeroes)."""
        last = self.last_acked.get(offset, 0)
        if strict:
            return {last}
        return {last} | {c for c in self.issued.get(offset, ()) if c > last}


def read_block(image, offset, block):
    image.seek(offset)
    data = image.read(block)
    return data + bytes(block - len(data))


def check_image(name, path, history, block, strict, violations, skip=lambda offset: False):
    """Every offset written holds its last acknowledged block, or (unless
    strict) a later write that was issued but whose reply never came."""
    checked = 0
    with open(path, "rb") as image:
        for offset in sorted(set(history.last_acked) | set(history.issued)):
            if skip(offset):
                continue
            allowed = history.allowed(offset, strict)
            found = block_counter(read_block(image, offset, block), offset)
            checked += 1
            if found not in allowed:
                held = "garbage" if found is None else ("zeroes" if found == 0 else f"counter {found}")
                violations.append(
                    f"{name}: offset {offset} holds {held}; expected counter "
                    f"{history.last_acked.get(offset, 0)} (last acknowledged, 0 = never)"
                    + ("" if strict else f" or one of the later unacknowledged {sorted(allowed - {history.last_acked.get(offset, 0)})}")
                )
    return checked


# --- dirty map -------------------------------------------------------------

def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class DirtyMap:
    PAGE = 4096
    BITMAP = 4092

    def __init__(self, path):
        with open(path, "rb") as file:
            data = file.read()
        if len(data) < self.PAGE:
            raise ValueError(f"{path}: {len(data)} bytes, shorter than the header")
        magic, version, grain, disk = struct.unpack_from("<8sIQQ", data)
        (header_crc,) = struct.unpack_from("<I", data, 28)
        if magic != b"DRGWDMAP" or version != 1:
            raise ValueError(f"{path}: not a version-1 dirty map ({magic!r}, {version})")
        self.grain_bytes = grain
        self.disk_bytes = disk
        self.header_ok = crc32c(data[:28]) == header_crc
        self.grains = -(-disk // grain)
        pages = -(-self.grains // (self.BITMAP * 8))
        self.torn_pages = 0
        bitmap = bytearray()
        for page in range(pages):
            start = self.PAGE * (1 + page)
            chunk = data[start:start + self.PAGE]
            if len(chunk) < self.PAGE or crc32c(chunk[:self.BITMAP]) != struct.unpack_from("<I", chunk, self.BITMAP)[0]:
                self.torn_pages += 1
                bitmap += b"\xff" * self.BITMAP  # the tap takes a torn page as all dirty
            else:
                bitmap += chunk[:self.BITMAP]
        self.bitmap = bytes(bitmap)
        if not self.header_ok:
            self.bitmap = b"\xff" * len(self.bitmap)  # a bad header makes the whole map dirty

    def dirty(self, grain):
        return bool(self.bitmap[grain // 8] >> (grain % 8) & 1)

    def dirty_grains(self):
        return sum(1 for grain in range(self.grains) if self.dirty(grain))

    def figures(self):
        count = self.dirty_grains()
        return {
            "grain_bytes": self.grain_bytes,
            "disk_bytes": self.disk_bytes,
            "header_ok": self.header_ok,
            "torn_pages": self.torn_pages,
            "dirty_grains": count,
            "dirty_bytes": count * self.grain_bytes,
        }


# --- verify ----------------------------------------------------------------

def verify(args):
    history = History(args.log)
    violations = []
    figures = {"acknowledged": history.acknowledged, "offsets": len(history.last_acked)}
    figures["primary_checked"] = check_image("primary", args.primary, history, args.block, args.strict, violations)
    if args.replay:
        dirty = DirtyMap(args.map)
        if dirty.grain_bytes % args.block and args.block % dirty.grain_bytes:
            sys.exit("block and grain sizes do not nest")

        def grain_dirty(offset):
            first = offset // dirty.grain_bytes
            last = (offset + args.block - 1) // dirty.grain_bytes
            return any(dirty.dirty(g) for g in range(first, last + 1))

        covered_by_map = sum(1 for offset in history.last_acked if grain_dirty(offset))
        figures["replay_checked"] = check_image(
            "staging replay (grain clean in the dirty map)", args.replay, history, args.block, False,
            violations, skip=grain_dirty)
        figures["covered_by_dirty_map"] = covered_by_map
        figures["dirty"] = dirty.figures()
        # A clean grain: the gateway has exactly what the primary has.
        mismatched = []
        grain = dirty.grain_bytes
        with open(args.primary, "rb") as primary, open(args.replay, "rb") as replay:
            for number in range(dirty.grains):
                if dirty.dirty(number):
                    continue
                if read_block(primary, number * grain, grain) != read_block(replay, number * grain, grain):
                    mismatched.append(number)
        figures["clean_grains_mismatched"] = len(mismatched)
        for number in mismatched[:10]:
            offset = number * grain
            with open(args.primary, "rb") as primary, open(args.replay, "rb") as replay:
                held_primary = block_counter(read_block(primary, offset, args.block), offset)
                held_replay = block_counter(read_block(replay, offset, args.block), offset)
            violations.append(
                f"grain {number} (offset {offset}) is clean in the dirty map but the staging replay "
                f"differs from the primary (primary counter {held_primary}, staged counter {held_replay})")
    figures["violations"] = len(violations)
    print(json.dumps(figures), flush=True)
    for violation in violations[:20]:
        print("VIOLATION: " + violation, file=sys.stderr)
    if len(violations) > 20:
        print(f"... and {len(violations) - 20} more", file=sys.stderr)
    return 1 if violations else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("--uri", required=True)
    run_parser.add_argument("--log", required=True)
    run_parser.add_argument("--size", type=int, required=True, help="bytes of the disk to write over")
    run_parser.add_argument("--block", type=int, default=65536)
    run_parser.add_argument("--depth", type=int, default=4)
    run_parser.add_argument("--seconds", type=float, default=0, help="0: until signalled or disconnected")
    run_parser.add_argument("--counter-start", type=int, default=1)
    run_parser.add_argument("--seed", type=int, default=1)
    verify_parser = commands.add_parser("verify")
    verify_parser.add_argument("--primary", required=True)
    verify_parser.add_argument("--log", nargs="+", required=True)
    verify_parser.add_argument("--block", type=int, default=65536)
    verify_parser.add_argument("--strict", action="store_true", help="every offset holds exactly its last acknowledged write")
    verify_parser.add_argument("--replay")
    verify_parser.add_argument("--map")
    dirty_parser = commands.add_parser("dirty")
    dirty_parser.add_argument("map")
    args = parser.parse_args()
    if args.command == "run":
        if args.counter_start < 1 or args.block < HEADER.size or args.depth < 1:
            parser.error("--counter-start >= 1, --block >= 32, --depth >= 1")
        return run(args)
    if args.command == "verify":
        if bool(args.replay) != bool(args.map):
            parser.error("--replay and --map go together")
        return verify(args)
    print(json.dumps(DirtyMap(args.map).figures()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
