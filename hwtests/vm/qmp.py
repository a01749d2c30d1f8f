#!/usr/bin/env python3
"""Drives a paused qemu over QMP for hwtests/test_vm_mirror.sh: mirrors its
disk to the tap's NBD export (blockdev-add of an nbd node, blockdev-mirror
sync=full copy-mode=write-blocking), starts the guest, waits for the job to
be ready, tells the guest to write (a line on its ttyS1), waits for the
guest to finish, then ends the job without pivoting (block-job-cancel of a
ready mirror) and quits. Prints what it does, with seconds since start."""

import argparse
import json
import socket
import sys
import time

started = time.monotonic()


def say(text):
    print(f"qmp [{time.monotonic() - started:6.1f}s] {text}", flush=True)


class Qmp:
    def __init__(self, path, limit):
        deadline = time.monotonic() + limit
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.file = self.sock.makefile("rw")
        self.events = []
        self.read(30)  # greeting
        self.command("qmp_capabilities")

    def read(self, limit):
        self.sock.settimeout(limit)
        line = self.file.readline()
        if not line:
            raise EOFError("qemu closed QMP")
        return json.loads(line)

    def command(self, name, **arguments):
        message = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self.file.write(json.dumps(message) + "\n")
        self.file.flush()
        while True:
            reply = self.read(60)
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{name}: {reply['error']}")
            elif "return" in reply:
                return reply["return"]

    def event(self, names, limit):
        deadline = time.monotonic() + limit
        while True:
            for index, event in enumerate(self.events):
                if event["event"] in names:
                    return self.events.pop(index)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {names} within {limit}s")
            try:
                self.events.append(self.read(left))
            except socket.timeout:
                pass


def console_has(path, needle):
    try:
        with open(path, "rb") as console:
            return any(line.startswith(needle.encode()) for line in console)
    except FileNotFoundError:
        return False


def wait_console(path, needle, limit):
    deadline = time.monotonic() + limit
    while not console_has(path, needle):
        if console_has(path, "DRGW-FAILED"):
            raise RuntimeError("the guest failed; see its console")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {needle} on the console within {limit}s")
        time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--qmp", required=True)
    parser.add_argument("--control", required=True, help="unix socket of the guest's ttyS1")
    parser.add_argument("--console", required=True)
    parser.add_argument("--device", required=True, help="node name of the VM's disk")
    parser.add_argument("--nbd-port", required=True)
    parser.add_argument("--export", required=True)
    parser.add_argument("--timeout", type=float, default=150)
    args = parser.parse_args()

    qmp = Qmp(args.qmp, 30)
    qmp.command(
        "blockdev-add",
        driver="nbd",
        **{"node-name": "drgw-target"},
        server={"type": "inet", "host": "127.0.0.1", "port": str(args.nbd_port)},
        export=args.export,
    )
    say("nbd node for the tap's export added")
    qmp.command(
        "blockdev-mirror",
        **{"job-id": "drgw", "copy-mode": "write-blocking"},
        device=args.device,
        target="drgw-target",
        sync="full",
    )
    say("blockdev-mirror started (sync=full, copy-mode=write-blocking)")
    qmp.command("cont")
    ready = qmp.event(["BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR"], args.timeout)
    if ready["event"] != "BLOCK_JOB_READY":
        raise RuntimeError(f"mirror job: {ready}")
    say(f"mirror job ready: {qmp.command('query-block-jobs')}")

    wait_console(args.console, "DRGW-WAITING", args.timeout)
    with socket.socket(socket.AF_UNIX) as control:
        control.connect(args.control)
        control.sendall(b"go\n")
        say("told the guest to write")
        wait_console(args.console, "DRGW-DONE", args.timeout)
    say("guest done")
    jobs = qmp.command("query-block-jobs")
    say(f"job after the guest's writes: {jobs}")
    errors = [e for e in qmp.events if e["event"] == "BLOCK_JOB_ERROR"]
    if errors or not jobs or jobs[0].get("status") != "ready":
        raise RuntimeError(f"mirror job not healthy: {jobs} {errors}")
    qmp.command("block-job-cancel", device="drgw")
    done = qmp.event(["BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"], 60)
    say(f"mirror job ended: {done['event']} {done['data']}")
    if done["data"].get("error"):
        raise RuntimeError(f"mirror job ended with an error: {done}")
    qmp.command("quit")
    print(f"MIRROR-OK len={done['data'].get('len')} offset={done['data'].get('offset')}")


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # noqa: BLE001 - report and fail the test
        say(f"FAILED: {error}")
        sys.exit(1)
