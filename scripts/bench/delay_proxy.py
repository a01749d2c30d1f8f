#!/usr/bin/env python3
"""A TCP proxy that delays every byte by a fixed one-way delay, both ways.

    delay_proxy.py LISTEN_HOST:PORT UPSTREAM_HOST:PORT DELAY_MS [--delay-file FILE]

For the benchmarks (scripts/bench/resync.sh), where `tc netem` is not
available: the link's round trip is made here, its rate by `tc tbf` on the
interface the upstream connection crosses. Each connection accepted on
LISTEN is joined to a new connection to UPSTREAM; in each direction a reader
stamps every chunk it reads with the time it is due (now + DELAY_MS) and
queues it, and a writer sends the chunks in order once due. Reading goes on
while earlier chunks wait, so the delay adds latency, not a cap on
throughput: a direction holds at most QUEUE_BYTES_MAX in its queue (reads
pause beyond it), which allows QUEUE_BYTES_MAX / delay, 100 MB/s at 10 ms.
The bound is kept small because behind a slower link the queue fills: 1 MiB
is 84 ms of queueing at 100 Mbit/s, on top of the sockets' own buffers,
which a real link has too.

With --delay-file, SIGHUP sets the delay to the number of ms in FILE
(for chunks read from then on; the order of bytes is kept). Prints one line
"listening on HOST:PORT" on stdout once it accepts connections.
"""

import argparse
import asyncio
import signal
import socket
import sys

READ_BYTES = 256 << 10
QUEUE_BYTES_MAX = 1 << 20


class Delay:
    """The one-way delay in seconds, changed by SIGHUP from a file."""

    def __init__(self, milliseconds, path):
        self.seconds = milliseconds / 1000.0
        self.path = path

    def reload(self):
        try:
            with open(self.path) as file:
                milliseconds = float(file.read().strip())
        except (OSError, ValueError) as error:
            print(f"delay_proxy: keeping {self.seconds * 1000:g} ms: {error}", file=sys.stderr)
            return
        self.seconds = milliseconds / 1000.0
        print(f"delay_proxy: one-way delay now {milliseconds:g} ms", file=sys.stderr, flush=True)


class Budget:
    """Bytes a direction may hold queued; the reader waits beyond it."""

    def __init__(self, limit):
        self.limit, self.used = limit, 0
        self.freed = asyncio.Condition()

    async def take(self, count):
        async with self.freed:
            await self.freed.wait_for(lambda: self.used == 0 or self.used + count <= self.limit)
            self.used += count

    async def give(self, count):
        async with self.freed:
            self.used -= count
            self.freed.notify_all()


async def read_side(reader, queue, budget, delay):
    loop = asyncio.get_running_loop()
    try:
        while chunk := await reader.read(READ_BYTES):
            await budget.take(len(chunk))
            queue.put_nowait((loop.time() + delay.seconds, chunk))
    except (ConnectionError, OSError):
        pass
    finally:
        queue.put_nowait((loop.time() + delay.seconds, None))


async def write_side(writer, queue, budget):
    loop = asyncio.get_running_loop()
    while True:
        due, chunk = await queue.get()
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if chunk is None:
            if writer.can_write_eof():
                writer.write_eof()
            return
        writer.write(chunk)
        await writer.drain()
        await budget.give(len(chunk))


async def pump(reader, writer, delay):
    """One direction: reader -> delay -> writer, until EOF or an error."""
    queue = asyncio.Queue()  # bounded by the budget, in bytes
    budget = Budget(QUEUE_BYTES_MAX)
    reading = asyncio.ensure_future(read_side(reader, queue, budget, delay))
    try:
        await write_side(writer, queue, budget)
    finally:
        reading.cancel()


def no_delay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve_one(client_reader, client_writer, upstream, delay):
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(*upstream)
    except OSError as error:
        print(f"delay_proxy: cannot reach {upstream[0]}:{upstream[1]}: {error}", file=sys.stderr)
        client_writer.close()
        return
    for writer in (client_writer, upstream_writer):
        no_delay(writer)
    try:
        await asyncio.gather(
            pump(client_reader, upstream_writer, delay),
            pump(upstream_reader, client_writer, delay),
        )
    except (ConnectionError, OSError):
        pass
    finally:
        for writer in (client_writer, upstream_writer):
            writer.close()


def address(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("listen", type=address, help="HOST:PORT to listen on")
    parser.add_argument("upstream", type=address, help="HOST:PORT to forward to")
    parser.add_argument("delay_ms", type=float, help="one-way delay, each direction")
    parser.add_argument("--delay-file", help="on SIGHUP, read the delay in ms from this file")
    arguments = parser.parse_args()
    delay = Delay(arguments.delay_ms, arguments.delay_file)
    if arguments.delay_file:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, delay.reload)
    server = await asyncio.start_server(
        lambda r, w: serve_one(r, w, arguments.upstream, delay), *arguments.listen
    )
    print(f"listening on {arguments.listen[0]}:{arguments.listen[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
