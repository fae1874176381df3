"""Argument types of ``parley bench``: each parses one option's text or
raises argparse.ArgumentTypeError naming what is wrong."""

from __future__ import annotations

import argparse

from parley_dev.bench.limits import MAX_GROUP_MEMBERS

LOCAL_HOSTS = ("127.0.0.1", "localhost")
# Largest file the media scenario takes: the services' single-object default.
MAX_MEDIA_MIB = 2048.0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def history_messages(text: str) -> int:
    value = int(text)
    # Both tiers must hold full pages of 50 in every conversation.
    if not 200 <= value <= 100_000:
        raise argparse.ArgumentTypeError("must be between 200 and 100000")
    return value


def group_size(text: str) -> int:
    value = int(text)
    if not 2 <= value <= MAX_GROUP_MEMBERS:
        raise argparse.ArgumentTypeError(f"must be between 2 and {MAX_GROUP_MEMBERS}")
    return value


def rtt_ms(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 2000:
        raise argparse.ArgumentTypeError("must be between 0 and 2000 ms")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 1")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError("must be between 0 and 600 seconds")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def local_target(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    # The bench only ever loads this machine.
    if host not in LOCAL_HOSTS:
        raise argparse.ArgumentTypeError("the bench only targets 127.0.0.1")
    return f"127.0.0.1:{port}"


def sizes_mib(text: str) -> tuple[float, ...]:
    try:
        sizes = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected MiB values such as 1,16") from None
    if not sizes or any(not 0.01 <= size <= MAX_MEDIA_MIB for size in sizes):
        raise argparse.ArgumentTypeError(f"each size must be 0.01 to {MAX_MEDIA_MIB:g} MiB")
    return sizes


def name_pid(text: str) -> tuple[str, int]:
    name, sep, pid = text.partition("=")
    if not sep or not name or not pid.isdigit():
        raise argparse.ArgumentTypeError("expected NAME=PID")
    return name, int(pid)
