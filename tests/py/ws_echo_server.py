"""A WebSocket echo server for meshgate's end-to-end tests (the `websockets`
package). On connect it sends "hello <path>" unprompted, then echoes every
text or binary message. Binds 127.0.0.1 on a port the OS picks and prints
the port on stdout.
"""

import asyncio

from websockets.asyncio.server import serve


async def echo(ws):
    await ws.send("hello " + ws.request.path)
    async for message in ws:
        await ws.send(message)


async def main():
    async with serve(echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(port, flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
