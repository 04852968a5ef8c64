"""A naive SOCKS5 server for one e2e test: no authentication, CONNECT to whatever it is asked,
no rule of its own (dante refuses connections to its own address; many proxies do not).

    python naive_socks.py HOST PORT
"""

from __future__ import annotations

import asyncio
import socket
import sys


async def pipe(reader, writer) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def serve(reader, writer) -> None:
    try:
        head = await reader.readexactly(2)
        await reader.readexactly(head[1])  # the methods offered: we take "none"
        writer.write(b"\x05\x00")
        ver, cmd, _, atyp = await reader.readexactly(4)
        if atyp == 1:
            host = socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
        elif atyp == 4:
            host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        else:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        port = int.from_bytes(await reader.readexactly(2), "big")
        if cmd != 1:
            writer.write(b"\x05\x07\x00\x01" + bytes(6))
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except OSError:
            writer.write(b"\x05\x05\x00\x01" + bytes(6))
            writer.close()
            return
        writer.write(b"\x05\x00\x00\x01" + bytes(6))
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main(host: str, port: int) -> None:
    server = await asyncio.start_server(serve, host, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
