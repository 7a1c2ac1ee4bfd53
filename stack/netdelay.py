"""A fixed delay on every packet a network namespace sends, for kernels without `netem`.

`python -m stack.netdelay --queue 0 --delay-us 500`, run inside the namespace (stack.netns starts
it with `ip netns exec`), behind `iptables -t mangle -A POSTROUTING -o eth0 -j NFQUEUE`: the
kernel hands each outgoing packet's metadata to this process over netlink (NFQUEUE), and it
accepts the packets once they have waited the delay. The packets themselves stay in the kernel;
only their ids come here.

Why hand-written over raw netlink: the Python NFQUEUE bindings give one verdict per packet from a
callback; here one batch verdict (NFQNL_MSG_VERDICT_BATCH: every id up to N) releases whatever
fell due, which keeps the cost to a recv per packet. Ids rise in queue order and every packet
waits the same delay, so "all ids up to N" is exactly the packets that are due.

Fail closed: if this process dies the rule stays and the namespace's packets are dropped (no
--queue-bypass), so a lost delay cannot pass unnoticed as a fast network.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
QUEUE_MAXLEN = 16_384
"""Packets the kernel holds for us before it drops more (its default, 1,024, is a few ms of a
3,000-VU run's packets)."""


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, queue: int, attrs: bytes, flags: int, seq: int) -> bytes:
    # nfgenmsg: family, version, resource id (the queue number, big-endian)
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", queue) + attrs
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0)
    return header + body


def _check_ack(sock: socket.socket, seq: int) -> None:
    reply = sock.recv(65536)
    _length, kind, _flags, got, _pid = struct.unpack_from("=IHHII", reply)
    if kind == NLMSG_ERROR and got == seq:
        (code,) = struct.unpack_from("=i", reply, 16)
        if code:
            raise OSError(-code, f"NFQUEUE config refused: {os.strerror(-code)}")


def open_queue(queue: int) -> socket.socket:
    """A netlink socket bound to NFQUEUE `queue` of the current namespace, metadata only."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    # SO_RCVBUFFORCE (root): a burst of packet messages must not overflow the socket.
    sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
    sock.bind((0, 0))
    bind = struct.pack("=BB", NFQNL_CFG_CMD_BIND, 0) + struct.pack(">H", socket.AF_INET)
    params = struct.pack(">IB", 0, NFQNL_COPY_META)
    maxlen = struct.pack(">I", QUEUE_MAXLEN)
    for seq, attrs in enumerate(
        (
            _attr(NFQA_CFG_CMD, bind),
            _attr(NFQA_CFG_PARAMS, params) + _attr(NFQA_CFG_QUEUE_MAXLEN, maxlen),
        ),
        start=1,
    ):
        sock.send(_message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK, seq))
        _check_ack(sock, seq)
    return sock


def packet_ids(data: bytes) -> list[int]:
    """The packet ids of the NFQUEUE packet messages in one netlink datagram."""
    ids = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at, end = offset + 20, offset + length
            while at + 4 <= end:
                alen, akind = struct.unpack_from("=HH", data, at)
                if alen < 4:
                    break
                if akind & 0x3FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from(">I", data, at + 4)[0])
                    break
                at += alen + (-alen % 4)
        offset += length + (-length % 4)
    return ids


def run(sock: socket.socket, queue: int, delay_s: float) -> None:
    """Accept each packet of the bound queue once it has waited delay_s; never returns."""
    sock.setblocking(False)
    pending: collections.deque[tuple[float, int]] = collections.deque()
    seq = 100
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            arrived = time.monotonic() + delay_s
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.ENOBUFS:  # messages lost; their packets still wait
                        continue  # and the next batch verdict releases them too
                    raise
                pending.extend((arrived, pid) for pid in packet_ids(data))
        now = time.monotonic()
        last = None
        while pending and pending[0][0] <= now:
            last = pending.popleft()[1]
        if last is not None:
            seq += 1
            verdict = struct.pack(">II", NF_ACCEPT, last)
            sock.send(
                _message(
                    NFQNL_MSG_VERDICT_BATCH, queue, _attr(NFQA_VERDICT_HDR, verdict),
                    NLM_F_REQUEST, seq,
                )
            )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.netdelay", description=__doc__)
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--delay-us", type=int, required=True)
    parser.add_argument("--ready-file", help="written once the queue is bound")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = open_queue(args.queue)
    if args.ready_file:  # bound: the caller adds the iptables rule only now
        with open(args.ready_file, "w") as f:
            f.write(str(os.getpid()))
    run(sock, args.queue, args.delay_us / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
