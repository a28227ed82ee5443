#!/usr/bin/env python3
"""The baseline of the client-cost benchmark: what a user would otherwise write.

A plain asyncio + aiohttp client with a bounded queue: one task reads OpenAI Batch request
lines into an asyncio.Queue of bounded size, CONCURRENCY worker tasks post them (with
"stream": false) through one ClientSession and write one OpenAI Batch output line per
result to stdout. Standard library and aiohttp only (`pip install aiohttp`).

    python3 benches/baseline_client.py requests.jsonl --backend http://127.0.0.1:PORT \
        --concurrency 64 > results.jsonl

Exits 0 when every request got HTTP 200, 1 otherwise.
"""

import argparse
import asyncio
import json
import sys

import aiohttp


async def run(path, backend, concurrency):
    queue = asyncio.Queue(maxsize=2 * concurrency)
    out = sys.stdout
    failures = 0

    async def read_input():
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    await queue.put(json.loads(line))
        for _ in range(concurrency):
            await queue.put(None)

    async def work(session):
        nonlocal failures
        while (request := await queue.get()) is not None:
            body = dict(request["body"], stream=False)
            status, answer, error = None, None, None
            try:
                async with session.post(backend + request["url"], json=body) as response:
                    status = response.status
                    answer = await response.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as cause:
                error = {"code": "connection_error", "message": str(cause)}
            if error is None and status != 200:
                error = {"code": "http_error", "message": f"HTTP {status}"}
            if error is not None:
                failures += 1
            response_field = None if status is None else {"status_code": status, "body": answer}
            out.write(
                json.dumps(
                    {
                        "custom_id": request["custom_id"],
                        "response": response_field,
                        "error": error,
                    }
                )
                + "\n"
            )

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(read_input(), *(work(session) for _ in range(concurrency)))
    out.flush()
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="OpenAI Batch request lines (JSONL)")
    parser.add_argument("--backend", required=True, help="base URL, e.g. http://127.0.0.1:11434")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    args = parser.parse_args()
    failures = asyncio.run(run(args.input, args.backend.rstrip("/"), args.concurrency))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
