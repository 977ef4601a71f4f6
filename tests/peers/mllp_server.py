"""A real HL7 receiver over MLLP (python3-hl7 0.4.5), for the system tests (proxy, HL7
checks) and lbcore's HL7 health-check unit tests. Run it with Debian's /usr/bin/python3,
which sees python3-hl7.

  mllp_server.py [--name NAME] [--host HOST] [--port PORT] [--mode MODE] [--print-port]

  --name NAME   the ACK's sending application (MSH-3) is NAME and its facility (MSH-4)
                TEST, so a test can tell which server answered; without it, python3-hl7's
                default (the message's receiving application and facility)
  --host HOST   the address to listen on (default 0.0.0.0)
  --port PORT   the port to listen on (default 0: one the kernel picks)
  --mode MODE   aa (default): ACK every message with MSA-1 AA and MSA-2 = the message's
                control ID (MSH-10); ae: the same with MSA-1 AE (an HL7 NAK);
                wrong-id: MSA-1 AA, but MSA-2 is not the message's control ID
  --print-port  print the port on one line once listening (with --port 0)

The system tests:  mllp_server.py --name IMS1 --port 2575
lbcore's unit tests: mllp_server.py --host 127.0.0.1 --port 0 --print-port --mode ae
It serves until killed.
"""

import argparse
import asyncio

from hl7.mllp import start_hl7_server

MODES = ("aa", "ae", "wrong-id")


def answer(message, mode, name):
    who = {"application": name, "facility": "TEST"} if name is not None else {}
    if mode == "aa":
        return message.create_ack("AA", **who)
    if mode == "ae":
        return message.create_ack("AE", **who)
    ack = message.create_ack("AA", **who)  # wrong-id
    ack.segment("MSA").assign_field("NOT-" + str(message.segment("MSH")(10)), 2)
    return ack


async def main(args):
    async def handle(reader, writer):
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                writer.writemessage(answer(message, args.mode, args.name))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await start_hl7_server(handle, args.host, args.port)
    if args.print_port:
        print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mode", choices=MODES, default="aa")
    ap.add_argument("--print-port", action="store_true")
    return ap.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
