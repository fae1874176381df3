"""The abusive client of the flood test (tests/chaos/test_flood.py), run as a
process of its own so that its CPU and event loop are not the measured users'.

    python -m tests.chaos.flooder PLAN.json RESULTS.json

It opens its channels and prints ``ready``. Then, for each phase of the plan,
it waits for a ``go`` line on stdin; each of its devices sends to its own
conversation (at ``sends_per_second``, or with 0 as fast as answers come back:
one call in flight per device), ignoring every RetryInfo, while ``signups``
sign-ups from one client address go out a few at a time; after ``seconds`` (or
when the attempt counts run out) it writes what every phase got so far to
RESULTS.json and prints ``done``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from tests.refusals import rate_limit_problem, refused

SEND_LIMITS = ("send_per_device", "send_per_account")
SIGNUP_LIMITS = ("signup_per_address", "signup_overall")
CALL_TIMEOUT = 10.0
# Malformed answers kept verbatim for the report (all are counted).
KEEP_BAD = 20


@dataclass
class Outcomes:
    """What one kind of flood got back in one phase."""

    attempts: int = 0
    accepted: list[dict[str, Any]] = field(default_factory=list)
    # Well-formed rate-limit refusals, by the limit they named.
    refusals: dict[str, int] = field(default_factory=dict)
    # Any other failure: a refusal without the promised shape, or another status.
    bad: list[str] = field(default_factory=list)
    bad_count: int = 0
    retry_min: float | None = None
    retry_max: float | None = None
    started: float = 0.0
    ended: float = 0.0

    def refusal(self, error: grpc.aio.AioRpcError, limits: tuple[str, ...]) -> None:
        shape = refused(error)
        problem = rate_limit_problem(shape, limits)
        if problem is not None:
            self.bad_count += 1
            if len(self.bad) < KEEP_BAD:
                self.bad.append(f"{problem}: {shape.describe()}")
            return
        self.refusals[shape.limit] = self.refusals.get(shape.limit, 0) + 1
        delay = shape.retry_delay or 0.0
        self.retry_min = delay if self.retry_min is None else min(self.retry_min, delay)
        self.retry_max = delay if self.retry_max is None else max(self.retry_max, delay)


class Flood:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self._messages = {t: grpc.aio.insecure_channel(t) for t in plan["message_targets"]}
        self._keys = grpc.aio.insecure_channel(plan["keys_target"])
        self._sent = 0  # numbers every body, across phases

    async def run(self, results_path: Path) -> None:
        loop = asyncio.get_running_loop()
        try:
            for channel in [*self._messages.values(), self._keys]:
                await asyncio.wait_for(channel.channel_ready(), timeout=CALL_TIMEOUT)
            print("ready", flush=True)
            results: list[dict[str, Any]] = []
            for phase in self.plan["phases"]:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if line.strip() != "go":
                    raise SystemExit(f"expected go, got {line!r}")
                deadline = time.monotonic() + phase["seconds"]
                sends, signups = Outcomes(), Outcomes()
                await asyncio.gather(
                    self._sends(phase["sends_per_second"], deadline, sends),
                    self._signups(phase["signups"], deadline, signups),
                )
                results.append({"sends": asdict(sends), "signups": asdict(signups)})
                results_path.write_text(json.dumps(results))
                print("done", flush=True)
        finally:
            for channel in [*self._messages.values(), self._keys]:
                await channel.close()

    async def _sends(self, per_second: float, deadline: float, out: Outcomes) -> None:
        devices = self.plan["devices"]
        period = 1 / per_second if per_second else 0.0
        out.started = time.monotonic()

        async def device(index: int, spec: dict[str, Any]) -> None:
            stub = mgrpc.MessageServiceStub(self._messages[spec["target"]])
            md = (("authorization", f"Bearer {spec['token']}"),)
            first = out.started + period * index / len(devices)
            for n in range(self.plan["max_send_attempts"]):
                if period:
                    await asyncio.sleep(max(0.0, first + n * period - time.monotonic()))
                if time.monotonic() >= deadline:
                    return
                self._sent += 1
                body = f"flood {index} {self._sent}".encode()
                out.attempts += 1
                try:
                    reply = await stub.SendMessage(
                        mpb.SendMessageRequest(
                            request_id=str(uuid.uuid4()),
                            conversation_id=spec["conversation"],
                            type=mpb.MESSAGE_TYPE_TEXT,
                            body=body,
                        ),
                        metadata=md,
                        timeout=CALL_TIMEOUT,
                    )
                except grpc.aio.AioRpcError as error:
                    out.refusal(error, SEND_LIMITS)
                else:
                    out.accepted.append(
                        {
                            "conversation": spec["conversation"],
                            "message_id": reply.message.message_id,
                            "seq": reply.message.seq,
                            "body": body.decode(),
                        }
                    )

        await asyncio.gather(*(device(i, spec) for i, spec in enumerate(devices)))
        out.ended = time.monotonic()

    async def _signups(self, count: int, deadline: float, out: Outcomes) -> None:
        if not count:
            return
        stub = kgrpc.AccountServiceStub(self._keys)
        md = (("x-forwarded-for", self.plan["signup_address"]),)
        numbers = iter(range(count))
        out.started = time.monotonic()

        async def worker() -> None:
            for n in numbers:
                if time.monotonic() >= deadline:
                    return
                out.attempts += 1
                try:
                    reply = await stub.SignUp(
                        kpb.SignUpRequest(
                            request_id=str(uuid.uuid4()),
                            handle=f"flood_{uuid.uuid4().hex[:10]}",
                            display_name=f"flood {n}",
                            device=kpb.NewDevice(name="bot", platform=1),
                        ),
                        metadata=md,
                        timeout=CALL_TIMEOUT,
                    )
                except grpc.aio.AioRpcError as error:
                    out.refusal(error, SIGNUP_LIMITS)
                else:
                    out.accepted.append({"account_id": reply.account.account_id})

        await asyncio.gather(*(worker() for _ in range(self.plan["signup_concurrency"])))
        out.ended = time.monotonic()


async def main(plan_path: Path, results_path: Path) -> None:
    await Flood(json.loads(plan_path.read_text())).run(results_path)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
