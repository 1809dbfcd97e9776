"""The receiver of docs/webhooks.md runs as written (Flask's test client, no server): a delivery signed by our
deliverer's headers is accepted, a tampered one refused (400), a repeat of an event id and an older sequence
change nothing."""
from __future__ import annotations

import io
import json
import re
import time
from contextlib import redirect_stdout
from pathlib import Path

from worker.webhooks.signing import headers, new_secret

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def test_the_docs_receiver_verifies_deduplicates_and_orders(monkeypatch):
    [block] = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.M | re.S)
    secret = new_secret()
    monkeypatch.setenv("PAYMENTS_WEBHOOK_SECRET", secret)
    scope: dict = {"__name__": "receiver"}
    exec(compile(block, "docs/webhooks.md", "exec"), scope)
    client = scope["app"].test_client()

    def post(event_id: str, sequence: int, status: str, *, sign_with: str = secret, tamper: bool = False):
        body = json.dumps({"type": "payment." + status.lower(), "timestamp": "2026-12-07T21:00:00.000Z",
                           "data": {"payment_id": "p1", "sequence": sequence, "status": status, "amount": "3.00",
                                    "masked_account": "xxxxxxxxxxxx1111"}}).encode()
        sent = headers([sign_with], event_id, int(time.time()), body)
        return client.post("/hooks/payments", data=body + (b" " if tamper else b""), headers=sent)

    out = io.StringIO()
    with redirect_stdout(out):
        assert post("evt_a", 1, "APPROVED").status_code == 204
        assert post("evt_a", 1, "APPROVED").status_code == 204  # a repeat: accepted, not applied again
        assert post("evt_c", 2, "VOIDED").status_code == 204
        assert post("evt_b", 1, "APPROVED").status_code == 204  # an older sequence arriving late: not applied
        assert post("evt_d", 3, "REFUNDED", tamper=True).status_code == 400
        assert post("evt_e", 3, "REFUNDED", sign_with=new_secret()).status_code == 400
    assert out.getvalue().split("\n")[:-1] == ["payment.approved p1 APPROVED 3.00 xxxxxxxxxxxx1111",
                                               "payment.voided p1 VOIDED 3.00 xxxxxxxxxxxx1111"]
    assert scope["latest"] == {"p1": 2}
