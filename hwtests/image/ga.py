#!/usr/bin/env python3
"""Runs a command in an appliance VM through the QEMU guest agent.

    ga.py SOCKET ping [SECONDS]         wait until the agent answers
    ga.py SOCKET exec [--timeout S] [--input FILE] -- COMMAND [ARG...]

exec prints the command's stdout (and its stderr to stderr) and exits with
its exit code; 124 when it did not end within the timeout, 125 when the
agent could not be reached. The agent (qemu-guest-agent in the image) is
the hypervisor's own channel into the guest: no network, no password.
"""
import argparse
import base64
import json
import random
import socket
import sys
import time


class Agent:
    def __init__(self, path, timeout):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = b""
        self.sync()

    def sync(self):
        # guest-sync-delimited: the agent answers with 0xff then our id, so
        # anything left from an earlier client is skipped.
        token = random.randrange(1, 2**31)
        self.sock.sendall(b"\xff" + json.dumps(
            {"execute": "guest-sync-delimited", "arguments": {"id": token}}).encode())
        while True:
            reply = self.read()
            if reply.get("return") == token:
                return

    def read(self):
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("agent closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        line = line.lstrip(b"\xff").strip()
        return json.loads(line) if line else self.read()

    def call(self, command, arguments=None):
        message = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        reply = self.read()
        if "error" in reply:
            raise RuntimeError(f"{command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")


def ping(args):
    deadline = time.monotonic() + args.seconds
    while True:
        try:
            Agent(args.socket, 5).call("guest-ping")
            return 0
        except (OSError, ConnectionError, ValueError, RuntimeError):
            if time.monotonic() > deadline:
                print(f"ga: no agent on {args.socket} within {args.seconds}s", file=sys.stderr)
                return 125
            time.sleep(1)


def run(args):
    try:
        agent = Agent(args.socket, 30)
    except (OSError, ConnectionError, ValueError) as error:
        print(f"ga: cannot reach the agent on {args.socket}: {error}", file=sys.stderr)
        return 125
    request = {"path": args.command[0], "arg": args.command[1:], "capture-output": True}
    if args.input:
        with open(args.input, "rb") as data:
            request["input-data"] = base64.b64encode(data.read()).decode()
    pid = agent.call("guest-exec", request)["pid"]
    deadline = time.monotonic() + args.timeout
    while True:
        status = agent.call("guest-exec-status", {"pid": pid})
        if status.get("exited"):
            break
        if time.monotonic() > deadline:
            print(f"ga: {' '.join(args.command)} did not end within {args.timeout}s", file=sys.stderr)
            return 124
        time.sleep(0.2)
    sys.stdout.buffer.write(base64.b64decode(status.get("out-data", "")))
    sys.stderr.buffer.write(base64.b64decode(status.get("err-data", "")))
    if "signal" in status:
        return 128 + status["signal"]
    return status.get("exitcode", 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    commands = parser.add_subparsers(dest="verb", required=True)
    ping_parser = commands.add_parser("ping")
    ping_parser.add_argument("seconds", nargs="?", type=float, default=120)
    exec_parser = commands.add_parser("exec")
    exec_parser.add_argument("--timeout", type=float, default=60)
    exec_parser.add_argument("--input")
    exec_parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    return ping(args) if args.verb == "ping" else run(args)


if __name__ == "__main__":
    sys.exit(main())
