"""A real MLLP peer for lbcore's HL7 health-check tests, built on python3-hl7 (0.4.5).

Usage: python3 mllp_server.py MODE
  MODE aa        ACK every message with MSA-1 AA, MSA-2 = the message's MSH-10
  MODE ae        the same with MSA-1 AE (an HL7 NAK)
  MODE wrong-id  MSA-1 AA, but MSA-2 is not the message's control ID

Listens on 127.0.0.1 on a port the kernel picks, prints that port on one line once it
listens, then serves until killed.
"""

import asyncio
import sys

import hl7
from hl7.mllp import start_hl7_server


def answer(message, mode):
    if mode == "aa":
        return message.create_ack("AA")
    if mode == "ae":
        return message.create_ack("AE")
    if mode == "wrong-id":
        ack = message.create_ack("AA")
        ack.segment("MSA").assign_field("NOT-" + str(message.segment("MSH")(10)), 2)
        return ack
    raise SystemExit(f"unknown mode {mode!r}")


async def main(mode):
    async def handle(reader, writer):
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                writer.writemessage(answer(message, mode))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await start_hl7_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    asyncio.run(main(sys.argv[1]))
