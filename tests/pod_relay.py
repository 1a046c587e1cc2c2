"""Relay from a Unix socket to a TCP port on loopback, run inside the pod-contract sandbox.

The sandboxed server has its own network namespace, which the test process cannot reach over TCP; a
Unix socket on a shared directory can be reached from both sides (sockets on a file system are not
network-namespaced). Each connection to the socket is piped to ``127.0.0.1:<port>`` inside the
sandbox; when nothing listens there yet the connection is closed at once, which the test's probe sees
as a failed attempt, like the kubelet's "connection refused". Standard library only.

    python pod_relay.py SOCKET PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


async def _relay(port: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))


async def main(path: str, port: int) -> None:
    server = await asyncio.start_unix_server(lambda r, w: _relay(port, r, w), path=path)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
