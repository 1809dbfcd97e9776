"""The outcome's field lists (worker.store.outcomes), on their own: the record decoder (encoding.py) reads them too."""
from __future__ import annotations

CONTRACT_FIELDS = (
    "payment_id", "operation", "status", "message", "trans_id", "avs", "cvv2", "masked_account",
    "card_type", "auth_code", "amount", "order_id", "attempts", "created_at", "updated_at",
)
OPTIONAL_PUBLIC_FIELDS = ("target", "parent", "voided_by", "captured_by", "refunded_by", "refunded_amount", "bank_name",
                          "invoice_id", "refund_needed", "needs_human", "not_charged", "reconciled", "error_class",
                          "reason", "idempotency_key", "token", "customer_token", "stored_id", "initiator",
                          "declined_by_policy", "merchant")
