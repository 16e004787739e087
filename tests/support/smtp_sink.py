"""A loopback SMTP server for Baton's alert tests: stores every message it receives.

    python smtp_sink.py --port P --dir D

Each message is written to D as NNN.eml (the envelope sender and recipients in the first two
lines, then the message as received). Runs until killed. Needs `aiosmtpd` (scripts/peers.sh).
"""

import argparse
import itertools
import os
import threading
import time

from aiosmtpd.controller import Controller

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--dir", required=True)
args = parser.parse_args()

counter = itertools.count(1)
lock = threading.Lock()


class Store:
    async def handle_DATA(self, server, session, envelope):
        with lock:
            number = next(counter)
        path = os.path.join(args.dir, f"{number:03}.eml")
        with open(path + ".part", "wb") as f:
            f.write(f"X-Envelope-From: {envelope.mail_from}\r\n".encode())
            f.write(f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n".encode())
            f.write(envelope.content)
        os.replace(path + ".part", path)
        return "250 OK"


controller = Controller(Store(), hostname="127.0.0.1", port=args.port)
controller.start()
try:
    while True:
        time.sleep(3600)
finally:
    controller.stop()
