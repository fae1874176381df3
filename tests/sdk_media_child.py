"""A process that sends a file and hangs once some of it is stored, for the test
that SIGKILLs an upload half-way (tests/integration/test_sdk_media.py).

    python -m tests.sdk_media_child STORE KEYS MESSAGE PRESENCE MEDIA \
        CONVERSATION PATH REQUEST_ID HANG_AFTER_BYTES

It prints ``stored DONE TOTAL`` for every progress step (flushed), and once
DONE reaches HANG_AFTER_BYTES it blocks its event loop for good: no further
part can go up, as in a process frozen before the kill. The parent kills it.
"""

from __future__ import annotations

import asyncio
import sys
import time

from parley_sdk import Client

HANG_SECONDS = 300


async def main(argv: list[str]) -> None:
    store, keys, message, presence, media, conversation, path, request_id, hang = argv
    hang_after = int(hang)

    def progress(done: int, total: int) -> None:
        print(f"stored {done} {total}", flush=True)
        if done >= hang_after:
            time.sleep(HANG_SECONDS)  # blocks the loop: the parent kills us meanwhile

    async with await Client.connect(
        keys_target=keys,
        message_target=message,
        presence_target=presence,
        media_target=media,
        store=store,
    ) as client:
        await client.send_file(conversation, path, request_id=request_id, progress=progress)
    print("finished", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
