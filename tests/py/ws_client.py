"""Opens a WebSocket to URL, reads the server's greeting, sends COUNT text
messages and one binary message, reads their echoes, closes normally and
prints one JSON object with what it saw. The Rust test judges the result.
"""

import asyncio
import json
import random
import sys

from websockets.asyncio.client import connect


async def main():
    url, count = sys.argv[1], int(sys.argv[2])
    out = {}
    async with asyncio.timeout(20):
        # proxy=None: never route loopback test traffic through an
        # HTTP proxy from the environment.
        async with connect(url, proxy=None) as ws:
            out["greeting"] = await ws.recv()
            echoes = []
            for i in range(count):
                await ws.send("message %d" % i)
                echoes.append(await ws.recv())
            out["echoes"] = echoes
            # Incompressible, so that 16 KiB cross the proxy even when the
            # two ends agree on permessage-deflate.
            blob = random.Random(7).randbytes(16384)
            await ws.send(blob)
            back = await ws.recv()
            out["binary_ok"] = back == blob
            out["binary_len"] = len(back)
        out["close_code"] = ws.close_code
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
