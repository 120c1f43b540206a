#!/usr/bin/env python3
"""Opens COUNT concurrent connections to the gateway, each sending one GET /users/N, then
waits (bounded) for every answer. Used by bench/run.sh for the memory-per-waiting-caller figure.

usage: hold_callers.py HOST PORT COUNT DISTINCT_IDS DEADLINE_SECONDS

Caller i asks for id (i % DISTINCT_IDS) + 1. Prints progress lines run.sh can read:
  CONNECTED n / SENT n / DONE status=<counts> errors=<n> timeouts=<n>
"""
import asyncio
import collections
import sys
import time


async def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    count, distinct = int(sys.argv[3]), int(sys.argv[4])
    deadline = time.monotonic() + float(sys.argv[5])

    statuses: collections.Counter = collections.Counter()
    errors = collections.Counter()
    connect_gate = asyncio.Semaphore(256)  # bounded burst of SYNs: stays inside the listen backlog
    connected = 0
    sent = 0
    all_sent = asyncio.Event()

    async def caller(i: int) -> None:
        nonlocal connected, sent
        writer = None
        try:
            async with connect_gate:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), max(0.1, deadline - time.monotonic()))
            connected += 1
            writer.write(f"GET /users/{i % distinct + 1} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         f"Connection: close\r\n\r\n".encode())
            await writer.drain()
            sent += 1
            if sent == count:
                all_sent.set()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          max(0.1, deadline - time.monotonic()))
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await asyncio.wait_for(reader.readexactly(length),
                                       max(0.1, deadline - time.monotonic()))
            statuses[status] += 1
        except asyncio.TimeoutError:
            errors["timeout"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            errors[type(e).__name__] += 1
        finally:
            if writer is not None:
                writer.close()

    async def progress() -> None:
        await all_sent.wait()
        print(f"SENT {sent}", flush=True)

    tasks = [asyncio.create_task(caller(i)) for i in range(count)]
    reporter = asyncio.create_task(progress())
    last = -1
    while any(not t.done() for t in tasks) and time.monotonic() < deadline + 5:
        if connected != last and (connected == count or connected // 1000 != last // 1000):
            print(f"CONNECTED {connected}", flush=True)
            last = connected
        await asyncio.sleep(0.2)
    reporter.cancel()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if sent < count:
        print(f"SENT {sent} (of {count})", flush=True)
    print("DONE status=" + (",".join(f"{k}:{v}" for k, v in sorted(statuses.items())) or "none")
          + " errors=" + (",".join(f"{k}:{v}" for k, v in sorted(errors.items())) or "0"),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
