"""A real HL7 receiver over MLLP (python3-hl7), for the proxy and health-check tests.

  mllp_server.py NAME PORT [HOST]

ACKs every message with MSA-1 AA and MSA-2 = the message's control ID (MSH-10); the
ACK's sending application (MSH-3) is NAME, so a test can tell which server answered.
"""

import asyncio
import sys

from hl7.mllp import start_hl7_server


async def main(name, port, host):
    async def handle(reader, writer):
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                ack = message.create_ack("AA", application=name, facility="TEST")
                writer.writemessage(ack)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await start_hl7_server(handle, host, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0"))
